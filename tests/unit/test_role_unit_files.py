"""How the haproxy and keepalived roles change their units (issue 24): HAProxy's drop-in is written only after
haproxy -c has accepted haproxy.cfg, and keepalived decides reloads and restarts from file times on the host
(no handlers, which a stopped run forgets) and may write only its own runtime directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROLES = Path(__file__).resolve().parents[2] / "roles"


def _tasks(role: str) -> list[dict[str, Any]]:
    """The role's tasks in the order tasks/main.yml imports them (one level of import_tasks)."""
    tasks: list[dict[str, Any]] = []
    for task in yaml.safe_load((ROLES / role / "tasks" / "main.yml").read_text()):
        for inner in task.get("block", [task]):
            imported = inner.get("ansible.builtin.import_tasks")
            if imported:
                tasks += yaml.safe_load((ROLES / role / "tasks" / imported).read_text())
            else:
                tasks.append(inner)
    return tasks


def test_haproxy_writes_its_drop_in_only_after_haproxy_accepted_the_config() -> None:
    tasks = _tasks("haproxy")
    writes = [
        (i, t["ansible.builtin.template"])
        for i, t in enumerate(tasks)
        if isinstance(t.get("ansible.builtin.template"), dict)
    ]
    (checked,) = [i for i, t in writes if str(t.get("validate", "")).startswith("haproxy -c")]
    (dropin,) = [i for i, t in writes if "haproxy.service.d" in t["src"]]
    assert checked < dropin


def test_keepalived_has_no_handlers_and_decides_from_the_host() -> None:
    assert not (ROLES / "keepalived" / "handlers").exists()
    tasks = _tasks("keepalived")
    assert [t["name"] for t in tasks if "notify" in t] == []
    names = [t["name"] for t in tasks]
    assert "Read the times of the configuration and of keepalived's last start and load" in names


def test_keepalived_may_write_only_its_runtime_directory() -> None:
    dropin = (
        ROLES / "keepalived/templates/etc/systemd/system/keepalived.service.d/hardening.conf.j2"
    ).read_text()
    writable = [line.split("=", 1)[1] for line in dropin.splitlines() if line.startswith("ReadWritePaths=")]
    assert writable == ["{{ _keepalived_runtime_dir }}"]
    assert (
        yaml.safe_load((ROLES / "keepalived/vars/main.yml").read_text())["_keepalived_runtime_dir"]
        == "/run/keepalived"
    )
    assert "RuntimeDirectory={{ _keepalived_runtime_dir | basename }}" in dropin
    assert "--pid={{ _keepalived_runtime_dir }}/keepalived.pid" in dropin
