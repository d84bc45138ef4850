"""autopgpool.deployment_plan: the one call a run makes. Its parts are what summarize and render_files
return for the same inputs (one parse instead of two), plus each host's instances and HAProxy's endpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from autopgpool import ConfigError, deployment_plan, render_files, summarize
from demo_example import DEMO_ENV

EXAMPLE = (Path(__file__).resolve().parents[2] / "examples/autopgpool.toml").read_text()
FLEET = {"pool1": 2, "pool2": 3}
SERVERS = {"pg1:5432": {"max_connections": 100}}
NETWORK = {"listen_addr": "127.0.0.1", "frontdoor_source": "127.0.0.2"}


def test_summary_and_files_are_those_of_the_single_calls() -> None:
    common = {"instances": FLEET, "servers": SERVERS, "network": NETWORK, "config_dir": "/etc/pgbouncer"}
    plan = deployment_plan(
        EXAMPLE, DEMO_ENV, salt_key="k" * 32, base_ports={"pool1": 6432, "pool2": 6432}, **common
    )
    assert plan["summary"] == summarize(EXAMPLE, DEMO_ENV, **common)
    assert plan["files"] == render_files(EXAMPLE, DEMO_ENV, salt_key="k" * 32, **common)


def test_each_host_gets_its_instances_and_endpoints() -> None:
    plan = deployment_plan(
        EXAMPLE, DEMO_ENV, instances=FLEET, servers=SERVERS, base_ports={"pool1": 6432, "pool2": 7000},
        runtime_root="/run/pgbouncer",
    )  # fmt: skip
    assert plan["hosts"]["pool1"]["instances"] == [1, 2]
    assert plan["hosts"]["pool2"]["instances"] == [1, 2, 3]
    assert plan["hosts"]["pool2"]["endpoints"][2] == {
        "id": 3, "address": plan["summary"]["instance_address"], "port": 7003,
        "socket_dir": "/run/pgbouncer/3", "socket": "/run/pgbouncer/3/.s.PGSQL.7003",
    }  # fmt: skip


def test_a_missing_or_bad_base_port_names_the_variable_and_host() -> None:
    for pool2 in (None, "x", 80, 65533, 6432.5, True):
        ports = {"pool1": 6432} if pool2 is None else {"pool1": 6432, "pool2": pool2}
        with pytest.raises(ConfigError, match=r"pgbouncer_base_port: .* for host pool2"):
            deployment_plan(EXAMPLE, DEMO_ENV, instances=FLEET, servers=SERVERS, base_ports=ports)


def test_a_bad_configuration_raises_before_anything_is_planned() -> None:
    with pytest.raises(ConfigError, match="listen_port"):
        deployment_plan(EXAMPLE.replace("listen_port = 6432", 'listen_port = "x"'), DEMO_ENV, instances=FLEET)


def test_haproxy_limits_follow_max_client_conn_and_the_host_instances() -> None:
    """The numbers the haproxy role writes (haproxy.cfg's maxconn lines, the unit's LimitNOFILE, nbthread):
    an instance takes max_client_conn sessions, the frontend that times the host's instances."""
    toml = EXAMPLE.replace("max_client_conn = 500", "max_client_conn = 700", 1)
    plan = deployment_plan(
        toml, DEMO_ENV, instances={"pool1": 1, "pool2": 4}, servers=SERVERS,
        base_ports={"pool1": 6432, "pool2": 6432},
    )  # fmt: skip
    assert plan["summary"]["max_client_conn"] == 700
    assert plan["hosts"]["pool1"]["haproxy"] == {
        "server_maxconn": 700, "frontend_maxconn": 700, "global_maxconn": 800,
        "file_descriptor_limit": 2400, "nbthread": 1,
    }  # fmt: skip
    assert plan["hosts"]["pool2"]["haproxy"] == {
        "server_maxconn": 700, "frontend_maxconn": 2800, "global_maxconn": 2900,
        "file_descriptor_limit": 6600, "nbthread": 2,
    }  # fmt: skip
