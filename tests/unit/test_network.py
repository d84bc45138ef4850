"""The instances' address plan (network.py) and the HBA rules it drives: the console never through HAProxy."""

import pytest
from test_render import EXAMPLE

from autopgpool import ConfigError, render_files, summarize
from autopgpool.network import plan_network
from demo_example import DEMO_ENV


def _rules(hba: str) -> list[list[str]]:
    return [line.split() for line in hba.splitlines() if line and not line.startswith("#")]


def test_defaults_are_loopback_with_haproxy_on_its_own_address() -> None:
    net = plan_network()
    assert net.frontdoor == "127.0.0.2/32"
    assert net.operators == ("127.0.0.1/32",)
    assert net.listen_addrs == ("127.0.0.1",)
    assert net.ip_address_allow == ()


def test_console_rules_never_name_the_front_door_or_any_address() -> None:
    rules = _rules(render_files(EXAMPLE, DEMO_ENV, salt_key="k")["pgbouncer_hba.conf"])
    console = [r for r in rules if r[1] == "pgbouncer"]
    assert console, "admin and stats users reach the console from the host"
    assert {r[3] for r in console if r[0] != "local"} == {"127.0.0.1/32"}
    # Every TCP rule that accepts names one address; only the reject tail matches everything.
    accepting = [r for r in rules if r[0].startswith("host") and r[-1] != "reject"]
    assert accepting
    assert all(r[3].endswith("/32") for r in accepting)
    assert rules[-1] == ["host", "all", "all", "all", "reject"]


def test_admin_network_opens_the_console_there_and_nowhere_else() -> None:
    net = {"admin_networks": ["10.9.0.0/24"], "listen_addr": "127.0.0.1,10.9.0.5"}
    rules = _rules(render_files(EXAMPLE, DEMO_ENV, salt_key="k", network=net)["pgbouncer_hba.conf"])
    console = {r[3] for r in rules if r[1] == "pgbouncer" and r[0] != "local"}
    assert console == {"127.0.0.1/32", "10.9.0.0/24"}


def test_tls_required_turns_tcp_rules_into_hostssl() -> None:
    toml = EXAMPLE.replace("[pgbouncer]\n", '[pgbouncer]\nclient_tls_sslmode = "require"\n', 1)
    rules = _rules(render_files(toml, DEMO_ENV, salt_key="k", tls={"client": True})["pgbouncer_hba.conf"])
    accepting = [r for r in rules if r[0] != "local" and r[-1] != "reject"]
    assert accepting
    assert {r[0] for r in accepting} == {"hostssl"}
    assert summarize(toml, DEMO_ENV, tls={"client": True})["client_tls_required"] is True


@pytest.mark.parametrize(
    ("network", "variable"),
    [
        ({"listen_addr": "0.0.0.0"}, "pgbouncer_instance_listen_addr"),
        ({"listen_addr": "*"}, "pgbouncer_instance_listen_addr"),
        ({"listen_addr": "10.0.0.5"}, "pgbouncer_instance_listen_addr"),
        ({"listen_addr": "127.0.0.1,10.0.0.5"}, "pgbouncer_instance_listen_addr"),
        ({"listen_addr": "pooler-a"}, "pgbouncer_instance_listen_addr"),
        ({"frontdoor_source": "127.0.0.1"}, "pgbouncer_haproxy_source_addr"),
        ({"frontdoor_source": "10.0.0.1"}, "pgbouncer_haproxy_source_addr"),
        ({"admin_networks": ["127.0.0.0/8"]}, "pgbouncer_admin_networks[0]"),
        ({"admin_networks": ["10.0.0.0/33"]}, "pgbouncer_admin_networks[0]"),
        ({"server_networks": ["pg.example"]}, "pgbouncer_server_networks[0]"),
    ],
)
def test_bad_addresses_are_refused_naming_the_variable(network: dict[str, object], variable: str) -> None:
    with pytest.raises(ConfigError) as err:
        summarize(EXAMPLE, DEMO_ENV, network=network)
    assert f"{variable}:" in str(err.value)


def test_server_networks_turn_on_the_unit_ip_filter() -> None:
    summary = summarize(EXAMPLE, DEMO_ENV, network={"server_networks": ["10.231.0.10/32"]})
    assert summary["ip_address_allow"] == ["localhost", "10.231.0.10/32"]
    assert summary["haproxy_source_addr"] == "127.0.0.2"
    assert summary["instance_address"] == "127.0.0.1"
