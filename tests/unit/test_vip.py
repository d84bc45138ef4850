"""The pooler groups' virtual IPs (vip.py, roles/keepalived): checked across the inventory, by variable."""

from __future__ import annotations

import importlib.util
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from autopgpool import ConfigError
from autopgpool.vip import DEFAULT_GROUP, DEFAULT_ROUTER_ID, bind_problems, interface_of, plan_vips

REPO = Path(__file__).resolve().parents[2]


def _host(src: str, vip: str = "10.9.0.100/24", rid: Any = 51, group: str = "pgbouncer") -> dict[str, Any]:
    return {
        "keepalived_group": group,
        "keepalived_virtual_ipaddress": vip,
        "keepalived_virtual_router_id": rid,
        "keepalived_unicast_src_ip": src,
        "haproxy_client_allowlist": ["10.9.0.0/24", "127.0.0.0/8"],
    }


def _problems(hosts: dict[str, dict[str, Any]]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        plan_vips(hosts)
    return [str(p) for p in info.value.problems]


def test_two_hosts_are_each_others_only_peer() -> None:
    plans = plan_vips({"a": _host("10.9.0.11"), "b": _host("10.9.0.12"), "pg": {"ansible_host": "10.9.0.10"}})
    assert set(plans) == {"a", "b"}
    assert plans["a"].unicast_src_ip == "10.9.0.11"
    assert plans["a"].unicast_peers == ("10.9.0.12",)
    assert plans["b"].unicast_peers == ("10.9.0.11",)
    assert plans["a"].virtual_ipaddress == "10.9.0.100/24"
    assert plans["a"].address == "10.9.0.100"
    assert plans["a"].virtual_router_id == 51
    assert plans["a"].name == "pgbouncer"


def test_three_groups_each_get_their_own_instance() -> None:
    hosts = {
        **{f"a{i}": _host(f"10.9.0.1{i}", group="eu") for i in range(3)},
        **{f"b{i}": _host(f"10.9.1.1{i}", "10.9.1.100/24", 52, "us") for i in range(2)},
    }
    plans = plan_vips(hosts)
    assert plans["a0"].unicast_peers == ("10.9.0.11", "10.9.0.12")
    assert plans["b1"].name == "us"
    assert plans["b1"].unicast_peers == ("10.9.1.10",)


def test_router_id_collision_across_groups_is_refused() -> None:
    hosts = {
        "a1": _host("10.9.0.11", group="eu"),
        "a2": _host("10.9.0.12", group="eu"),
        "b1": _host("10.9.0.21", "10.9.0.200/24", group="us"),
        "b2": _host("10.9.0.22", "10.9.0.200/24", group="us"),
    }
    found = _problems(hosts)
    assert found == [
        "keepalived_virtual_router_id (us): group eu uses the same virtual router id: on one segment their "
        "VRRP adverts would collide; give every pooler group its own id (1-255)"
    ]


def test_same_vip_in_two_groups_is_refused() -> None:
    hosts = {
        "a1": _host("10.9.0.11", group="eu"),
        "a2": _host("10.9.0.12", group="eu"),
        "b1": _host("10.9.0.21", rid=52, group="us"),
        "b2": _host("10.9.0.22", rid=52, group="us"),
    }
    assert any(p.startswith("keepalived_virtual_ipaddress (us): group eu declares") for p in _problems(hosts))


def test_vip_outside_the_hosts_network_names_the_variable_and_host() -> None:
    found = _problems({"a": _host("10.9.0.11", "10.9.5.100/24"), "b": _host("10.9.0.12", "10.9.5.100/24")})
    assert len(found) == 2
    assert found[0].startswith("keepalived_virtual_ipaddress (pgbouncer): not in the network of a's")


@pytest.mark.parametrize(
    ("vip", "message"),
    [
        ("10.9.0.100", "expected an IPv4 address with the prefix"),
        ("pooler.example", "expected an IPv4 address with the prefix"),
        ("fd00::100/64", "expected an IPv4 address with the prefix"),
        ("10.9.0.255/24", "is the network or broadcast address"),
        ("10.9.0.11/24", "is a's own address"),
    ],
)
def test_bad_vip_is_refused(vip: str, message: str) -> None:
    found = _problems({"a": _host("10.9.0.11", vip), "b": _host("10.9.0.12", vip)})
    assert any(message in p for p in found), found
    assert all(p.startswith("keepalived_") for p in found)


@pytest.mark.parametrize("rid", [0, 256, "x", True, None])
def test_router_id_out_of_range(rid: Any) -> None:
    found = _problems({"a": _host("10.9.0.11", rid=rid), "b": _host("10.9.0.12", rid=rid)})
    assert found == ["keepalived_virtual_router_id (pgbouncer): expected an integer from 1 to 255"]


def test_a_lone_host_has_no_peer() -> None:
    found = _problems({"a": _host("10.9.0.11"), "pg": {}})
    assert found == [
        "keepalived_virtual_ipaddress (pgbouncer): a virtual IP needs at least two hosts in the group "
        "(unicast peers): one host has nobody to hand the address to"
    ]


def test_hosts_of_a_group_must_agree() -> None:
    found = _problems({"a": _host("10.9.0.11"), "b": _host("10.9.0.12", rid=52)})
    assert found == ["keepalived_virtual_router_id (b): differs from that of a in group pgbouncer"]


def test_bad_or_duplicate_source_address() -> None:
    found = _problems({"a": _host("pool-a.example"), "b": _host("10.9.0.12"), "c": _host("10.9.0.12")})
    assert "keepalived_unicast_src_ip (a): expected the host's IPv4 address on the VRRP network" in found
    assert "keepalived_unicast_src_ip (c): is another host's address in the group" in found


def test_allowlist_must_admit_the_health_check() -> None:
    hosts = {"a": _host("10.9.0.11"), "b": _host("10.9.0.12")}
    hosts["b"]["haproxy_client_allowlist"] = ["10.20.0.0/16"]
    assert _problems(hosts) == [
        "haproxy_client_allowlist (b): must admit 127.0.0.1: keepalived's health check connects to HAProxy's "
        "client port from loopback, as a client would"
    ]


def test_problems_never_show_values() -> None:
    secretish = "s3cr3t-value"
    found = _problems({"a": _host(secretish, secretish, secretish), "b": _host("10.9.0.12", secretish, 9)})
    assert found
    assert not any(secretish in p for p in found)


def test_hosts_without_a_vip_take_no_part() -> None:
    assert plan_vips({"a": {"keepalived_virtual_ipaddress": ""}, "b": {}}) == {}


def test_hosts_outside_their_group_take_no_part() -> None:
    # e.g. `-e keepalived_virtual_ipaddress=...` gives the database server the variable too.
    hosts = {"a": _host("10.9.0.11"), "b": _host("10.9.0.12"), "pg1": _host("10.9.0.10")}
    plans = plan_vips(hosts, {"pgbouncer": ["a", "b"], "postgres": ["pg1"]})
    assert set(plans) == {"a", "b"}
    assert plans["a"].unicast_peers == ("10.9.0.12",)


def test_haproxy_must_listen_on_all_addresses() -> None:
    assert bind_problems("0.0.0.0") == []
    assert bind_problems("*") == []
    assert bind_problems("10.9.0.11")[0].startswith("haproxy_bind_address: HAProxy listens on one address")


def test_interface_holding_the_address_is_found_in_facts() -> None:
    facts = {
        "interfaces": ["lo", "host0", "eth-1"],
        "lo": {"ipv4": {"address": "127.0.0.1"}},
        "host0": {"ipv4": {"address": "10.9.0.11"}, "ipv4_secondaries": [{"address": "10.9.0.100"}]},
        "eth_1": {"ipv4": {"address": "10.8.0.5"}},
    }
    assert interface_of("10.9.0.11", facts) == "host0"
    assert interface_of("10.9.0.100", facts) == "host0"
    assert interface_of("10.8.0.5", facts) == "eth-1"
    assert interface_of("10.7.0.1", facts) == ""


def test_role_defaults_match_the_core() -> None:
    defaults = yaml.safe_load((REPO / "roles/keepalived/defaults/main.yml").read_text())
    assert defaults["keepalived_group"] == DEFAULT_GROUP
    assert defaults["keepalived_virtual_router_id"] == DEFAULT_ROUTER_ID


# The health check script, against a real listener on loopback: what keepalived's exit codes mean.
def _check_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "frontdoor_check", REPO / "roles/keepalived/files/frontdoor_check.py"
    )
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _serve(reply: bytes | None) -> int:
    server = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        for _ in range(2):
            conn, _ = server.accept()
            with conn:
                request = conn.recv(8)
                if reply is not None and request == (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big"):
                    conn.sendall(reply)

    threading.Thread(target=answer, daemon=True).start()
    return int(server.getsockname()[1])


@pytest.mark.parametrize(("reply", "code"), [(b"S", 0), (b"N", 0), (b"E", 1), (None, 1)])
def test_health_check_wants_an_sslrequest_answer(reply: bytes | None, code: int) -> None:
    check = _check_module()
    assert check.main(["check", str(_serve(reply))]) == code


def test_health_check_fails_when_nothing_listens() -> None:
    check = _check_module()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    assert check.main(["check", str(port)]) == 1
    assert check.main(["check"]) == 2
