"""Drills of the pooler group's virtual IP (roles/keepalived) under pgbench -C through the VIP.

1. HAProxy stopped on the holder: the health check fails, the holder gives the address away, the other host
   serves within 3 s. Connections that hit the holder meanwhile fail: counted and printed.
2. The holding machine powered off (SIGKILL of its container, `labctl poweroff`): the other host takes the
   address when the adverts stop, within 3 s.
3. The machine boots again (`labctl boot`): the address stays where it is (nopreempt, init_fail): no failed
   transaction.
4. A rolling restart of every instance on every host through the VIP: no failed transaction, no move. That one
   is part of test_rolling_restart.py (its load has a third target, the VIP), so the playbook runs once.

The outage is timed by a probe on the controller that asks the VIP's front door every 50 ms (an SSLRequest,
what a client's first packet gets); pgbench's failures are counted as in the other drills (load.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from e2e.stack import REPO, Host, example_config
from e2e.vip_lab import Probe, holders, pooler_vip, vip_target, vrrp_state

from .fleet import assert_fleet_healthy
from .load import Load

pytestmark = pytest.mark.drill

FAILOVER_LIMIT = 3.0


@contextmanager
def probing() -> Iterator[Probe]:
    probe = Probe(pooler_vip(), example_config().listen_port)
    probe.start()
    try:
        yield probe
    finally:
        probe.stop()


def _holder(poolers: list[Host]) -> Host:
    held = holders(poolers, pooler_vip())
    assert len(held) == 1, f"the VIP is held by {held or 'nobody'}"
    return next(h for h in poolers if h.name == held[0])


def _labctl(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(REPO / "lab" / "labctl.py"), *args],
        capture_output=True, text=True, timeout=300, check=False, env=dict(os.environ),
    )  # fmt: skip
    assert result.returncode == 0, f"labctl {' '.join(args)}: {result.stdout}{result.stderr}"
    return result.stdout


def _wait_state(host: Host, wanted: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (state := vrrp_state(host)) != wanted:
        assert time.monotonic() < deadline, (
            f"{host.name}: keepalived is {state or 'not running'}, not {wanted}"
        )
        time.sleep(0.5)


def _report(name: str, what: str, load: Load, probe: Probe, event: float) -> tuple[float, float]:
    back, dark = probe.outage_after(event)
    print(
        f"\nDRILL vip-{name}: {what}; the VIP answered again {back:.2f} s after it "
        f"({dark:.2f} s without answer)"
    )
    print(f"DRILL vip-{name}: {load.summary()}")
    if load.failures:
        print(load.failure_lines())
    return back, dark


def test_haproxy_stopped_on_the_holder_moves_the_vip_within_3_s(poolers: list[Host]) -> None:
    holder = _holder(poolers)
    with Load([vip_target()], connect=True) as load, probing() as probe:
        time.sleep(2)
        event = float(holder.run("date +%s.%N; systemctl stop haproxy").split()[0])
        time.sleep(6)
        holder.run("systemctl start haproxy")
    new = _holder(poolers)
    back, _ = _report(
        "haproxy-stop", f"HAProxy stopped on {holder.name}, VIP now on {new.name}", load, probe, event
    )
    _wait_state(holder, "BACKUP", 15)
    assert new.name != holder.name
    assert back < FAILOVER_LIMIT
    assert load.transactions > 0
    # Only connections made in the seconds before the move may fail, and none after it.
    assert all(f.at < event + FAILOVER_LIMIT + 1 for f in load.failures), load.failure_lines()


def test_holder_powered_off_then_back_moves_the_vip_once(poolers: list[Host]) -> None:
    holder = _holder(poolers)
    other = next(h for h in poolers if h is not holder)
    # Drill 2: the power cut.
    with Load([vip_target()], connect=True) as load, probing() as probe:
        time.sleep(2)
        out = _labctl("poweroff", holder.name)
        event = float(re.search(r"power cut at ([\d.]+)", out).group(1))  # type: ignore[union-attr]
        time.sleep(5)
    back, _ = _report("poweroff", f"{holder.name} powered off, VIP now on {other.name}", load, probe, event)
    assert _holder([other]).name == other.name
    assert back < FAILOVER_LIMIT
    # Drill 3: the machine comes back; its instances, HAProxy and keepalived start at boot.
    with Load([vip_target()], connect=True) as again:
        started = time.monotonic()
        _labctl("boot", holder.name)
        assert_fleet_healthy(poolers, timeout=60)
        _wait_state(holder, "BACKUP", 30)
        took = time.monotonic() - started
        time.sleep(3)
    print(
        f"DRILL vip-return: {holder.name} booted and in service after {took:.0f} s, VIP stayed on "
        f"{_holder(poolers).name}; {again.summary()}"
    )
    if again.failures:
        print(again.failure_lines())
    assert _holder(poolers).name == other.name, "the VIP moved back to the machine that came back"
    assert not again.failures, f"{len(again.failures)} failed:\n{again.failure_lines()}"
