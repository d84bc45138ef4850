"""The connection budget (src/autopgpool/budget.py): what the TOML's numbers become per pgbouncer instance,
and the worst case each PostgreSQL server sees from the whole fleet."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_filter_plugin_ansible import assert_no_secret, run_play

from autopgpool import ConfigError, budget_plan, render_files, summarize
from autopgpool.api import file_descriptor_limit, limit_probes, server_limits, server_tls_checks
from autopgpool.budget import make_fleet, make_limits
from autopgpool.cli import main
from demo_example import DEMO_ENV, EXAMPLE_CONFIG

EXAMPLE = EXAMPLE_CONFIG.read_text()
ENV = {"SECRET_PW": "s3cret-Backend-pw", "USER_PW": "s3cret-User-pw", "DB_HOST": "db.internal"}
DEMO_FLEET = {"pool1": 2, "pool2": 2}


def toml(pools: str, pgbouncer: str = "", users: str = "") -> str:
    grants = ", ".join(f'"{name}"' for name in re.findall(r"^\[pools\.(\w+)\]$", pools, re.MULTILINE))
    return (
        f'[[users]]\nusername = "u"\npassword = "$USER_PW"\ngrants = [{grants}]\n'
        + users
        + pools
        + "\n[pgbouncer]\n"
        + pgbouncer
    )


def pool(name: str, body: str = "", host: str = "pg1", port: int = 5432) -> str:
    return (
        f'[pools.{name}]\n{body}\n[pools.{name}.remote]\nhost = "{host}"\nport = {port}\n'
        f'database = "{name}_db"\nusername = "{name}_owner"\npassword = "$SECRET_PW"\n'
    )


def ini_value(ini: str, pool_name: str, key: str) -> int | None:
    line = next(line for line in ini.splitlines() if line.startswith(f"{pool_name} = "))
    found = re.search(rf"\b{key}=(\d+)", line)
    return int(found.group(1)) if found else None


def problems(exc: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return [str(p) for p in exc.value.problems]


# --- what the demo's numbers become ---------------------------------------------------------------------


def test_demo_tier_scope_divides_by_all_instances_of_all_hosts() -> None:
    plan = budget_plan(
        EXAMPLE, DEMO_ENV, instances=DEMO_FLEET, servers={"pg1:5432": {"max_connections": 100}}
    )
    info = plan.as_dict()
    assert info["instances_total"] == 4
    assert info["divisor"] == 4
    app = info["pools"]["app"]
    assert app["pool_size"] == {"budget": 20, "per_instance": 5}
    assert app["reserve_pool_size"] == {"budget": 5, "per_instance": 1}
    assert (app["per_instance_max"], app["fleet_max"]) == (6, 24)
    assert info["pools"]["reporting"]["pool_size"] == {"budget": 16, "per_instance": 4}
    server = info["servers"]["pg1:5432"]
    # (5 + 1) x 4 + 4 x 4 = 40: never more than the TOML's 20 + 5 + 16 = 41, and within 100 - 3
    assert server == {
        "pools": ["app", "reporting"],
        "fleet_max": 40,
        "limit": 97,
        "limit_source": "inventory",
    }
    ini = render_files(EXAMPLE, DEMO_ENV, instances=DEMO_FLEET)["pgbouncer.ini"]
    assert ini_value(ini, "app", "pool_size") == 5
    assert ini_value(ini, "app", "reserve_pool_size") == 1
    assert ini_value(ini, "reporting", "pool_size") == 4
    assert "\ndefault_pool_size = 2\n" in ini  # 10 / 4


def test_issue_figures_without_a_budget_are_refused() -> None:
    """The issue's demo: 2 hosts x 2 instances each applying 20 + 5 and 5 = 120 > pg1's 100."""
    old = EXAMPLE.replace("pool_size = 16", "pool_size = 5")
    with pytest.raises(ConfigError) as exc:
        summarize(
            old,
            DEMO_ENV,
            instances=DEMO_FLEET,
            scope="instance",
            servers={"pg1:5432": {"max_connections": 100}},
        )
    (message,) = problems(exc)
    assert message.startswith("PostgreSQL server pg1:5432: the pooler fleet may open 120 server connections")
    assert "app 25 x 4, reporting 5 x 4 instances" in message
    assert "takes 97 (max_connections 100 - superuser_reserved_connections 3, from the inventory)" in message
    for advice in (
        "pool_size",
        "max_db_connections",
        "pgbouncer_instances",
        "pgbouncer_connection_scope=tier",
    ):
        assert advice in message
    # The same numbers under the default scope fit: (5 + 1) x 4 + 1 x 4 = 28.
    info = summarize(old, DEMO_ENV, instances=DEMO_FLEET, servers={"pg1:5432": {"max_connections": 100}})
    assert info["connection_budget"]["servers"]["pg1:5432"]["fleet_max"] == 28


def test_one_instance_keeps_every_number_as_written() -> None:
    assert (
        render_files(EXAMPLE, DEMO_ENV)["pgbouncer.ini"]
        == render_files(EXAMPLE, DEMO_ENV, instances={"h": 1})["pgbouncer.ini"]
    )
    assert "pool_size=20 reserve_pool_size=5" in render_files(EXAMPLE, DEMO_ENV)["pgbouncer.ini"]


# --- scopes ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "per_instance", "fleet_max"),
    [
        ("tier", 100 // 7, 100 // 7 * 7),  # 3 + 4 instances share 100
        ("host", 100 // 4, 100 // 4 * 7),  # each host's 100, split over its (up to) 4 instances
        ("instance", 100, 700),
    ],
)
def test_scopes(scope: str, per_instance: int, fleet_max: int) -> None:
    plan = budget_plan(toml(pool("a", "pool_size = 100")), ENV, instances={"h1": 3, "h2": 4}, scope=scope)
    info = plan.as_dict()["pools"]["a"]
    assert info["pool_size"]["per_instance"] == per_instance
    assert info["fleet_max"] == fleet_max
    assert plan.config.pools[0].pool_size == per_instance


def test_host_scope_never_exceeds_any_hosts_budget() -> None:
    fleet = {"small": 1, "big": 3}
    plan = budget_plan(toml(pool("a", "pool_size = 10")), ENV, instances=fleet, scope="host")
    per_instance = plan.config.pools[0].pool_size or 0
    assert all(per_instance * count <= 10 for count in fleet.values())


def test_rounding_never_exceeds_the_budget() -> None:
    for size in range(1, 40):
        for total in range(1, size + 1):
            plan = budget_plan(toml(pool("a", f"pool_size = {size}")), ENV, instances=total)
            assert plan.pools[0].fleet_max <= size
            assert plan.config.pools[0].pool_size == size // total >= 1


# --- each number ----------------------------------------------------------------------------------------


def test_reserve_and_min_pool_size_may_round_to_zero_and_say_so() -> None:
    text = toml(pool("a", "pool_size = 12\nreserve_pool_size = 2\nmin_pool_size = 3"))
    plan = budget_plan(text, ENV, instances=4)
    scaled = plan.config.pools[0]
    assert (scaled.pool_size, scaled.reserve_pool_size, scaled.min_pool_size) == (3, 0, 0)
    assert "pool a: reserve_pool_size 2 is 0 per instance among 4 instances" in plan.notes
    assert "pool a: min_pool_size 3 is 0 per instance among 4 instances" in plan.notes
    assert any("note: pool a: reserve_pool_size 2 is 0" in line for line in plan.lines())
    ini = render_files(text, ENV, instances=4)["pgbouncer.ini"]
    assert ini_value(ini, "a", "min_pool_size") == 0
    assert ini_value(ini, "a", "reserve_pool_size") == 0


def test_min_pool_size_stays_within_pool_size() -> None:
    plan = budget_plan(toml(pool("a", "pool_size = 10\nmin_pool_size = 10")), ENV, instances=3)
    assert plan.config.pools[0].min_pool_size == plan.config.pools[0].pool_size == 3


def test_max_db_connections_caps_the_worst_case_and_is_divided() -> None:
    text = toml(pool("a", "pool_size = 40\nreserve_pool_size = 8\nmax_db_connections = 20"))
    plan = budget_plan(text, ENV, instances=4, servers={"pg1:5432": {"max_connections": 30}})
    assert plan.config.pools[0].max_db_connections == 5
    assert plan.pools[0].per_instance_max == 5  # min(10 + 2, 5)
    assert plan.servers[0].fleet_max == 20


def test_global_numbers_are_divided() -> None:
    text = toml(
        pool("a", "") + pool("b", "pool_size = 8"),
        "default_pool_size = 12\nreserve_pool_size = 4\nmax_db_connections = 8\nmax_user_connections = 16\n",
    )
    plan = budget_plan(text, ENV, instances=4)
    settings = plan.config.settings
    assert (settings["default_pool_size"], settings["reserve_pool_size"]) == ("3", "1")
    assert (settings["max_db_connections"], settings["max_user_connections"]) == ("2", "4")
    a, b = plan.pools
    assert a.sizes["pool_size"] == (12, 3)  # from default_pool_size
    assert a.per_instance_max == b.per_instance_max == 2  # global max_db_connections caps 3 + 1 and 2 + 1
    ini = render_files(text, ENV, instances=4)["pgbouncer.ini"]
    assert "\nmax_db_connections = 2\n" in ini
    assert "\nmax_user_connections = 4\n" in ini


def test_max_user_connections_per_user_is_divided() -> None:
    users = '[[users]]\nusername = "v"\npassword = "$USER_PW"\ngrants = ["a"]\nmax_user_connections = 9\n'
    plan = budget_plan(toml(pool("a", "pool_size = 8"), users=users), ENV, instances=2)
    assert plan.users == {"v": (9, 4)}
    assert (
        "v = max_user_connections=4"
        in render_files(toml(pool("a", "pool_size = 8"), users=users), ENV, instances=2)["pgbouncer.ini"]
    )


def test_unused_default_pool_size_stays_at_least_one() -> None:
    plan = budget_plan(toml(pool("a", "pool_size = 8"), "default_pool_size = 2\n"), ENV, instances=4)
    assert plan.config.settings["default_pool_size"] == "1"


def test_fd_limit_uses_the_per_instance_sizes() -> None:
    text = toml(pool("a", "pool_size = 40\nreserve_pool_size = 8"), "max_client_conn = 1000\n")
    assert summarize(text, ENV, instances=4)["file_descriptor_limit"] == 1000 + 10 + 2 + 100
    assert file_descriptor_limit(budget_plan(text, ENV, instances=4).config) == 1000 + 12 + 100


# --- refusals -------------------------------------------------------------------------------------------


def test_pool_smaller_than_the_fleet_is_refused_with_what_to_change() -> None:
    with pytest.raises(ConfigError) as exc:
        render_files(EXAMPLE, DEMO_ENV, instances={"pool1": 64, "pool2": 2})
    messages = problems(exc)
    scope = (
        "pgbouncer_connection_scope=tier: each number is a budget for all 66 pgbouncer instances on 2 hosts"
    )
    advice = (
        "raise it to at least 66, run fewer instances (pgbouncer_instances) or hosts, or choose another "
        "pgbouncer_connection_scope"
    )
    assert messages == [
        f"pools.{name}.pool_size: pool_size {size} cannot be divided among 66 pgbouncer instances ({scope}) "
        f"without leaving each a pool size of 0, which pgbouncer reads as no limit: {advice}"
        for name, size in (("app", 20), ("reporting", 16))
    ]


@pytest.mark.parametrize(
    ("pools", "pgbouncer", "path"),
    [
        (pool("a", "pool_size = 8\nmax_db_connections = 3"), "", "pools.a.max_db_connections"),
        (pool("a", "pool_size = 8"), "max_db_connections = 3\n", "pgbouncer.max_db_connections"),
        (pool("a", "pool_size = 8"), "max_user_connections = 3\n", "pgbouncer.max_user_connections"),
        (pool("a", ""), "default_pool_size = 3\n", "pgbouncer.default_pool_size"),
    ],
)
def test_caps_that_would_become_no_limit_are_refused(pools: str, pgbouncer: str, path: str) -> None:
    with pytest.raises(ConfigError) as exc:
        budget_plan(toml(pools, pgbouncer), ENV, instances=4)
    (message,) = problems(exc)
    assert message.startswith(f"{path}: ")
    assert "among 4 pgbouncer instances" in message


@pytest.mark.parametrize(
    ("pools", "users", "pgbouncer", "path", "why"),
    [
        (pool("a", "pool_size = 0"), "", "", "pools.a.pool_size", "pool_size = 0 means no limit"),
        (pool("a", "pool_size = 0\nmax_db_connections = 5"), "", "", "pools.a.pool_size", "means no limit"),
        (pool("a", "max_db_connections = 0"), "", "", "pools.a.max_db_connections", "of the pool's own"),
        (pool("a", ""), "", "default_pool_size = 0\n", "pgbouncer.default_pool_size", "0 means no limit"),
        (
            pool("a", ""),
            "max_user_connections = 0\n",
            "",
            "users[0].max_user_connections",
            "of the user's own",
        ),
    ],
)
def test_zero_that_pgbouncer_reads_as_no_limit_is_refused(
    pools: str, users: str, pgbouncer: str, path: str, why: str
) -> None:
    # pgbouncer 1.25.2 caps a pool only when its size is above 0: the budget used to count such a pool as 0
    # connections and let it pass every max_connections check (tests/integration: what 0 does).
    text = toml(pools, pgbouncer, users)
    for instances in (1, 4):
        with pytest.raises(ConfigError) as exc:
            budget_plan(text, ENV, instances=instances, servers={"pg:5432": {"max_connections": 100}})
        (message,) = problems(exc)
        assert message.startswith(f"{path}: expected ")
        assert why in message


def test_reserve_and_min_pool_size_zero_mean_none_and_pass() -> None:
    plan = budget_plan(toml(pool("a", "pool_size = 4\nreserve_pool_size = 0\nmin_pool_size = 0")), ENV)
    assert (plan.config.pools[0].reserve_pool_size, plan.config.pools[0].min_pool_size) == (0, 0)


def test_pools_on_one_server_share_its_budget_and_other_servers_do_not() -> None:
    text = toml(
        pool("a", "pool_size = 40") + pool("b", "pool_size = 40") + pool("c", "pool_size = 40", host="pg2")
    )
    limits = {"pg1:5432": {"max_connections": 60, "other_clients": 0}, "pg2:5432": {"max_connections": 60}}
    with pytest.raises(ConfigError) as exc:
        budget_plan(text, ENV, instances=2, scope="host", servers=limits)
    (message,) = problems(exc)  # pg2 fits: 40 <= 57
    assert message.startswith("PostgreSQL server pg1:5432: the pooler fleet may open 80 server connections")
    assert "pools a, b" in message
    # The tier scope does not help: the two pools' 40 + 40 are already more than pg1's 57.
    with pytest.raises(ConfigError, match="may open 80 server connections"):
        budget_plan(text, ENV, instances=2, servers=limits)
    ok = budget_plan(text, ENV, instances=2, servers={**limits, "pg1:5432": {"max_connections": 83}})
    info = ok.as_dict()["servers"]
    assert (info["pg1:5432"]["fleet_max"], info["pg1:5432"]["limit"], info["pg2:5432"]["fleet_max"]) == (
        80,
        80,
        40,
    )


def test_other_clients_and_reserved_connections_lower_the_budget() -> None:
    limit = make_limits(
        {"pg1:5432": {"max_connections": 100, "reserved_connections": 5, "other_clients": 10}}
    )
    assert limit["pg1:5432"].budget == 100 - 3 - 5 - 10
    with pytest.raises(ConfigError) as exc:
        budget_plan(
            toml(pool("a", "pool_size = 83")),
            ENV,
            instances=1,
            servers={"pg1:5432": {"max_connections": 100, "reserved_connections": 5, "other_clients": 10}},
        )
    assert "reserved_connections 5 - other clients 10" in problems(exc)[0]


def test_same_server_from_a_variable_is_shown_as_written_and_messages_hold_no_secret() -> None:
    text = toml(pool("a", "pool_size = 50", host="$DB_HOST")).replace(
        'username = "a_owner"', 'username = "$USER_PW"'
    )
    with pytest.raises(ConfigError) as exc:
        budget_plan(
            text, ENV, instances=2, scope="instance", servers={"db.internal:5432": {"max_connections": 50}}
        )
    text_out = str(exc.value)
    assert "PostgreSQL server $DB_HOST:5432" in text_out
    plan = budget_plan(text, ENV, instances=2)
    shown = "\n".join(plan.lines()) + repr(plan.as_dict())
    for secret in ENV.values():
        assert secret not in text_out
        assert secret not in shown


def test_bad_fleet_and_server_input_names_the_variable() -> None:
    with pytest.raises(ConfigError) as exc:
        make_fleet({"h": 0, "g": "x"}, "cluster")
    assert [p.path for p in exc.value.problems] == [
        "pgbouncer_connection_scope",
        "pgbouncer_instances",
        "pgbouncer_instances",
    ]
    with pytest.raises(ConfigError) as exc:
        make_limits(
            {"pg1": {"max_connections": 10}, "pg2:5432": {"max_conections": 1, "max_connections": "a"}}
        )
    assert [p.path for p in exc.value.problems] == [
        'pgbouncer_postgres_servers["pg1"]',
        'pgbouncer_postgres_servers["pg2:5432"].max_conections',
        'pgbouncer_postgres_servers["pg2:5432"].max_connections',
    ]
    with pytest.raises(ConfigError, match="leaves no connection for the poolers"):
        make_limits({"pg1:5432": {"max_connections": 3}})


# --- reading limits from the server ---------------------------------------------------------------------


def test_limit_probes_ask_only_undeclared_servers_once() -> None:
    text = toml(
        pool("a", "pool_size = 4") + pool("b", "pool_size = 4") + pool("c", "pool_size = 4", host="pg2")
    )
    probes = limit_probes(
        text, ENV, servers={"pg2:5432": {"max_connections": 50}, "pg1:5432": {"other_clients": 5}}
    )
    # pgbouncer's default server sslmode (prefer): TLS when offered, verifying nothing.
    assert [(p["server"], p["database"], p["sslmode"]) for p in probes] == [("pg1:5432", "a_db", "prefer")]
    assert probes[0]["password"] == ENV["SECRET_PW"]


def _probe(text: str, **tls: object) -> dict[str, object]:
    (probe,) = limit_probes(text, ENV, tls=tls or None)
    return {k: probe[k] for k in ("sslmode", "server_name", "auth_methods")}


SCRAM_ONLY = ["scram-sha-256"]
ANY_METHOD = ["scram-sha-256", "md5", "password"]


def test_limit_probes_use_pgbouncers_effective_server_sslmode() -> None:
    plain = toml(pool("a", "pool_size = 4"))
    # The inventory's mode decides, as in the rendered pgbouncer.ini: verify-full with the CA and the name.
    assert _probe(plain, server_sslmode="verify-full", server_ca=True) == {
        "sslmode": "verify-full", "server_name": "pg1", "auth_methods": ANY_METHOD,
    }  # fmt: skip
    # pgbouncer's verify-ca: the login that carries the owner's password still checks the name.
    assert _probe(plain, server_sslmode="verify-ca", server_ca=True)["sslmode"] == "verify-full"
    # Nothing verified: encrypted as pgbouncer would, and SCRAM only (no cleartext or MD5 to whoever answers).
    assert _probe(plain, server_sslmode="require") == {
        "sslmode": "require", "server_name": "pg1", "auth_methods": SCRAM_ONLY,
    }  # fmt: skip
    assert _probe(plain, server_sslmode="disable")["auth_methods"] == SCRAM_ONLY
    assert _probe(plain, server_sslmode="allow")["sslmode"] == "prefer"
    # The TOML's mode when the inventory gives none (the production example's case before this change).
    in_toml = toml(pool("a", "pool_size = 4"), 'server_tls_sslmode = "verify-full"\n')
    assert _probe(in_toml, server_ca=True)["sslmode"] == "verify-full"
    assert _probe(in_toml, server_sslmode="verify-full", server_ca=True)["sslmode"] == "verify-full"


def test_limit_probes_refuse_what_the_plan_refuses() -> None:
    plain = toml(pool("a", "pool_size = 4"))
    with pytest.raises(ConfigError, match=r"pgbouncer_server_tls_sslmode.*needs the CA"):
        limit_probes(plain, ENV, tls={"server_sslmode": "verify-full"})
    in_toml = toml(pool("a", "pool_size = 4"), 'server_tls_sslmode = "require"\n')
    with pytest.raises(ConfigError, match=r"pgbouncer\.server_tls_sslmode.*contradicts"):
        limit_probes(in_toml, ENV, tls={"server_sslmode": "verify-full", "server_ca": True})


def test_declared_servers_are_never_logged_in_to_but_their_tls_is_checked() -> None:
    text = toml(pool("a", "pool_size = 4") + pool("b", "pool_size = 4", host="$DB_HOST", port=5433))
    declared = {"pg1:5432": {"max_connections": 50}, "db.internal:5433": {"max_connections": 50}}
    verifying = {"server_sslmode": "verify-full", "server_ca": True}
    assert limit_probes(text, ENV, servers=declared, tls=verifying) == []
    checks = server_tls_checks(text, ENV, tls=verifying)
    assert checks == [
        {"server": "pg1:5432", "shown": "pg1:5432", "host": "pg1", "port": 5432, "sslmode": "verify-full",
         "server_name": "pg1"},
        {"server": "db.internal:5433", "shown": "$DB_HOST:5433", "host": "db.internal", "port": 5433,
         "sslmode": "verify-full", "server_name": "db.internal"},
    ]  # fmt: skip
    # pgbouncer's own check under verify-ca compares no name: neither does the check before the run.
    ca_only = server_tls_checks(text, ENV, tls={"server_sslmode": "verify-ca", "server_ca": True})
    assert {c["sslmode"] for c in ca_only} == {"verify-ca"}
    # pgbouncer verifies nothing: nothing to check.
    assert server_tls_checks(text, ENV, tls={"server_sslmode": "require"}) == []
    assert server_tls_checks(text, ENV) == []


def test_tls_checks_take_each_host_of_a_list_and_skip_unix_sockets() -> None:
    """pgbouncer tries each host of "h1,h2" and verifies each one's name, and speaks no TLS over a unix
    socket: a check of "h1,h2" as one name, or of a socket directory, would refuse a run pgbouncer serves."""
    text = toml(
        pool("a", "pool_size = 4", host="/var/run/postgresql")
        + pool("b", "pool_size = 4", host="db1.internal,db2.internal")
        + pool("c", "pool_size = 4", host="$DB_HOSTS", port=5433)
    )
    env = {**ENV, "DB_HOSTS": "db3.internal,db4.internal"}
    checks = server_tls_checks(text, env, tls={"server_sslmode": "verify-full", "server_ca": True})
    assert [(c["host"], c["server_name"], c["shown"]) for c in checks] == [
        ("db1.internal", "db1.internal", "db1.internal:5432"),
        ("db2.internal", "db2.internal", "db2.internal:5432"),
        ("db3.internal", "db3.internal", "$DB_HOSTS[0]:5433"),
        ("db4.internal", "db4.internal", "$DB_HOSTS[1]:5433"),
    ]


def test_server_limits_merge_answers_with_declarations() -> None:
    merged = server_limits(
        {"pg1:5432": {"other_clients": 5}}, [{"server": "pg1:5432", "rows": [["100", "3", "0"]]}]
    )
    assert make_limits(merged)["pg1:5432"].budget == 92
    assert make_limits(merged)["pg1:5432"].source == "server"
    with pytest.raises(ConfigError, match="did not answer max_connections as numbers"):
        server_limits({}, [{"server": "pg1:5432", "rows": [["x"]]}])


# --- the CLI --------------------------------------------------------------------------------------------


def test_cli_validate_prints_per_instance_sizes_and_fleet_totals(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for key, value in DEMO_ENV.items():
        monkeypatch.setenv(key, value)
    assert main(["validate", "--config-path", str(EXAMPLE_CONFIG), "--instances", "4"]) == 0
    out = capsys.readouterr().out
    assert "pool app (pg1:5432): per instance pool_size 20 -> 5, reserve_pool_size 5 -> 1" in out
    assert "server pg1:5432: pools app, reporting may open 40 connections in all" in out
    assert main(["validate", "--config-path", str(EXAMPLE_CONFIG), "--instances", "40"]) == 1
    assert "pools.reporting.pool_size: pool_size 16 cannot be divided among 40" in capsys.readouterr().err
    assert (
        main(
            [
                "generate",
                "--config-path",
                str(EXAMPLE_CONFIG),
                "--output-dir",
                str(tmp_path),
                "--instances",
                "4",
            ]
        )
        == 0
    )
    assert ini_value((tmp_path / "pgbouncer.ini").read_text(), "app", "pool_size") == 5


# --- through a real ansible-playbook --------------------------------------------------------------------

BUDGET_TASKS = """\
    - name: Ask the undeclared servers
      ansible.builtin.set_fact:
        probes: >-
          {{ toml_text | autopgpool.pool.autopgpool_limit_probes(secrets=vault_secrets, servers=declared) }}
      no_log: true
    - name: Complete the limits with a server's answer
      ansible.builtin.set_fact:
        limits: >-
          {{ declared | autopgpool.pool.autopgpool_server_limits(
               [{'server': probes[0].server, 'rows': [['100', '3', '0']]}]) }}
    - name: Summarize for the fleet
      ansible.builtin.debug:
        msg: >-
          {{ (toml_text | autopgpool.pool.autopgpool_summary(secrets=vault_secrets, instances=fleet,
                                                             scope=scope, servers=limits)).budget_lines }}
    - name: Render for the fleet
      ansible.builtin.set_fact:
        rendered: >-
          {{ toml_text | autopgpool.pool.autopgpool_render(secrets=vault_secrets, salt_key='k',
                                                           instances=fleet, scope=scope) }}
      no_log: true
    - name: Write pgbouncer.ini
      ansible.builtin.copy:
        content: "{{ rendered['pgbouncer.ini'] }}"
        dest: "{{ out_dir }}/pgbouncer.ini"
        mode: "0600"
      no_log: true
