"""Controller side of monitoring: the exporter's configuration, Prometheus scrape targets, the fleet table.

The roles call these through the filter plugin; the exporter itself (exporter.py) runs on the pooler hosts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .config import parse_config
from .errors import Problems
from .exporter import parse_exporter_config, unit_limits


def _networks(value: Any, key: str, problems: Problems) -> list[str]:
    if not isinstance(value, list | tuple) or not value:
        problems.add(key, "expected a non-empty list of networks (CIDR, e.g. 10.0.0.0/24)")
        return []
    out = []
    for i, item in enumerate(value):
        try:
            out.append(str(ipaddress.ip_network(str(item))))
        except ValueError:
            problems.add(f"{key}[{i}]", "expected a network such as 10.0.0.0/24 or 127.0.0.1/32")
    return out


def exporter_config(
    toml_text: str,
    secrets: Mapping[str, str],
    *,
    host: str,
    endpoints: Sequence[Mapping[str, Any]],
    fd_limit: int | None = None,
    listen_address: str = "127.0.0.1",
    listen_port: int = 9127,
    allow: Sequence[str] = ("127.0.0.0/8",),
    stats_user: str = "",
    postgres_max_connections: Mapping[str, int] | None = None,
    timeout: int = 5,
    max_connections: int = 256,
    cache_seconds: float = 2.0,
) -> dict[str, Any]:
    """The exporter's JSON configuration for one host. Holds the stats user's password: write it
    root:<exporter group> 0640.

    ``stats_user`` must be one of the TOML's ``stats_users`` (never an admin: the exporter only reads);
    empty means the first one. ``endpoints`` is the pgbouncer role's ``pgbouncer_endpoints``. ``timeout``,
    ``max_connections`` and ``cache_seconds`` bound the HTTP side (exporter.py). The result's ``unit`` is the
    systemd limits of the exporter's unit sized from them (the exporter ignores that key).
    """
    config = parse_config(toml_text, secrets)
    problems = Problems()
    user = stats_user or (config.stats_users[0] if config.stats_users else "")
    if not user:
        problems.add("pgbouncer.stats_users", "the exporter needs a stats user: add one to stats_users")
    elif user not in config.stats_users:
        problems.add("pgbouncer_exporter_stats_user", "expected one of the TOML's pgbouncer.stats_users")
    elif user in config.admin_users:
        problems.add("pgbouncer_exporter_stats_user", "is also an admin user; the exporter must only read")
    password = next((u.password for u in config.users if u.username == user), None)
    if user and user in config.stats_users and password is None:
        problems.add("pgbouncer.stats_users", f"{user} has no [[users]] entry with a password")
    try:
        ipaddress.ip_address(listen_address)
    except ValueError:
        problems.add("pgbouncer_exporter_listen_address", "expected an IP address such as 127.0.0.1")
    if isinstance(listen_port, bool) or not isinstance(listen_port, int) or not 1 <= listen_port <= 65535:
        problems.add("pgbouncer_exporter_port", "expected an integer from 1 to 65535")
    networks = _networks(list(allow), "pgbouncer_exporter_allowlist", problems)
    _check_http(timeout, max_connections, cache_seconds, problems)
    instances = []
    if not endpoints:
        problems.add("pgbouncer_exporter_endpoints", "expected the pgbouncer role's pgbouncer_endpoints")
    for i, ep in enumerate(endpoints):
        try:
            instances.append(
                {"id": int(ep["id"]), "socket_dir": str(ep["socket_dir"]), "port": int(ep["port"])}
            )
        except (KeyError, TypeError, ValueError):
            problems.add(f"pgbouncer_exporter_endpoints[{i}]", "expected id, port and socket_dir")
    if fd_limit is not None:
        for inst in instances:
            inst["fd_limit"] = int(fd_limit)
    budget = {}
    for backend, limit in (postgres_max_connections or {}).items():
        key = f"pgbouncer_exporter_postgres_max_connections.{backend}"
        if ":" not in str(backend):
            problems.add(key, "expected a key host:port as in the TOML's remotes")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            problems.add(key, "expected a positive integer")
        else:
            budget[str(backend)] = limit
    problems.raise_if_any()
    result: dict[str, Any] = {
        "host": host,
        "listen_address": listen_address,
        "listen_port": listen_port,
        "allow": networks,
        "user": user,
        "password": password,
        "connect_timeout": 3,
        "timeout": timeout,
        "max_connections": max_connections,
        "cache_seconds": cache_seconds,
        "instances": instances,
        "postgres_max_connections": budget,
    }
    # What the host will load, checked by the same code, and the unit limits from the same numbers.
    result["unit"] = unit_limits(parse_exporter_config(result))
    return result


def _check_http(timeout: Any, max_connections: Any, cache_seconds: Any, problems: Problems) -> None:
    def integer(value: Any, lo: int, hi: int) -> bool:
        return not isinstance(value, bool) and isinstance(value, int) and lo <= value <= hi

    if not integer(timeout, 1, 300):
        problems.add("pgbouncer_exporter_timeout", "expected an integer number of seconds from 1 to 300")
    if not integer(max_connections, 1, 65536):
        problems.add("pgbouncer_exporter_max_connections", "expected an integer from 1 to 65536")
    if (
        isinstance(cache_seconds, bool)
        or not isinstance(cache_seconds, int | float)
        or not 0 <= cache_seconds <= 60
    ):
        problems.add("pgbouncer_exporter_cache_seconds", "expected a number of seconds from 0 to 60")


def file_sd(targets: Iterable[Mapping[str, Any]], job_labels: Mapping[str, str] | None = None) -> list[Any]:
    """Prometheus file_sd entries, one per host: [{"targets": ["addr:port"], "labels": {"host": name}}].

    ``targets`` items have ``host``, ``address`` and ``port``. Sorted, so the file only changes when the
    inventory does.
    """
    problems = Problems()
    out = []
    for i, t in enumerate(targets):
        try:
            address, port, host = str(t["address"]), int(t["port"]), str(t["host"])
        except (KeyError, TypeError, ValueError):
            problems.add(f"targets[{i}]", "expected host, address and port")
            continue
        shown = f"[{address}]" if ":" in address else address
        out.append({"targets": [f"{shown}:{port}"], "labels": {**(job_labels or {}), "host": host}})
    problems.raise_if_any()
    return sorted(out, key=lambda e: e["labels"]["host"])


# Columns of the fleet view: (SHOW POOLS column, heading).
FLEET_COLUMNS = (
    ("cl_active", "cl_active"),
    ("cl_waiting", "cl_waiting"),
    ("sv_active", "sv_active"),
    ("sv_idle", "sv_idle"),
    ("sv_used", "sv_used"),
    ("maxwait", "maxwait_s"),
)


def _maxwait(row: Mapping[str, Any]) -> float:
    return float(row.get("maxwait") or 0) + float(row.get("maxwait_us") or 0) / 1e6


def fleet_table(reports: Iterable[Mapping[str, Any]]) -> str:
    """SHOW POOLS essentials for every host, instance and pool side by side, then totals per pool and overall.

    ``reports`` are the exporter's ``pools`` outputs ({"host", "instances": [{"id", "up", "pools"}]}).
    Counts add up; maxwait is the maximum. An instance that did not answer shows as DOWN.
    """
    reports = list(reports)
    head = ("host", "inst", "database", "user", "mode", *(h for _, h in FLEET_COLUMNS))
    rows: list[tuple[str, ...]] = []
    totals: dict[tuple[str, str], list[float]] = {}
    down = 0
    for report in sorted(reports, key=lambda r: str(r["host"])):
        for inst in sorted(report["instances"], key=lambda i: int(i["id"])):
            if not inst.get("up"):
                down += 1
                rows.append(
                    (str(report["host"]), str(inst["id"]), "DOWN", "", "", *("" for _ in FLEET_COLUMNS))
                )
                continue
            if not inst["pools"]:  # pgbouncer opens a pool on its first client
                rows.append((str(report["host"]), str(inst["id"]), "-", "", "", *("" for _ in FLEET_COLUMNS)))
            for pool in sorted(inst["pools"], key=lambda p: (str(p["database"]), str(p["user"]))):
                values = [
                    _maxwait(pool) if col == "maxwait" else float(pool.get(col) or 0)
                    for col, _ in FLEET_COLUMNS
                ]
                key = (str(pool["database"]), str(pool["user"]))
                acc = totals.setdefault(key, [0.0] * len(values))
                for j, (col, _) in enumerate(FLEET_COLUMNS):
                    acc[j] = max(acc[j], values[j]) if col == "maxwait" else acc[j] + values[j]
                rows.append(
                    (
                        str(report["host"]),
                        str(inst["id"]),
                        *key,
                        str(pool.get("pool_mode", "")),
                        *_fmt(values),
                    )
                )
    grand = [0.0] * len(FLEET_COLUMNS)
    total_rows = []
    for key, acc in sorted(totals.items()):
        total_rows.append(("TOTAL", "", *key, "", *_fmt(acc)))
        for j, (col, _) in enumerate(FLEET_COLUMNS):
            grand[j] = max(grand[j], acc[j]) if col == "maxwait" else grand[j] + acc[j]
    total_rows.append(("TOTAL", "", "*", "*", "", *_fmt(grand)))
    widths = [max(len(r[i]) for r in [head, *rows, *total_rows]) for i in range(len(head))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < 5 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )

    rule = "  ".join("-" * w for w in widths)
    out = [line(head), rule, *(line(r) for r in rows), rule, *(line(r) for r in total_rows)]
    instances = sum(len(r["instances"]) for r in reports)
    out.append(f"{len(reports)} host(s), {instances} instance(s), {down} down")
    return "\n".join(line_.rstrip() for line_ in out)


def _fmt(values: Sequence[float]) -> list[str]:
    return [f"{v:.1f}" if j == len(values) - 1 else str(int(v)) for j, v in enumerate(values)]
