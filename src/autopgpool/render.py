"""Render the three files pgbouncer reads from a validated :class:`Config`. Pure functions, sorted output.

* ``pgbouncer.ini``: the part shared by every instance on a host, ``[databases]``, ``[users]`` and, always
  last, ``[pgbouncer]``. Each instance's own ``instance-N.ini`` (written by the Ansible role) starts with
  ``%include <config_dir>/pgbouncer.ini`` and then, *without* a ``[pgbouncer]`` header, sets
  listen_addr/listen_port/unix_socket_dir/pidfile/logfile/peer_id, then ``[peers]``. pgbouncer resets
  every setting to its default whenever it reads a ``[pgbouncer]`` header (``fill_defaults`` in
  lib/usual/cfparser.c), so a second header would silently drop auth_type, the hba file, admin_users and
  everything else set here; the section in effect carries across ``%include``, so the instance lines
  continue ours and win.
* ``userlist.txt``: ``"user" "verifier"`` per client user, MD5 or SCRAM-SHA-256 per the user's auth type, and
  ``"user" "plain password"`` per backend (remote) user, sorted by username.
* ``pgbouncer_hba.conf``: every user reaches only its granted pools; admin/stats users reach ``pgbouncer``.
  Backend users get no line, so the reject-all tail refuses them as clients.

Two layouts share everything above but the addresses. The roles render the *instances* layout: the
listener lines come from each instance-N.ini and the hba rules tell HAProxy's source address from the
operators' (network.py). ``autopgpool generate`` renders the *standalone* layout by default, a single
pgbouncer as autopg-pool ran it: pgbouncer.ini itself listens on ``[pgbouncer].listen_addr`` and
``listen_port`` (autopg-pool's 0.0.0.0:6432 by default), application users reach their pools from any
address (the TOML names none; the listener decides who can connect), and the console stays on the host
(unix socket, 127.0.0.1 and ::1), since the TOML declares no admin network.

Backend passwords and pgbouncer 1.25.2
--------------------------------------
The obvious place for a backend password is ``[databases] app = ... user=app_owner password=...``. In
pgbouncer up to 1.25.2 that breaks SCRAM: after a client finishes SCRAM authentication, pgbouncer copies the
client's SCRAM keys into the pool's credentials, which for a database with ``user=`` are the forced user's,
and marks them for pass-through; the next server login then answers PostgreSQL's SCRAM challenge with the
client's keys and fails with "password authentication failed for user app_owner"
(https://github.com/pgbouncer/pgbouncer/issues/1461 and /issues/1610, fixed upstream by pull request 1612
after 1.25.2). With ``user=`` but no ``password=``, pgbouncer takes the forced user's password from
auth_file instead (proto.c ``get_srv_psw``), an entry client logins never modify, so backend SCRAM works.
Hence: no ``password=`` in ``[databases]``; the backend user's plain password goes to userlist.txt, and
pgbouncer_hba.conf keeps that user out as a client. Once the fleet runs a fixed pgbouncer this can go back.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from .hashing import choose_scram_verifiers, md5_verifier
from .model import Config
from .network import HOST_LOOPBACK, InstanceNetwork, plan_network

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


_INSTANCES_INI_ABOUT = (
    ";; Shared by all pgbouncer instances on this host; each instance-N.ini includes it and then sets",
    ";; its own listen_addr, listen_port, unix_socket_dir, pidfile, logfile, peer_id and [peers].",
    ";; [pgbouncer] stays the last section: the instance file continues it without a header of its own,",
    ";; because every [pgbouncer] header resets all settings to pgbouncer's defaults.",
)


def _standalone_ini_about(config: Config) -> tuple[str, ...]:
    return (
        f";; One pgbouncer, listening on {config.listen_addr} port {config.listen_port} and on its unix",
        ";; socket ([pgbouncer] listen_addr and listen_port). [pgbouncer] stays the last section, so a file",
        ";; that %includes this one may continue it (pidfile, logfile, unix_socket_dir) without a header.",
    )


def _database_lines(config: Config) -> list[str]:
    lines = []
    for pool in config.pools:
        r = pool.remote
        parts = [
            f"host={connstr_value(r.host)}",
            f"port={r.port}",
            f"dbname={connstr_value(r.database)}",
            # No password=: it goes to userlist.txt (pgbouncer issue 1461, see the module docstring).
            f"user={connstr_value(r.username)}",
        ]
        for key in ("pool_size", "min_pool_size", "reserve_pool_size", "max_db_connections"):
            value = getattr(pool, key)
            if value is not None:
                parts.append(f"{key}={value}")
        if pool.pool_mode is not None:
            parts.append(f"pool_mode={pool.pool_mode}")
        lines.append(f"{ini_key(pool.name)} = {' '.join(parts)}")
    return lines


def render_ini(
    config: Config,
    *,
    config_dir: str = DEFAULT_CONFIG_DIR,
    extra_settings: Mapping[str, str] | None = None,
    standalone: bool = False,
) -> str:
    """``standalone``: the file listens itself, on [pgbouncer] listen_addr/listen_port (module doc)."""
    config_dir = config_dir.rstrip("/") or "/"
    about = _standalone_ini_about(config) if standalone else _INSTANCES_INI_ABOUT
    lines = [f";; {HEADER}", *about, "", "[databases]", *_database_lines(config)]

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

    settings: dict[str, str] = dict(config.settings)
    # The deployment's TLS files (tls.py): paths on the host, never set by the TOML.
    settings.update(extra_settings or {})
    if standalone:
        # Where autopg-pool's pgbouncer listened; in the instances layout each instance-N.ini sets its own.
        settings["listen_addr"] = config.listen_addr
        settings["listen_port"] = str(config.listen_port)
    settings["auth_type"] = "hba"
    settings["auth_file"] = f"{config_dir}/userlist.txt".replace("//", "/")
    settings["auth_hba_file"] = f"{config_dir}/pgbouncer_hba.conf".replace("//", "/")
    if config.admin_users:
        settings["admin_users"] = ", ".join(config.admin_users)
    if config.stats_users:
        settings["stats_users"] = ", ".join(config.stats_users)
    lines += ["", "[pgbouncer]"]
    lines += [f"{name} = {value}" for name, value in sorted(settings.items())]
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
    # Backend users in plain text: pgbouncer must compute SCRAM proofs for PostgreSQL from the password itself
    # (the workaround in the module docstring). Validation guarantees one password per name, so a client
    # user with the same name shares this line; pgbouncer accepts a plain password for md5 and SCRAM clients.
    entries: dict[str, str] = {pool.remote.username: pool.remote.password for pool in config.pools}
    scram: list[tuple[str, str, str | None]] = []
    for user in config.users:
        if user.username in entries:
            continue
        if config.user_auth_type(user) == "md5":
            entries[user.username] = md5_verifier(user.username, user.password)
        else:
            scram.append((user.username, user.password, previous.get(user.username)))
    # The expensive part (one PBKDF2 per SCRAM user), done on every core; see hashing.py.
    verifiers = choose_scram_verifiers(scram, salt_key=salt_key)
    entries.update((username, verifier) for (username, _, _), verifier in zip(scram, verifiers, strict=True))
    lines = [
        f";; {HEADER}",
        ";; Client users have MD5 or SCRAM verifiers. Lines with a plain password are the backend users",
        ";; pgbouncer logs in to PostgreSQL as; no client may log in as them unless [[users]] has them.",
    ]
    lines += [f"{dq(name)} {dq(secret)}" for name, secret in sorted(entries.items())]
    return "\n".join(lines) + "\n"


CLIENT_TLS_REQUIRED = ("require", "verify-ca", "verify-full")


def _standalone_hba() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(application users' addresses, console users' addresses, header comment) of the standalone layout."""
    about = (
        "# Each user reaches only the pools granted to it, from any address: the TOML names none, and",
        "# pgbouncer.ini's listen_addr decides where clients can connect. Admin and stats users also reach",
        "# the pgbouncer console, but only from this host (unix socket, 127.0.0.1, ::1). Backend users",
        "# (userlist.txt lines with a plain password) are not listed unless declared in [[users]], so",
        "# they cannot log in as clients.",
    )
    return ("all",), (f"{HOST_LOOPBACK}/32", "::1/128"), about


