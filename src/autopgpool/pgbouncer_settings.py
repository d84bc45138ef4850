"""The settings of pgbouncer 1.25.2's ``[pgbouncer]`` section, and which of them a reload can change.

Facts taken from pgbouncer 1.25.2 (``doc/config.md`` for the names and meanings; the parameter table in
``src/main.c`` for whether a setting is applied on ``RELOAD``/SIGHUP: the ones flagged ``CF_NO_RELOAD`` need a
restart). The Windows-only ``service_name`` alias is left out: we deploy to Linux.

``kind`` is what the value must look like: ``int`` (an integer), ``seconds`` (a number of seconds, fractions
allowed), ``str`` (free text) or a tuple of the accepted words.
"""

from __future__ import annotations

from dataclasses import dataclass

VERSION = "1.25.2"

POOL_MODES = ("session", "transaction", "statement")
AUTH_TYPES = ("any", "trust", "plain", "md5", "cert", "hba", "scram-sha-256")
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")

Kind = str | tuple[str, ...]


@dataclass(frozen=True)
class Setting:
    """One pgbouncer setting: its name, the shape of its value, and whether SIGHUP/RELOAD applies a change."""

    name: str
    kind: Kind
    reload: bool


def _s(name: str, kind: Kind, *, reload: bool) -> Setting:
    return Setting(name, kind, reload)


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        _s("admin_users", "str", reload=True),
        _s("application_name_add_host", "int", reload=True),
        _s("auth_dbname", "str", reload=True),
        _s("auth_file", "str", reload=True),
        _s("auth_hba_file", "str", reload=True),
        _s("auth_ident_file", "str", reload=True),
        _s("auth_ldap_options", "str", reload=True),
        _s("auth_query", "str", reload=True),
        _s("auth_type", AUTH_TYPES, reload=True),
        _s("auth_user", "str", reload=True),
        _s("autodb_idle_timeout", "seconds", reload=True),
        _s("cancel_wait_timeout", "seconds", reload=True),
        _s("client_idle_timeout", "seconds", reload=True),
        _s("client_login_timeout", "seconds", reload=True),
        _s("client_tls13_ciphers", "str", reload=True),
        _s("client_tls_ca_file", "str", reload=True),
        _s("client_tls_cert_file", "str", reload=True),
        _s("client_tls_ciphers", "str", reload=True),
        _s("client_tls_dheparams", "str", reload=True),
        _s("client_tls_ecdhcurve", "str", reload=True),
        _s("client_tls_key_file", "str", reload=True),
        _s("client_tls_protocols", "str", reload=True),
        _s("client_tls_sslmode", SSLMODES, reload=True),
        _s("conffile", "str", reload=True),
        _s("default_pool_size", "int", reload=True),
        _s("disable_pqexec", "int", reload=False),
        _s("dns_max_ttl", "seconds", reload=True),
        _s("dns_nxdomain_ttl", "seconds", reload=True),
        _s("dns_zone_check_period", "seconds", reload=True),
        _s("idle_transaction_timeout", "seconds", reload=True),
        _s("ignore_startup_parameters", "str", reload=True),
        _s("job_name", "str", reload=False),
        _s("listen_addr", "str", reload=False),
        _s("listen_backlog", "int", reload=False),
        _s("listen_port", "int", reload=False),
        _s("log_connections", "int", reload=True),
        _s("log_disconnections", "int", reload=True),
        _s("log_pooler_errors", "int", reload=True),
        _s("log_stats", "int", reload=True),
        _s("logfile", "str", reload=True),
        _s("max_client_conn", "int", reload=True),
        _s("max_db_client_connections", "int", reload=True),
        _s("max_db_connections", "int", reload=True),
        _s("max_packet_size", "int", reload=True),
        _s("max_prepared_statements", "int", reload=True),
        _s("max_user_client_connections", "int", reload=True),
        _s("max_user_connections", "int", reload=True),
        _s("min_pool_size", "int", reload=True),
        _s("peer_id", "int", reload=True),
        _s("pidfile", "str", reload=False),
        _s("pkt_buf", "int", reload=False),
        _s("pool_mode", POOL_MODES, reload=True),
        _s("query_timeout", "seconds", reload=True),
        _s("query_wait_notify", "int", reload=True),
        _s("query_wait_timeout", "seconds", reload=True),
        _s("reserve_pool_size", "int", reload=True),
        _s("reserve_pool_timeout", "seconds", reload=True),
        _s("resolv_conf", "str", reload=False),
        _s("sbuf_loopcnt", "int", reload=True),
        _s("scram_iterations", "int", reload=True),
        _s("server_check_delay", "seconds", reload=True),
        _s("server_check_query", "str", reload=True),
        _s("server_connect_timeout", "seconds", reload=True),
        _s("server_fast_close", "int", reload=True),
        _s("server_idle_timeout", "seconds", reload=True),
        _s("server_lifetime", "seconds", reload=True),
        _s("server_login_retry", "seconds", reload=True),
        _s("server_reset_query", "str", reload=True),
        _s("server_reset_query_always", "int", reload=True),
        _s("server_round_robin", "int", reload=True),
        _s("server_tls13_ciphers", "str", reload=True),
        _s("server_tls_ca_file", "str", reload=True),
        _s("server_tls_cert_file", "str", reload=True),
        _s("server_tls_ciphers", "str", reload=True),
        _s("server_tls_key_file", "str", reload=True),
        _s("server_tls_protocols", "str", reload=True),
        _s("server_tls_sslmode", SSLMODES, reload=True),
        _s("so_reuseport", "int", reload=False),
        _s("stats_period", "int", reload=True),
        _s("stats_users", "str", reload=True),
        _s("suspend_timeout", "seconds", reload=True),
        _s("syslog", "int", reload=True),
        _s("syslog_facility", "str", reload=True),
        _s("syslog_ident", "str", reload=True),
        _s("tcp_defer_accept", "int", reload=True),
        _s("tcp_keepalive", "int", reload=True),
        _s("tcp_keepcnt", "int", reload=True),
        _s("tcp_keepidle", "int", reload=True),
        _s("tcp_keepintvl", "int", reload=True),
        _s("tcp_socket_buffer", "int", reload=True),
        _s("tcp_user_timeout", "int", reload=True),
        _s("track_extra_parameters", "str", reload=False),
        _s("transaction_timeout", "seconds", reload=True),
        _s("unix_socket_dir", "str", reload=False),
        _s("unix_socket_group", "str", reload=False),
        _s("unix_socket_mode", "int", reload=False),
        _s("user", "str", reload=False),
        _s("verbose", "int", reload=True),
    )
}


