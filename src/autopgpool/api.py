"""The small public API the Ansible filter plugin and the CLI use. Nothing here touches the filesystem."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from . import defaults
from .budget import DEFAULT_SCOPE, Plan, make_fleet, make_limits, plan, server_key
from .config import exposure_warnings, parse_config
from .errors import ConfigError, Problem
from .frontdoor import haproxy_limits
from .model import Config
from .network import INSTANCE_ADDRESS, InstanceNetwork, plan_network
from .pgbouncer_settings import needs_restart
from .render import CLIENT_TLS_REQUIRED, DEFAULT_CONFIG_DIR, render_hba, render_ini, render_userlist
from .tls import VERIFYING, plan_settings, raise_problems

#: systemd's RuntimeDirectory of the instances (each instance's unix socket and its loaded marker).
DEFAULT_RUNTIME_ROOT = "/run/pgbouncer"


def _salt_bytes(salt_key: str | bytes | None) -> bytes | None:
    if salt_key is None or salt_key in ("", b""):
        return None
    return salt_key.encode() if isinstance(salt_key, str) else bytes(salt_key)


#: What config_dir may look like: it is written into pgbouncer.ini as the directory of auth_file and
#: auth_hba_file, so nothing that pgbouncer's ini parser could read as the end of a value or of a line.
_CONFIG_DIR = re.compile(r"/[A-Za-z0-9._@+/-]*")


def check_config_dir(config_dir: str) -> None:
    """Raise ConfigError unless ``config_dir`` is an absolute path safe to write into pgbouncer.ini."""
    if not isinstance(config_dir, str) or not _CONFIG_DIR.fullmatch(config_dir) or len(config_dir) > 1024:
        raise ConfigError(
            [
                Problem(
                    "config_dir",
                    "expected an absolute path of letters, digits and . _ @ + - / (at most 1024 "
                    "characters); it is written into pgbouncer.ini as the directory of userlist.txt and "
                    "pgbouncer_hba.conf",
                )
            ]
        )


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


def budget_plan(
    toml_text: str,
    secrets: Mapping[str, str],
    *,
    instances: Mapping[str, Any] | int = 1,
    scope: str = DEFAULT_SCOPE,
    servers: Mapping[str, Any] | None = None,
) -> Plan:
    """The configuration with per-instance numbers for this fleet, and the budget of every PostgreSQL server.

    ``instances`` is {pooler host: pgbouncer instances} (or one total); ``scope`` says what the TOML's
    numbers are budgets for (budget.SCOPES); ``servers`` is {"host:port": {max_connections, ...}}
    (budget.SERVER_KEYS).
    The default (one instance) leaves every number as written, as autopg-pool's single pgbouncer used it.
    Raises ConfigError when a number cannot be divided or a server's budget is exceeded.
    """
    config = parse_config(toml_text, secrets)
    return plan(config, make_fleet(instances, scope), make_limits(servers))


def render_files(
    toml_text: str,
    secrets: Mapping[str, str],
    *,
    config_dir: str = DEFAULT_CONFIG_DIR,
    salt_key: str | bytes | None = None,
    previous_userlist: str | None = None,
    instances: Mapping[str, Any] | int = 1,
    scope: str = DEFAULT_SCOPE,
    servers: Mapping[str, Any] | None = None,
    network: Mapping[str, Any] | None = None,
    tls: Mapping[str, Any] | None = None,
    standalone: bool = False,
) -> dict[str, str]:
    """The three files, by name. See hashing.py for how salt_key and previous_userlist keep output stable.

    pgbouncer.ini carries the per-instance numbers of :func:`budget_plan` for ``instances`` and ``scope``,
    and the TLS settings of the inventory's ``tls``; the HBA rules follow ``network``. ``standalone`` (the
    CLI's default) renders one pgbouncer listening where [pgbouncer] says, as autopg-pool did, instead of the
    roles' per-instance layout (render.py's module doc); ``network`` is then not used.
    """
    check_config_dir(config_dir)
    budget = budget_plan(toml_text, secrets, instances=instances, scope=scope, servers=servers)
    return _files(
        budget.config,
        network=network,
        tls=tls,
        config_dir=config_dir,
        salt_key=salt_key,
        previous_userlist=previous_userlist,
        standalone=standalone,
    )


def _files(
    config: Config,
    *,
    network: Mapping[str, Any] | None,
    tls: Mapping[str, Any] | None,
    config_dir: str,
    salt_key: str | bytes | None,
    previous_userlist: str | None,
    standalone: bool = False,
) -> dict[str, str]:
    net = _network(None if standalone else network)
    tls_settings, _ = _tls(config, tls, config_dir)
    ini = render_ini(config, config_dir=config_dir, extra_settings=tls_settings, standalone=standalone)
    _check_sections(ini)
    files = {
        "pgbouncer.ini": ini,
        "userlist.txt": render_userlist(
            config, salt_key=_salt_bytes(salt_key), previous_userlist=previous_userlist
        ),
        "pgbouncer_hba.conf": render_hba(
            config,
            network=net,
            client_tls_required=tls_settings["client_tls_sslmode"] in CLIENT_TLS_REQUIRED,
            standalone=standalone,
        ),
    }
    return files


def _tls_on_step(config: Config, tls: Mapping[str, Any] | None, config_dir: str) -> dict[str, str]:
    """{TLS_ON_STEP: pgbouncer.ini with client_tls_sslmode = prefer} when the plan requires client TLS."""
    tls_settings, _ = _tls(config, tls, config_dir)
    if tls_settings["client_tls_sslmode"] not in CLIENT_TLS_REQUIRED:
        return {}
    step = {**tls_settings, "client_tls_sslmode": "prefer"}
    return {TLS_ON_STEP: render_ini(config, config_dir=config_dir, extra_settings=step)}


# Not a file of its own: pgbouncer.ini with client_tls_sslmode = prefer, which the pgbouncer role deploys and
# reloads first when it turns client TLS on for running instances (roles/pgbouncer/tasks/tls_on.yml). A client
# whose SSLRequest an instance answered 'N' sends its startup packet in plaintext; an instance that reloaded
# to `require` in between would refuse it ("SSL required"). Under `prefer` every new client is offered TLS and
# plaintext is still accepted, so the reload to the planned mode a moment later finds no plaintext handshake
# in flight.
TLS_ON_STEP = "pgbouncer.ini:tls-on-step"


def _check_sections(ini: str) -> None:
    """pgbouncer resets every [pgbouncer] setting at each [pgbouncer] header, so instance-N.ini cannot open
    its own section after its %include: it continues the shared file's last section, which must be the one
    [pgbouncer]. A file that breaks this is the renderer's bug; it never reaches a host."""
    sections = re.findall(r"(?m)^\s*\[([^\]]+)\]", ini)
    if sections.count("pgbouncer") != 1 or sections[-1] != "pgbouncer":
        raise ConfigError(
            [
                Problem(
                    "pgbouncer.ini",
                    f"the rendered file has the sections {sections}; the instance files need exactly one "
                    "[pgbouncer] section, last. This is a bug in the autopgpool renderer: please report it "
                    "with your autopgpool.toml",
                )
            ]
        )


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
    instances: Mapping[str, Any] | int = 1,
    scope: str = DEFAULT_SCOPE,
    servers: Mapping[str, Any] | None = None,
    network: Mapping[str, Any] | None = None,
    tls: Mapping[str, Any] | None = None,
    config_dir: str = DEFAULT_CONFIG_DIR,
) -> dict[str, Any]:
    """Facts the roles need (ports, sizes, names, fd limit, restart-only settings, TLS, addresses). Holds no
    secret.

    Sizes and the fd limit are per instance for the fleet given (see :func:`budget_plan`);
    ``connection_budget`` holds the budget plan (``budget_lines``: the same for people to read).

    A remote host, port, database or username that came from a variable is shown as written (``"$DB_HOST"``),
    never expanded. ``warnings`` lists what works but may surprise a user of autopg-pool (for the roles to
    print); like errors, they name keys and variables, never values.
    """
    budget = budget_plan(toml_text, secrets, instances=instances, scope=scope, servers=servers)
    return _summary(budget, network, tls, config_dir)


