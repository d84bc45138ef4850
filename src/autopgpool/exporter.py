"""Prometheus exporter for every pgbouncer instance of one host, and the data of the fleet view.

One process per pooler host reads each local instance's admin console over its unix socket, as a stats user
(never an admin), on every scrape: SHOW POOLS, STATS, DATABASES, LISTS and CONFIG. Labels say which host and
which instance (``instance_id``) a series comes from, so one Prometheus job covers a fleet of multi-instance
hosts.

This file runs on the pooler hosts as a standalone script (the pgbouncer_exporter role copies it; Debian's
python3-prometheus-client and python3-psycopg provide the imports), so it imports nothing from the rest of the
package. The controller side (building the configuration, the fleet table) is in ``monitoring.py``.

Configuration: one JSON file, written by the role, readable only by the exporter's user because it holds the
stats user's password::

    {"host": "pool1", "listen_address": "127.0.0.1", "listen_port": 9127, "allow": ["127.0.0.0/8"],
     "user": "stats", "password": "...", "connect_timeout": 3,
     "instances": [{"id": 1, "socket_dir": "/run/pgbouncer/1", "port": 6401, "fd_limit": 1024}],
     "postgres_max_connections": {"pg1:5432": 100}}
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

DEFAULT_CONFIG = "/etc/autopgpool-exporter/exporter.json"

# SHOW POOLS columns -> the ``state`` label of pgbouncer_pool_clients / pgbouncer_pool_servers.
CLIENT_STATES = {
    "cl_active": "active",
    "cl_waiting": "waiting",
    "cl_active_cancel_req": "active_cancel_req",
    "cl_waiting_cancel_req": "waiting_cancel_req",
}
SERVER_STATES = {
    "sv_active": "active",
    "sv_active_cancel": "active_cancel",
    "sv_being_canceled": "being_canceled",
    "sv_idle": "idle",
    "sv_used": "used",
    "sv_tested": "tested",
    "sv_login": "login",
}
# SHOW STATS totals -> (metric suffix, scale to base units, help). Times are microseconds in pgbouncer.
STATS_COUNTERS = {
    "total_server_assignment_count": ("server_assignments", 1.0, "Times a server was assigned to a client"),
    "total_xact_count": ("transactions", 1.0, "SQL transactions pooled"),
    "total_query_count": ("queries", 1.0, "SQL queries pooled"),
    "total_received": ("received_bytes", 1.0, "Bytes received from clients"),
    "total_sent": ("sent_bytes", 1.0, "Bytes sent to clients"),
    "total_xact_time": ("transaction_time_seconds", 1e-6, "Time spent in transactions (incl. idle in xact)"),
    "total_query_time": ("query_time_seconds", 1e-6, "Time spent in queries"),
    "total_wait_time": ("client_wait_time_seconds", 1e-6, "Time clients waited for a server"),
}
# SHOW DATABASES columns -> gauge suffix. reserve_pool_size is called reserve_pool before pgbouncer 1.24.
DATABASE_GAUGES = {
    "pool_size": "pool_size",
    "reserve_pool_size": "reserve_pool_size",
    "reserve_pool": "reserve_pool_size",
    "max_connections": "max_connections",
    "current_connections": "current_connections",
    "paused": "paused",
    "disabled": "disabled",
}
CONFIG_GAUGES = ("max_client_conn", "max_db_connections", "max_user_connections", "default_pool_size")
# Lists whose entries each hold a file descriptor (a client or a server connection).
FD_LISTS = ("used_clients", "login_clients", "used_servers")
# The admin console's own pseudo-database: it has no pool worth reporting.
ADMIN_DB = "pgbouncer"


class ExporterConfigError(ValueError):
    """A problem in the exporter's configuration file; names the key, never a value."""


@dataclass(frozen=True)
class Instance:
    id: int
    socket_dir: str
    port: int
    fd_limit: int | None = None


@dataclass(frozen=True)
class ExporterConfig:
    host: str
    user: str
    password: str = field(repr=False)
    instances: tuple[Instance, ...]
    listen_address: str = "127.0.0.1"
    listen_port: int = 9127
    allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    connect_timeout: int = 3
    postgres_max_connections: Mapping[str, int] = field(default_factory=dict)


def _int(data: Mapping[str, Any], key: str, where: str, *, lo: int, hi: int, errors: list[str]) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        errors.append(f"{where}{key}: expected an integer from {lo} to {hi}")
        return lo
    return value


def _str(data: Mapping[str, Any], key: str, where: str, errors: list[str]) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        errors.append(f"{where}{key}: expected a non-empty string")
        return ""
    return value