def needs_restart(name: str) -> bool:
    """True when pgbouncer cannot apply a change of ``name`` on reload (a rolling restart is needed)."""
    return not SETTINGS[name].reload


# ---------------------------------------------------------------------------------------------------------
# What pgbouncer 1.25.2 does with numbers (lib/usual/cfparser.c, src/main.c, src/stats.c)
#
# * Integer settings (CF_INT) are parsed with strtol() into a long and stored in a C int without a range
#   check: 2147483648 becomes -2147483648, and anything past the long's range saturates first and becomes -1.
# * max_packet_size (CF_UINT) goes through strtoul() into an unsigned int: it wraps at 2^32; we stop below
#   2^31, where CVE-2026-107348 starts.
# * 0 is a number for some settings and "no limit" for others: a pool size of 0 (default_pool_size, a pool's
#   pool_size) leaves the pool uncapped (launch_new_connection checks the size only when it is above 0), and
#   max_db_connections / max_user_connections 0 mean no cap (per database / user: "use the global one").
# * Times (CF_TIME_USEC) are parsed with strtod() and stored as whole microseconds in a 64-bit unsigned
#   integer, truncating: 0.0000001 becomes 0, which for a timeout means "disabled". Past 2^64 microseconds the
#   conversion is undefined in C; we stop at 2^63 - 1 microseconds, where time arithmetic is still exact.

INT_MAX = 2**31 - 1
UINT_MAX = 2**32 - 1
USEC_PER_SECOND = 1_000_000
MAX_SECONDS = (2**63 - 1) // USEC_PER_SECOND  # 9223372036854 s, about 292,000 years

#: Integer settings with other bounds than 0..INT_MAX: (low, high, why not lower, why not higher).
INT_BOUNDS: dict[str, tuple[int, int, str, str]] = {
    "max_packet_size": (
        0,
        INT_MAX,
        "",
        "a packet length of 2^31 or more is where CVE-2026-107348 starts in pgbouncer 1.25.2 (the default, "
        f"{INT_MAX}, is the largest safe value)",
    ),
    "max_client_conn": (
        1,
        INT_MAX - 10,
        "pgbouncer would accept no client",
        "pgbouncer adds 10 to it for its own file descriptors, which would overflow its int",
    ),
    "default_pool_size": (
        1,
        INT_MAX,
        "pgbouncer caps a pool only when its size is above 0, so 0 means no limit for every pool without a "
        "pool_size of its own (a server connection for every waiting client, which no budget can count)",
        "",
    ),
    "stats_period": (
        1,
        INT_MAX,
        "pgbouncer would re-arm its statistics timer on every pass of its event loop",
        "",
    ),
    "scram_iterations": (1, INT_MAX, "SCRAM needs at least one iteration", ""),
}


def int_bounds(name: str) -> tuple[int, int, str, str]:
    """(low, high, why not lower, why not higher) for an integer setting."""
    return INT_BOUNDS.get(name, (0, INT_MAX, "", ""))


def as_pgbouncer_reads_int(name: str, number: int) -> int:
    """The value pgbouncer 1.25.2 would store for ``name = <number>`` (wrapping, as described above)."""
    long_value = max(-(2**63), min(2**63 - 1, number))
    if name == "max_packet_size":
        return long_value % 2**32
    return (long_value + 2**31) % 2**32 - 2**31


def as_pgbouncer_reads_seconds(seconds: float) -> int:
    """Whole microseconds pgbouncer 1.25.2 would store for a time setting (truncated)."""
    return int(USEC_PER_SECOND * seconds)
