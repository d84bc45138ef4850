"""Ansible filters over the autopgpool package: import, map ConfigError to AnsibleFilterError, register.

Playbooks: ``lookup('ansible.builtin.file', path) | autopgpool_render(secrets=vault_map, salt_key=key)``.
The TOML's ``$VAR`` expand from ``secrets`` (pgbouncer_secrets, possibly Vault-encrypted values) only; the
controller's environment is read for the names in ``secrets_from_environment`` and no other
(pgbouncer_secrets_from_environment, secrets.ansible_sources).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ansible.errors import AnsibleFilterError

# The filters adapt the autopgpool package, installed into the Python that runs Ansible (README.md, "Use it
# from your own repository"). Without it, every filter fails with that instruction instead of Ansible's bare
# "No filter named ...".
try:
    import autopgpool
    from autopgpool import (
        ConfigError,
        ansible_sources,
        backends,
        deployment_plan,
        render_files,
        summarize,
        validate,
    )
    from autopgpool.api import limit_probes, server_limits, server_tls_checks
    from autopgpool.inventory import CHECKS, host_problems, tls_warnings
    from autopgpool.monitoring import exporter_config, file_sd, fleet_table
    from autopgpool.tls import check_ca, check_client_tls
except ImportError as _exc:
    _IMPORT_ERROR: ImportError | None = _exc
else:
    _IMPORT_ERROR = None

FILTER_NAMES = (
    "autopgpool_plan",
    "autopgpool_render",
    "autopgpool_summary",
    "autopgpool_backends",
    "autopgpool_validate",
    "autopgpool_limit_probes",
    "autopgpool_server_limits",
    "autopgpool_server_tls_checks",
    "autopgpool_exporter_config",
    "autopgpool_file_sd",
    "autopgpool_fleet_table",
    "autopgpool_tls_problems",
    "autopgpool_ca_problems",
    "autopgpool_package_file",
    "autopgpool_inventory_problems",
    "autopgpool_tls_warnings",
)


def _missing_package(name: str) -> Callable[..., Any]:
    def filter_(*_args: Any, **_kwargs: Any) -> Any:
        raise AnsibleFilterError(
            f"{name}: the Python package 'autopgpool' is not importable by the Python that runs Ansible "
            f"({sys.executable}): {_IMPORT_ERROR}. Install the wheel of the same release as this collection "
            f"into it: {sys.executable} -m pip install autopgpool-<version>-py3-none-any.whl "
            "(README.md, 'Use it from your own repository')."
        )

    return filter_


def _wrap(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def filter_(
        toml_text: str,
        secrets: Mapping[str, Any] | None = None,
        secrets_from_environment: list[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        try:
            sources = ansible_sources(secrets, secrets_from_environment, os.environ)
            return func(str(toml_text), sources, **kwargs)
        except ConfigError as exc:
            raise AnsibleFilterError(str(exc)) from None

    return filter_


def _server_limits(declared: Mapping[str, Any] | None, reads: Any) -> dict[str, Any]:
    try:
        return server_limits(declared, list(reads or []))
    except ConfigError as exc:
        raise AnsibleFilterError(str(exc)) from None


def _validate(toml_text: str, secrets: Mapping[str, str]) -> bool:
    validate(toml_text, secrets)
    return True


def _plain(func: Callable[..., Any]) -> Callable[..., Any]:
    """Filters that take no TOML: only the error mapping."""

    @functools.wraps(func)
    def filter_(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            raise AnsibleFilterError(str(exc)) from None

    return filter_


def _tls_problems(
    cert_pem: str | None, key: str | None, ca: str | None, names: list[str], min_days: int
) -> list[str]:
    """``cert | autopgpool_tls_problems(key=..., ca=..., names=[...], min_days=30)``: the problems of one
    host's client certificate, key and CA, each naming its inventory variable (run it under no_log: the key
    is an argument; the result never contains it)."""
    wanted = [str(n) for n in names]
    return check_client_tls(
        str(cert_pem or ""), str(key or ""), str(ca or ""), names=wanted, min_days=int(min_days)
    )


def _ca_problems(pem: str | None, variable: str) -> list[str]:
    """``ca_text | autopgpool_ca_problems('pgbouncer_server_tls_ca_file')``."""
    return check_ca(str(pem or ""), variable)


def _package_file(name: str) -> str:
    """``'exporter.py' | autopgpool_package_file``: the path of a file of the installed autopgpool package on
    the controller (the exporter script a role copies to hosts is the package's own, of the same release)."""
    base = Path(autopgpool.__file__).resolve().parent
    path = (base / str(name)).resolve()
    if not path.is_relative_to(base) or not path.is_file():
        raise AnsibleFilterError(f"autopgpool_package_file: the autopgpool package has no file {str(name)!r}")
    return str(path)


def _inventory_problems(values: Mapping[str, Any], role: str, host: str) -> list[str]:
    """``{...} | autopgpool_inventory_problems(role, inventory_hostname)``: the problems (sentences naming the
    variable and the host, never a value) of one host's variables for ``role`` (pgbouncer, haproxy,
    keepalived), checked on the controller by site.yml's first play."""
    if role not in CHECKS:
        raise AnsibleFilterError(f"autopgpool_inventory_problems: role must be one of {', '.join(CHECKS)}")
    if not isinstance(values, Mapping):
        raise AnsibleFilterError("autopgpool_inventory_problems: expected a mapping of variables")
    return host_problems(role, str(host), values)


class FilterModule:
    def filters(self) -> dict[str, Callable[..., Any]]:
        if _IMPORT_ERROR is not None:
            return {name: _missing_package(name) for name in FILTER_NAMES}
        return {
            # The run's plan: summary, files and each host's instances and endpoints, from one parse.
            "autopgpool_plan": _wrap(deployment_plan),
            "autopgpool_render": _wrap(render_files),
            "autopgpool_summary": _wrap(summarize),
            "autopgpool_backends": _wrap(backends),
            "autopgpool_validate": _wrap(_validate),
            # Connection budget: who to ask for max_connections (holds passwords), then the limits.
            "autopgpool_limit_probes": _wrap(limit_probes),
            "autopgpool_server_limits": _server_limits,
            # Which PostgreSQL servers must verify with the server CA before any host changes (no secrets).
            "autopgpool_server_tls_checks": _wrap(server_tls_checks),
            "autopgpool_exporter_config": _wrap(exporter_config),
            "autopgpool_file_sd": _plain(file_sd),
            "autopgpool_fleet_table": _plain(fleet_table),
            "autopgpool_tls_problems": _tls_problems,
            "autopgpool_ca_problems": _ca_problems,
            "autopgpool_package_file": _package_file,
            # Each role's checks of a host's inventory variables, and TLS that leaves logins open.
            "autopgpool_inventory_problems": _inventory_problems,
            "autopgpool_tls_warnings": tls_warnings,
        }
