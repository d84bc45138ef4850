"""Render the three files pgbouncer reads from a validated :class:`Config`. Pure functions, sorted output.

* ``pgbouncer.ini``: the part shared by every instance on a host. Each instance's own ``instance-N.ini``
  (written by the Ansible role) starts with ``%include <config_dir>/pgbouncer.ini`` and then sets
  listen_addr/listen_port/unix_socket_dir/pidfile/logfile/peer_id and ``[peers]``.
* ``userlist.txt``: ``"user" "verifier"`` per user, MD5 or SCRAM-SHA-256 per the user's auth type.
* ``pgbouncer_hba.conf``: every user reaches only its granted pools; admin/stats users reach ``pgbouncer``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from .config import Config, Pool
from .hashing import choose_scram_verifier, md5_verifier

DEFAULT_CONFIG_DIR = "/etc/pgbouncer"
HEADER = "Rendered by autopgpool from autopgpool.toml; do not edit, changes are overwritten."

_INI_BARE_KEY = re.compile(r"[A-Za-z0-9_.-]+")
_CONNSTR_BARE = re.compile(r"[A-Za-z0-9_.:/@-]+")


def ini_key(name: str) -> str:
    """A [databases]/[users] key: bare if pgbouncer's ini parser reads it bare, else single-quoted.

    pgbouncer reads bare keys made of ``[A-Za-z0-9_.-*]`` and quoted keys as ``'...'`` without any escape, so
    names containing ``'`` are rejected during validation.
    """
    return name if _INI_BARE_KEY.fullmatch(name) else f"'{name}'"


def connstr_value(value: str) -> str:
    """A pgbouncer connection-string value: bare when safe, else ``'...'`` with ``''`` for a quote.

    Unlike libpq, pgbouncer gives backslash no special meaning, so it is written as is.
    """
    return value if _CONNSTR_BARE.fullmatch(value) else "'" + value.replace("'", "''") + "'"


def dq(value: str) -> str:
    """Double-quoted field for userlist.txt and pgbouncer_hba.conf (``""`` for a double quote)."""
    return '"' + value.replace('"', '""') + '"'


def _pool_size(config: Config, pool: Pool) -> int:
    return pool.pool_size if pool.pool_size is not None else config.int_setting("default_pool_size")


def render_ini(config: Config, *, config_dir: str = DEFAULT_CONFIG_DIR) -> str:
    config_dir = config_dir.rstrip("/") or "/"
    lines = [
        f";; {HEADER}",
        ";; Shared by all pgbouncer instances on this host; each instance-N.ini includes it and then sets",
        ";; its own listen_addr, listen_port, unix_socket_dir, pidfile, logfile, peer_id and [peers].",
        "",
        "[databases]",
    ]
    for pool in config.pools:
        r = pool.remote
        parts = [
            f"host={connstr_value(r.host)}",
            f"port={r.port}",
            f"dbname={connstr_value(r.database)}",
            f"user={connstr_value(r.username)}",
            f"password={connstr_value(r.password)}",
        ]
        for key in ("pool_size", "min_pool_size", "reserve_pool_size", "max_db_connections"):
            value = getattr(pool, key)
            if value is not None:
                parts.append(f"{key}={value}")
        if pool.pool_mode is not None:
            parts.append(f"pool_mode={pool.pool_mode}")
        lines.append(f"{ini_key(pool.name)} = {' '.join(parts)}")

    settings: dict[str, str] = dict(config.settings)
    settings["auth_type"] = "hba"
    settings["auth_file"] = f"{config_dir}/userlist.txt".replace("//", "/")
    settings["auth_hba_file"] = f"{config_dir}/pgbouncer_hba.conf".replace("//", "/")
    if config.admin_users:
        settings["admin_users"] = ", ".join(config.admin_users)
    if config.stats_users:
        settings["stats_users"] = ", ".join(config.stats_users)
    lines += ["", "[pgbouncer]"]
    lines += [f"{name} = {value}" for name, value in sorted(settings.items())]

    user_lines = []
    for user in config.users:
        parts = []
        if user.pool_mode is not None:
            parts.append(f"pool_mode={user.pool_mode}")
        if user.max_user_connections is not None:
            parts.append(f"max_user_connections={user.max_user_connections}")
        if parts:
            user_lines.append(f"{ini_key(user.username)} = {' '.join(parts)}")
    if user_lines:
        lines += ["", "[users]", *user_lines]
    return "\n".join(lines) + "\n"


def parse_userlist(text: str | None) -> dict[str, str]:
    """Read ``"user" "secret"`` lines (as pgbouncer does: ``""`` inside a field is one ``"``)."""
    entries: dict[str, str] = {}
    for line in (text or "").splitlines():
        fields = re.findall(r'"((?:[^"]|"")*)"', line)
        if len(fields) >= 2 and line.lstrip().startswith('"'):
            entries[fields[0].replace('""', '"')] = fields[1].replace('""', '"')
    return entries


def render_userlist(
    config: Config, *, salt_key: bytes | None = None, previous_userlist: str | None = None
) -> str:
    previous = parse_userlist(previous_userlist)
    lines = []
    for user in config.users:
        if config.user_auth_type(user) == "md5":
            secret = md5_verifier(user.username, user.password)
        else:
            secret = choose_scram_verifier(
                user.username, user.password, salt_key=salt_key, previous=previous.get(user.username)
            )
        lines.append(f"{dq(user.username)} {dq(secret)}")
    return "\n".join(lines) + "\n"


def render_hba(config: Config) -> str:
    rows: list[tuple[str, str, str, str, str]] = []
    for user in config.users:
        method = config.user_auth_type(user)
        if user.grants:
            dbs = ",".join(dq(g) for g in user.grants)
            rows.append(("local", dbs, dq(user.username), "", method))
            rows.append(("host", dbs, dq(user.username), "all", method))
    console_users = sorted(set(config.admin_users) | set(config.stats_users))
    methods: Mapping[str, str] = {u.username: config.user_auth_type(u) for u in config.users}
    for name in console_users:
        rows.append(("local", "pgbouncer", dq(name), "", methods[name]))
        rows.append(("host", "pgbouncer", dq(name), "all", methods[name]))
    lines = [
        f"# {HEADER}",
        "# Each user reaches only the pools granted to it; admin and stats users also reach the pgbouncer",
        "# console. Peer addresses are not filtered here: pgbouncer only sees HAProxy or loopback, and",
        "# address allow-lists live in HAProxy.",
        "# TYPE  DATABASE  USER  ADDRESS  METHOD",
    ]
    lines += [" ".join(part for part in row if part) for row in rows]
    lines += ["# Anything not allowed above is refused.", "local all all reject", "host all all all reject"]
    return "\n".join(lines) + "\n"
