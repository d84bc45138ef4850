"""The configuration model: what autopgpool.toml means once read and checked (config.parse_config builds it),
and the key names the checks hold the TOML to. No parsing or checking here: renderers, the budget and the
summary read these types."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from .errors import Problem

PoolMode = Literal["session", "transaction", "statement"]
AuthType = Literal["scram-sha-256", "md5"]
AUTH_TYPES: tuple[AuthType, ...] = ("scram-sha-256", "md5")
NAME_MAX_BYTES = 63
REMOTE_PASSWORD_MAX_BYTES = 2047  # pgbouncer's MAX_PASSWORD minus the NUL, counted as written (" doubled)
SIZE_MAX = 100_000

#: Settings the deployment owns: set per instance (or fixed) by the Ansible role, never in the TOML.
DEPLOYMENT_OWNED = {
    "listen_addr": "per-instance, set by the Ansible role; [pgbouncer].listen_addr is where HAProxy binds",
    "listen_port": "per-instance, set by the Ansible role; [pgbouncer].listen_port is where HAProxy binds",
    "unix_socket_dir": "per-instance, set by the Ansible role",
    "unix_socket_mode": "per-instance, set by the Ansible role",
    "unix_socket_group": "per-instance, set by the Ansible role",
    "pidfile": "per-instance, set by the Ansible role",
    "logfile": "per-instance, set by the Ansible role",
    "peer_id": "per-instance, set by the Ansible role",
    "so_reuseport": "part of the deployment topology, set by the Ansible role",
    "job_name": "per-instance, set by the Ansible role",
    "user": "systemd runs pgbouncer as its service user",
    "conffile": "read-only in pgbouncer",
    "auth_file": "always <config_dir>/userlist.txt, rendered by autopgpool",
    "auth_hba_file": "always <config_dir>/pgbouncer_hba.conf, rendered by autopgpool",
}

#: Keys modeled by autopg-pool under [pgbouncer]; besides these, any pgbouncer setting may appear there.
MODELED_KEYS = (
    "listen_addr",
    "listen_port",
    "auth_type",
    "pool_mode",
    "max_client_conn",
    "default_pool_size",
    "ignore_startup_parameters",
    "admin_users",
    "stats_users",
    "idle_transaction_timeout",
    "max_prepared_statements",
    "passthrough_kwargs",
)
TOP_KEYS = ("users", "pools", "pgbouncer")
USER_KEYS = ("username", "password", "grants", "auth_type", "pool_mode", "max_user_connections")
POOL_KEYS = ("remote", "pool_mode", "pool_size", "min_pool_size", "reserve_pool_size", "max_db_connections")
REMOTE_KEYS = ("host", "port", "database", "username", "password")
LIST_SETTINGS = ("ignore_startup_parameters", "track_extra_parameters")


@dataclass(frozen=True)
class Remote:
    host: str
    port: int
    database: str
    username: str
    password: str
    #: (key, text as written) for the keys whose value came from a variable: what messages and the summary
    #: show instead of the value.
    written: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    def shown(self, key: str) -> str:
        """The value of ``key`` for a message or the summary: as written if it came from a variable."""
        return dict(self.written).get(key) or str(getattr(self, key))


@dataclass(frozen=True)
class Pool:
    name: str
    remote: Remote
    pool_mode: PoolMode | None = None
    pool_size: int | None = None
    min_pool_size: int | None = None
    reserve_pool_size: int | None = None
    max_db_connections: int | None = None


@dataclass(frozen=True)
class User:
    username: str
    password: str
    grants: tuple[str, ...]
    auth_type: AuthType | None = None
    pool_mode: PoolMode | None = None
    max_user_connections: int | None = None


@dataclass(frozen=True)
class Config:
    users: tuple[User, ...]  # sorted by username
    pools: tuple[Pool, ...]  # sorted by name
    listen_addr: str
    listen_port: int
    auth_type: AuthType
    admin_users: tuple[str, ...]
    stats_users: tuple[str, ...]
    settings: Mapping[str, str]  # pgbouncer settings in effect (defaults + TOML), as written to pgbouncer.ini
    warnings: tuple[Problem, ...] = ()  # things that work, but maybe not as a user of autopg-pool expects

    def user_auth_type(self, user: User) -> AuthType:
        return user.auth_type or self.auth_type

    def int_setting(self, name: str) -> int:
        return int(self.settings[name])
