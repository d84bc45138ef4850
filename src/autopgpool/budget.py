"""The connection budget: what the TOML's connection numbers mean for a fleet of pgbouncer instances.

autopg-pool ran one pgbouncer, so ``pool_size = 20`` meant 20 server connections. Here every instance on
every pooler host applies the numbers of pgbouncer.ini, so PostgreSQL would see them multiplied by instances
x hosts.
:func:`plan` therefore divides the TOML's numbers by the number of instances that share them (the *scope*):

* ``tier`` (the default): the numbers are budgets for the whole pooler tier, every instance of every host;
* ``host``: budgets per pooler host (divided by the largest instance count of any host);
* ``instance``: each instance applies the numbers as written (the fleet opens them once per instance).

Divided are pool_size, reserve_pool_size, min_pool_size, max_db_connections (per pool and global),
default_pool_size and max_user_connections (global and per user). Division is floor division, so the fleet
never exceeds the budget, with two refusals: a pool size above 0 that would become 0 (pgbouncer caps a pool
only when its size is above 0, so the pool would have no limit at all), and a max_db_connections /
max_user_connections above 0 that would become 0 (pgbouncer reads 0 as "no limit", so the cap would vanish).
The TOML itself cannot say 0 for these (config.ZERO_IS_NO_LIMIT): every pool the budget counts has a size.
reserve_pool_size and min_pool_size may become 0 (none); the plan notes it.
pgbouncer.ini keeps one set of per-instance values, identical on every host.

Then, per PostgreSQL server (pools sharing remote host and port), the fleet's worst case (every instance of
every host active, every pool at pool_size + reserve_pool_size, capped by max_db_connections) is compared
with what the server takes: max_connections - superuser_reserved_connections - reserved_connections - the
connections the inventory declares for other clients. Exceeding it is an error that names the server, the
pools, the total, the limit and what to change.

Messages name pools, settings, numbers and servers (as written: a host from ``$VAR`` is shown as ``$VAR``),
never a secret. Pure: no I/O, no ansible.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import key_path
from .errors import ConfigError, Problem
from .model import Config, Pool, User

SCOPES = ("tier", "host", "instance")
DEFAULT_SCOPE = "tier"
SCOPE_VARIABLE = "pgbouncer_connection_scope"
SERVERS_VARIABLE = "pgbouncer_postgres_servers"
INSTANCES_VARIABLE = "pgbouncer_instances"
#: Keys of one pgbouncer_postgres_servers entry, with PostgreSQL's defaults where it has one.
SERVER_KEYS: dict[str, int | None] = {
    "max_connections": None,
    "superuser_reserved_connections": 3,
    "reserved_connections": 0,
    "other_clients": 0,
}
MAX_INSTANCES = 1_000_000


@dataclass(frozen=True)
class Fleet:
    """How many pgbouncer instances run on each pooler host, and what the TOML's numbers are budgets for."""

    instances: Mapping[str, int]
    scope: str = DEFAULT_SCOPE

    @property
    def total(self) -> int:
        return sum(self.instances.values())

    @property
    def divisor(self) -> int:
        """How many instances share each number of the TOML."""
        if self.scope == "tier":
            return self.total
        if self.scope == "host":
            return max(self.instances.values())
        return 1

    def describe(self) -> str:
        hosts = len(self.instances)
        if self.total == 1:
            return "one pgbouncer instance applies every number as written"
        where = f"{self.total} pgbouncer instance{'s' if self.total != 1 else ''}"
        if hosts > 1:
            where += f" on {hosts} hosts"
        if self.scope == "tier":
            return f"{SCOPE_VARIABLE}=tier: each number is a budget for all {where}"
        if self.scope == "host":
            return (
                f"{SCOPE_VARIABLE}=host: each number is a budget per pooler host, shared by up to "
                f"{self.divisor} instances ({where})"
            )
        return f"{SCOPE_VARIABLE}=instance: each of the {where} applies every number as written"


def make_fleet(instances: Mapping[str, Any] | int, scope: str = DEFAULT_SCOPE) -> Fleet:
    """Check the inventory's fleet input (host -> instance count, or one total) and the scope."""
    problems: list[Problem] = []
    if not isinstance(scope, str) or scope not in SCOPES:
        problems.append(Problem(SCOPE_VARIABLE, f"expected one of {', '.join(SCOPES)}"))
    counts: dict[str, int] = {}
    raw = {"": instances} if isinstance(instances, int) and not isinstance(instances, bool) else instances
    if not isinstance(raw, Mapping) or not raw:
        problems.append(
            Problem(INSTANCES_VARIABLE, "expected the number of instances of each pooler host (none given)")
        )
    else:
        for host, count in raw.items():
            number = _as_int(count)
            if number is None or not 1 <= number <= MAX_INSTANCES:
                where = f" of host {host}" if host else ""
                problems.append(
                    Problem(INSTANCES_VARIABLE, f"expected a whole number of instances{where} >= 1")
                )
            else:
                counts[str(host)] = number
    if problems:
        raise ConfigError(problems)
    return Fleet(instances=dict(sorted(counts.items())), scope=scope)


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