"""


def budget_play(tmp_path: Path, scope: str, fleet: dict[str, int]) -> tuple[int, str]:
    tasks = BUDGET_TASKS.replace("fleet)", f"{fleet})").replace("fleet,", f"{fleet},")
    tasks = tasks.replace("scope=scope", f"scope='{scope}'").replace(
        "=declared", "={'pg1:5432': {'other_clients': 10}}"
    )
    tasks = tasks.replace("declared |", "{'pg1:5432': {'other_clients': 10}} |")
    proc = run_play(tmp_path, EXAMPLE_CONFIG, tasks, DEMO_ENV, {})
    output = proc.stdout + proc.stderr
    assert_no_secret(output)
    return proc.returncode, output


def test_budget_filters_through_ansible(tmp_path: Path) -> None:
    code, output = budget_play(tmp_path, "tier", DEMO_FLEET)
    assert code == 0, output
    assert "server pg1:5432: pools app, reporting may open 40 connections in all; it takes 87" in output
    assert "other clients 10, from the server" in output
    assert ini_value((tmp_path / "out/pgbouncer.ini").read_text(), "app", "pool_size") == 5

    code, output = budget_play(tmp_path, "instance", {"pool1": 3, "pool2": 3})
    assert code != 0
    assert "PostgreSQL server pg1:5432: the pooler fleet may open 246 server connections" in output
    assert "Traceback" not in output
