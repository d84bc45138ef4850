"""Drill 1: a rolling restart of every instance under load fails no transaction.

pgbench opens a new connection per transaction (-C) through HAProxy on both pooler hosts for the whole run of
playbooks/rolling_restart.yml, which drains, restarts and re-admits every instance one at a time. A third set
of clients connects through the pooler group's virtual IP (roles/keepalived): none fails, the VIP stays put.
"""

from __future__ import annotations

import time

import pytest

from e2e.stack import Host
from e2e.vip_lab import holders, pooler_vip, vip_target

from .fleet import fleet_pids, playbook
from .load import Load

pytestmark = pytest.mark.drill


def test_rolling_restart_under_load_fails_nothing(poolers: list[Host]) -> None:
    before = fleet_pids(poolers)
    vip_before = holders(poolers, pooler_vip())
    with Load([*poolers, vip_target()], connect=True) as load:
        time.sleep(2)
        _, took = playbook("playbooks/rolling_restart.yml")
        time.sleep(2)
    after = fleet_pids(poolers)
    vip_after = holders(poolers, pooler_vip())

    restarted = sum(before[h][n] != after[h][n] for h in before for n in before[h])
    total = sum(len(pids) for pids in before.values())
    print(
        f"\nDRILL rolling-restart: {restarted}/{total} instances restarted in {took:.0f} s; {load.summary()}"
    )
    print(f"DRILL rolling-restart: VIP {pooler_vip()} held by {vip_before} before, {vip_after} after")
    if load.failures:
        print(load.failure_lines())
    assert restarted == total, f"not every instance was restarted: before {before}, after {after}"
    assert load.transactions > 0
    assert len(vip_before) == 1, f"VIP held by {vip_before}"
    assert vip_after == vip_before, "the rolling restart moved the VIP"
    assert not load.failures, f"{len(load.failures)} failed:\n{load.failure_lines()}"
