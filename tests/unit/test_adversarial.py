"""Inputs written to break the core: values pgbouncer or HAProxy cannot use, and pathological files."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autopgpool import ConfigError, render_files, summarize, validate
from autopgpool.config import parse_config
from autopgpool.reading import MAX_CONFIG_BYTES, load_toml, read_config_file

USER = '[[users]]\nusername = "u"\npassword = "pw"\ngrants = ["main"]\n'
POOL = '[pools.main.remote]\nhost = "h"\nport = 5432\ndatabase = "d"\nusername = "r"\npassword = "rpw"\n'
BASE = USER + POOL


def problems(toml: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as err:
        validate(toml, env or {})
    return [str(p) for p in err.value.problems]


def setting(line: str) -> list[str]:
    return problems(BASE + f"[pgbouncer]\n{line}\n")


# --- where variables are expanded ------------------------------------------------------------------------


def test_variables_work_in_passwords_and_remote_fields() -> None:
    toml = USER.replace('"pw"', '"$U_PW"') + POOL.replace('"h"', '"$DB_HOST"').replace(
        "5432", '"$DB_PORT"'
    ).replace('"d"', '"${DB_NAME}_ro"').replace('"r"', '"$DB_USER"').replace('"rpw"', '"$DB_PW"')
    env = {"U_PW": "a", "DB_HOST": "db1", "DB_PORT": "5433", "DB_NAME": "app", "DB_USER": "o", "DB_PW": "x"}
    ini = render_files(toml, env)["pgbouncer.ini"]
    assert "main = host=db1 port=5433 dbname=app_ro user=o" in ini


def test_variables_elsewhere_are_refused_naming_key_and_variable() -> None:
    msg = (
        "refers to the variable {}, but variables are only expanded in users[].password and "
        "pools.<name>.remote.{{host,port,database,username,password}}; write the value itself here (and "
        '"$$" for a literal "$")'
    )
    env = {"MODE": "session", "Q": "select 1", "ADMIN": "u"}
    assert problems(BASE + '[pgbouncer]\npool_mode = "$MODE"\nserver_check_query = "${Q};"\n', env) == [
        "pgbouncer.pool_mode: " + msg.format("MODE"),
        "pgbouncer.server_check_query: " + msg.format("Q"),
    ]
    assert problems(BASE + '[pgbouncer]\nadmin_users = ["$ADMIN"]\n', env) == [
        "pgbouncer.admin_users[0]: " + msg.format("ADMIN")
    ]
    # a literal "$" is still written "$$": the default auth_query needs one
    validate(
        BASE + '[pgbouncer]\nauth_query = "SELECT usename, passwd FROM pg_shadow WHERE usename=$$1"\n', {}
    )


def test_variable_in_username_is_refused() -> None:
    assert problems(USER.replace('username = "u"', 'username = "$WHO"') + POOL, {"WHO": "u"})[0].startswith(
        "users[0].username: refers to the variable WHO"
    )


# --- listen_addr -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("addr", ["*", "0.0.0.0", "127.0.0.1", "::", "::1", "fd00::10"])
def test_listen_addr_accepted(addr: str) -> None:
    assert summarize(BASE + f'[pgbouncer]\nlisten_addr = "{addr}"\n', {})["listen_addr"] == addr


@pytest.mark.parametrize(
    ("addr", "reason"),
    [
        ("0.0.0.0:6432", "holds a port"),
        ("[::1]:6432", "holds a port"),
        ("127.0.0.1 ssl crt /x", "must be one address"),
        (" 127.0.0.1", "must be one address"),
        ("127.0.0.1,10.0.0.1", "must be one address"),
        ("localhost", "expected an IPv4 or IPv6 address"),
        ("300.1.1.1", "expected an IPv4 or IPv6 address"),
        ("fe80::1%eth0", "IPv6 zone"),
        ("", "must not be empty"),
    ],
)
def test_listen_addr_refused(addr: str, reason: str) -> None:
    (msg,) = setting(f'listen_addr = "{addr}"')
    assert msg.startswith("pgbouncer.listen_addr: ")
    assert reason in msg


# --- backend passwords and host names -----------------------------------------------------------------


@pytest.mark.parametrize(
    "password",
    [
        "md5" + "0123456789abcdef" * 2,
        "SCRAM-SHA-256$4096:c2FsdHNhbHQ=$c3RvcmVka2V5c3RvcmVka2V5c3RvcmVka2V5c3RvcmVkaw==:c2VydmVy",
    ],
)
def test_backend_password_shaped_like_a_verifier_is_refused(password: str) -> None:
    (msg,) = problems(BASE.replace('"rpw"', '"$PW"'), {"PW": password})
    assert msg.startswith("pools.main.remote.password: the password has the shape of a stored verifier")
    assert "wrong password type" in msg
    assert password not in msg


@pytest.mark.parametrize("password", ["md5" + "0" * 31, "MD5" + "0" * 32, "md5" + "G" * 32, "SCRAM-SHA-256$"])
def test_passwords_that_only_resemble_verifiers_are_fine(password: str) -> None:
    validate(BASE.replace('"rpw"', '"$PW"'), {"PW": password})


def test_client_password_shaped_like_a_verifier_is_fine() -> None:
    # Client passwords are hashed by autopgpool, so their text never reaches pgbouncer as is.
    validate(BASE.replace('"pw"', '"md50123456789abcdef0123456789abcdef"'), {})


@pytest.mark.parametrize("key", ["host", "database", "username"])
@pytest.mark.parametrize("value", [" x", "x ", "\tx", "x\u00a0"])
def test_remote_values_with_outer_whitespace_are_refused(key: str, value: str) -> None:
    toml = USER + POOL.replace(
        f'{key} = "{ {"host": "h", "database": "d", "username": "r"}[key] }"', f'{key} = "$V"'
    )
    (msg,) = problems(toml, {"V": value})
    assert msg.startswith(f"pools.main.remote.{key}: ")
    assert "whitespace" in msg or "control character" in msg


# --- numbers as pgbouncer 1.25.2 reads them --------------------------------------------------------------


def test_integers_past_pgbouncers_int_say_what_pgbouncer_would_store() -> None:
    assert setting("server_round_robin = 2147483648") == [
        "pgbouncer.server_round_robin: expected an integer from 0 to 2147483647, got 2147483648: pgbouncer "
        "1.25.2 would have stored it as -2147483648"
    ]
    assert setting("listen_backlog = 99999999999999999999") == [
        "pgbouncer.listen_backlog: expected an integer from 0 to 2147483647, got 99999999999999999999: "
        "pgbouncer 1.25.2 would have stored it as -1"
    ]
    assert setting("tcp_keepcnt = -3") == [
        "pgbouncer.tcp_keepcnt: expected an integer from 0 to 2147483647, got -3: pgbouncer 1.25.2 does not "
        "check the sign and would have used -3"
    ]
    for big in (2147483648, 4294967295, 4294967296):  # CVE-2026-107348 needs a length of 2^31 or more
        (message,) = setting(f"max_packet_size = {big}")
        assert message.startswith(
            f"pgbouncer.max_packet_size: expected an integer from 0 to 2147483647, got {big}"
        )
        assert "CVE-2026-107348" in message
    assert setting("max_client_conn = 2147483640")[0].endswith("which would overflow its int")
    assert setting("stats_period = 0")[0].endswith("on every pass of its event loop")
    assert setting('verbose = "0x10"') == [
        'pgbouncer.verbose: expected an integer from 0 to 2147483647, got "0x10"'
    ]


def test_ignore_startup_parameters_of_one_name_is_refused_for_cve_2026_107349() -> None:
    # One name (or names joined by bare commas, below) is what pgbouncer's list search loops on.
    for value in ('["extra_float_digits"]', '["options"]', '"extra_float_digits"', '"options,"'):
        (message,) = setting(f"ignore_startup_parameters = {value}")
        assert message.startswith("pgbouncer.ignore_startup_parameters: a single name makes pgbouncer")
        assert "CVE-2026-107349" in message


def test_ignore_startup_parameters_are_joined_with_comma_space() -> None:
    for value, rendered in (
        ('"extra_float_digits,options"', "extra_float_digits, options"),
        ('" extra_float_digits ,options"', None),  # leading whitespace: refused as free text
        ('["extra_float_digits", "options"]', "extra_float_digits, options"),
        ("[]", ""),
    ):
        toml = BASE + f"[pgbouncer]\nignore_startup_parameters = {value}\n"
        if rendered is None:
            assert setting(f"ignore_startup_parameters = {value}")
            continue
        assert parse_config(toml, {}).settings["ignore_startup_parameters"] == rendered


def test_integer_limits_that_pgbouncer_holds_are_accepted() -> None:
    toml = BASE + "[pgbouncer]\nmax_packet_size = 2147483647\nserver_round_robin = 2147483647\n"
    toml += 'tcp_keepcnt = "7"\nlog_stats = false\n'
    settings = parse_config(toml, {}).settings
    assert (settings["max_packet_size"], settings["server_round_robin"]) == ("2147483647", "2147483647")
    assert (settings["tcp_keepcnt"], settings["log_stats"]) == ("7", "0")


def test_seconds_that_round_to_zero_or_overflow_are_refused() -> None:
    assert setting("query_timeout = 0.0000001") == [
        "pgbouncer.query_timeout: got 1e-07 seconds: pgbouncer 1.25.2 keeps whole microseconds and would "
        "read this as 0, which for a timeout means disabled; write 0 or at least 0.000001"
    ]
    assert setting("server_lifetime = 1e13") == [
        "pgbouncer.server_lifetime: expected at most 9223372036854 seconds, got 10000000000000.0: "
        "pgbouncer 1.25.2 keeps times in microseconds in a 64-bit integer, and a larger value would "
        "overflow it"
    ]
    for bad in ("inf", "nan", "-1", '"1e400"', '"0x10"', '"1,5"'):
        (msg,) = setting(f"query_timeout = {bad}")
        assert "pgbouncer.query_timeout: expected" in msg


def test_seconds_keep_every_digit() -> None:
    toml = (
        BASE
        + '[pgbouncer]\nserver_lifetime = 1234567.5\nquery_timeout = 0.000001\nclient_idle_timeout = "90"\n'
    )
    settings = parse_config(toml, {}).settings
    assert settings["server_lifetime"] == "1234567.5"  # "g" formatting used to write 1.23457e+06
    assert settings["query_timeout"] == "1e-06"
    assert settings["client_idle_timeout"] == "90"
    assert (
        parse_config(BASE + "[pgbouncer]\nserver_lifetime = 9223372036854\n", {}).settings["server_lifetime"]
        == "9223372036854"
    )


# --- autopg-pool users ---------------------------------------------------------------------------------


def test_autopg_pool_example_with_replica_table_deploys_with_a_warning() -> None:
    fixture = Path(__file__).parent / "fixtures/autopg_example.toml"
    # autopg-pool's example has a replica table under one pool, with a remote of its own (our wording)
    toml = fixture.read_text().replace(
        "[pools.analytics_db.remote]",
        '[pools.analytics_db.replica]\npool_mode = "statement"\n[pools.analytics_db.replica.remote]\n'
        'host = "replica.example.com"\nport = 5432\ndatabase = "replica_db"\nusername = "replica_user"\n'
        'password = "replica_password"\n\n[pools.analytics_db.remote]',
    )
    info = summarize(toml, {})
    assert info["warnings"][0].startswith("pools.analytics_db.replica: ignored:")
    files = render_files(toml, {})
    assert "replica" not in files["pgbouncer.ini"] + files["userlist.txt"]


def test_global_pool_mode_other_than_transaction_warns_about_autopg_pools_meaning() -> None:
    toml = BASE + POOL.replace("pools.main", "pools.other") + '[pools.other]\npool_mode = "session"\n'
    toml += '[pgbouncer]\npool_mode = "session"\n'
    info = summarize(toml.replace('grants = ["main"]', 'grants = ["main", "other"]'), {})
    assert info["warnings"] == [
        "pgbouncer.pool_mode: session applies to the pools without a pool_mode of their own (main); "
        "autopg-pool ran them in transaction mode whatever this said, because it wrote pool_mode=transaction "
        'on every database line. Set pool_mode = "transaction" in those pools to keep that behaviour'
    ]
    assert info["pools"]["main"]["pool_mode"] == "session"
    assert summarize(BASE + '[pgbouncer]\npool_mode = "transaction"\n', {})["warnings"] == []
    assert summarize(BASE, {})["warnings"] == []


@pytest.mark.parametrize(
    "where", ["[pgbouncer]\n", '[[users]]\nusername = "v"\npassword = "p"\ngrants = []\n']
)
def test_autopg_pool_auth_type_plain_is_refused_with_the_way_forward(where: str) -> None:
    (msg,) = problems(BASE + where + 'auth_type = "plain"\n')
    assert 'got "plain": autopg-pool\'s "plain" wrote the password in clear' in msg
    assert 'write "md5" for the same logins' in msg


# --- pathological files -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a = " + "[" * 100_000 + "]" * 100_000, "TOML nesting is too deep"),
        ("a = " + "{b = " * 5000 + "1" + "}" * 5000, "TOML nesting is too deep"),
        ("a = " + "1" * 5000, "TOML value cannot be read"),
        ("x" * (MAX_CONFIG_BYTES + 1), "larger than"),
        ("a = 1\n\u0000", "TOML syntax error"),
    ],
)
def test_pathological_toml_is_a_clean_error(text: str, message: str) -> None:
    (msg,) = problems(text)
    assert message in msg


def test_bom_is_accepted_in_text_and_file(tmp_path: Path) -> None:
    validate("\ufeff" + BASE, {})
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + BASE.encode())
    validate(read_config_file(path), {})


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "latin1.toml").write_bytes(b'a = "\xe9"\n')
    cases = {
        tmp_path / "latin1.toml": "is not UTF-8 (TOML requires UTF-8): invalid byte at offset 5",
        tmp_path: "it is a directory",
        tmp_path / "missing.toml": "No such file or directory",
        Path("/dev/zero"): f"is larger than {MAX_CONFIG_BYTES} bytes",
    }
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, message in cases.items():
        with pytest.raises(ConfigError) as err:
            read_config_file(path)
        assert message in str(err.value)
    assert read_config_file(fifo) == ""  # no writer: read as empty instead of hanging


def test_reading_dev_zero_has_bounded_memory() -> None:
    code = (
        "import re, sys\n"
        "from autopgpool.cli import main\n"
        "code = main(['validate', '--config-path', '/dev/zero'])\n"
        # VmHWM: this process's peak resident memory (ru_maxrss would include the forking pytest's)
        "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
        "sys.exit(code)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 1
    assert "larger than" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert int(proc.stdout.strip()) < 100_000  # KiB: the cap, not the endless file, bounds what is held


def test_huge_key_and_values_are_shortened_in_messages() -> None:
    msgs = setting(f'pool_mode = "{"x" * 10_000}"')
    assert len(msgs[0]) < 300
    assert re.search(r"\(10000 characters\)", msgs[0])


def test_load_toml_returns_tables() -> None:
    assert load_toml("\ufeffa = 1") == {"a": 1}


def test_hundreds_of_thousands_of_problems_make_a_short_message() -> None:
    with pytest.raises(ConfigError) as err:
        validate("[[users]]\n" * 200_000, {})
    assert len(err.value.problems) > 600_000
    message = str(err.value)
    assert message.count("\n") == 101
    assert message.endswith("more (the first 100 are shown)")


@pytest.mark.parametrize("config_dir", ["/etc/x\nauth_type = trust", "etc/x", "/etc/x y", "/etc/x;", "/é"])
def test_render_files_refuses_a_config_dir_that_could_change_pgbouncer_ini(config_dir: str) -> None:
    with pytest.raises(ConfigError) as err:
        render_files(BASE, {}, config_dir=config_dir)
    assert [p.path for p in err.value.problems] == ["config_dir"]
    assert (
        "auth_type"
        not in render_files(BASE, {}, config_dir="/etc/pgbouncer-2.x/@a+b")["pgbouncer.ini"].split(
            "[pgbouncer]"
        )[0]
    )


def test_many_unknown_keys_are_reported_quickly() -> None:
    # "did you mean" hints (difflib, quadratic) only for the problems a message shows: this took ~24 s before
    text = BASE + "[pgbouncer]\n" + "".join(f"max_client_con{i} = 1\n" for i in range(30_000))
    started = time.monotonic()
    msgs = problems(text)
    assert time.monotonic() - started < 10
    assert len(msgs) == 30_000
    assert msgs[0].endswith('did you mean "max_client_conn"?')
    assert msgs[-1].endswith("unknown pgbouncer setting")