def _instances_hba(net: InstanceNetwork) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """The same for the roles' per-instance layout (network.py)."""
    about = (
        "# Each user reaches only the pools granted to it; admin and stats users also reach the pgbouncer",
        f"# console, but only from the host (unix socket, {net.operators[0]}) or a declared admin network:",
        f"# HAProxy connects from {net.frontdoor}, which carries application clients only. Backend",
        "# users (userlist.txt lines with a plain password) are not listed unless declared in [[users]],",
        "# so they cannot log in as clients.",
    )
    return (net.frontdoor, *net.operators), net.operators, about


def render_hba(
    config: Config,
    *,
    network: InstanceNetwork | None = None,
    client_tls_required: bool = False,
    standalone: bool = False,
) -> str:
    """Rules by peer address; ``hostssl`` when pgbouncer's client_tls_sslmode requires TLS (require or
    stricter), so the rules say what pgbouncer enforces anyway.

    Instances layout (see network.py): application users from HAProxy's source address and from the
    operators' addresses, console users from the operators' addresses only. ``standalone``: application users
    from any address, console users from the host only (``network`` is not used)."""
    net = network if network is not None else plan_network()
    apps, consoles, about = _standalone_hba() if standalone else _instances_hba(net)
    tcp = "hostssl" if client_tls_required else "host"
    rows: list[tuple[str, str, str, str, str]] = []
    for user in config.users:
        method = config.user_auth_type(user)
        if user.grants:
            dbs = ",".join(dq(g) for g in user.grants)
            rows.append(("local", dbs, dq(user.username), "", method))
            for address in apps:
                rows.append((tcp, dbs, dq(user.username), address, method))
    console_users = sorted(set(config.admin_users) | set(config.stats_users))
    methods: Mapping[str, str] = {u.username: config.user_auth_type(u) for u in config.users}
    for name in console_users:
        rows.append(("local", "pgbouncer", dq(name), "", methods[name]))
        for address in consoles:
            rows.append((tcp, "pgbouncer", dq(name), address, methods[name]))
    lines = [
        f"# {HEADER}",
        *about,
        "# TYPE  DATABASE  USER  ADDRESS  METHOD",
    ]
    lines += [" ".join(part for part in row if part) for row in rows]
    lines += ["# Anything not allowed above is refused.", "local all all reject", "host all all all reject"]
    return "\n".join(lines) + "\n"