def parse_exporter_config(data: Any) -> ExporterConfig:
    """Validate the decoded JSON; collect every problem, then raise once (messages never hold values)."""
    if not isinstance(data, Mapping):
        raise ExporterConfigError("exporter configuration: expected a JSON object")
    errors: list[str] = []
    host = _str(data, "host", "", errors)
    user = _str(data, "user", "", errors)
    password = _str(data, "password", "", errors)
    listen_address = _str(data, "listen_address", "", errors)
    if listen_address:
        try:
            ipaddress.ip_address(listen_address)
        except ValueError:
            errors.append("listen_address: expected an IP address")
    listen_port = _int(data, "listen_port", "", lo=1, hi=65535, errors=errors)
    connect_timeout = (
        _int(data, "connect_timeout", "", lo=1, hi=60, errors=errors) if "connect_timeout" in data else 3
    )
    allow: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    raw_allow = data.get("allow")
    if not isinstance(raw_allow, list) or not raw_allow:
        errors.append("allow: expected a non-empty list of networks (CIDR)")
    else:
        for i, net in enumerate(raw_allow):
            try:
                allow.append(ipaddress.ip_network(str(net)))
            except ValueError:
                errors.append(f"allow[{i}]: expected a network such as 10.0.0.0/24")
    instances: list[Instance] = []
    raw_instances = data.get("instances")
    if not isinstance(raw_instances, list) or not raw_instances:
        errors.append("instances: expected a non-empty list")
    else:
        for i, item in enumerate(raw_instances):
            where = f"instances[{i}]."
            if not isinstance(item, Mapping):
                errors.append(f"instances[{i}]: expected an object")
                continue
            fd_limit = item.get("fd_limit")
            instances.append(
                Instance(
                    id=_int(item, "id", where, lo=0, hi=65535, errors=errors),
                    socket_dir=_str(item, "socket_dir", where, errors),
                    port=_int(item, "port", where, lo=1, hi=65535, errors=errors),
                    fd_limit=_int(item, "fd_limit", where, lo=1, hi=2**31, errors=errors)
                    if fd_limit is not None
                    else None,
                )
            )
        ids = [inst.id for inst in instances]
        if len(set(ids)) != len(ids):
            errors.append("instances: every id must be unique")
    budget = data.get("postgres_max_connections", {})
    if not isinstance(budget, Mapping):
        errors.append("postgres_max_connections: expected an object of host:port -> integer")
        budget = {}
    for name in budget:
        _int(budget, name, "postgres_max_connections.", lo=1, hi=2**31, errors=errors)
    if errors:
        raise ExporterConfigError("; ".join(errors))
    return ExporterConfig(
        host=host,
        user=user,
        password=password,
        instances=tuple(instances),
        listen_address=listen_address,
        listen_port=listen_port,
        allow=tuple(allow),
        connect_timeout=connect_timeout,
        postgres_max_connections={str(k): int(v) for k, v in budget.items()},
    )


def load_config(path: str | Path) -> ExporterConfig:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ExporterConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ExporterConfigError(f"{path}: not JSON (line {exc.lineno})") from None
    return parse_exporter_config(data)


Rows = list[dict[str, Any]]


@dataclass
class Snapshot:
    """What one instance's console answered in one scrape (up=False and empty lists when it did not)."""

    instance: Instance
    up: bool
    duration: float = 0.0
    pools: Rows = field(default_factory=list)
    stats: Rows = field(default_factory=list)
    databases: Rows = field(default_factory=list)
    lists: dict[str, int] = field(default_factory=dict)
    config: dict[str, str] = field(default_factory=dict)


Query = Callable[[str], Rows]


def read_console(query: Query, *, full: bool = True) -> dict[str, Any]:
    """Run the SHOW commands through ``query`` (a function returning rows as dicts)."""
    result: dict[str, Any] = {"pools": [r for r in query("SHOW POOLS") if r.get("database") != ADMIN_DB]}
    if full:
        result["stats"] = [r for r in query("SHOW STATS") if r.get("database") != ADMIN_DB]
        result["databases"] = [r for r in query("SHOW DATABASES") if r.get("name") != ADMIN_DB]
        result["lists"] = {str(r["list"]): int(r["items"]) for r in query("SHOW LISTS")}
        result["config"] = {
            str(r["key"]): str(r["value"]) for r in query("SHOW CONFIG") if r.get("key") in CONFIG_GAUGES
        }
    return result


