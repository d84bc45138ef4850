"""One client address per pooler group: the plan behind keepalived's VRRP instance (roles/keepalived).

Each pooler group (an inventory group whose hosts run HAProxy in front of their pgbouncer instances) may
declare a virtual IP. keepalived on every host of the group runs one VRRP instance for it: unicast to the
group's other hosts (no multicast), every host ``BACKUP`` with ``nopreempt``, and a virtual router id from
the inventory. The checks here run on the controller for the whole inventory before any host is touched:

* the virtual IP is an IPv4 address with a prefix (``10.9.0.100/24``), and every host's own VRRP address
  (``keepalived_unicast_src_ip``) lies in that network: the address moves by gratuitous ARP, which only
  reaches the hosts' own segment;
* a group has at least two hosts (one host has nobody to give the address to) and its hosts agree on the
  address and router id;
* no two groups share a virtual router id or a virtual IP: two VRRP instances with one id on one segment
  discard each other's adverts as misconfigured, and one address held by two groups is a split brain;
* HAProxy's allow-list admits 127.0.0.1, where the health check connects from as a client.

Problems name the inventory variable (and the group or host), never a value that could be a secret.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import Problems

#: Where the health check connects from: HAProxy's allow-list must admit it.
CHECK_SOURCE = ipaddress.IPv4Address("127.0.0.1")
ROUTER_ID_RANGE = range(1, 256)
#: roles/keepalived's defaults of keepalived_group and keepalived_virtual_router_id (a unit test compares).
DEFAULT_GROUP = "pgbouncer"
DEFAULT_ROUTER_ID = 51


@dataclass(frozen=True)
class VrrpInstance:
    """What keepalived.conf is rendered with on one host."""

    #: The vrrp_instance's name (the pooler group's, so logs say which group moved).
    name: str
    #: The virtual IP with its prefix, e.g. "10.9.0.100/24".
    virtual_ipaddress: str
    virtual_router_id: int
    #: This host's address for VRRP adverts, and the other hosts' (the only sources accepted).
    unicast_src_ip: str
    unicast_peers: tuple[str, ...]

    @property
    def address(self) -> str:
        """The virtual IP without its prefix: what clients connect to."""
        return self.virtual_ipaddress.split("/", 1)[0]


def _interface(value: object) -> ipaddress.IPv4Interface | None:
    try:
        found = ipaddress.ip_interface(str(value).strip())
    except ValueError:
        return None
    if not isinstance(found, ipaddress.IPv4Interface) or "/" not in str(value):
        return None
    return found


def _address(value: object) -> ipaddress.IPv4Address | None:
    try:
        found = ipaddress.ip_address(str(value).strip())
    except ValueError:
        return None
    return found if isinstance(found, ipaddress.IPv4Address) else None


def _router_id(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        number = int(str(value).strip())
    except ValueError:
        return None
    return number if number in ROUTER_ID_RANGE else None


def _admits_check(allowlist: Sequence[object]) -> bool:
    for entry in allowlist:
        try:
            if CHECK_SOURCE in ipaddress.ip_network(str(entry).strip(), strict=False):
                return True
        except ValueError:
            continue
    return False


def plan_vips(
    hosts: Mapping[str, Mapping[str, Any]], groups: Mapping[str, Sequence[str]] | None = None
) -> dict[str, VrrpInstance]:
    """Check every pooler group's virtual IP and return each host's VRRP instance.

    ``hosts`` maps inventory host names to their variables: ``keepalived_group`` (the pooler group the host
    shares an address with), ``keepalived_virtual_ipaddress``, ``keepalived_virtual_router_id``,
    ``keepalived_unicast_src_ip`` and ``haproxy_client_allowlist``. Hosts without a
    ``keepalived_virtual_ipaddress`` take no part, nor (when the inventory's ``groups`` are given) hosts
    outside the group they name: a variable set for every host (``-e``) does not enlist the database servers.
    Raises ConfigError naming every bad variable.
    """
    problems = Problems()
    members: dict[str, list[str]] = {}
    for host in sorted(hosts):
        vars_ = hosts[host]
        if vars_.get("keepalived_virtual_ipaddress") in (None, ""):
            continue
        group = str(vars_.get("keepalived_group") or "")
        if not group:
            problems.add(f"keepalived_group ({host})", "expected the name of the host's pooler group")
            continue
        if groups is not None and host not in groups.get(group, ()):
            continue
        members.setdefault(group, []).append(host)

    plans: dict[str, VrrpInstance] = {}
    seen_ids: dict[int, str] = {}
    seen_vips: dict[ipaddress.IPv4Address, str] = {}
    for group, hosts_of_group in sorted(members.items()):
        plan = _plan_group(group, hosts_of_group, hosts, problems)
        if plan is None:
            continue
        vip, router_id, sources = plan
        where = f"keepalived_virtual_router_id ({group})"
        if router_id in seen_ids:
            problems.add(
                where,
                f"group {seen_ids[router_id]} uses the same virtual router id: on one segment their VRRP "
                "adverts would collide; give every pooler group its own id (1-255)",
            )
        seen_ids.setdefault(router_id, group)
        if vip.ip in seen_vips:
            problems.add(
                f"keepalived_virtual_ipaddress ({group})",
                f"group {seen_vips[vip.ip]} declares the same virtual IP: two groups would hold one address",
            )
        seen_vips.setdefault(vip.ip, group)
        for host in hosts_of_group:
            plans[host] = VrrpInstance(
                name=group,
                virtual_ipaddress=str(vip),
                virtual_router_id=router_id,
                unicast_src_ip=str(sources[host]),
                unicast_peers=tuple(str(sources[h]) for h in hosts_of_group if h != host),
            )
    problems.raise_if_any()
    return plans


def _plan_group(
    group: str, members: list[str], hosts: Mapping[str, Mapping[str, Any]], problems: Problems
) -> tuple[ipaddress.IPv4Interface, int, dict[str, ipaddress.IPv4Address]] | None:
    """Check one group; None when it has problems (already added)."""
    before = len(problems)
    first = hosts[members[0]]
    vip = _interface(first.get("keepalived_virtual_ipaddress"))
    router_id = _router_id(first.get("keepalived_virtual_router_id"))
    if vip is None:
        problems.add(
            f"keepalived_virtual_ipaddress ({group})",
            'expected an IPv4 address with the prefix of the hosts\' network, e.g. "10.9.0.100/24"',
        )
    if router_id is None:
        problems.add(f"keepalived_virtual_router_id ({group})", "expected an integer from 1 to 255")
    if len(members) < 2:
        problems.add(
            f"keepalived_virtual_ipaddress ({group})",
            "a virtual IP needs at least two hosts in the group (unicast peers): one host has nobody to "
            "hand the address to",
        )
    for host in members[1:]:
        for var in ("keepalived_virtual_ipaddress", "keepalived_virtual_router_id"):
            if str(hosts[host].get(var)) != str(first.get(var)):
                problems.add(f"{var} ({host})", f"differs from that of {members[0]} in group {group}")
    sources = _check_sources(group, members, hosts, vip, problems)
    if vip is not None and vip.ip in (vip.network.network_address, vip.network.broadcast_address):
        problems.add(f"keepalived_virtual_ipaddress ({group})", "is the network or broadcast address")
    if len(problems) != before or vip is None or router_id is None:
        return None
    return vip, router_id, sources


def _check_sources(
    group: str,
    members: list[str],
    hosts: Mapping[str, Mapping[str, Any]],
    vip: ipaddress.IPv4Interface | None,
    problems: Problems,
) -> dict[str, ipaddress.IPv4Address]:
    """Each host's VRRP address (in the VIP's network, unique) and HAProxy allow-list (admits the check)."""
    sources: dict[str, ipaddress.IPv4Address] = {}
    for host in members:
        vars_ = hosts[host]
        source = _address(vars_.get("keepalived_unicast_src_ip"))
        if source is None:
            problems.add(
                f"keepalived_unicast_src_ip ({host})", "expected the host's IPv4 address on the VRRP network"
            )
            continue
        if vip is not None and source not in vip.network:
            problems.add(
                f"keepalived_virtual_ipaddress ({group})",
                f"not in the network of {host}'s keepalived_unicast_src_ip ({vip.network} does not contain "
                "it): the address moves by gratuitous ARP, which only reaches the hosts' own segment",
            )
        if vip is not None and source == vip.ip:
            problems.add(f"keepalived_virtual_ipaddress ({group})", f"is {host}'s own address")
        if source in sources.values():
            problems.add(f"keepalived_unicast_src_ip ({host})", "is another host's address in the group")
        sources[host] = source
        if not _admits_check(vars_.get("haproxy_client_allowlist") or ()):
            problems.add(
                f"haproxy_client_allowlist ({host})",
                f"must admit {CHECK_SOURCE}: keepalived's health check connects to HAProxy's client port "
                "from loopback, as a client would",
            )
    return sources


def interface_of(address: str, facts: Mapping[str, Any]) -> str:
    """The interface that holds ``address`` in a host's network facts (``ansible_facts``), or "" if none."""
    for name in facts.get("interfaces") or ():
        ipv4 = (facts.get(str(name).replace("-", "_")) or {}).get("ipv4") or {}
        entries = [*ipv4] if isinstance(ipv4, list) else [ipv4]
        entries += (facts.get(str(name).replace("-", "_")) or {}).get("ipv4_secondaries") or []
        if any(entry.get("address") == address for entry in entries if isinstance(entry, Mapping)):
            return str(name)
    return ""


WILDCARDS = ("", "*", "0.0.0.0")  # noqa: S104 - names of the wildcard bind address, to recognise them


def bind_problems(bind_address: str) -> list[str]:
    """Whether HAProxy, bound to ``bind_address``, accepts clients on the virtual IP on every host.

    Only a wildcard does: the address is local on one host at a time, and binding it elsewhere would need
    ``net.ipv4.ip_nonlocal_bind`` for the whole host.
    """
    if str(bind_address).strip() in WILDCARDS:
        return []
    return [
        "haproxy_bind_address: HAProxy listens on one address only, so clients of the virtual IP would be "
        'refused; set [pgbouncer] listen_addr (or haproxy_bind_address) to "0.0.0.0": the allow-list still '
        "decides who may connect"
    ]
