import re
from pathlib import Path

import pytest

from autopgpool import backends, render_files, summarize
from autopgpool.api import _check_sections
from autopgpool.errors import ConfigError
from autopgpool.hashing import md5_verifier, scram_matches
from autopgpool.render import connstr_value, ini_key, parse_userlist
from demo_example import DEMO_ENV

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"
EXAMPLE = (ROOT / "examples/autopgpool.toml").read_text()


def test_connstring_and_key_quoting() -> None:
    assert connstr_value("app_db") == "app_db"
    assert connstr_value("my db") == "'my db'"
    assert connstr_value("it's\\x") == "'it''s\\x'"
    assert ini_key("app.v2-x") == "app.v2-x"
    assert ini_key("my db") == "'my db'"


def test_example_renders_expected_files() -> None:
    files = render_files(EXAMPLE, DEMO_ENV, salt_key="k")
    ini = files["pgbouncer.ini"]
    assert (
        "app = host=pg1 port=5432 dbname=app_db user=app_owner pool_size=20 "
        "reserve_pool_size=5 pool_mode=transaction" in ini
    )
    assert "password" not in ini.split("[databases]")[1].split("[pgbouncer]")[0]
    assert not any(v in ini for v in DEMO_ENV.values())
    assert "auth_type = hba\n" in ini
    assert "auth_file = /etc/pgbouncer/userlist.txt\n" in ini
    assert "auth_hba_file = /etc/pgbouncer/pgbouncer_hba.conf\n" in ini
    assert "admin_users = admin\n" in ini
    assert "stats_users = stats\n" in ini
    for per_instance in (
        "listen_port",
        "listen_addr",
        "unix_socket_dir",
        "pidfile",
        "peer_id",
        "logfile",
        "[peers]",
    ):
        assert per_instance not in ini.split(";; its own")[1].split("\n", 1)[1]
    users = parse_userlist(files["userlist.txt"])
    assert users["report_user"] == md5_verifier("report_user", "demo-report-user-pw")
    assert scram_matches(users["app_user"], "demo-app-user-pw")
    # backend users in plain text (pgbouncer issue 1461 workaround), sorted in among the client users
    assert users["app_owner"] == "demo-app-owner-pw"
    assert users["reporting_owner"] == "demo-reporting-owner-pw"
    assert list(users) == sorted(users)
    hba = files["pgbouncer_hba.conf"].splitlines()
    # Application users from HAProxy's source address and the host's loopback; the console only from loopback.
    assert 'host "app","reporting" "both_user" 127.0.0.2/32 scram-sha-256' in hba
    assert 'host "app","reporting" "both_user" 127.0.0.1/32 scram-sha-256' in hba
    assert 'host "reporting" "report_user" 127.0.0.2/32 md5' in hba
    assert 'host pgbouncer "admin" 127.0.0.1/32 scram-sha-256' in hba
    assert not [line for line in hba if "pgbouncer" in line.split()[1:2] and "127.0.0.2/32" in line]
    assert not [line for line in hba if line.startswith("host ") and " all " in line and "reject" not in line]
    assert hba[-2:] == ["local all all reject", "host all all all reject"]
    # backend-only users get no hba line: the reject-all tail refuses them as clients
    rules = [line for line in hba if line and not line.startswith("#")]
    assert not any("owner" in line for line in rules)


def test_settings_sorted_and_overrides_win() -> None:
    files = render_files((FIXTURES / "autopg_example.toml").read_text(), {})
    section = files["pgbouncer.ini"].split("[pgbouncer]\n")[1].split("\n\n")[0].splitlines()
    assert section == sorted(section)
    assert "ignore_startup_parameters = extra_float_digits, search_path" in section
    assert "max_prepared_statements = 25" in section
    assert "server_check_query = select 1" in section
    assert "server_check_delay = 30" in section


def test_userlist_escapes_double_quotes() -> None:
    toml = (FIXTURES / "env_minimal.toml").read_text().replace('username = "svc"', 'username = "sv\\"c"')
    toml = toml.replace('grants = ["orders"]', 'grants = ["orders"]\nauth_type = "md5"')
    files = render_files(toml, {"SVC_PASSWORD": "x", "ORDERS_DB_PASSWORD": "y"})
    assert '\n"sv""c" "md5' in files["userlist.txt"]
    assert '"orders" "sv""c" 127.0.0.2/32 md5' in files["pgbouncer_hba.conf"]
    assert parse_userlist(files["userlist.txt"]).keys() == {"orders_rw", 'sv"c'}


