"""The virtual IP's checks as site.yml's first play runs them (a real ansible-playbook over a two-host
inventory on localhost): HAProxy bound to one address would refuse the virtual IP's clients, and the run stops
there, naming the host and the variable, before the batches touch any host."""

from __future__ import annotations

from pathlib import Path

import pytest
import test_role_budget as role

FIRST_PLAY = """\
- name: Validate like site.yml's first play
  hosts: pgbouncer
  gather_facts: false
  any_errors_fatal: true
  tasks:
    - name: Validate and render
      ansible.builtin.include_role:
        name: autopgpool.pool.pgbouncer
        tasks_from: validate.yml
    - name: Check the virtual IP
      ansible.builtin.include_role:
        name: autopgpool.pool.keepalived
        tasks_from: validate.yml
    - name: Reached only when every check passed
      ansible.builtin.debug:
        msg: "virtual IP checked"
"""


def _vip_host(src: str) -> dict[str, object]:
    return {
        "keepalived_virtual_ipaddress": "10.9.0.100/24",
        "keepalived_virtual_router_id": 51,
        "keepalived_unicast_src_ip": src,
        "haproxy_client_allowlist": ["10.9.0.0/24", "127.0.0.0/8"],
        # The "hosts" are this machine, which holds neither address: the first play checks the interface on
        # the host's network facts, and lo is one.
        "keepalived_interface": "lo",
    }


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **extra: object) -> tuple[int, str]:
    monkeypatch.setattr(role, "PLAY", FIRST_PLAY)
    return role.run(
        tmp_path, extra={**role.PG1, **extra}, pool1=_vip_host("10.9.0.11"), pool2=_vip_host("10.9.0.12")
    )


def test_wildcard_bind_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rc, out = _run(tmp_path, monkeypatch)
    assert rc == 0, out[-3000:]
    assert "virtual IP checked" in out


def test_haproxy_on_one_address_is_refused_in_the_first_play(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From the inventory (haproxy_bind_address) as from the TOML (listen_addr, which HAProxy binds)."""
    rc, out = _run(tmp_path, monkeypatch, haproxy_bind_address="10.9.0.11")
    assert rc != 0
    assert "pool1: haproxy_bind_address: HAProxy listens on one address only" in out
    assert "virtual IP checked" not in out
    toml = tmp_path / "loopback.toml"
    toml.write_text(role.EXAMPLE.read_text().replace('listen_addr = "0.0.0.0"', 'listen_addr = "127.0.0.1"'))
    rc, out = _run(tmp_path, monkeypatch, pgbouncer_config_file=str(toml))
    assert rc != 0
    assert "haproxy_bind_address: HAProxy listens on one address only" in out
