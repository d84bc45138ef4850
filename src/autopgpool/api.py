"""The small public API the Ansible filter plugin and the CLI use. Nothing here touches the filesystem."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import defaults
from .config import Config, parse_config
from .network import INSTANCE_ADDRESS, InstanceNetwork, plan_network
from .pgbouncer_settings import needs_restart
from .render import CLIENT_TLS_REQUIRED, DEFAULT_CONFIG_DIR, render_hba, render_ini, render_userlist
from .tls import plan_settings, raise_problems

FILES = ("pgbouncer.ini", "userlist.txt", "pgbouncer_hba.conf")


def _salt_bytes(salt_key: str | bytes | None) -> bytes | None:
    if salt_key is None or salt_key in ("", b""):
        return None
    return salt_key.encode() if isinstance(salt_key, str) else bytes(salt_key)


def _network(network: Mapping[str, Any] | None) -> InstanceNetwork:
    """The inventory's addresses (pgbouncer_instance_listen_addr, pgbouncer_haproxy_source_addr,
    pgbouncer_admin_networks, pgbouncer_server_networks) checked and planned; defaults when None."""
    given = dict(network or {})
    return plan_network(
        listen_addr=str(given.get("listen_addr") or INSTANCE_ADDRESS),
        frontdoor_source=str(given.get("frontdoor_source") or "127.0.0.2"),
        admin_networks=[str(n) for n in given.get("admin_networks") or ()],
        server_networks=[str(n) for n in given.get("server_networks") or ()],
    )


def _tls(
    config: Config, tls: Mapping[str, Any] | None, config_dir: str
) -> tuple[dict[str, str], dict[str, str]]:
    """(TLS settings for pgbouncer.ini, TLS files by setting -> host path), after checking the inventory's
    part (``tls``, see tls.plan_settings) against the TOML."""
    settings, files, problems = plan_settings(config.settings, config_dir=config_dir, tls=dict(tls or {}))
    raise_problems(problems)
    return settings, files


def validate(toml_text: str, secrets: Mapping[str, str]) -> None:
    """Raise ConfigError (every problem, each with its key path) unless the configuration is usable."""
    parse_config(toml_text, secrets)


def render_files(
    toml_text: str,
    secrets: Mapping[str, str],
    *,
    config_dir: str = DEFAULT_CONFIG_DIR,
    salt_key: str | bytes | None = None,
    previous_userlist: str | None = None,
    network: Mapping[str, Any] | None = None,
    tls: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The three files, by name. See hashing.py for how salt_key and previous_userlist keep output stable."""
    config = parse_config(toml_text, secrets)
    net = _network(network)
    tls_settings, _ = _tls(config, tls, config_dir)
    return {
        "pgbouncer.ini": render_ini(config, config_dir=config_dir, extra_settings=tls_settings),
        "userlist.txt": render_userlist(
            config, salt_key=_salt_bytes(salt_key), previous_userlist=previous_userlist
        ),
        "pgbouncer_hba.conf": render_hba(
            config, network=net, client_tls_required=tls_settings["client_tls_sslmode"] in CLIENT_TLS_REQUIRED
        ),
    }


def file_descriptor_limit(config: Config) -> int:
    """LimitNOFILE for one pgbouncer instance.

    Every client and every server connection holds one descriptor. Clients are capped by max_client_conn.
    Each pool connects as one remote user, so pgbouncer keeps one server pool per [pools.<name>] holding at
    most pool_size + reserve_pool_size connections, or max_db_connections if that is set and smaller. On top
    comes defaults.FD_MARGIN for listeners, log, pidfile, DNS, peers and stdio::

        max_client_conn + sum(min(pool_size + reserve_pool_size, max_db_connections)) + FD_MARGIN
    """
    total = config.int_setting("max_client_conn") + defaults.FD_MARGIN
    for pool in config.pools:
        total += _server_conns(config, pool.pool_size, pool.reserve_pool_size, pool.max_db_connections)
    return total


def _server_conns(config: Config, pool_size: int | None, reserve: int | None, cap: int | None) -> int:
    size = pool_size if pool_size is not None else config.int_setting("default_pool_size")
    extra = reserve if reserve is not None else int(config.settings.get("reserve_pool_size", "0"))
    if cap is None and int(config.settings.get("max_db_connections", "0")) > 0:
        cap = int(config.settings["max_db_connections"])
    return min(size + extra, cap) if cap else size + extra


def summarize(
    toml_text: str,
    secrets: Mapping[str, str],
    *,
    network: Mapping[str, Any] | None = None,
    tls: Mapping[str, Any] | None = None,
    config_dir: str = DEFAULT_CONFIG_DIR,
) -> dict[str, Any]:
    """Facts the roles need (ports, sizes, names, fd limit, restart-only settings). Holds no secret."""
    config = parse_config(toml_text, secrets)
    net = _network(network)
    tls_settings, tls_files = _tls(config, tls, config_dir)
    default_mode = config.settings["pool_mode"]
    return {
        "listen_addr": config.listen_addr,
        "listen_port": config.listen_port,
        "max_client_conn": config.int_setting("max_client_conn"),
        "pools": {
            pool.name: {
                "host": pool.remote.host,
                "port": pool.remote.port,
                "database": pool.remote.database,
                "username": pool.remote.username,
                "pool_size": pool.pool_size
                if pool.pool_size is not None
                else config.int_setting("default_pool_size"),
                "reserve_pool_size": pool.reserve_pool_size
                if pool.reserve_pool_size is not None
                else int(config.settings.get("reserve_pool_size", "0")),
                "pool_mode": pool.pool_mode or default_mode,
            }
            for pool in config.pools
        },
        "users": [user.username for user in config.users],
        "admin_users": list(config.admin_users),
        "stats_users": list(config.stats_users),
        "auth_type": config.auth_type,
        # pgbouncer answers an SSLRequest with 'S' when client TLS is on, else 'N' (HAProxy's health check).
        "client_tls": tls_settings["client_tls_sslmode"] != "disable",
        "client_tls_required": tls_settings["client_tls_sslmode"] in CLIENT_TLS_REQUIRED,
        "client_tls_sslmode": tls_settings["client_tls_sslmode"],
        "server_tls_sslmode": tls_settings["server_tls_sslmode"],
        # pgbouncer setting -> path on the host of each TLS file the role installs from the inventory.
        "tls_files": tls_files,
        # Where HAProxy reaches the instances and from which address; the unit's IP filter (may be empty).
        "instance_address": INSTANCE_ADDRESS,
        "haproxy_source_addr": net.frontdoor.split("/")[0],
        "operator_networks": list(net.operators),
        "ip_address_allow": list(net.ip_address_allow),
        "file_descriptor_limit": file_descriptor_limit(config),
        "restart_settings": {k: v for k, v in sorted(config.settings.items()) if needs_restart(k)},
    }


def backends(toml_text: str, secrets: Mapping[str, str]) -> list[dict[str, Any]]:
    """One entry per distinct remote (host, port, database, username, password). The password is a secret."""
    config = parse_config(toml_text, secrets)
    seen: dict[tuple[str, int, str, str, str], None] = {}
    for pool in config.pools:
        r = pool.remote
        seen[(r.host, r.port, r.database, r.username, r.password)] = None
    return [
        {"host": h, "port": p, "database": d, "username": u, "password": pw}
        for (h, p, d, u, pw) in sorted(seen)
    ]