def deployment_plan(
    toml_text: str,
    secrets: Mapping[str, str],
    *,
    instances: Mapping[str, Any] | int = 1,
    scope: str = DEFAULT_SCOPE,
    servers: Mapping[str, Any] | None = None,
    network: Mapping[str, Any] | None = None,
    tls: Mapping[str, Any] | None = None,
    config_dir: str = DEFAULT_CONFIG_DIR,
    salt_key: str | bytes | None = None,
    base_ports: Mapping[str, Any] | None = None,
    runtime_root: str = DEFAULT_RUNTIME_ROOT,
) -> dict[str, Any]:
    """Everything a run deploys, from one parse: ``summary`` (:func:`summarize`, no secret), ``files``
    (:func:`render_files`: holds secrets; when client TLS is required also :data:`TLS_ON_STEP`) and
    ``hosts``: for each pooler host of ``instances``, its instance numbers, the endpoints HAProxy balances
    over (address, TCP port ``base_ports[host]`` + N, unix socket under ``runtime_root``/N) and HAProxy's
    numbers (frontdoor.haproxy_limits).
    """
    check_config_dir(config_dir)
    budget = budget_plan(toml_text, secrets, instances=instances, scope=scope, servers=servers)
    summary = _summary(budget, network, tls, config_dir)
    ports = dict(base_ports or {})
    hosts = {}
    for host, count in budget.fleet.instances.items():
        base = _as_port(ports.get(host), host, count)
        hosts[host] = {
            "instances": list(range(1, count + 1)),
            "endpoints": [
                {
                    "id": n,
                    "address": summary["instance_address"],
                    "port": base + n,
                    "socket_dir": f"{runtime_root}/{n}",
                    "socket": f"{runtime_root}/{n}/.s.PGSQL.{base + n}",
                }
                for n in range(1, count + 1)
            ],
            "haproxy": haproxy_limits(summary["max_client_conn"], count),
        }
    return {
        "summary": summary,
        "files": _files(
            budget.config,
            network=network,
            tls=tls,
            config_dir=config_dir,
            salt_key=salt_key,
            previous_userlist=None,
        )
        | _tls_on_step(budget.config, tls, config_dir),
        "hosts": hosts,
    }


