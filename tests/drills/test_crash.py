"""Drill 4: `kill -9` of one instance under load. systemd restarts it within 2 s, HAProxy's view of it is
sampled every 0.1 s on the host, and only the transactions in flight on that instance may fail: at most one
per client of that host (each client has at most one transaction in flight), none on the other host, and
none later than a few seconds after the instance is back.
"""

from __future__ import annotations

import time

import pytest

from e2e.stack import SHOW_STAT_SH, Host

from .fleet import haproxy_servers, instance_pids
from .load import Load

pytestmark = pytest.mark.drill

RESTART_LIMIT = 2.0
SAMPLES = 80  # x ~0.1 s

# Timed on the host itself (the lab machines share the controller's clock), so ssh latency does not count.
_KILL_AND_WATCH = """
unit=pgbouncer@{n}.service; old=$(systemctl show -P MainPID $unit)
echo kill $(date +%s.%N) $old; kill -KILL $old
for i in $(seq {samples}); do
  pid=$(systemctl show -P MainPID $unit); active=$(systemctl is-active $unit)
  st=$({show_stat} | awk -F, '$2=="pgbouncer{n}" {{print $18}}')
  echo sample $(date +%s.%N) $pid $active "$st"; sleep 0.1
done
"""


def test_killed_instance_costs_only_its_inflight_transactions(poolers: list[Host]) -> None:
    host = poolers[0]
    n = max(instance_pids(host))
    server = f"pgbouncer{n}"
    counters = ("econ", "wretr", "wredis", "chkdown")
    with Load(poolers, connect=True) as load:
        time.sleep(2)
        stats_before = haproxy_servers(host)[server]
        out = host.run(_KILL_AND_WATCH.format(n=n, samples=SAMPLES, show_stat=SHOW_STAT_SH), timeout=60)
        time.sleep(2)
    stats_after = haproxy_servers(host)[server]

    lines = [line.split(maxsplit=4) for line in out.splitlines()]
    _, killed_at, old_pid = next(line for line in lines if line[0] == "kill")[:3]
    samples = [
        (float(t), pid, active, status)
        for _, t, pid, active, *rest in lines[1:]
        for status in [rest[0] if rest else ""]
    ]
    t_kill = float(killed_at)
    back = next(
        (t for t, pid, active, _ in samples if active == "active" and pid not in ("0", old_pid)), None
    )
    transitions = []
    for t, _, _, status in samples:
        if not transitions or transitions[-1][1] != status:
            transitions.append((t - t_kill, status))
    ha_seen = ", ".join(f"+{dt:.1f}s {status}" for dt, status in transitions)
    deltas = {c: int(stats_after.get(c) or 0) - int(stats_before.get(c) or 0) for c in counters}
    on_host = [f for f in load.failures if f.host == host.name]
    # A client connection that HAProxy accepted but could not hand to any instance (every retry went to the
    # dead one) counts in HAProxy's econ; pgbench's message looks like that of a login cut by the kill, so
    # the split comes from the counter: the rest were in flight on the instance.
    refused = on_host[: max(0, deltas["econ"])]
    in_flight = on_host[len(refused) :]
    elsewhere = [f for f in load.failures if f.host != host.name]
    late = [f for f in load.failures if back is None or f.at > back + 3]

    restart = f"{back - t_kill:.2f} s" if back else "never (within 8 s)"
    print(f"\nDRILL crash: {host.name} {server} killed (pid {old_pid}); systemd restarted it after {restart}")
    print(f"DRILL crash: HAProxy status of {server}: {ha_seen}; counters {deltas}")
    print(f"DRILL crash: {load.summary()}")
    print(
        f"DRILL crash: failed on {host.name}: {len(on_host)} ({len(in_flight)} in flight on the instance, "
        f"{len(refused)} new connections lost at connect), on other hosts: {len(elsewhere)}"
    )
    if load.failures:
        print(load.failure_lines())

    assert back is not None, f"restart took {restart}"
    assert back - t_kill < RESTART_LIMIT, f"restart took {restart}"
    assert transitions[-1][1] == "UP", f"{server} not back in rotation: {ha_seen}"
    assert not elsewhere, f"failures on hosts where nothing was killed:\n{load.failure_lines()}"
    assert len(in_flight) <= load.clients, (
        f"more failures than transactions in flight:\n{load.failure_lines()}"
    )
    assert not refused, (
        f"{len(refused)} new connections failed while the instance restarted (HAProxy {deltas}): "
        f"only transactions in flight may fail:\n{load.failure_lines()}"
    )
    assert not late, f"failures after the instance was back:\n{load.failure_lines()}"