class Console:
    """One instance's admin console, connected lazily and kept between scrapes; reconnects after errors."""

    def __init__(self, config: ExporterConfig, instance: Instance) -> None:
        self._config = config
        self.instance = instance
        self._conn: Any = None

    def _connect(self) -> Any:
        import psycopg  # noqa: PLC0415  (only the serving process needs the driver)

        return psycopg.connect(
            host=self.instance.socket_dir,
            port=self.instance.port,
            dbname=ADMIN_DB,
            user=self._config.user,
            password=self._config.password,
            connect_timeout=self._config.connect_timeout,
            application_name="autopgpool-exporter",
            autocommit=True,  # the console refuses BEGIN
            # The console speaks only the simple protocol; psycopg would prepare a query run 5 times.
            prepare_threshold=None,
        )

    def query(self, sql: str) -> Rows:
        """Rows of a console command (no parameters: psycopg then uses the simple protocol).

        A kept connection that fails (the instance restarted since the last scrape) is replaced once before
        the error counts, so a restart between scrapes does not read as a down instance.
        """
        if self._conn is not None and not self._conn.closed:
            try:
                return self._rows(sql)
            except Exception:
                self.close()
        self._conn = self._connect()
        return self._rows(sql)

    def _rows(self, sql: str) -> Rows:
        cur = self._conn.execute(sql)
        names = [col.name for col in cur.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def snapshot(self, *, full: bool = True) -> Snapshot:
        start = time.monotonic()
        try:
            data = read_console(self.query, full=full)
        except Exception:  # any failure means "down"; the next scrape reconnects
            self.close()
            return Snapshot(self.instance, up=False, duration=time.monotonic() - start)
        return Snapshot(self.instance, up=True, duration=time.monotonic() - start, **data)


@dataclass(frozen=True)
class Sample:
    name: str
    kind: str  # "gauge" or "counter" (name without _total)
    help: str
    labels: tuple[tuple[str, str], ...]
    value: float


def _num(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def samples(host: str, snapshots: Iterable[Snapshot], budget: Mapping[str, int]) -> Iterator[Sample]:
    """Every sample of one scrape, as plain values (the collector turns them into metric families)."""

    def s(name: str, kind: str, help_: str, value: float, **labels: str) -> Sample:
        return Sample(name, kind, help_, tuple(sorted({"host": host, **labels}.items())), value)

    for backend, limit in sorted(budget.items()):
        yield s(
            "autopgpool_postgres_max_connections",
            "gauge",
            "Connections the PostgreSQL server host:port allows (from the inventory)",
            float(limit),
            backend=backend,
        )
    for snap in snapshots:
        iid = str(snap.instance.id)
        yield s("pgbouncer_up", "gauge", "1 if the instance's console answered", 1.0 if snap.up else 0.0,
                instance_id=iid)  # fmt: skip
        yield s("pgbouncer_exporter_scrape_duration_seconds", "gauge", "Time to read the instance's console",
                snap.duration, instance_id=iid)  # fmt: skip
        if snap.instance.fd_limit is not None:
            yield s("pgbouncer_fd_limit", "gauge", "The instance's file descriptor limit (LimitNOFILE)",
                    float(snap.instance.fd_limit), instance_id=iid)  # fmt: skip
        if not snap.up:
            continue
        for row in snap.pools:
            labels = {"instance_id": iid, "database": str(row["database"]), "user": str(row["user"])}
            for column, state in CLIENT_STATES.items():
                if (v := _num(row.get(column))) is not None:
                    yield s("pgbouncer_pool_clients", "gauge", "Client connections by state", v,
                            state=state, **labels)  # fmt: skip
            for column, state in SERVER_STATES.items():
                if (v := _num(row.get(column))) is not None:
                    yield s("pgbouncer_pool_servers", "gauge", "Server connections by state", v,
                            state=state, **labels)  # fmt: skip
            maxwait = (_num(row.get("maxwait")) or 0.0) + (_num(row.get("maxwait_us")) or 0.0) / 1e6
            yield s("pgbouncer_pool_maxwait_seconds", "gauge", "Age of the oldest waiting client", maxwait,
                    **labels)  # fmt: skip
        for row in snap.stats:
            for column, (suffix, scale, help_) in STATS_COUNTERS.items():
                if (v := _num(row.get(column))) is not None:
                    yield s(f"pgbouncer_stats_{suffix}", "counter", help_, v * scale,
                            instance_id=iid, database=str(row["database"]))  # fmt: skip
        for row in snap.databases:
            labels = {
                "instance_id": iid,
                "database": str(row["name"]),
                "backend": f"{row.get('host') or 'unix'}:{row.get('port')}",
            }
            for column, suffix in DATABASE_GAUGES.items():
                if (v := _num(row.get(column))) is not None:
                    yield s(f"pgbouncer_database_{suffix}", "gauge", f"SHOW DATABASES {column}", v, **labels)
        for name, items in sorted(snap.lists.items()):
            yield s("pgbouncer_list_items", "gauge", "SHOW LISTS: items per internal list", float(items),
                    instance_id=iid, list=name)  # fmt: skip
        if all(name in snap.lists for name in FD_LISTS):
            yield s("pgbouncer_fds_connections", "gauge",
                    "File descriptors held by connections (used and logging-in clients, servers)",
                    float(sum(snap.lists[name] for name in FD_LISTS)), instance_id=iid)  # fmt: skip
        for key, value in sorted(snap.config.items()):
            if (v := _num(value)) is not None:
                yield s(f"pgbouncer_config_{key}", "gauge", f"SHOW CONFIG {key}", v, instance_id=iid)


class Collector:
    """prometheus_client collector: reads every instance on each scrape (serialised: one scrape at a time)."""

    def __init__(self, config: ExporterConfig) -> None:
        self.config = config
        self.consoles = [Console(config, inst) for inst in config.instances]
        self._lock = threading.Lock()

    def describe(self) -> list[Any]:
        return []  # no collect() at registration time: that would connect before the server listens

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily  # noqa: PLC0415

        with self._lock:
            snaps = [console.snapshot() for console in self.consoles]
        families: dict[str, Any] = {}
        for sample in samples(self.config.host, snaps, self.config.postgres_max_connections):
            family = families.get(sample.name)
            if family is None:
                names = [k for k, _ in sample.labels]
                cls = CounterMetricFamily if sample.kind == "counter" else GaugeMetricFamily
                family = families[sample.name] = cls(sample.name, sample.help, labels=names)
            family.add_metric([v for _, v in sample.labels], sample.value)
        yield from families.values()


def allowed(address: str, allow: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """True if ``address`` (an IPv4, IPv6 or IPv4-mapped IPv6 address) is inside one of the networks."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in allow)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """One line per scrape would flood the journal; errors still reach it through the server."""


def serve(config: ExporterConfig) -> None:
    """Serve /metrics on listen_address:listen_port; connections from outside ``allow`` are closed unread."""
    from prometheus_client import CollectorRegistry, make_wsgi_app  # noqa: PLC0415

    registry = CollectorRegistry(auto_describe=False)
    collector = Collector(config)
    registry.register(collector)
    app = make_wsgi_app(registry)
    allow = config.allow
    family = socket.AF_INET6 if ":" in config.listen_address else socket.AF_INET

    class Server(socketserver.ThreadingMixIn, WSGIServer):
        daemon_threads = True
        address_family = family

        def verify_request(self, request: Any, client_address: Any) -> bool:
            return allowed(str(client_address[0]), allow)

    httpd = make_server(config.listen_address, config.listen_port, app, Server, _QuietHandler)
    print(
        f"autopgpool-exporter: {len(config.instances)} instance(s), listening on "
        f"{config.listen_address}:{config.listen_port}, {len(allow)} allowed network(s)",
        flush=True,
    )
    try:
        httpd.serve_forever()
    finally:
        for console in collector.consoles:
            console.close()


def pools_report(config: ExporterConfig) -> dict[str, Any]:
    """The fleet view's data for this host: SHOW POOLS of every instance (no secret in it)."""
    instances = []
    for inst in config.instances:
        console = Console(config, inst)
        snap = console.snapshot(full=False)
        console.close()
        instances.append({"id": inst.id, "up": snap.up, "pools": snap.pools})
    return {"host": config.host, "instances": instances}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="autopgpool-exporter",
        description="Prometheus metrics of every local pgbouncer instance, read as a stats user.",
    )
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="JSON configuration (default: %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("serve", help="serve /metrics")
    sub.add_parser("pools", help="print SHOW POOLS of every instance as JSON (the fleet view's input)")
    sub.add_parser("check", help="validate the configuration file and exit")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ExporterConfigError as exc:
        print(f"autopgpool-exporter: {exc}", file=sys.stderr)
        return 2
    if args.command == "check":
        print(f"{args.config}: OK ({len(config.instances)} instance(s))")
        return 0
    if args.command == "pools":
        print(json.dumps(pools_report(config), default=str, sort_keys=True))
        return 0
    serve(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
