"""Ansible filters over the autopgpool package: import, map ConfigError to AnsibleFilterError, register.

Playbooks: ``lookup('ansible.builtin.file', path) | autopgpool_render(secrets=vault_map, salt_key=key)``.
``secrets`` (possibly Vault-encrypted values) is laid over the controller's environment: the mapping wins.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from typing import Any

from ansible.errors import AnsibleFilterError

from autopgpool import ConfigError, backends, merge_sources, render_files, summarize, validate
from autopgpool.api import limit_probes, server_limits
from autopgpool.monitoring import exporter_config, file_sd, fleet_table


def _wrap(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def filter_(toml_text: str, secrets: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        try:
            return func(str(toml_text), merge_sources(secrets, os.environ), **kwargs)
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


class FilterModule:
    def filters(self) -> dict[str, Callable[..., Any]]:
        return {
            "autopgpool_render": _wrap(render_files),
            "autopgpool_summary": _wrap(summarize),
            "autopgpool_backends": _wrap(backends),
            "autopgpool_validate": _wrap(_validate),
            # Connection budget: who to ask for max_connections (holds passwords), then the limits.
            "autopgpool_limit_probes": _wrap(limit_probes),
            "autopgpool_server_limits": _server_limits,
            "autopgpool_exporter_config": _wrap(exporter_config),
            "autopgpool_file_sd": _plain(file_sd),
            "autopgpool_fleet_table": _plain(fleet_table),
        }
