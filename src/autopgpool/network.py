"""Who may reach the pgbouncer instances, and from where: the plan behind the addresses in pgbouncer_hba.conf,
the guard on the instances' listeners and the unit's IP filter.

Every instance listens on TCP loopback (``127.0.0.1:<base + N>``) and on a unix socket. HAProxy reaches the
instances over TCP (pgbouncer never offers TLS on a unix socket, so client TLS needs TCP) and connects from an
address of its own on ``lo``, the *front-door source* (``127.0.0.2`` by default: on Linux the whole of
``127.0.0.0/8`` is local). pgbouncer therefore tells the two kinds of peers apart by address:

* the front-door source carries application clients only: their rules name it, console users get no rule for
  it, so the ``pgbouncer`` admin/stats console is refused through HAProxy;
* operators are on the host (the unix socket, reachable by root and the pgbouncer group only, or
  ``127.0.0.1``) or on an admin network the inventory declares explicitly.

The instances' listen addresses must stay where only those peers are: loopback, or addresses inside a declared
admin network. Problems name the inventory variable, never a secret.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import Problems

#: Where operators on the host connect from over TCP (psql -h 127.0.0.1, ssh -L).
HOST_LOOPBACK = "127.0.0.1"
#: The address HAProxy connects to (every instance listens on loopback).
INSTANCE_ADDRESS = HOST_LOOPBACK
DEFAULT_FRONTDOOR_SOURCE = "127.0.0.2"
_WILDCARDS = ("*", "0.0.0.0", "::")  # noqa: S104 - names of the wildcard listen addresses, to refuse them

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class InstanceNetwork:
    """The addresses the instances' files and unit are rendered with."""

    #: HAProxy's source address towards the instances (application clients only), as a /32 for the HBA.
    frontdoor: str
    #: Networks whose console (admin/stats) users may log in over TCP: host loopback and the admin networks.
    operators: tuple[str, ...]
    #: The instances' listen addresses.
    listen_addrs: tuple[str, ...]
    #: systemd IPAddressAllow= for the instances (with IPAddressDeny=any), or () for no IP filter.
    ip_address_allow: tuple[str, ...]


def _network(value: str) -> Network | None:
    try:
        return ipaddress.ip_network(value.strip(), strict=True)
    except ValueError:
        return None


def _check_source(value: str, problems: Problems) -> Network | None:
    source = _network(value)
    var = "pgbouncer_haproxy_source_addr"
    if source is None or source.num_addresses != 1 or not source.is_loopback or source.version != 4:
        problems.add(var, 'expected one IPv4 loopback address other than 127.0.0.1, e.g. "127.0.0.2"')
        return None
    if str(source.network_address) == HOST_LOOPBACK:
        problems.add(
            var,
            "must not be 127.0.0.1, the address operators on the host use: the console must stay apart "
            "from HAProxy's clients",
        )
        return None
    return source


def _check_networks(var: str, values: Sequence[str], problems: Problems) -> list[Network]:
    found = []
    for i, value in enumerate(values):
        net = _network(str(value))
        if net is None:
            problems.add(f"{var}[{i}]", 'expected a network in CIDR form, e.g. "10.9.0.0/24"')
        else:
            found.append(net)
    return found


def _check_admin_networks(values: Sequence[str], source: Network | None, problems: Problems) -> list[Network]:
    admins = []
    for i, net in enumerate(_check_networks("pgbouncer_admin_networks", values, problems)):
        if net.is_loopback or (source is not None and source.network_address in net):
            problems.add(
                f"pgbouncer_admin_networks[{i}]",
                "must not be loopback: the host's own loopback is always an operator address, and HAProxy "
                "connects from another loopback address (the console would open to the front door)",
            )
        else:
            admins.append(net)
    return admins


def _check_listen(listen_addr: str, admins: Sequence[Network], problems: Problems) -> tuple[str, ...]:
    var = "pgbouncer_instance_listen_addr"
    items = tuple(item.strip() for item in listen_addr.split(",") if item.strip())
    for item in items:
        if item in _WILDCARDS:
            problems.add(
                var,
                f"{item} would expose every instance on every address, beside HAProxy's allow-list; list "
                "127.0.0.1 and, for operators, addresses inside pgbouncer_admin_networks",
            )
            continue
        try:
            address = ipaddress.ip_address(item)
        except ValueError:
            problems.add(var, f"{item!r} is not an IP address")
            continue
        if not address.is_loopback and not any(address in net for net in admins):
            problems.add(
                var,
                f"{item} is neither loopback nor inside pgbouncer_admin_networks: instances must not "
                "listen where clients could bypass HAProxy",
            )
    if INSTANCE_ADDRESS not in items:
        problems.add(var, f"must include {INSTANCE_ADDRESS}, where HAProxy reaches the instances")
    return items


def plan_network(
    *,
    listen_addr: str = HOST_LOOPBACK,
    frontdoor_source: str = DEFAULT_FRONTDOOR_SOURCE,
    admin_networks: Sequence[str] = (),
    server_networks: Sequence[str] | None = None,
) -> InstanceNetwork:
    """Check the inventory's addresses and return the plan; raise ConfigError naming each bad variable.

    ``listen_addr`` (pgbouncer_instance_listen_addr) is pgbouncer's comma-separated list.
    ``server_networks`` (pgbouncer_server_networks) are where PostgreSQL and the DNS servers are: with it, the
    unit denies every other address in both directions (systemd's IP filter also sees the replies to the
    instances' own connections); None or empty leaves the unit without an IP filter.
    """
    problems = Problems()
    source = _check_source(frontdoor_source, problems)
    admins = _check_admin_networks(admin_networks, source, problems)
    items = _check_listen(listen_addr, admins, problems)
    servers = _check_networks("pgbouncer_server_networks", server_networks or (), problems)
    problems.raise_if_any()

    operators = (f"{HOST_LOOPBACK}/32", *(str(net) for net in admins))
    allow: tuple[str, ...] = ()
    if servers:
        # "localhost" is systemd's word for 127.0.0.0/8 and ::1 (HAProxy and operators on the host).
        allow = ("localhost", *(str(net) for net in admins), *(str(net) for net in servers))
    return InstanceNetwork(
        frontdoor=f"{frontdoor_source.strip()}/32",
        operators=operators,
        listen_addrs=items,
        ip_address_allow=allow,
    )
