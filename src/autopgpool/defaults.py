"""Opinionated defaults: every value autopgpool chooses for you, with the reason, in one place.

Anything here can be overridden under ``[pgbouncer]`` (or ``[pgbouncer.passthrough_kwargs]``) in
autopgpool.toml. docs/configuration.md repeats this table for operators; keep the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Default:
    value: str | int | float
    reason: str


#: Where clients connect (autopg-pool's defaults). In our deployment HAProxy binds here; pgbouncer instances
#: sit behind it on their own per-instance ports, so these never reach pgbouncer.ini.
CLIENT_LISTEN_ADDR = "0.0.0.0"  # noqa: S104 - client-facing bind address, as autopg-pool defines it
CLIENT_LISTEN_PORT = 6432

#: Hash and hba method for users that set no ``auth_type`` of their own. autopg-pool defaults to md5; MD5
#: passwords are deprecated in PostgreSQL 18 and SCRAM never sends or stores a password-equivalent.
AUTH_TYPE = "scram-sha-256"

#: Added to the file-descriptor formula for everything that is not a client or server connection: the TCP and
#: Unix listeners, the log file, the pidfile, c-ares DNS sockets, peer connections, systemd notify, stdio.
FD_MARGIN = 100

#: pgbouncer settings written to pgbouncer.ini unless the TOML sets them.
SETTINGS: dict[str, Default] = {
    "pool_mode": Default(
        "transaction",
        "autopg-pool's default: the mode that lets a small server pool serve many clients.",
    ),
    "max_client_conn": Default(
        100, "autopg-pool's default; raise it together with the fd limit (see summary)."
    ),
    "default_pool_size": Default(
        10, "autopg-pool's default: server connections per pool unless the pool sets pool_size."
    ),
    # Rendered as "extra_float_digits, options". On pgbouncer 1.25.2 (and 1.26.0) an `options` startup
    # parameter of "-c=" (an empty key) makes pgbouncer search this list for "" and spin forever, before any
    # authentication (CVE-2026-107349, fixed in 1.26.1). The search ends only if the list holds a comma
    # followed by whitespace (or a trailing comma): a two-item ", "-joined list does, "extra_float_digits"
    # alone or "options" alone does not (tests/integration/test_startup_options_cve.py measures both).
    "ignore_startup_parameters": Default(
        "extra_float_digits, options",
        "extra_float_digits is autopg-pool's default (JDBC and others send it at startup; pgbouncer would "
        "otherwise refuse the login). options closes CVE-2026-107349 on the pinned pgbouncer: an "
        "unauthenticated '-c=' startup option no longer hangs the instance. Clients' own options (PGOPTIONS, "
        "e.g. -c search_path=...) are then ignored instead of refused, except the settings pgbouncer tracks.",
    ),
    "idle_transaction_timeout": Default(
        60,
        "autopg-pool's default: a client idle inside a transaction for a minute holds a server connection "
        "everybody else is queueing for; cut it loose.",
    ),
    "max_prepared_statements": Default(
        200,
        "Protocol-level prepared statements work under transaction pooling (asyncpg, psycopg, JDBC). "
        "autopg-pool uses 10, which thrashes as soon as an application has more than 10 distinct statements; "
        "200 is pgbouncer's own default.",
    ),
    "query_wait_timeout": Default(
        30,
        "A client queued 30 s for a server connection is better failed than kept: overload turns into errors "
        "the application can retry instead of a growing queue (pgbouncer's default is 120 s).",
    ),
    "server_login_retry": Default(
        1,
        "After a failed server login pgbouncer refuses clients for this long without trying again. "
        "pgbouncer's 15 s would keep a pool dark for 15 s after PostgreSQL is back; with 1 s (plus "
        "server_connect_timeout) the pool serves again within 3 s.",
    ),
    "server_connect_timeout": Default(
        2,
        "A connection attempt to a host that is down fails after 2 s instead of 15 s, so together with "
        "server_login_retry the next attempt, the one that reaches the restarted server, starts within 3 s.",
    ),
    "server_check_delay": Default(
        10,
        "A server connection idle for more than 10 s gets pgbouncer's (empty) check query before it is "
        "handed out, so a connection broken while idle is replaced instead of failing a client's query "
        "(pgbouncer's default waits 30 s).",
    ),
    "log_connections": Default(
        0,
        "One log line per client session, not two: log_disconnections (on) already names the database, user, "
        "session age and the reason, failed logins included. Two lines per connection reach journald's "
        "per-unit rate limit (10,000 lines per 30 s) at 167 connections per second, and suppressed lines "
        "would include the errors (pgbouncer's default is 1).",
    ),
    "server_reset_query": Default(
        "DISCARD ALL",
        "Stated explicitly: session-mode pools hand the next client a clean session. Transaction and "
        "statement pools skip it (server_reset_query_always stays 0), as pgbouncer intends.",
    ),
    "client_tls_sslmode": Default(
        "disable",
        "Clients reach pgbouncer only through HAProxy or loopback; TLS towards clients is a deployment "
        "concern configured by the roles, not a per-pool setting.",
    ),
}
