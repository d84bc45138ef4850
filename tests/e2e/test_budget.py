"""The connection budget on the deployed lab (docs/configuration.md, "Connection budget").

* A storm of more slow clients than the fleet's pools (150 clients through both pooler hosts, each holding a
  200 ms transaction three times) never makes PostgreSQL answer "too many clients": the pooler connections on
  pg1 peak within the fleet's planned worst case, which is within pg1's budget, and clients queue in pgbouncer
  instead (cl_waiting, maxwait).
* Growing the instance count beyond what the TOML's numbers can be divided into, or a fleet beyond what pg1
  takes (its max_connections read from pg1 during the run), is refused before any host changes: files and
  PIDs stay as they were.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from autopgpool import summarize

from .stack import (
    EXAMPLE_CONFIG,
    Host,
    ansible_playbook,
    console_samples,
    demo_secrets,
    example_config,
    instance_count,
    poolers,
    postgres_host,
)

pytestmark = pytest.mark.e2e

try:
    POOLERS = poolers()
except AssertionError:  # lab down: test_clients.test_the_lab_is_up fails loudly
    POOLERS = []

CLIENTS = 150  # in all, split over the pooler hosts
TRANSACTIONS = 3  # per client
HOLD = 0.2  # seconds each transaction holds its server connection
STORM_TIMEOUT = 90  # seconds for the whole storm; pgbouncer's query_wait_timeout is 30
POOLER_USERS = ("app_owner", "reporting_owner")


def _state(host: Host) -> str:
    """The files' digests and every instance's MainPID: what a refused run must leave alone."""
    return host.run(
        "find /etc/pgbouncer -type f | sort | xargs sha256sum; sha256sum /etc/haproxy/haproxy.cfg; "
        "for u in $(systemctl list-units --plain --no-legend 'pgbouncer@*.service' | cut -d' ' -f1); "
        "do echo $u $(systemctl show -P MainPID $u); done; systemctl show -P MainPID haproxy.service"
    )


def _plan() -> dict[str, Any]:
    """The budget the core computes for the fleet as deployed (pg1's limit as the lab's run read it)."""
    fleet = {host.name: instance_count(host) for host in POOLERS}
    limit = int(postgres_host().run("runuser -u postgres -- psql -XAtc 'SHOW max_connections'").strip())
    servers = {"pg1:5432": {"max_connections": limit, "other_clients": 10}}
    info = summarize(EXAMPLE_CONFIG.read_text(), demo_secrets(), instances=fleet, servers=servers)
    return info["connection_budget"]


@pytest.fixture
def converged_state() -> Iterator[dict[str, str]]:
    before = {host.name: _state(host) for host in POOLERS}
    yield before
    after = {host.name: _state(host) for host in POOLERS}
    assert after == before, "a refused run changed a host"


def test_growing_the_instances_beyond_the_budget_is_refused_before_any_host_changes(
    converged_state: dict[str, str],
) -> None:
    result = ansible_playbook("playbooks/site.yml", "-e", "pgbouncer_instances=64", timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    total = 64 * len(POOLERS)
    assert f"pools.app.pool_size: pool_size 20 cannot be divided among {total} pgbouncer instances" in output
    assert "raise it to at least" in output
    assert "PLAY [Roll out the poolers in batches]" not in output
    for secret in demo_secrets().values():
        assert secret not in output


def test_a_fleet_beyond_what_pg1_takes_is_refused_with_pg1s_own_limit(
    converged_state: dict[str, str],
) -> None:
    # pg1's max_connections is read from pg1 by the first pooler host; other_clients 80 leaves 17.
    servers = json.dumps({"pgbouncer_postgres_servers": {"pg1:5432": {"other_clients": 80}}})
    result = ansible_playbook("playbooks/site.yml", "-e", servers, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    fleet_max = _plan()["servers"]["pg1:5432"]["fleet_max"]
    assert f"PostgreSQL server pg1:5432: the pooler fleet may open {fleet_max} server connections" in output
    assert (
        "but the server takes 17 (max_connections 100 - superuser_reserved_connections 3 - other " in output
    )
    assert "clients 80, from the server)" in output
    assert "PLAY [Roll out the poolers in batches]" not in output
    for secret in demo_secrets().values():
        assert secret not in output


# --- the storm ------------------------------------------------------------------------------------------


class Sampler:
    """Bounded background loops: pooler backends on pg1 (pg_stat_activity), SHOW POOLS on every instance."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.pg_lines: list[str] = []
        self.pool_rows: dict[str, list[dict[str, str]]] = {}
        self.threads: list[threading.Thread] = []

    def _pg1(self) -> None:
        users = ", ".join(f"'{u}'" for u in POOLER_USERS)
        query = (
            f"SELECT count(*) FILTER (WHERE usename IN ({users})), count(*) FILTER (WHERE backend_type = "
            "'client backend') FROM pg_stat_activity"
        )
        steps = int(self.seconds / 0.1)
        out = postgres_host().run(
            f"for i in $(seq 1 {steps}); do "
            f'runuser -u postgres -- psql -XAt -F " " -c "{query}"; sleep 0.05; done',
            timeout=self.seconds + 60,
        )
        self.pg_lines = out.splitlines()

    def _pools(self, host: Host) -> None:
        admin = next(u for u in example_config().users if u.username == example_config().admin_users[0])
        count = instance_count(host)
        targets = [(f"/run/pgbouncer/{n}", 6400 + n) for n in range(1, count + 1)]
        samples = console_samples(
            host, targets, admin.username, admin.password, "SHOW POOLS",
            samples=int(self.seconds / 0.3), pause=0.2, timeout=self.seconds + 60,
        )  # fmt: skip
        self.pool_rows[host.name] = [row for _, rows in samples for row in rows]

    def __enter__(self) -> Sampler:
        self.threads = [threading.Thread(target=self._pg1)]
        self.threads += [threading.Thread(target=self._pools, args=(host,)) for host in POOLERS]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for thread in self.threads:
            thread.join(timeout=self.seconds + 90)

    def peak_backends(self) -> tuple[int, int]:
        rows = [tuple(int(x) for x in line.split()) for line in self.pg_lines if line.strip()]
        assert rows, "no sample from pg1"
        return max(r[0] for r in rows), max(r[1] for r in rows)

    def queueing(self, database: str) -> tuple[int, int]:
        """Peak cl_waiting of one instance and the longest maxwait (seconds) seen for ``database``."""
        waiting = maxwait = 0
        for rows in self.pool_rows.values():
            for row in rows:
                if row["database"] == database:
                    waiting = max(waiting, int(row["cl_waiting"]))
                    maxwait = max(maxwait, int(row["maxwait"]))
        return waiting, maxwait


