"""--check tells the truth about restarts and reloads: in check mode a template reports 'changed' but writes
nothing, so a decision made from file times alone says 'nothing to do' while the real run restarts HAProxy
(dropping its client sessions). Each role that decides from file times must also count the registered change
of the file it compares, as keepalived's configure.yml does."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROLES = Path(__file__).resolve().parents[2] / "roles"

CASES = {
    # role: (register of the unit drop-in, register of the configuration, restart fact, reload fact)
    "haproxy": (
        "_haproxy_dropin_file",
        "_haproxy_config_file",
        "_haproxy_need_restart",
        "_haproxy_need_reload",
    ),
    "keepalived": (
        "_keepalived_dropin_file",
        "_keepalived_config_file",
        "_keepalived_need_restart",
        "_keepalived_need_reload",
    ),
}


@pytest.mark.parametrize("role", sorted(CASES))
def test_restart_and_reload_decisions_count_the_registered_changes(role: str) -> None:
    dropin, config, restart, reload = CASES[role]
    tasks = yaml.safe_load((ROLES / role / "tasks" / "configure.yml").read_text())
    registers = {t.get("register") for t in tasks}
    assert {dropin, config} <= registers, f"{role}: the drop-in and configuration tasks must be registered"
    facts: dict[str, str] = {}
    for task in tasks:
        facts.update(task.get("ansible.builtin.set_fact") or {})
    assert f"{dropin}.changed" in facts[restart], f"{role}: --check would not report the restart"
    assert f"{config}.changed" in facts[reload], f"{role}: --check would not report the reload"
