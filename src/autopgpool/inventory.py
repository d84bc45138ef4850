"""Checks of each pooler host's inventory variables, made on the controller before any host changes.

site.yml's first play asks each role (pgbouncer, haproxy, keepalived) to check the variables of every host it
will deploy to, with the role's defaults under the inventory's values, so a bad port, path, instance count or
network stops the run before the first batch touches a host (and not in a later batch, after the earlier ones
have changed). Each function takes the variables' values and returns the problems as sentences that name the
variable and the host, never a value (an allow-list is not secret, but the rule is the same everywhere).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .vip import interface_of

#: Instances per host: each is a process with its own port and unit; more would not fit a host's cores.
MAX_INSTANCES = 64
#: An interface name as the kernel accepts it (IFNAMSIZ - 1 characters, no slash, colon or blank).
_INTERFACE = re.compile(r"[A-Za-z0-9_.@-]{1,15}")
_ABSOLUTE = re.compile(r"/[^\0]*[^/]")


def _int(value: object) -> int | None:
    """An integer, or None (booleans and fractions are not numbers of instances or ports)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*[0-9]{1,6}\s*", value):
        return int(value)
    return None


def _is_port(value: object, low: int = 1, high: int = 65535) -> bool:
    port = _int(value)
    return port is not None and low <= port <= high


