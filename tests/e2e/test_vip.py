"""The pooler group's virtual IP (roles/keepalived) as operators and clients see it: one holder, a hardened
unit, a rendered configuration that keeps outsiders out, an unprivileged health check, clients served through
the VIP with the certificate verified, and libpq's multi-host form, for where no VIP is possible.
"""

from __future__ import annotations

import json
import re

import psycopg
import pytest

from .stack import Host, ansible_playbook, example_config
from .vip_lab import answers, holders, pooler_vip, vrrp_state

pytestmark = pytest.mark.e2e

CA = "sslrootcert=.lab/tls/ca.crt sslmode=verify-full"
CHECK = "/usr/local/libexec/autopgpool/keepalived-frontdoor-check"


def _dsn(host: str, **extra: str) -> str:
    user = next(u for u in example_config().users if u.username == "app_user")
    more = " ".join(f"{k}={v}" for k, v in extra.items())
    return (
        f"host={host} port={example_config().listen_port} dbname=app user=app_user password={user.password} "
        f"connect_timeout=3 {CA} {more}"
    )


def test_exactly_one_pooler_holds_the_vip(lab_poolers: list[Host]) -> None:
    vip = pooler_vip()
    held = holders(lab_poolers, vip)
    assert len(held) == 1, f"{vip} is held by {held or 'nobody'}"
    states = {h.name: vrrp_state(h) for h in lab_poolers}
    assert states[held[0]] == "MASTER", states
    assert all(s == "BACKUP" for n, s in states.items() if n != held[0]), states


def test_clients_are_served_through_the_vip_with_the_certificate_verified(lab_poolers: list[Host]) -> None:
    with psycopg.connect(_dsn(pooler_vip())) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.pgconn.ssl_in_use


def test_keepalived_conf_is_root_only_unicast_nopreempt_without_secrets(lab_poolers: list[Host]) -> None:
    addresses = {h.name: h.address for h in lab_poolers}
    for host in lab_poolers:
        assert host.run("stat -c '%U %G %a' /etc/keepalived/keepalived.conf").split() == [
            "root",
            "root",
            "600",
        ]
        conf = host.run("cat /etc/keepalived/keepalived.conf")
        for line in (
            "state BACKUP",
            "nopreempt",
            "check_unicast_src",
            "vrrp_version 3",
            "enable_script_security",
        ):
            assert re.search(rf"^\s*{line}$", conf, re.MULTILINE), f"{host.name}: no `{line}`"
        assert f"unicast_src_ip {host.address}" in conf
        peers = re.search(r"unicast_peer \{(.*?)\}", conf, re.DOTALL)
        assert peers
        assert peers.group(1).split() == [a for n, a in addresses.items() if n != host.name]
        assert f"{pooler_vip()}/24 dev" in conf
        assert "mcast" not in conf
        assert not re.search(r"^\s*(authentication|auth_type|auth_pass)\b", conf, re.MULTILINE)


def test_keepalived_unit_is_hardened(lab_poolers: list[Host]) -> None:
    for host in lab_poolers:
        out = host.run("systemd-analyze security keepalived.service | tail -n1")
        match = re.search(r"exposure level for keepalived.service: ([\d.]+)", out)
        assert match, out
        print(f"\n{host.name}: systemd-analyze security keepalived: {match.group(1)}")
        assert float(match.group(1)) <= 3.0, out
        caps = host.run("systemctl show -P CapabilityBoundingSet keepalived").split()
        assert sorted(caps) == sorted(
            ["cap_net_admin", "cap_net_raw", "cap_setuid", "cap_setgid", "cap_kill"]
        )


def test_health_check_runs_unprivileged_and_asks_the_front_door(lab_poolers: list[Host]) -> None:
    port = example_config().listen_port
    for host in lab_poolers:
        ident = host.run("getent passwd keepalived_script").strip().split(":")
        assert int(ident[2]) != 0
        assert ident[6] == "/usr/sbin/nologin"
        assert host.run("id -Gn keepalived_script").split() == ["keepalived_script"]
        assert host.run(f"stat -c '%U %a' {CHECK}").split() == ["root", "755"]
        conf = host.run("cat /etc/keepalived/keepalived.conf")
        assert "script_user keepalived_script" in conf
        # What keepalived runs, as the user it runs it as: it passes while the front door answers.
        host.run(f"runuser -u keepalived_script -- {CHECK} {port}")
        assert host.run(f"runuser -u keepalived_script -- {CHECK} 1; echo $?", check=False).strip() == "1"


def test_libpq_multi_host_balances_over_the_poolers(lab_poolers: list[Host]) -> None:
    """The alternative where no VIP is possible (docs/operations.md): libpq tries the hosts in random order
    (load_balance_hosts=random, libpq 16+) and takes any that answers (target_session_attrs=any)."""
    hosts = ",".join(h.address for h in lab_poolers)
    used = set()
    for _ in range(20):
        with psycopg.connect(_dsn(hosts, load_balance_hosts="random", target_session_attrs="any")) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            used.add(conn.info.host)
    assert used == {h.address for h in lab_poolers}, f"20 connections used only {used}"
    # A first host that does not answer: libpq moves on to the next (pg1 runs no pooler: its port is closed).
    dead = f"10.231.{lab_poolers[0].address.split('.')[2]}.10"
    with psycopg.connect(_dsn(f"{dead},{lab_poolers[0].address}", target_session_attrs="any")) as conn:
        assert conn.info.host == lab_poolers[0].address


def test_the_vip_answers_like_a_pooler(lab_poolers: list[Host]) -> None:
    assert answers(pooler_vip(), example_config().listen_port, timeout=2)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        # The VIP outside the poolers' network (10.231.<slot>.0/24).
        (
            {"keepalived_virtual_ipaddress": "10.99.0.100/24"},
            "keepalived_virtual_ipaddress (pgbouncer): not in",
        ),
        (
            {"keepalived_virtual_router_id": 300},
            "keepalived_virtual_router_id (pgbouncer): expected an integer",
        ),
        (
            {"haproxy_client_allowlist": ["10.231.0.0/16"]},
            "haproxy_client_allowlist (pool1): must admit 127.0.0.1",
        ),
    ],
)
def test_bad_vip_input_is_refused_before_any_host_changes(
    lab_poolers: list[Host], extra: dict[str, object], message: str
) -> None:
    confs = {h.name: h.run("md5sum /etc/keepalived/keepalived.conf") for h in lab_poolers}
    result = ansible_playbook("playbooks/site.yml", "-e", json.dumps(extra), timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert message in output, output[-3000:]
    assert "PLAY [Roll out the poolers in batches]" not in output
    assert {h.name: h.run("md5sum /etc/keepalived/keepalived.conf") for h in lab_poolers} == confs
