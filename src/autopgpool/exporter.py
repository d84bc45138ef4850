"""Prometheus exporter for every pgbouncer instance of one host, and the data of the fleet view.

One process per pooler host reads each local instance's admin console over its unix socket, as a stats user
(never an admin), on every scrape: SHOW POOLS, STATS, DATABASES, LISTS and CONFIG. Labels say which host and
which instance (``instance_id``) a series comes from, so one Prometheus job covers a fleet of multi-instance
hosts.

This file runs on the pooler hosts as a standalone script (the pgbouncer_exporter role copies it; Debian's
python3-prometheus-client and python3-psycopg provide the imports), so it imports nothing from the rest of the
package. The controller side (building the configuration, the fleet table) is in ``monitoring.py``.

Configuration: one JSON file, written by the role (root-owned, readable by the exporter's group alone: it
holds the stats user's password, and the exporter cannot rewrite it)::

    {"host": "pool1", "listen_address": "127.0.0.1", "listen_port": 9127, "allow": ["127.0.0.0/8"],
     "user": "stats", "password": "...", "connect_timeout": 3,
     "timeout": 5, "max_connections": 256, "cache_seconds": 2,
     "instances": [{"id": 1, "socket_dir": "/run/pgbouncer/1", "port": 6401, "fd_limit": 1024}],
     "postgres_max_connections": {"pg1:5432": 100}}

The HTTP side is one event loop (selectors) and one scrape thread, whatever the number of clients: an idle or
slow connection costs a file descriptor and a small buffer, never a thread, and is closed ``timeout`` seconds
after it was accepted unless its request has arrived by then. At most ``max_connections`` are open; one more
closes the oldest that has not sent its request. Only ``GET``/``HEAD /metrics`` is served (404 elsewhere, 405
for other methods), one request per connection, and the page is the snapshot of the last scrape while it is
younger than ``cache_seconds``: requests that arrive during a scrape wait for it and share it, so a flood of
requests is never more than one console scrape per ``cache_seconds`` on the instances.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import ipaddress
import json
import math
import os
import resource
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = "/etc/autopgpool-exporter/exporter.json"
# HTTP defaults: seconds a connection has to send its request, open connections, seconds a scrape is served.
DEFAULT_TIMEOUT = 5
DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_CACHE_SECONDS = 2.0
# A request line and headers larger than this are refused (Prometheus sends about 300 bytes).
MAX_REQUEST_BYTES = 8192
# Threads of the serving process: the event loop and the scrape thread, whatever the number of clients (and,
# while an instance is read, the scrape's watchdog timer: one of the "few short-lived tasks" of unit_limits).
THREADS = 2
# File descriptors besides the clients and one console per instance: the listener, epoll, the wakeup pair,
# stdio, and what Python and libpq open while importing and connecting.
FD_RESERVE = 64
# Memory of the serving process with its imports (measured ~35 MiB RSS, Python 3.11 and 3.13), and what one
# client connection may add in the worst case (its request buffer and the kernel's socket buffers, which the
# unit's cgroup is charged for).
BASE_MEMORY_MIB = 96
CONNECTION_MEMORY_KIB = 256

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
    timeout: int = DEFAULT_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    cache_seconds: float = DEFAULT_CACHE_SECONDS

    def file_descriptors(self) -> int:
        """File descriptors the serving process needs: every client, one console per instance, the rest."""
        return self.max_connections + len(self.instances) + FD_RESERVE


def unit_limits(config: ExporterConfig) -> dict[str, Any]:
    """The systemd limits of the exporter's unit, sized from its bounds (the role writes them into the unit).

    TasksMax leaves room for a few short-lived tasks beside the two threads; LimitNOFILE is exactly what the
    process needs (it lowers max_connections itself if given less); MemoryMax is the base process plus the
    worst case of every allowed connection.
    """
    memory = BASE_MEMORY_MIB + math.ceil(config.max_connections * CONNECTION_MEMORY_KIB / 1024)
    return {
        "tasks_max": THREADS + 6,
        "nofile": config.file_descriptors(),
        "memory_max": f"{memory}M",
    }


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


def _http_settings(data: Mapping[str, Any], errors: list[str]) -> tuple[int, int, float]:
    """timeout, max_connections and cache_seconds (each optional: files written before they existed load)."""
    timeout = _int(data, "timeout", "", lo=1, hi=300, errors=errors) if "timeout" in data else DEFAULT_TIMEOUT
    max_connections = (
        _int(data, "max_connections", "", lo=1, hi=65536, errors=errors)
        if "max_connections" in data
        else DEFAULT_MAX_CONNECTIONS
    )
    cache = data.get("cache_seconds", DEFAULT_CACHE_SECONDS)
    if isinstance(cache, bool) or not isinstance(cache, int | float) or not 0 <= cache <= 60:
        errors.append("cache_seconds: expected a number of seconds from 0 to 60")
        cache = DEFAULT_CACHE_SECONDS
    return timeout, max_connections, float(cache)


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
    timeout, max_connections, cache_seconds = _http_settings(data, errors)
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
        timeout=timeout,
        max_connections=max_connections,
        cache_seconds=cache_seconds,
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


#: Seconds one instance's console reads may take in a scrape, beyond connect_timeout. A kept connection has no
#: read timeout of its own (libpq's connect_timeout bounds the connection only): an instance that stops
#: answering (stopped, spinning, swapped out) would hold the scrape thread for ever, and with it every request
#: waiting for the scrape, so the exporter would go silent for all instances exactly when one of them hangs.
CONSOLE_READ_SECONDS = 5.0


def _shutdown_socket(fd: int) -> None:
    """End a blocked read on ``fd`` (another thread's libpq socket) without closing the descriptor it owns."""
    with contextlib.suppress(OSError):
        dup = socket.socket(fileno=os.dup(fd))
        try:
            dup.shutdown(socket.SHUT_RDWR)
        finally:
            dup.close()


class Console:
    """One instance's admin console, connected lazily and kept between scrapes; reconnects after errors.

    A snapshot is bounded: ``connect_timeout`` bounds connecting, and a watchdog ends the reads after
    ``connect_timeout + read_seconds`` by shutting the connection's socket down (the instance then reads as
    down and the next scrape reconnects)."""

    def __init__(
        self, config: ExporterConfig, instance: Instance, *, read_seconds: float = CONSOLE_READ_SECONDS
    ) -> None:
        self._config = config
        self.instance = instance
        self._conn: Any = None
        self._read_seconds = read_seconds
        self._guard = threading.Lock()
        self._guarded = False
        self._expired = False

    def _expire(self) -> None:
        # Under the guard, which close() takes too: the descriptor cannot be closed and reused meanwhile.
        with self._guard:
            if not self._guarded:
                return
            self._expired = True
            if self._conn is not None and not self._conn.closed:
                with contextlib.suppress(Exception):
                    _shutdown_socket(self._conn.pgconn.socket)

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
        if self._expired:
            raise TimeoutError(f"console of instance {self.instance.id}: no answer in time")
        if self._conn is not None and not self._conn.closed:
            try:
                return self._rows(sql)
            except Exception:
                self.close()
                if self._expired:  # shut down by the watchdog: the instance does not answer
                    raise
        self._conn = self._connect()
        return self._rows(sql)

    def _rows(self, sql: str) -> Rows:
        cur = self._conn.execute(sql)
        names = [col.name for col in cur.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def close(self) -> None:
        with self._guard:
            if self._conn is not None:
                try:
                    self._conn.close()
                finally:
                    self._conn = None

    def snapshot(self, *, full: bool = True) -> Snapshot:
        start = time.monotonic()
        with self._guard:
            self._guarded, self._expired = True, False
        watchdog = threading.Timer(self._config.connect_timeout + self._read_seconds, self._expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            data = read_console(self.query, full=full)
        except Exception:  # any failure means "down"; the next scrape reconnects
            data = None
        finally:
            with self._guard:
                self._guarded = False
                expired = self._expired
            watchdog.cancel()
        if data is None or expired:  # a socket the watchdog shut down is not kept
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
    """prometheus_client collector: reads every instance on each collect (serialised: one scrape at a time).

    ``server_stats`` returns the HTTP server's counters (connections it closed, by reason), reported with the
    number of console scrapes so an operator sees a flood and what it cost the instances.
    """

    def __init__(self, config: ExporterConfig) -> None:
        self.config = config
        self.consoles = [Console(config, inst) for inst in config.instances]
        self._lock = threading.Lock()
        self.server_stats: Callable[[], Mapping[str, int]] | None = None
        self.scrapes = 0

    def describe(self) -> list[Any]:
        return []  # no collect() at registration time: that would connect before the server listens

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily  # noqa: PLC0415

        with self._lock:
            snaps = [console.snapshot() for console in self.consoles]
            self.scrapes += 1
        families: dict[str, Any] = {}
        for sample in samples(self.config.host, snaps, self.config.postgres_max_connections):
            family = families.get(sample.name)
            if family is None:
                names = [k for k, _ in sample.labels]
                cls = CounterMetricFamily if sample.kind == "counter" else GaugeMetricFamily
                family = families[sample.name] = cls(sample.name, sample.help, labels=names)
            family.add_metric([v for _, v in sample.labels], sample.value)
        yield from families.values()
        host = self.config.host
        scrapes = CounterMetricFamily(
            "pgbouncer_exporter_console_scrapes", "Rounds of console reads (at most one per cache window)",
            labels=["host"],
        )  # fmt: skip
        scrapes.add_metric([host], float(self.scrapes))
        yield scrapes
        if self.server_stats is not None:
            closed = CounterMetricFamily(
                "pgbouncer_exporter_connections_closed",
                "HTTP connections the exporter closed unanswered: timeout, overflow (over max_connections), "
                "denied (outside the allow-list)",
                labels=["host", "reason"],
            )
            for reason, count in sorted(self.server_stats().items()):
                closed.add_metric([host, reason], float(count))
            yield closed


def allowed(address: str, allow: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """True if ``address`` (an IPv4, IPv6 or IPv4-mapped IPv6 address) is inside one of the networks."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in allow)


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 500: "Server Error"}


def _response(status: int, body: bytes, content_type: str, *, head: bool = False) -> list[bytes]:
    extra = "Allow: GET, HEAD\r\n" if status == 405 else ""
    header = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
    ).encode("ascii")
    return [header] if head else [header, body]


class _Conn:
    """One client connection: reading its request, waiting for a scrape, or writing the answer."""

    __slots__ = ("deadline", "head", "inbuf", "out", "sock", "state")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.inbuf = b""
        self.out: list[memoryview] = []
        self.state = "reading"
        self.head = False


class MetricsServer:
    """GET/HEAD /metrics on one event loop; the page comes from ``render`` on a scrape thread.

    Bounded whatever clients do: one thread for the loop, one for scrapes; at most ``max_connections`` open
    client sockets (one more closes the oldest still reading its request); every connection is closed
    ``timeout`` seconds after it was accepted unless its request has arrived, and a slow reader of the answer
    gets ``timeout`` seconds more. Requests that arrive while a scrape runs share it; a finished scrape serves
    every request for ``cache_seconds``.
    """

    def __init__(
        self,
        address: str,
        port: int,
        render: Callable[[], bytes],
        *,
        content_type: str = "text/plain; version=0.0.4; charset=utf-8",
        allow: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
        timeout: float = DEFAULT_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        cache_seconds: float = DEFAULT_CACHE_SECONDS,
    ) -> None:
        self.render = render
        self.content_type = content_type
        self.allow = tuple(allow)
        self.timeout = float(timeout)
        self.max_connections = max_connections
        self.cache_seconds = float(cache_seconds)
        self.closed = {"timeout": 0, "overflow": 0, "denied": 0}
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((address, port))
        self.listener.listen(128)
        self.listener.setblocking(False)
        self.port = int(self.listener.getsockname()[1])
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._accept_paused_until = 0.0
        # Insertion order is accept order: the first one still reading is the one an overflow closes.
        self._conns: dict[int, _Conn] = {}
        self._waiting: list[_Conn] = []
        self._stop = threading.Event()
        self._scrape_wanted = threading.Event()
        self._scraping = False
        self._result_lock = threading.Lock()
        self._result: tuple[float, int, bytes] | None = None  # (finished at, status, body)
        self._cache: tuple[float, bytes] | None = None
        self._scraper = threading.Thread(target=self._scrape_loop, name="scrape", daemon=True)

    # --- the scrape thread ---------------------------------------------------------------------------
    def _scrape_loop(self) -> None:
        while not self._stop.is_set():
            if not self._scrape_wanted.wait(0.5):
                continue
            self._scrape_wanted.clear()
            try:
                status, body = 200, self.render()
            except Exception as exc:  # the page says what failed, never a value of the configuration
                status, body = 500, f"scrape failed: {type(exc).__name__}\n".encode()
            with self._result_lock:
                self._result = (time.monotonic(), status, body)
            with contextlib.suppress(OSError):  # a full pipe means a wakeup is pending anyway
                self._wake_w.send(b"x")

    # --- the event loop ------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        self._scraper.start()
        next_sweep = 0.0
        while not self._stop.is_set():
            for key, mask in self._selector.select(0.2):
                if key.data == "accept":
                    self._accept()
                elif key.data == "wake":
                    self._deliver()
                elif key.data.sock.fileno() < 0:  # closed by an eviction earlier in this round
                    continue
                elif mask & selectors.EVENT_READ:
                    self._read(key.data)
                elif mask & selectors.EVENT_WRITE:
                    self._write(key.data)
            now = time.monotonic()
            if self._accept_paused_until and now >= self._accept_paused_until:
                self._accept_paused_until = 0.0
                self._selector.register(self.listener, selectors.EVENT_READ, "accept")
            if now >= next_sweep:  # deadlines are checked 5 times a second, not on every event
                next_sweep = now + 0.2
                for conn in [c for c in self._conns.values() if c.deadline <= now]:
                    self.closed["timeout"] += 1
                    self._close(conn)

    def shutdown(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def server_close(self) -> None:
        for conn in list(self._conns.values()):
            self._close(conn)
        self._selector.close()
        for sock in (self.listener, self._wake_r, self._wake_w):
            sock.close()

    def _accept(self) -> None:
        for _ in range(64):  # then let the other connections have their turn
            try:
                sock, address = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    if not self._evict_oldest():  # no descriptor to free: stop accepting for a moment
                        self._selector.unregister(self.listener)
                        self._accept_paused_until = time.monotonic() + 0.1
                        return
                    continue
                return  # ECONNABORTED and the like: that client is gone
            if not allowed(str(address[0]), self.allow):
                self.closed["denied"] += 1
                sock.close()  # unread, unanswered
                continue
            if len(self._conns) >= self.max_connections and not self._evict_oldest():
                self.closed["overflow"] += 1
                sock.close()
                continue
            sock.setblocking(False)
            conn = _Conn(sock, time.monotonic() + self.timeout)
            self._conns[sock.fileno()] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)

    def _evict_oldest(self) -> bool:
        """Close the longest-open connection that has not sent its request yet; False if there is none."""
        for conn in self._conns.values():
            if conn.state == "reading":
                self.closed["overflow"] += 1
                self._close(conn)
                return True
        return False

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        conn.inbuf += data
        end = conn.inbuf.find(b"\r\n\r\n")
        if end < 0:
            end = conn.inbuf.find(b"\n\n")
        if end < 0:
            if len(conn.inbuf) > MAX_REQUEST_BYTES:
                self._answer(conn, _response(400, b"request too large\n", "text/plain"))
            return
        self._selector.unregister(conn.sock)
        line = conn.inbuf[:end].split(b"\n", 1)[0].decode("latin-1").strip().split()
        conn.inbuf = b""
        conn.head = bool(line) and line[0] == "HEAD"
        if len(line) != 3 or not line[2].startswith("HTTP/"):
            status, text = 400, b"bad request\n"
        elif line[1].split("?", 1)[0] != "/metrics":
            status, text = 404, b"only /metrics is served here\n"
        elif line[0] not in ("GET", "HEAD"):
            status, text = 405, b"only GET and HEAD\n"
        else:
            self._metrics(conn)
            return
        self._answer(conn, self._page(status, text, conn.head), registered=False)

    def _metrics(self, conn: _Conn) -> None:
        now = time.monotonic()
        if self._cache is not None and now - self._cache[0] < self.cache_seconds:
            self._answer(conn, self._page(200, self._cache[1], conn.head), registered=False)
            return
        conn.state = "waiting"  # bounded by the scrape: connect_timeout + CONSOLE_READ_SECONDS per instance
        conn.deadline = math.inf
        self._waiting.append(conn)
        if not self._scraping:
            self._scraping = True
            self._scrape_wanted.set()

    def _page(self, status: int, body: bytes, head: bool) -> list[bytes]:
        content_type = self.content_type if status == 200 else "text/plain"
        return _response(status, body, content_type, head=head)

    def _deliver(self) -> None:
        try:
            while self._wake_r.recv(64):
                pass
        except BlockingIOError:
            pass
        with self._result_lock:
            result, self._result = self._result, None
        if result is None:
            return
        finished, status, body = result
        self._scraping = False
        if status == 200:
            self._cache = (finished, body)
        waiting, self._waiting = self._waiting, []
        for conn in waiting:
            if conn.sock.fileno() in self._conns:
                self._answer(conn, self._page(status, body, conn.head), registered=False)

    def _answer(self, conn: _Conn, parts: list[bytes], *, registered: bool = True) -> None:
        conn.state = "writing"
        conn.deadline = time.monotonic() + self.timeout
        conn.out = [memoryview(p) for p in parts if p]
        if registered:
            self._selector.unregister(conn.sock)
        self._write(conn, registered=False)

    def _write(self, conn: _Conn, *, registered: bool = True) -> None:
        while conn.out:
            try:
                sent = conn.sock.send(conn.out[0])
            except BlockingIOError:
                if not registered:
                    self._selector.register(conn.sock, selectors.EVENT_WRITE, conn)
                return
            except OSError:
                if registered:
                    self._selector.unregister(conn.sock)
                self._close(conn, registered=False)
                return
            conn.out[0] = conn.out[0][sent:]
            if not len(conn.out[0]):
                conn.out.pop(0)
        if registered:
            self._selector.unregister(conn.sock)
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_WR)
        self._close(conn, registered=False)

    def _close(self, conn: _Conn, *, registered: bool | None = None) -> None:
        fd = conn.sock.fileno()
        if fd < 0:
            return
        self._conns.pop(fd, None)
        if registered is None:
            registered = conn.state in ("reading", "writing")
        if registered:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(conn.sock)
        if conn.state == "waiting" and conn in self._waiting:
            self._waiting.remove(conn)
        conn.sock.close()


def _fit_file_descriptors(config: ExporterConfig) -> int:
    """max_connections, lowered to what the process's RLIMIT_NOFILE allows (with a note on stdout)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= config.file_descriptors():
        return config.max_connections
    fitted = max(1, soft - len(config.instances) - FD_RESERVE)
    print(
        f"autopgpool-exporter: LimitNOFILE {soft} is below the {config.file_descriptors()} that "
        f"max_connections {config.max_connections} needs; serving at most {fitted} connections",
        flush=True,
    )
    return fitted


def make_server(config: ExporterConfig) -> tuple[MetricsServer, Collector]:
    """The server and collector of ``serve`` (tests run them in a thread)."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest  # noqa: PLC0415

    registry = CollectorRegistry(auto_describe=False)
    collector = Collector(config)
    registry.register(collector)
    server = MetricsServer(
        config.listen_address,
        config.listen_port,
        lambda: generate_latest(registry),
        content_type=CONTENT_TYPE_LATEST,
        allow=config.allow,
        timeout=config.timeout,
        max_connections=_fit_file_descriptors(config),
        cache_seconds=config.cache_seconds,
    )
    collector.server_stats = lambda: server.closed
    return server, collector


def serve(config: ExporterConfig) -> None:
    """Serve /metrics on listen_address:listen_port; connections from outside ``allow`` are closed unread."""
    server, collector = make_server(config)
    print(
        f"autopgpool-exporter: {len(config.instances)} instance(s), listening on "
        f"{config.listen_address}:{config.listen_port}, {len(config.allow)} allowed network(s), "
        f"timeout {config.timeout} s, at most {server.max_connections} connections, "
        f"scrapes cached {config.cache_seconds:g} s",
        flush=True,
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()
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