# ---------------------------------------------------------------------------------------------------------
# PostgreSQL server limits


@dataclass(frozen=True)
class ServerLimit:
    max_connections: int
    superuser_reserved_connections: int = 3
    reserved_connections: int = 0
    other_clients: int = 0
    source: str = "inventory"  # or "server": read with SHOW during the run

    @property
    def budget(self) -> int:
        return (
            self.max_connections
            - self.superuser_reserved_connections
            - self.reserved_connections
            - self.other_clients
        )

    def describe(self) -> str:
        parts = [f"max_connections {self.max_connections}"]
        parts.append(f"superuser_reserved_connections {self.superuser_reserved_connections}")
        if self.reserved_connections:
            parts.append(f"reserved_connections {self.reserved_connections}")
        if self.other_clients:
            parts.append(f"other clients {self.other_clients}")
        return " - ".join(parts)


def server_key(host: str, port: int | str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def make_limits(servers: Mapping[str, Any] | None) -> dict[str, ServerLimit]:
    """Check ``pgbouncer_postgres_servers`` ({"host:port": {max_connections: ..., ...}}); entries without
    max_connections are left out (the playbook reads those from the server and passes them in full)."""
    if servers is None:
        return {}
    if not isinstance(servers, Mapping):
        raise ConfigError([Problem(SERVERS_VARIABLE, 'expected a mapping of "host:port" to limits')])
    problems: list[Problem] = []
    limits: dict[str, ServerLimit] = {}
    for key, entry in servers.items():
        limit = _server_entry(key, entry, problems)
        if limit is not None:
            limits[_normal_key(key)] = limit
    if problems:
        raise ConfigError(problems)
    return limits


def _server_entry(key: object, entry: object, problems: list[Problem]) -> ServerLimit | None:
    path = f'{SERVERS_VARIABLE}["{key}"]'
    if not isinstance(key, str) or not _split_server(key):
        problems.append(Problem(path, 'expected a key "host:port", e.g. "pg1.example.internal:5432"'))
        return None
    if not isinstance(entry, Mapping):
        problems.append(Problem(path, f"expected a mapping with {', '.join(SERVER_KEYS)}"))
        return None
    problems += [
        Problem(f"{path}.{name}", f"unknown key; expected {', '.join(SERVER_KEYS)}")
        for name in entry
        if name not in SERVER_KEYS and name != "source"
    ]
    values: dict[str, Any] = {}
    for name, default in SERVER_KEYS.items():
        number = _as_int(entry.get(name, default))
        if entry.get(name, default) is None:
            continue
        if number is None or not 0 <= number <= 10_000_000:
            problems.append(Problem(f"{path}.{name}", "expected a whole number >= 0"))
        else:
            values[name] = number
    if "max_connections" not in values:
        return None
    source = entry.get("source", "inventory")
    limit = ServerLimit(source=source if source in ("inventory", "server") else "inventory", **values)
    if limit.budget < 1:
        problems.append(
            Problem(path, f"leaves no connection for the poolers ({limit.describe()} = {limit.budget})")
        )
    return limit


def _split_server(key: str) -> tuple[str, int] | None:
    host, sep, port = key.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        return None
    return host, int(port)


def _normal_key(key: str) -> str:
    split = _split_server(key)
    return server_key(*split) if split else key


# ---------------------------------------------------------------------------------------------------------
# The plan


@dataclass(frozen=True)
class PoolPlan:
    name: str
    server: str  # "host:port" as written (a host from $VAR shows as $VAR)
    #: setting -> (the TOML's number, per instance); only the settings that apply to this pool
    sizes: Mapping[str, tuple[int, int]]
    per_instance_max: int  # server connections one instance may open for this pool
    fleet_max: int  # the same for the whole fleet


@dataclass(frozen=True)
class ServerPlan:
    server: str
    pools: tuple[str, ...]
    fleet_max: int
    limit: ServerLimit | None


@dataclass(frozen=True)
class Plan:
    fleet: Fleet
    config: Config  # with per-instance values: what pgbouncer.ini carries
    pools: tuple[PoolPlan, ...]
    servers: tuple[ServerPlan, ...]
    settings: Mapping[str, tuple[int, int]]  # global [pgbouncer] numbers: (TOML, per instance)
    users: Mapping[str, tuple[int, int]]  # max_user_connections per [[users]] entry
    notes: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        """For the summary and the playbook (no secret)."""
        return {
            "scope": self.fleet.scope,
            "instances_total": self.fleet.total,
            "instances_per_host": dict(self.fleet.instances),
            "divisor": self.fleet.divisor,
            "pools": {
                p.name: {
                    "server": p.server,
                    **{k: {"budget": b, "per_instance": v} for k, (b, v) in p.sizes.items()},
                    "per_instance_max": p.per_instance_max,
                    "fleet_max": p.fleet_max,
                }
                for p in self.pools
            },
            "servers": {
                s.server: {
                    "pools": list(s.pools),
                    "fleet_max": s.fleet_max,
                    "limit": s.limit.budget if s.limit else None,
                    "limit_source": s.limit.source if s.limit else None,
                }
                for s in self.servers
            },
            "settings": {k: {"budget": b, "per_instance": v} for k, (b, v) in self.settings.items()},
            "users": {k: {"budget": b, "per_instance": v} for k, (b, v) in self.users.items()},
            "notes": list(self.notes),
        }

    def lines(self) -> list[str]:
        """The numbers as a person reads them (CLI and playbook summary)."""
        out = [f"connection budget: {self.fleet.describe()}"]
        for p in self.pools:
            sizes = ", ".join(f"{k} {b} -> {v}" for k, (b, v) in p.sizes.items())
            out.append(
                f"  pool {p.name} ({p.server}): per instance {sizes}; up to {p.per_instance_max} server "
                f"connections per instance, {p.fleet_max} for the fleet"
            )
        for k, (b, v) in self.settings.items():
            out.append(f"  [pgbouncer] {k} {b} -> {v} per instance")
        for k, (b, v) in self.users.items():
            out.append(f"  user {k}: max_user_connections {b} -> {v} per instance")
        for s in self.servers:
            if s.limit is None:
                limit = "its limit was not given"
            else:
                limit = f"it takes {s.limit.budget} ({s.limit.describe()}, from the {s.limit.source})"
            out.append(
                f"  server {s.server}: pools {', '.join(s.pools)} may open {s.fleet_max} connections "
                f"in all; {limit}"
            )
        out += [f"  note: {n}" for n in self.notes]
        return out


def _pool_path(pool: Pool, key: str) -> str:
    return key_path(key_path("pools", pool.name), key)


#: Settings where 0 means "no limit" to pgbouncer: dividing a cap down to 0 would remove it.
CAPS = ("max_db_connections", "max_user_connections")
NO_CAP = "without making it 0, which pgbouncer reads as no limit"


class _Divider:
    """Floor division by the fleet's divisor, collecting refusals and notes."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.n = fleet.divisor
        self.problems: list[Problem] = []
        self.notes: list[str] = []

    def refuse(self, path: str, what: str, budget: int, why: str) -> None:
        self.problems.append(
            Problem(
                path,
                f"{what} {budget} cannot be divided among {self.n} pgbouncer instances "
                f"({self.fleet.describe()}) {why}: raise it to at least {self.n}, run fewer instances "
                f"(pgbouncer_instances) or hosts, or choose another {SCOPE_VARIABLE}",
            )
        )

    def divide(self, path: str, where: str, key: str, budget: int, zero_pool: str = "") -> int:
        """``budget`` per instance; a pool size or cap that would become 0 is refused (see module doc)."""
        value = budget // self.n
        if budget > 0 and value == 0:
            if key in CAPS:
                self.refuse(path, key, budget, NO_CAP)
            elif zero_pool:
                self.refuse(path, key, budget, zero_pool)
            else:
                self.notes.append(f"{where}{key} {budget} is 0 per instance among {self.n} instances")
        return value


def _divide_settings(config: Config, d: _Divider) -> tuple[dict[str, str], dict[str, tuple[int, int]]]:
    settings = dict(config.settings)
    sizes: dict[str, tuple[int, int]] = {}
    using_default = [p.name for p in config.pools if p.pool_size is None]
    for key in ("default_pool_size", "reserve_pool_size", "min_pool_size", *CAPS):
        if key not in settings:
            continue
        budget = int(settings[key])
        zero_pool = ""
        if key == "default_pool_size" and using_default:
            zero_pool = (
                f"without leaving pools {', '.join(using_default)} a pool size of 0 per instance, which "
                "pgbouncer reads as no limit"
            )
        value = d.divide(f"pgbouncer.{key}", "[pgbouncer] ", key, budget, zero_pool)
        if key == "default_pool_size":
            # 0 would mean no limit to pgbouncer; used by no pool (else refused above), 1 opens nothing.
            value = max(value, 1)
        if d.n != 1:
            sizes[key] = (budget, value)
        settings[key] = str(value)
    return settings, sizes


def _divide_pool(pool: Pool, d: _Divider, settings: Mapping[str, str], fleet: Fleet) -> tuple[Pool, PoolPlan]:
    changes: dict[str, int] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for key in ("pool_size", "reserve_pool_size", "min_pool_size", "max_db_connections"):
        budget = getattr(pool, key)
        if budget is None:
            continue
        zero_pool = (
            "without leaving each a pool size of 0, which pgbouncer reads as no limit"
            if key == "pool_size"
            else ""
        )
        changes[key] = d.divide(_pool_path(pool, key), f"pool {pool.name}: ", key, budget, zero_pool)
        sizes[key] = (budget, changes[key])
    size = changes.get("pool_size", int(settings.get("default_pool_size", "0")))
    reserve = changes.get("reserve_pool_size", int(settings.get("reserve_pool_size", "0")))
    cap = changes.get("max_db_connections", int(settings.get("max_db_connections", "0")))
    worst = min(size + reserve, cap) if cap > 0 else size + reserve
    r = pool.remote
    scaled = dataclasses.replace(pool, **changes)  # type: ignore[arg-type]
    return scaled, PoolPlan(
        name=pool.name,
        server=server_key(r.shown("host"), r.shown("port")),
        sizes=sizes,
        per_instance_max=worst,
        fleet_max=worst * fleet.total,
    )


def _check_server(
    shown: str, members: list[PoolPlan], limit: ServerLimit | None, fleet: Fleet
) -> tuple[ServerPlan, Problem | None]:
    total = sum(p.fleet_max for p in members)
    names = ", ".join(p.name for p in members)
    server = ServerPlan(shown, tuple(p.name for p in members), total, limit)
    if limit is None or total <= limit.budget:
        return server, None
    detail = ", ".join(f"{p.name} {p.per_instance_max} x {fleet.total}" for p in members)
    scope_advice = "" if fleet.scope == "tier" else f"use {SCOPE_VARIABLE}=tier, "
    return server, Problem(
        f"PostgreSQL server {shown}",
        f"the pooler fleet may open {total} server connections ({detail} instances; {fleet.describe()}) "
        f"but the server takes {limit.budget} ({limit.describe()}, from the {limit.source}). Lower "
        f"pool_size / reserve_pool_size or set max_db_connections of pools {names}, run fewer instances "
        f"(pgbouncer_instances) or hosts, {scope_advice}raise the server's max_connections, or lower "
        f"other_clients in {SERVERS_VARIABLE}",
    )


def plan(config: Config, fleet: Fleet, limits: Mapping[str, ServerLimit] | None = None) -> Plan:
    """Divide the TOML's numbers for ``fleet`` and check each server's budget; ConfigError if either fails."""
    d = _Divider(fleet)
    settings, global_sizes = _divide_settings(config, d)

    pools: list[Pool] = []
    pool_plans: list[PoolPlan] = []
    for pool in config.pools:
        scaled, pool_plan = _divide_pool(pool, d, settings, fleet)
        if pool.pool_size is None and "default_pool_size" in global_sizes:
            pool_plan = dataclasses.replace(
                pool_plan, sizes={"pool_size": global_sizes["default_pool_size"], **pool_plan.sizes}
            )
        pools.append(scaled)
        pool_plans.append(pool_plan)

    users: list[User] = []
    user_sizes: dict[str, tuple[int, int]] = {}
    for user in config.users:
        if user.max_user_connections is None:
            users.append(user)
            continue
        budget = user.max_user_connections
        path = f"users[username={user.username!r}].max_user_connections"
        value = d.divide(path, f"user {user.username}: ", "max_user_connections", budget)
        user_sizes[user.username] = (budget, value)
        users.append(dataclasses.replace(user, max_user_connections=value))

    # Servers by their real address (two variables naming one server still meet); shown as written.
    by_server: dict[tuple[str, int], list[PoolPlan]] = {}
    for pool, pool_plan in zip(config.pools, pool_plans, strict=True):
        by_server.setdefault((pool.remote.host, pool.remote.port), []).append(pool_plan)
    servers: list[ServerPlan] = []
    for (host, port), members in sorted(by_server.items()):
        server, problem = _check_server(
            members[0].server, members, (limits or {}).get(server_key(host, port)), fleet
        )
        servers.append(server)
        if problem is not None:
            d.problems.append(problem)
    if d.problems:
        raise ConfigError(d.problems)
    return Plan(
        fleet=fleet,
        config=dataclasses.replace(config, pools=tuple(pools), users=tuple(users), settings=settings),
        pools=tuple(pool_plans),
        servers=tuple(servers),
        settings=global_sizes,
        users=user_sizes,
        notes=tuple(d.notes),
    )
