"""Clients through HAProxy on every pooler host, connecting as applications do.

psql, pgbench, psycopg and asyncpg are real clients that nobody here wrote; every connection goes to
HAProxy on the pooler host's client port, which balances over the host's pgbouncer instances.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import threading
import time

import asyncpg
import psycopg
import pytest
from psycopg import errors

from .stack import Host, console_rows, example_config, instance_count, poolers, postgres_host

pytestmark = pytest.mark.e2e

try:
    POOLERS = poolers()
except AssertionError:  # lab down: test_the_lab_is_up below fails loudly instead of an empty run passing
    POOLERS = []


def test_the_lab_is_up() -> None:
    assert len(poolers()) >= 2, "the lab should have two pooler hosts"


def _connect(host: Host, user: str, password: str, dbname: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(
        host=host.address,
        port=example_config().listen_port,
        user=user,
        password=password,
        dbname=dbname,
        connect_timeout=5,
        autocommit=True,
    )


def _user(name: str):  # type: ignore[no-untyped-def]
    return next(user for user in example_config().users if user.username == name)


@pytest.mark.parametrize("host", POOLERS, ids=lambda h: h.name)
def test_every_user_reaches_every_granted_pool(host: Host) -> None:
    config = example_config()
    remote_db = {pool.name: pool.remote.database for pool in config.pools}
    seen_auth = set()
    checked = 0
    for user in config.users:
        for pool in user.grants:
            with _connect(host, user.username, user.password, pool) as conn:
                row = conn.execute("SELECT current_database(), current_user").fetchone()
            assert row is not None
            assert row[0] == remote_db[pool], f"{user.username} on {pool} reached {row[0]}"
            seen_auth.add(user.auth_type or config.auth_type)
            checked += 1
    assert checked >= 3
    assert {"md5", "scram-sha-256"} <= {str(getattr(a, "value", a)) for a in seen_auth}


@pytest.mark.parametrize("host", POOLERS, ids=lambda h: h.name)
def test_refused_without_grant_with_wrong_password_and_unknown_user(host: Host) -> None:
    config = example_config()
    all_pools = {pool.name for pool in config.pools}
    user = next(u for u in config.users if set(u.grants) != all_pools and u.grants)
    ungranted = sorted(all_pools - set(user.grants))[0]
    with pytest.raises(psycopg.OperationalError):
        _connect(host, user.username, user.password, ungranted)
    with pytest.raises(psycopg.OperationalError):
        _connect(host, user.username, user.password + "-wrong", user.grants[0])
    with pytest.raises(psycopg.OperationalError):
        _connect(host, "nobody_like_this", "whatever", user.grants[0])


@pytest.mark.parametrize("host", POOLERS, ids=lambda h: h.name)
def test_admin_runs_show_pools_on_every_instance(host: Host) -> None:
    config = example_config()
    admin = _user(config.admin_users[0])
    count = instance_count(host)
    assert count >= 2
    for instance in range(1, count + 1):
        socket_dir, port = f"/run/pgbouncer/{instance}", 6400 + instance
        rows = console_rows(host, socket_dir, port, admin.username, admin.password, "SHOW POOLS")
        databases = {row["database"] for row in rows}
        assert {pool.name for pool in config.pools} <= databases, f"instance {instance}: {rows}"


@pytest.mark.parametrize("host", POOLERS, ids=lambda h: h.name)
def test_psql_through_haproxy(host: Host) -> None:
    user = _user("both_user")
    result = subprocess.run(
        ["psql", "-XAt", "-h", host.address, "-p", str(example_config().listen_port), "-U", user.username,
         "-d", user.grants[0], "-c", "SELECT 40 + 2"],
        env={"PGPASSWORD": user.password, "PATH": "/usr/bin:/bin", "PGCONNECT_TIMEOUT": "5"},
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "42"


@pytest.mark.parametrize("host", POOLERS, ids=lambda h: h.name)
def test_pgbench_through_haproxy_has_no_failed_transactions(host: Host, tmp_path) -> None:  # type: ignore[no-untyped-def]
    user = _user("app_user")
    script = tmp_path / "select.sql"
    script.write_text("\\set n random(1, 100000)\nSELECT :n;\n")
    result = subprocess.run(
        ["pgbench", "-n", "-f", str(script), "-c", "8", "-j", "2", "-T", "5", "-h", host.address,
         "-p", str(example_config().listen_port), "-U", user.username, "app"],
        env={"PGPASSWORD": user.password, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    processed = int(re.search(r"number of transactions actually processed: (\d+)", result.stdout).group(1))  # type: ignore[union-attr]
    failed = re.search(r"number of failed transactions: (\d+)", result.stdout)
    print(f"{host.name}: pgbench processed {processed} transactions")
    assert processed > 100
    assert failed is None or int(failed.group(1)) == 0, result.stdout


@pytest.mark.parametrize("host", POOLERS, ids=lambda h: h.name)
def test_psycopg_cancel_through_haproxy(host: Host) -> None:
    """A cancel request is a new connection HAProxy may send to another instance; peering forwards it."""
    user = _user("app_user")
    cancelled = 0
    for _ in range(10):
        with _connect(host, user.username, user.password, "app") as conn:
            timer = threading.Timer(0.3, conn.cancel)
            timer.start()
            started = time.monotonic()
            with pytest.raises(errors.QueryCanceled):
                conn.execute("SELECT pg_sleep(10)")
            timer.join()
            assert time.monotonic() - started < 5
            cancelled += 1
    assert cancelled == 10


@pytest.mark.parametrize("host", POOLERS, ids=lambda h: h.name)
def test_asyncpg_named_prepared_statements_in_transaction_pooling(host: Host) -> None:
    """asyncpg prepares named statements; max_prepared_statements makes them work across transactions."""
    user = _user("app_user")
    config = example_config()
    app = next(pool for pool in config.pools if pool.name == "app")
    assert str(getattr(app.pool_mode, "value", app.pool_mode)) == "transaction"

    async def worker(seed: int) -> int:
        conn = await asyncpg.connect(
            host=host.address, port=config.listen_port, user=user.username, password=user.password,
            database="app", timeout=5,
        )  # fmt: skip
        try:
            stmt = await conn.prepare("SELECT $1::int * 2 + $2::int")
            total = 0
            for i in range(50):
                total += await stmt.fetchval(i, seed)
                total += await conn.fetchval("SELECT $1::int + 1", i)
            return total
        finally:
            await conn.close()

    async def run() -> list[int]:
        return await asyncio.gather(*(worker(seed) for seed in range(16)))

    results = asyncio.run(asyncio.wait_for(run(), timeout=60))
    expected = [sum(i * 2 + seed + i + 1 for i in range(50)) for seed in range(16)]
    assert results == expected


def test_clients_outside_the_allowlist_are_refused() -> None:
    """pg1 is on the lab network but not in the pooler's allow-list: HAProxy drops it at connect."""
    pg = postgres_host()
    user = _user("app_user")
    target = POOLERS[0]
    out = pg.run(
        "read -r PGPASSWORD; export PGPASSWORD; "
        f"psql -XAt -h {target.address} -p {example_config().listen_port} -U {user.username} app "
        "-c 'SELECT 1' 2>&1; echo exit=$?",
        stdin=user.password + "\n",
    )
    assert "exit=2" in out, out
    assert "closed the connection" in out or "reset" in out.lower(), out
