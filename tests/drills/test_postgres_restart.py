"""Drill 5: PostgreSQL restarted under load. Clients get errors only while it is down, and every pooler serves
again within 3 s of PostgreSQL accepting connections.

pg1 is polled directly (pg_isready from the controller, every 50 ms); in parallel, one prober per pooler host
runs `SELECT 1` through HAProxy every 50 ms. The figure is the time from the first poll that finds PostgreSQL
accepting again to the first successful query through each pooler after that moment.
"""

from __future__ import annotations

import subprocess
import threading
import time

import psycopg
import pytest

from e2e.stack import Host, example_config

from .load import Load

pytestmark = pytest.mark.drill

BACK_LIMIT = 3.0
POLL = 0.05
WATCH = 30.0


def _watch_postgres(address: str, port: int, stop: threading.Event, seen: list[tuple[float, bool]]) -> None:
    while not stop.is_set():
        ok = subprocess.run(
            ["pg_isready", "-q", "-h", address, "-p", str(port), "-t", "1"], check=False, timeout=5
        ).returncode == 0  # fmt: skip
        seen.append((time.time(), ok))
        time.sleep(POLL)


def _probe_pooler(host: Host, stop: threading.Event, seen: list[tuple[float, bool]]) -> None:
    user = next(u for u in example_config().users if u.username == "app_user")
    while not stop.is_set():
        try:
            with psycopg.connect(
                host=host.address, port=example_config().listen_port, user=user.username,
                password=user.password, dbname="app", connect_timeout=2,
            ) as conn:  # fmt: skip
                conn.execute("SELECT 1")
            ok = True
        except psycopg.Error:
            ok = False
        seen.append((time.time(), ok))
        time.sleep(POLL)


def test_pool_serves_within_3s_of_postgres_accepting(poolers: list[Host], postgres: Host) -> None:
    port = next(iter(example_config().pools)).remote.port
    stop = threading.Event()
    pg_seen: list[tuple[float, bool]] = []
    pool_seen: dict[str, list[tuple[float, bool]]] = {host.name: [] for host in poolers}
    threads = [threading.Thread(target=_watch_postgres, args=(postgres.address, port, stop, pg_seen))]
    threads += [threading.Thread(target=_probe_pooler, args=(h, stop, pool_seen[h.name])) for h in poolers]
    with Load(poolers, connect=True) as load:
        for thread in threads:
            thread.start()
        time.sleep(2)
        t_cmd = time.time()
        postgres.run("systemctl restart postgresql", timeout=60)
        deadline = time.time() + WATCH
        while time.time() < deadline:
            up = _back_up(pg_seen, t_cmd)
            if up and all(any(ok and t > up for t, ok in seen) for seen in pool_seen.values()):
                break
            time.sleep(0.2)
        time.sleep(2)
        stop.set()
        for thread in threads:
            thread.join(timeout=10)

    down = next((t for t, ok in pg_seen if t >= t_cmd and not ok), None)
    up = _back_up(pg_seen, t_cmd)
    assert down is not None, "pg_isready never saw PostgreSQL down: the restart was not observed"
    assert up is not None, f"PostgreSQL not accepting again within {WATCH} s"
    back = {name: next((t for t, ok in seen if ok and t > up), None) for name, seen in pool_seen.items()}
    late = {name: t for name, t in back.items() if t is None or t - up > BACK_LIMIT}
    last_ok_before = max((t for t, ok in pg_seen if ok and t < down), default=t_cmd)
    window_end = max((t for t in back.values() if t), default=up)
    outside = [f for f in load.failures if not (last_ok_before - 0.5 <= f.at <= window_end + 0.5)]

    figures = ", ".join(f"{name} {t - up:.2f} s" if t else f"{name} never" for name, t in back.items())
    print(f"\nDRILL postgres-restart: PostgreSQL down for {up - down:.2f} s (pg_isready every {POLL:.2f} s)")
    print(f"DRILL postgres-restart: first query through HAProxy after PostgreSQL accepts: {figures}")
    print(f"DRILL postgres-restart: {load.summary()}; failures outside the outage: {len(outside)}")
    if load.failures:
        print(load.failure_lines(5))
    assert not late, f"poolers not serving within {BACK_LIMIT} s of PostgreSQL: {figures}"
    assert not outside, "failures outside the outage:\n" + "\n".join(
        f"{f.at} {f.host}: {f.message}" for f in outside
    )


def _back_up(seen: list[tuple[float, bool]], since: float) -> float | None:
    """Time of the first accepting poll after a refusing one, both after `since`."""
    was_down = False
    for t, ok in list(seen):
        if t < since:
            continue
        if not ok:
            was_down = True
        elif was_down:
            return t
    return None