async def _client(host: Host, user: Any, errors: list[str]) -> int:
    done = 0
    try:
        conn = await asyncpg.connect(
            host=host.address, port=example_config().listen_port, user=user.username, password=user.password,
            database="app", timeout=30, statement_cache_size=0,
        )  # fmt: skip
        try:
            for _ in range(TRANSACTIONS):
                async with conn.transaction():
                    await conn.execute(f"SELECT pg_sleep({HOLD})")
                done += 1
        finally:
            await conn.close()
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    return done


async def _storm(errors: list[str]) -> int:
    user = next(u for u in example_config().users if u.username == "app_user")
    clients = [_client(POOLERS[i % len(POOLERS)], user, errors) for i in range(CLIENTS)]
    return sum(await asyncio.wait_for(asyncio.gather(*clients), timeout=STORM_TIMEOUT))


def test_a_storm_of_slow_clients_queues_in_pgbouncer_and_stays_within_pg1s_budget() -> None:
    assert len(POOLERS) >= 2
    plan = _plan()
    pg1 = plan["servers"]["pg1:5432"]
    app = plan["pools"]["app"]
    assert pg1["fleet_max"] <= pg1["limit"]
    # More clients than the fleet's app pools hold, so some must wait.
    assert app["fleet_max"] < CLIENTS

    errors: list[str] = []
    with Sampler(seconds=20) as sampler:  # longer than the storm (about 12 s on the lab)
        time.sleep(1)  # the samplers are logged in before the storm
        started = time.monotonic()
        transactions = asyncio.run(_storm(errors))
        elapsed = time.monotonic() - started
    poolers_peak, backends_peak = sampler.peak_backends()
    waiting, maxwait = sampler.queueing("app")
    print(
        f"\nstorm: {CLIENTS} clients x {TRANSACTIONS} transactions of {HOLD} s through {len(POOLERS)} hosts "
        f"({plan['instances_total']} instances, app pool {app['pool_size']['per_instance']} + "
        f"{app.get('reserve_pool_size', {}).get('per_instance', 0)} per instance): {transactions} done in "
        f"{elapsed:.1f} s; pg1 peak pooler backends {poolers_peak} (plan {pg1['fleet_max']}, budget "
        f"{pg1['limit']}), peak client backends {backends_peak}; peak cl_waiting of one instance {waiting}, "
        f"longest maxwait {maxwait} s; errors {len(errors)}"
    )
    assert not any("too many clients" in e or "remaining connection slots" in e for e in errors), errors[:5]
    assert errors == [], errors[:5]
    assert transactions == CLIENTS * TRANSACTIONS
    assert poolers_peak <= pg1["fleet_max"] <= pg1["limit"]
    assert backends_peak < 100 - 3  # never near max_connections minus the superuser slots
    assert waiting > 0, "no client ever waited in pgbouncer: the storm did not exceed the pools"