def _as_port(value: Any, host: str, instances: int) -> int:
    """The host's base port: instance N listens on base + N, so every one of them must be a port too."""
    try:
        port = int(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else 0
    except ValueError:
        port = 0
    if not 1024 <= port <= 65535 - instances:
        raise ConfigError(
            [
                Problem(
                    "pgbouncer_base_port",
                    f"expected a port from 1024 to {65535 - instances} for host {host} "
                    f"(its {instances} instances listen on the next ports)",
                )
            ]
        )
    return port


def _summary(
    budget: Plan, network: Mapping[str, Any] | None, tls: Mapping[str, Any] | None, config_dir: str
) -> dict[str, Any]:
    config = budget.config
    net = _network(network)
    tls_settings, tls_files = _tls(config, tls, config_dir)
    default_mode = config.settings["pool_mode"]
    return {
        "listen_addr": config.listen_addr,
        "listen_port": config.listen_port,
        "max_client_conn": config.int_setting("max_client_conn"),
        "pools": {
            pool.name: {
                "host": pool.remote.shown("host"),
                "port": pool.remote.port
                if "port" not in dict(pool.remote.written)
                else pool.remote.shown("port"),
                "database": pool.remote.shown("database"),
                "username": pool.remote.shown("username"),
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
        # What pgbouncer asks each user for (its userlist entry and hba method): the front-door check may
        # answer md5 only when the inventory allows it over verified TLS (site.yml first play).
        "user_auth_types": {user.username: config.user_auth_type(user) for user in config.users},
        "admin_users": list(config.admin_users),
        "stats_users": list(config.stats_users),
        "auth_type": config.auth_type,
        # The role requires a SCRAM salt key exactly when some user's verifier is SCRAM.
        "uses_scram": any(config.user_auth_type(user) == "scram-sha-256" for user in config.users),
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
        "warnings": [
            str(w) for w in (*config.warnings, *exposure_warnings(config, tls_settings["client_tls_sslmode"]))
        ],
        "connection_budget": budget.as_dict(),
        "budget_lines": budget.lines(),
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


#: What the playbook reads from a PostgreSQL server whose limits the inventory does not declare.
#: current_setting with missing_ok answers NULL for reserved_connections on PostgreSQL before 16.
LIMITS_QUERY = (
    "SELECT current_setting('max_connections'), current_setting('superuser_reserved_connections'), "
    "coalesce(current_setting('reserved_connections', true), '0')"
)


#: The probe's sslmode for each effective server_tls_sslmode of pgbouncer. Whenever pgbouncer verifies, the
#: login that carries the owner's password verifies the CA and the name (verify-full, also under verify-ca);
#: otherwise it encrypts when pgbouncer would, and answers SCRAM only (postgres_ping's default auth_methods):
#: a server that asks for MD5 or a cleartext password over an unverified connection is refused before anything
#: derived from the password leaves. SCRAM without channel binding sends a proof that is useless without the
#: password, and the server must prove it knows the verifier; a relay in the middle could still use that one
#: login, as it could pgbouncer's own with the same sslmode. allow is probed as prefer: TLS if offered.
PROBE_SSLMODES = {
    "disable": "disable",
    "allow": "prefer",
    "prefer": "prefer",
    "require": "require",
    "verify-ca": "verify-full",
    "verify-full": "verify-full",
}
#: What the probe answers with pgbouncer's server sslmode verifying (a verified server may ask for MD5 or a
#: cleartext password, as pgbouncer would send them), and without.
PROBE_AUTH_VERIFIED = ["scram-sha-256", "md5", "password"]
PROBE_AUTH_UNVERIFIED = ["scram-sha-256"]


def server_sslmode(config: Config, tls: Mapping[str, Any] | None) -> str:
    """pgbouncer's effective server_tls_sslmode: the inventory's (``tls``, as the plan gets it) merged with
    the TOML's exactly as pgbouncer.ini is rendered (tls.plan_settings); raises ConfigError on a
    contradiction."""
    settings, _ = _tls(config, tls, DEFAULT_CONFIG_DIR)
    return settings["server_tls_sslmode"]


def limit_probes(
    toml_text: str,
    secrets: Mapping[str, str],
    *,
    servers: Mapping[str, Any] | None = None,
    tls: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One login per PostgreSQL server whose max_connections ``servers`` does not declare: the first pool's
    remote (host, port, database, username, password) and how the postgres_ping module connects: sslmode,
    server_name and auth_methods from pgbouncer's effective server sslmode (``tls`` is the inventory's part,
    as for :func:`deployment_plan`; see PROBE_SSLMODES). The password is a secret. A declared server is
    never logged in to.
    """
    config = parse_config(toml_text, secrets)
    declared = make_limits(servers)
    mode = server_sslmode(config, tls)
    verified = mode in VERIFYING
    probes: dict[str, dict[str, Any]] = {}
    for pool in config.pools:
        r = pool.remote
        key = server_key(r.host, r.port)
        if key in declared or key in probes:
            continue
        probes[key] = {
            "server": key,
            "shown": server_key(r.shown("host"), r.shown("port")),
            "host": r.host,
            "port": r.port,
            "database": r.database,
            "username": r.username,
            "password": r.password,
            "sslmode": PROBE_SSLMODES[mode],
            # The name pgbouncer connects to (host= in [databases]) is the name it verifies.
            "server_name": r.host,
            "auth_methods": list(PROBE_AUTH_VERIFIED if verified else PROBE_AUTH_UNVERIFIED),
            "query": LIMITS_QUERY,
        }
    return list(probes.values())


def server_tls_checks(
    toml_text: str, secrets: Mapping[str, str], *, tls: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Every PostgreSQL server the pools name (declared limits or not), when pgbouncer's effective server
    sslmode verifies: host, port, the same sslmode and the name pgbouncer will check, for a TLS-only
    postgres_ping with pgbouncer_server_tls_ca_file before any host changes. Empty when pgbouncer verifies
    nothing. No secrets.
    """
    config = parse_config(toml_text, secrets)
    mode = server_sslmode(config, tls)
    if mode not in VERIFYING:
        return []
    checks: dict[str, dict[str, Any]] = {}
    for pool in config.pools:
        r = pool.remote
        # pgbouncer tries each host of a comma list (verifying each one's name) and speaks no TLS over a unix
        # socket (a host starting with "/"): check every TCP host on its own, never a directory.
        hosts = [h.strip() for h in r.host.split(",")]
        written = r.shown("host")
        for i, host in enumerate(hosts):
            if not host or host.startswith("/"):
                continue
            key = server_key(host, r.port)
            # A host from a $VAR is shown as written (with its position in a list), never its value.
            shown_host = host if written == r.host else (written if len(hosts) == 1 else f"{written}[{i}]")
            checks.setdefault(
                key,
                {
                    "server": key,
                    "shown": server_key(shown_host, r.shown("port")),
                    "host": host,
                    "port": r.port,
                    # Exactly pgbouncer's check: verify-ca compares no name, so neither does this one.
                    "sslmode": mode,
                    "server_name": host,
                },
            )
    return list(checks.values())


def server_limits(declared: Mapping[str, Any] | None, reads: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Declared limits completed by the servers' answers to LIMITS_QUERY.

    ``reads`` holds ``{"server": "host:port", "rows": [[max, superuser_reserved, reserved]]}`` per probe (or
    the postgres_ping loop's registered results, whose "item" is the probe; a skipped one is left out: the
    run stops later, see validate.yml); what the inventory declares for a server (other_clients, say) is kept.
    Raises ConfigError on an answer that is not three whole numbers.
    """
    merged: dict[str, Any] = {
        k: dict(v) if isinstance(v, Mapping) else v for k, v in (declared or {}).items()
    }
    problems: list[Problem] = []
    for read in reads:
        if read.get("skipped"):
            continue
        # A registered loop result works as is: the server is then under "item" (the probe).
        item = read.get("item")
        server = str(read.get("server") or (item.get("server") if isinstance(item, Mapping) else ""))
        rows = read.get("rows") or []
        values = list(rows[0]) if rows and isinstance(rows[0], Sequence) else []
        if len(values) != 3 or not all(isinstance(v, str) and v.isdigit() for v in values):
            problems.append(
                Problem(f"PostgreSQL server {server}", "did not answer max_connections as numbers")
            )
            continue
        entry = dict(merged.get(server) or {})
        entry.update(
            max_connections=int(values[0]),
            superuser_reserved_connections=int(values[1]),
            reserved_connections=int(values[2]),
            source="server",
        )
        merged[server] = entry
    if problems:
        raise ConfigError(problems)
    make_limits(merged)
    return merged
