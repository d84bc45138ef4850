"""Ansible filters over autopgpool.inventory: each role's checks of a host's inventory variables.

``{...} | autopgpool_inventory_problems(role, inventory_hostname)``: the problems (sentences naming
the variable
and the host, never a value) of the host's variables for ``role`` (pgbouncer, haproxy, keepalived), checked on
the controller by site.yml's first play. ``pgbouncer_summary | autopgpool_tls_warnings``: TLS that leaves
logins open.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

from ansible.errors import AnsibleFilterError

try:
    from autopgpool.inventory import CHECKS, host_problems, tls_warnings
except ImportError as _exc:  # the same instruction as autopgpool.py's filters give
    _IMPORT_ERROR: ImportError | None = _exc
else:
    _IMPORT_ERROR = None

FILTER_NAMES = ("autopgpool_inventory_problems", "autopgpool_tls_warnings")


def _problems(values: Mapping[str, Any], role: str, host: str) -> list[str]:
    if role not in CHECKS:
        raise AnsibleFilterError(f"autopgpool_inventory_problems: role must be one of {', '.join(CHECKS)}")
    if not isinstance(values, Mapping):
        raise AnsibleFilterError("autopgpool_inventory_problems: expected a mapping of variables")
    return host_problems(role, str(host), values)


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
        return {"autopgpool_inventory_problems": _problems, "autopgpool_tls_warnings": tls_warnings}
