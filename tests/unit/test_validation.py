"""One test per class of problem, asserting the exact key path and message."""

import pytest

from autopgpool import ConfigError, render_files, summarize, validate

BASE_USER = '[[users]]\nusername = "u"\npassword = "pw"\ngrants = ["main"]\n'
BASE_POOL = '[pools.main.remote]\nhost = "h"\nport = 5432\ndatabase = "d"\nusername = "r"\npassword = "rpw"\n'


def problems(toml: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as err:
        validate(toml, env or {})
    return [str(p) for p in err.value.problems]


def test_valid_base() -> None:
    validate(BASE_USER + BASE_POOL, {})


def test_toml_syntax_error_has_line_number() -> None:
    (msg,) = problems(BASE_USER + "[pools.main\n")
    assert msg.startswith("TOML syntax error:")
    assert "line 5" in msg


def test_port_out_of_range_and_not_a_number() -> None:
    assert problems(BASE_USER + BASE_POOL.replace("5432", '"abc"')) == [
        'pools.main.remote.port: expected an integer from 1 to 65535, got "abc"'
    ]
    assert problems(BASE_USER + BASE_POOL.replace("5432", "70000")) == [
        "pools.main.remote.port: expected an integer from 1 to 65535, got 70000"
    ]


def test_string_port_accepted() -> None:
    validate(BASE_USER + BASE_POOL.replace("5432", '"5433"'), {})


def test_unknown_key_suggests_nearest() -> None:
    assert problems(BASE_USER.replace("grants", "grant") + BASE_POOL) == [
        'users[0].grant: unknown key, did you mean "grants"?',
        "users[0].grants: required key is missing",
    ]
    assert problems(BASE_USER + BASE_POOL + "[pgbouncer]\nmax_client_con = 5\n") == [
        'pgbouncer.max_client_con: unknown pgbouncer setting, did you mean "max_client_conn"?'
    ]
    assert problems(BASE_USER + BASE_POOL + "[pgbouncer.passthrough_kwargs]\nserver_lifetme = 5\n") == [
        "pgbouncer.passthrough_kwargs.server_lifetme: unknown pgbouncer setting, "
        'did you mean "server_lifetime"?'
    ]


def test_replica_is_ignored_with_a_warning() -> None:
    # Nothing inside is read: not even a variable that is not set, or a value that would be invalid.
    toml = BASE_USER + BASE_POOL + '[pools.main.replica]\npool_mode = "$UNSET"\n[pools.main.replica.remote]\n'
    toml += 'host = "replica.internal"\nport = "x"\n'
    info = summarize(toml, {})
    assert info["warnings"] == [
        "pools.main.replica: ignored: autopg-pool documented [pools.<name>.replica] but it never had any "
        "effect; declare the replica as a pool of its own to use it, and remove this table to silence this "
        "warning"
    ]
    assert list(info["pools"]) == ["main"]
    assert render_files(toml, {}, salt_key="k") == render_files(BASE_USER + BASE_POOL, {}, salt_key="k")


def test_grant_to_unknown_pool() -> None:
    assert problems(BASE_USER.replace('["main"]', '["mian"]') + BASE_POOL) == [
        'users[0].grants[0]: grant to unknown pool "mian", did you mean "main"?'
    ]


def test_admin_and_stats_users_must_be_declared() -> None:
    toml = BASE_USER + BASE_POOL + '[pgbouncer]\nadmin_users = ["root"]\nstats_users = ["u", "mon"]\n'
    assert problems(toml) == [
        'pgbouncer.admin_users[0]: user "root" is not declared in [[users]]',
        'pgbouncer.stats_users[1]: user "mon" is not declared in [[users]]',
    ]


def test_duplicate_usernames() -> None:
    assert problems(BASE_USER + BASE_USER + BASE_POOL) == [
        'users[1].username: duplicate username "u", first declared at users[0].username'
    ]


def test_empty_names() -> None:
    assert problems(BASE_USER.replace('"u"', '""') + BASE_POOL) == ["users[0].username: must not be empty"]
    toml = BASE_USER.replace('["main"]', '[""]') + BASE_POOL.replace("pools.main", 'pools.""')
    assert problems(toml) == [
        'pools."": pool name must not be empty',
        "users[0].grants[0]: must not be empty",
    ]


def test_bad_enums() -> None:
    toml = (
        BASE_USER.replace('grants = ["main"]', 'grants = ["main"]\nauth_type = "scram"')
        + '[pools.main]\npool_mode = "tx"\n'
        + BASE_POOL
        + '[pgbouncer]\nauth_type = "trust"\n'
    )
    assert problems(toml) == [
        'pools.main.pool_mode: expected one of session, transaction, statement; got "tx"',
        'users[0].auth_type: expected one of scram-sha-256, md5; got "scram"',
        'pgbouncer.auth_type: expected one of scram-sha-256, md5; got "trust": pgbouncer always runs with '
        "auth_type = hba here, and each user logs in with md5 or scram-sha-256 as pgbouncer_hba.conf says",
    ]


def test_sizes_out_of_range() -> None:
    toml = BASE_USER + "[pools.main]\npool_size = -1\nmin_pool_size = 50\n" + BASE_POOL
    toml += "[pgbouncer]\nmax_client_conn = 0\n"
    assert problems(toml) == [
        "pools.main.pool_size: expected an integer from 0 to 100000, got -1",
        "pgbouncer.max_client_conn: expected an integer from 1 to 2147483637, got 0: pgbouncer would "
        "accept no client",
        "pools.main.min_pool_size: min_pool_size 50 is larger than the pool size 10",
    ]


def test_unsafe_characters() -> None:
    toml = BASE_USER.replace('"pw"', '"a\\nb"') + BASE_POOL.replace('"h"', '"h\\u0000"')
    assert problems(toml) == [
        "pools.main.remote.host: value contains a NUL, CR or LF character, which cannot be written safely",
        "users[0].password: the value contains a NUL, CR or LF character, which cannot be written safely",
    ]
    # a secret from the environment is checked too, and its value is not echoed
    msgs = problems(BASE_USER.replace('"pw"', '"$PW"') + BASE_POOL, {"PW": "line1\nline2"})
    assert msgs == [
        "users[0].password: the value contains a NUL, CR or LF character, which cannot be written safely"
    ]
    assert "line1" not in "".join(msgs)


def test_unrepresentable_names() -> None:
    toml = BASE_USER.replace('"u"', '"o\'brien"').replace('["main"]', '["it\'s"]')
    toml += BASE_POOL.replace("pools.main", 'pools."it\'s"')
    assert problems(toml) == [
        'pools."it\'s": pool name contains a single quote, which pgbouncer.ini cannot represent in a '
        "database name",
        "users[0].username: username contains a single quote, which pgbouncer.ini cannot represent in a "
        "[users] key",
    ]
    assert problems(BASE_USER.replace('"u"', '"a,b"') + BASE_POOL) == [
        "users[0].username: username contains a comma, which pgbouncer's admin_users/stats_users lists "
        "cannot represent"
    ]
    toml = BASE_USER.replace('["main"]', '["pgbouncer"]') + BASE_POOL.replace("pools.main", "pools.pgbouncer")
    assert problems(toml) == [
        'pools.pgbouncer: pool name "pgbouncer" is reserved for pgbouncer\'s admin console'
    ]


def test_deployment_owned_settings_rejected() -> None:
    toml = BASE_USER + BASE_POOL + '[pgbouncer.passthrough_kwargs]\nlogfile = "/tmp/x"\nlisten_port = 1\n'
    assert problems(toml) == [
        "pgbouncer.passthrough_kwargs.logfile: logfile cannot be set in autopgpool.toml: per-instance, "
        "set by the Ansible role",
        "pgbouncer.passthrough_kwargs.listen_port: write this as [pgbouncer].listen_port, which autopgpool "
        "interprets",
    ]


def test_setting_set_twice_and_bad_setting_values() -> None:
    toml = BASE_USER + BASE_POOL
    toml += '[pgbouncer]\nserver_lifetime = "soon"\nquery_timeout = 5\nclient_tls_sslmode = "on"\n'
    toml += "[pgbouncer.passthrough_kwargs]\nquery_timeout = 6\n"
    assert problems(toml) == [
        'pgbouncer.server_lifetime: expected a number of seconds (0 or more), got "soon"',
        "pgbouncer.client_tls_sslmode: expected one of disable, allow, prefer, require, verify-ca, "
        'verify-full; got "on"',
        "pgbouncer.passthrough_kwargs.query_timeout: query_timeout is already set at pgbouncer.query_timeout",
    ]


def test_missing_sections_and_wrong_types() -> None:
    assert problems("") == [
        "pools: required table is missing: declare at least one [pools.<name>]",
        "users: required array is missing: declare at least one [[users]]",
    ]
    assert problems(BASE_USER.replace('["main"]', '"main"') + BASE_POOL) == [
        "users[0].grants: expected an array of strings, got a string"
    ]
    assert problems(BASE_USER + BASE_POOL.replace('password = "rpw"\n', "")) == [
        "pools.main.remote.password: required key is missing"
    ]


def test_all_problems_at_once() -> None:
    toml = BASE_USER.replace('["main"]', '["nope"]') + BASE_POOL.replace("5432", "0")
    toml += '[pgbouncer]\npool_mode = "x"\n'
    assert len(problems(toml)) == 3


def test_backend_user_shared_with_client_needs_same_password() -> None:
    toml = BASE_USER.replace('username = "u"', 'username = "r"') + BASE_POOL
    assert problems(toml.replace('password = "pw"', 'password = "$CLIENT_PW"'), {"CLIENT_PW": "other"}) == [
        'pools.main.remote.password: backend user "r" is also declared as a client at users[0].username '
        "with a different password; pgbouncer keeps one password per user in userlist.txt, so "
        "users[0].password and pools.main.remote.password must be equal"
    ]
    validate(toml.replace('password = "pw"', 'password = "rpw"'), {})


def test_backend_user_in_two_pools_needs_same_password() -> None:
    second = BASE_POOL.replace("pools.main", "pools.copy").replace('"rpw"', '"$OTHER"')
    msgs = problems(BASE_USER + BASE_POOL + second, {"OTHER": "secret-value"})
    assert msgs == [
        'pools.copy.remote.password: backend user "r" is also used by pools.main.remote with a different '
        "password; pgbouncer keeps one password per user in userlist.txt, so pools.main.remote.password and "
        "pools.copy.remote.password must be equal"
    ]
    assert not any("secret-value" in m or "rpw" in m for m in msgs)
    validate(BASE_USER + BASE_POOL + second, {"OTHER": "rpw"})


def test_remote_password_length_counts_quotes_twice() -> None:
    validate(BASE_USER + BASE_POOL.replace('"rpw"', '"$PW"'), {"PW": "x" * 2047})
    msg = (
        "pools.main.remote.password: password is longer than 2047 bytes as written to userlist.txt "
        '(each " counts twice)'
    )
    assert problems(BASE_USER + BASE_POOL.replace('"rpw"', '"$PW"'), {"PW": "x" * 2048}) == [msg]
    assert problems(BASE_USER + BASE_POOL.replace('"rpw"', '"$PW"'), {"PW": '"' * 1024}) == [msg]