def test_determinism_with_salt_key_and_previous_userlist() -> None:
    a = render_files(EXAMPLE, DEMO_ENV, salt_key="k", config_dir="/etc/pgb")
    assert a == render_files(EXAMPLE, DEMO_ENV, salt_key="k", config_dir="/etc/pgb")
    b = render_files(EXAMPLE, DEMO_ENV)  # random salts
    c = render_files(EXAMPLE, DEMO_ENV, previous_userlist=b["userlist.txt"])
    assert c == b
    assert render_files(EXAMPLE, DEMO_ENV)["userlist.txt"] != b["userlist.txt"]
    # a changed password gets a new verifier even when the previous file is given
    env = {**DEMO_ENV, "APP_USER_PASSWORD": "changed"}
    d = render_files(EXAMPLE, env, previous_userlist=b["userlist.txt"])
    assert parse_userlist(d["userlist.txt"])["app_user"] != parse_userlist(b["userlist.txt"])["app_user"]
    assert parse_userlist(d["userlist.txt"])["both_user"] == parse_userlist(b["userlist.txt"])["both_user"]


def test_summary_has_no_secrets_and_documented_numbers() -> None:
    info = summarize(EXAMPLE, DEMO_ENV)
    assert info["listen_addr"] == "0.0.0.0"
    assert info["listen_port"] == 6432
    assert info["pools"]["app"] == {
        "host": "pg1",
        "port": 5432,
        "database": "app_db",
        "username": "app_owner",
        "pool_size": 20,
        "reserve_pool_size": 5,
        "pool_mode": "transaction",
    }
    assert info["pools"]["reporting"]["pool_mode"] == "session"
    assert info["users"] == ["admin", "app_user", "both_user", "report_user", "stats"]
    # 500 clients + (20 + 5) + (16 + 0) + margin 100 (one instance: the numbers as written)
    assert info["file_descriptor_limit"] == 500 + 25 + 16 + 100
    assert info["restart_settings"] == {}
    assert info["client_tls"] is False
    assert not any(v in repr(info) for v in DEMO_ENV.values())


def test_summary_reports_client_tls_for_the_health_check() -> None:
    with_tls = EXAMPLE.replace("[pgbouncer]\n", '[pgbouncer]\nclient_tls_sslmode = "require"\n', 1)
    assert summarize(with_tls, DEMO_ENV, tls={"client": True})["client_tls"] is True


def test_fd_limit_caps_by_max_db_connections_and_restart_settings() -> None:
    env = {"WEB_PW": "a", "OPS_PW": "b", "SHOP_PW": "c", "SEARCH_PW": "d"}
    info = summarize((FIXTURES / "many_pools.toml").read_text(), env)
    # 100 clients + min(30, 40) + 10 + 10 + 100
    assert info["file_descriptor_limit"] == 100 + 30 + 10 + 10 + 100
    assert info["restart_settings"] == {"listen_backlog": "512"}
    files = render_files((FIXTURES / "many_pools.toml").read_text(), env)
    assert "search = host=10.1.0.11 port=5432 dbname='search index' user=search\n" in files["pgbouncer.ini"]
    assert parse_userlist(files["userlist.txt"])["search"] == "d"
    assert "\n[users]\nbatch = pool_mode=session\nweb = max_user_connections=50\n" in files["pgbouncer.ini"]
    # [pgbouncer] is the last section even with [users]: instance-N.ini continues it after %include
    headers = [line for line in files["pgbouncer.ini"].splitlines() if line.startswith("[")]
    assert headers == ["[databases]", "[users]", "[pgbouncer]"]
    assert "log_stats = 0\n" in files["pgbouncer.ini"]
    assert "query_wait_timeout = 15.5\n" in files["pgbouncer.ini"]


def test_backends_distinct() -> None:
    env = {"WEB_PW": "a", "OPS_PW": "b", "SHOP_PW": "c", "SEARCH_PW": "d"}
    result = backends((FIXTURES / "many_pools.toml").read_text(), env)
    assert [(b["host"], b["database"], b["username"]) for b in result] == [
        ("10.1.0.10", "shop", "shop_app"),
        ("10.1.0.11", "search index", "search"),
        ("10.1.0.11", "shop", "shop_app"),
    ]


def test_literal_dollar_in_fixture() -> None:
    env = {"WEB_PW": "a", "OPS_PW": "b", "SHOP_PW": "c", "SEARCH_PW": "d"}
    files = render_files((FIXTURES / "many_pools.toml").read_text(), env, salt_key=b"k")
    assert scram_matches(parse_userlist(files["userlist.txt"])["batch"], "batch-${literal}")
    assert re.search(r"^\"ops\" \"SCRAM-SHA-256\$4096:", files["userlist.txt"], re.M)


def test_backend_user_shared_with_client_user_gets_one_plain_line() -> None:
    toml = '[[users]]\nusername = "app_owner"\npassword = "$APP_DB_PASSWORD"\ngrants = ["app"]\n' + EXAMPLE
    files = render_files(toml, DEMO_ENV, salt_key="k")
    lines = [line for line in files["userlist.txt"].splitlines() if line.startswith('"app_owner"')]
    assert lines == ['"app_owner" "demo-app-owner-pw"']
    assert 'host "app" "app_owner" 127.0.0.2/32 scram-sha-256' in files["pgbouncer_hba.conf"].splitlines()


