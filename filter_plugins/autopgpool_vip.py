"""Ansible filters over autopgpool.vip (roles/keepalived): import, map ConfigError to AnsibleFilterError.

``hostvars | autopgpool_vrrp_plan(groups)``: every pooler group's virtual IP checked across the inventory, and
each host's VRRP instance as a mapping. ``ansible_facts | autopgpool_vrrp_interface(address)``: the interface
that holds an address. ``bind | autopgpool_vrrp_bind_problems``: whether HAProxy accepts clients on the VIP.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ansible.errors import AnsibleFilterError

try:
    from autopgpool import ConfigError
    from autopgpool.vip import DEFAULT_GROUP, DEFAULT_ROUTER_ID, bind_problems, interface_of, plan_vips
except ImportError as _exc:  # the same instruction as autopgpool.py's filters give
    _IMPORT_ERROR: ImportError | None = _exc
else:
    _IMPORT_ERROR = None

FILTER_NAMES = ("autopgpool_vrrp_plan", "autopgpool_vrrp_interface", "autopgpool_vrrp_bind_problems")

_VARIABLES = (
    "keepalived_group",
    "keepalived_virtual_ipaddress",
    "keepalived_virtual_router_id",
    "keepalived_unicast_src_ip",
    "haproxy_client_allowlist",
)


def _pick(host: str, vars_: Mapping[str, Any]) -> dict[str, Any]:
    """Only the variables the plan reads (hostvars is lazy: reading all of it would template everything), with
    the role's defaults where the inventory sets none (role defaults are not in hostvars)."""
    picked = {var: vars_.get(var) for var in _VARIABLES}
    picked["keepalived_group"] = picked["keepalived_group"] or DEFAULT_GROUP
    if picked["keepalived_virtual_router_id"] in (None, ""):
        picked["keepalived_virtual_router_id"] = DEFAULT_ROUTER_ID
    if not picked["keepalived_unicast_src_ip"]:
        picked["keepalived_unicast_src_ip"] = vars_.get("ansible_host") or host
    return picked


def _plan(hostvars: Mapping[str, Any], groups: Mapping[str, Sequence[str]]) -> dict[str, dict[str, Any]]:
    hosts = groups.get("all", [])
    picked = {str(host): _pick(str(host), hostvars[host]) for host in hosts if host in hostvars}
    try:
        plans = plan_vips(picked, {str(name): [str(h) for h in members] for name, members in groups.items()})
    except ConfigError as exc:
        raise AnsibleFilterError(str(exc)) from None
    return {
        host: {**dataclasses.asdict(plan), "address": plan.address, "unicast_peers": list(plan.unicast_peers)}
        for host, plan in plans.items()
    }


def _interface(facts: Mapping[str, Any], address: str) -> str:
    return interface_of(str(address), facts)


def _missing_package(name: str) -> Callable[..., Any]:
    def filter_(*_args: Any, **_kwargs: Any) -> Any:
        raise AnsibleFilterError(
            f"{name}: the Python package 'autopgpool' is not importable by the Python that runs Ansible "
            f"({sys.executable}): {_IMPORT_ERROR}. Install the wheel of the same release as this collection "
            f"into it: {sys.executable} -m pip install autopgpool-<version>-py3-none-any.whl "
            "(README.md, 'Use it from your own repository')."
        )

    return filter_


class FilterModule:
    def filters(self) -> dict[str, Callable[..., Any]]:
        if _IMPORT_ERROR is not None:
            return {name: _missing_package(name) for name in FILTER_NAMES}
        return {
            "autopgpool_vrrp_plan": _plan,
            "autopgpool_vrrp_interface": _interface,
            "autopgpool_vrrp_bind_problems": bind_problems,
        }