def _networks(value: object) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network] | None:
    """A list of networks in CIDR form (host bits allowed, as HAProxy and systemd accept them), or None."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        return None
    networks = []
    for entry in value:
        if not isinstance(entry, str) or "/" not in entry:
            return None
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            return None
    return networks


def _address(value: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(str(value).strip())
    except ValueError:
        return None


def pgbouncer_problems(host: str, values: Mapping[str, Any]) -> list[str]:
    """The instance count, base port (against HAProxy's client port), paths and fd ceiling of a host.

    ``values``: pgbouncer_instances (the host's count, from the inventory or its vCPUs), pgbouncer_base_port,
    listen_port (the TOML's client port), pgbouncer_config_dir, pgbouncer_binary,
    file_descriptor_limit (the plan's per-instance need) and pgbouncer_nofile_hard_limit.
    """
    problems = []
    instances = _int(values.get("pgbouncer_instances"))
    if instances is None or not 1 <= instances <= MAX_INSTANCES:
        problems.append(f"pgbouncer_instances ({host}): expected a whole number from 1 to {MAX_INSTANCES}")
        instances = None
    base = _int(values.get("pgbouncer_base_port"))
    if base is None or base < 1024 or (instances is not None and base + instances > 65535):
        problems.append(
            f"pgbouncer_base_port ({host}): expected a port from 1024 to 65535 minus the host's instances "
            "(instance N listens on pgbouncer_base_port + N)"
        )
    elif instances is not None:
        listen = _int(values.get("listen_port"))
        if listen is not None and base < listen <= base + instances:
            problems.append(
                f"pgbouncer_base_port ({host}): the instance ports (pgbouncer_base_port + 1 .. + "
                "pgbouncer_instances) include the client port HAProxy binds ([pgbouncer] listen_port of "
                "autopgpool.toml); move pgbouncer_base_port or listen_port"
            )
    for name in ("pgbouncer_config_dir", "pgbouncer_binary"):
        if not isinstance(values.get(name), str) or not _ABSOLUTE.fullmatch(values[name]):
            problems.append(f"{name} ({host}): expected an absolute path without a trailing slash")
    need, ceiling = _int(values.get("file_descriptor_limit")), _int(values.get("pgbouncer_nofile_hard_limit"))
    if ceiling is None:
        problems.append(f"pgbouncer_nofile_hard_limit ({host}): expected a whole number of file descriptors")
    elif need is not None and need > ceiling:
        problems.append(
            f"pgbouncer_nofile_hard_limit ({host}): autopgpool.toml needs {need} file descriptors "
            "per instance "
            "(max_client_conn + every pool's server connections + 100), more than this ceiling; raise it (at "
            "most fs.nr_open) or lower max_client_conn or the pool sizes"
        )
    return problems


def haproxy_problems(host: str, values: Mapping[str, Any]) -> list[str]:
    """The allow-lists (CIDRs), the stats address and port, the client port and the source address."""
    problems = []
    clients = _networks(values.get("haproxy_client_allowlist"))
    if not clients:
        problems.append(
            f"haproxy_client_allowlist ({host}): expected a non-empty list of networks in CIDR form (e.g. "
            '["10.0.0.0/8"]): HAProxy refuses every other client'
        )
    if _networks(values.get("haproxy_stats_allowlist")) is None:
        problems.append(
            f"haproxy_stats_allowlist ({host}): expected a list of networks in CIDR form (e.g. "
            '["127.0.0.0/8", "10.0.5.0/24"] with the Prometheus servers)'
        )
    stats = _address(values.get("haproxy_stats_address"))
    if stats is None:
        problems.append(
            f"haproxy_stats_address ({host}): expected an IP address (127.0.0.1 keeps it on loopback)"
        )
    source = _address(values.get("haproxy_source_address"))
    if source is None or not source.is_loopback or source.version != 4:
        problems.append(
            f"haproxy_source_address ({host}): expected an IPv4 loopback address (pgbouncer's hba "
            "file keeps the "
            "admin console closed to it)"
        )
    if not _is_port(values.get("haproxy_bind_port")):
        problems.append(f"haproxy_bind_port ({host}): expected a port from 1 to 65535")
    if not _is_port(values.get("haproxy_stats_port")):
        problems.append(f"haproxy_stats_port ({host}): expected a port from 1 to 65535")
    elif _int(values.get("haproxy_stats_port")) == _int(values.get("haproxy_bind_port")):
        problems.append(
            f"haproxy_stats_port ({host}): is the client port (haproxy_bind_port); choose another"
        )
    return problems


def keepalived_problems(host: str, values: Mapping[str, Any]) -> list[str]:
    """keepalived_interface: empty (the interface holding the VRRP address) or an interface of the host.

    ``values``: keepalived_interface, keepalived_unicast_src_ip (the host's VRRP address, as planned) and
    facts, the host's network facts (``ansible_facts`` after gathering the network subset).
    """
    name = values.get("keepalived_interface")
    facts = values.get("facts")
    interfaces = facts.get("interfaces") if isinstance(facts, Mapping) else None
    if name in (None, ""):
        source = str(values.get("keepalived_unicast_src_ip") or "")
        if isinstance(facts, Mapping) and interfaces is not None and not interface_of(source, facts):
            return [
                f"keepalived_unicast_src_ip ({host}): no interface of the host holds this address; "
                "set it to the "
                "host's address on the network of the virtual IP, or set keepalived_interface"
            ]
        return []
    if not isinstance(name, str) or not _INTERFACE.fullmatch(name):
        return [
            f"keepalived_interface ({host}): expected an interface name (at most 15 letters, digits, . _ @ -)"
        ]
    if isinstance(interfaces, Sequence) and not isinstance(interfaces, str) and name not in interfaces:
        return [
            f"keepalived_interface ({host}): the host has no such interface (ip -br link lists "
            "them); leave it "
            "empty to use the one holding keepalived_unicast_src_ip"
        ]
    return []


CHECKS: dict[str, Callable[[str, Mapping[str, Any]], list[str]]] = {
    "pgbouncer": pgbouncer_problems,
    "haproxy": haproxy_problems,
    "keepalived": keepalived_problems,
}


def host_problems(role: str, host: str, values: Mapping[str, Any]) -> list[str]:
    """The problems of ``host``'s variables for ``role`` (pgbouncer, haproxy or keepalived)."""
    return CHECKS[role](host, values)


#: Server-side modes under which pgbouncer checks the certificate of the PostgreSQL server it logs in to.
VERIFYING_SSLMODES = ("verify-ca", "verify-full")


def tls_warnings(summary: Mapping[str, Any]) -> list[str]:
    """Warnings for a plan whose TLS leaves passwords or queries open (``summary``: the plan's summary)."""
    warnings = []
    server = str(summary.get("server_tls_sslmode", ""))
    if server not in VERIFYING_SSLMODES:
        warnings.append(
            "pgbouncer_server_tls_sslmode (or [pgbouncer] server_tls_sslmode of autopgpool.toml) "
            f"is {server!r}: "
            "pgbouncer does not verify the PostgreSQL servers' certificates, so whoever answers "
            "at a server's "
            "address can take its logins; set verify-full with pgbouncer_server_tls_ca_file "
            "(docs/configuration.md, TLS)"
        )
    if not summary.get("client_tls"):
        warnings.append(
            "client_tls_sslmode ([pgbouncer] of autopgpool.toml) is 'disable': clients' passwords "
            "and queries "
            "cross the network in clear to HAProxy's port; set require with "
            "pgbouncer_client_tls_cert_file and "
            "pgbouncer_client_tls_key_file (docs/configuration.md, TLS)"
        )
    return warnings