def test_userlist_is_byte_stable_and_commented() -> None:
    a = render_files(EXAMPLE, DEMO_ENV, salt_key="k")["userlist.txt"]
    assert a == render_files(EXAMPLE, DEMO_ENV, salt_key="k")["userlist.txt"]
    assert a.startswith(";; Rendered by autopgpool")
    names = [line.split('"')[1] for line in a.splitlines() if line.startswith('"')]
    assert names == sorted(names) == [
        "admin", "app_owner", "app_user", "both_user", "report_user", "reporting_owner", "stats"
    ]  # fmt: skip


def test_a_rendered_file_without_a_last_pgbouncer_section_never_leaves_the_core() -> None:
    """The renderer's own check (instance-N.ini continues the shared file's last section)."""
    _check_sections("[databases]\na = host=x\n[pgbouncer]\nlisten_port = 1\n")
    for bad in ("[pgbouncer]\n[databases]\n", "[databases]\n", "[pgbouncer]\n[users]\n[pgbouncer]\n"):
        with pytest.raises(ConfigError, match="bug in the autopgpool renderer"):
            _check_sections(bad)


# --- the standalone layout (autopgpool generate's default) ------------------------------------------------

MINIMAL = """
[[users]]
username = "app"
password = "pw-app-1"
grants = ["db"]

[[users]]
username = "mon"
password = "pw-mon-1"
grants = ["db"]
auth_type = "md5"

[pools.db.remote]
host = "127.0.0.1"
port = 5432
database = "d"
username = "owner"
password = "pw-owner-1"

[pgbouncer]
stats_users = ["mon"]
"""


def _pgbouncer_section(ini: str) -> dict[str, str]:
    section = ini.split("\n[pgbouncer]\n", 1)[1]
    return dict(line.split(" = ", 1) for line in section.splitlines() if " = " in line)


def test_standalone_listens_on_autopg_pools_default_and_the_roles_file_does_not() -> None:
    standalone = render_files(MINIMAL, {}, salt_key="k", standalone=True)
    settings = _pgbouncer_section(standalone["pgbouncer.ini"])
    assert (settings["listen_addr"], settings["listen_port"]) == ("0.0.0.0", "6432")
    roles = render_files(MINIMAL, {}, salt_key="k")
    assert "listen_addr" not in _pgbouncer_section(roles["pgbouncer.ini"])
    assert "listen_port" not in _pgbouncer_section(roles["pgbouncer.ini"])
    # Only the addresses differ: the same users, verifiers and settings otherwise.
    assert standalone["userlist.txt"] == roles["userlist.txt"]
    without_listen = {k: v for k, v in settings.items() if not k.startswith("listen_")}
    assert without_listen == _pgbouncer_section(roles["pgbouncer.ini"])


@pytest.mark.parametrize(("addr", "port"), [("*", 6543), ("127.0.0.1", 7000), ("::", 6432), ("10.1.2.3", 1)])
def test_standalone_writes_the_tomls_listen_addr_and_port(addr: str, port: int) -> None:
    toml = MINIMAL + f'listen_addr = "{addr}"\nlisten_port = {port}\n'
    settings = _pgbouncer_section(render_files(toml, {}, standalone=True)["pgbouncer.ini"])
    assert (settings["listen_addr"], settings["listen_port"]) == (addr, str(port))
    _check_sections(render_files(toml, {}, standalone=True)["pgbouncer.ini"])


def test_standalone_hba_lets_users_reach_their_pools_from_any_address_and_the_console_from_the_host() -> None:
    rules = [
        line
        for line in render_files(MINIMAL, {}, standalone=True)["pgbouncer_hba.conf"].splitlines()
        if line and not line.startswith("#")
    ]
    assert rules == [
        'local "db" "app" scram-sha-256',
        'host "db" "app" all scram-sha-256',
        'local "db" "mon" md5',
        'host "db" "mon" all md5',
        'local pgbouncer "mon" md5',
        'host pgbouncer "mon" 127.0.0.1/32 md5',
        'host pgbouncer "mon" ::1/128 md5',
        "local all all reject",
        "host all all all reject",
    ]
    # The roles' layout keeps its per-instance addresses: HAProxy's source and the host's loopback only.
    roles = render_files(MINIMAL, {})["pgbouncer_hba.conf"].splitlines()
    assert 'host "db" "app" 127.0.0.2/32 scram-sha-256' in roles
    assert 'host "db" "app" 127.0.0.1/32 scram-sha-256' in roles
    assert not [line for line in roles if " all scram" in line or " all md5" in line]


def test_standalone_ignores_the_inventory_network() -> None:
    network = {"frontdoor_source": "127.0.0.9", "admin_networks": ["10.9.0.0/24"]}
    hba = render_files(MINIMAL, {}, standalone=True, network=network)["pgbouncer_hba.conf"]
    assert "127.0.0.9" not in hba
    assert "10.9.0.0/24" not in hba
    assert "127.0.0.9/32" in render_files(MINIMAL, {}, network=network)["pgbouncer_hba.conf"]
