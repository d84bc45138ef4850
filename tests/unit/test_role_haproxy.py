"""The haproxy role's own first check, run by a real ansible-playbook on localhost: without the pgbouncer
role's plan for the host it stops with a message naming what to do, and the removed haproxy_server_maxconn is
refused by name instead of being ignored."""

from __future__ import annotations

from pathlib import Path

import pytest
import test_role_budget as role

ALONE = """\
- name: The haproxy role's checks
  hosts: pgbouncer
  gather_facts: false
  tasks:
    - name: Plan (only when asked)
      ansible.builtin.include_role:
        name: autopgpool.pool.pgbouncer
        tasks_from: validate.yml
      when: with_plan | default(false) | bool
    - name: Check
      ansible.builtin.include_role:
        name: autopgpool.pool.haproxy
        tasks_from: assert.yml
      vars:
        haproxy_client_allowlist: [10.0.0.0/8]
        pgbouncer_endpoints: "{{ pgbouncer_plan_hosts[inventory_hostname].endpoints | default([]) }}"
    - name: Reached only when every check passed
      ansible.builtin.debug:
        msg: "haproxy checked"
"""


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **extra: object) -> tuple[int, str]:
    monkeypatch.setattr(role, "PLAY", ALONE)
    return role.run(tmp_path, extra={**role.PG1, **extra})


def test_with_the_plan_the_checks_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rc, out = _run(tmp_path, monkeypatch, with_plan=True)
    assert rc == 0, out[-3000:]
    assert "haproxy checked" in out


def test_without_the_pgbouncer_role_it_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rc, out = _run(tmp_path, monkeypatch)
    assert rc != 0
    assert "run the autopgpool.pool.pgbouncer role first" in out
    assert "haproxy checked" not in out


def test_the_removed_server_maxconn_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rc, out = _run(tmp_path, monkeypatch, with_plan=True, haproxy_server_maxconn=50)
    assert rc != 0
    assert "haproxy_server_maxconn was removed" in out
