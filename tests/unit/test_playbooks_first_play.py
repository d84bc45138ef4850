"""What every playbook does before a host is touched, run by a real ansible-playbook on the controller.

- An inventory without hosts in the group pgbouncer (a misspelt group) or a --limit that leaves
none of them is
  refused naming the group, instead of a green run that did nothing; a --limit to pooler hosts passes.
- site.yml's forget play leaves no secret in the run's variables: run for real on localhost after a play that
  sets every secret-carrying variable of the roles, and checked statically against every no_log task that
  registers or sets one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOKS = ROOT / "playbooks"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
SECRET = "SWEEPforget9Q"

# Hosts at TEST-NET-1 addresses: any attempt to reach one would fail as UNREACHABLE.
MISSPELT = """\
all:
  children:
    pgbouncers:
      hosts:
        pool1: {ansible_host: 192.0.2.11}
        pool2: {ansible_host: 192.0.2.12}
"""
GOOD = """\
all:
  children:
    pgbouncer:
      hosts:
        pool1: {ansible_host: 192.0.2.11}
        pool2: {ansible_host: 192.0.2.12}
    postgres:
      hosts:
        pg1: {ansible_host: 192.0.2.10}
"""


def run(tmp_path: Path, inventory: str, playbook: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "ansible.cfg").write_text("")
    (tmp_path / "inventory.yml").write_text(inventory)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "ANSIBLE_CONFIG": str(tmp_path / "ansible.cfg"),
        "ANSIBLE_HOME": str(tmp_path / ".ansible"),
        "ANSIBLE_COLLECTIONS_PATH": str(ROOT / ".cache" / "collections"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCALHOST_WARNING": "0",
        "ANSIBLE_HOST_KEY_CHECKING": "0",
        "ANSIBLE_TIMEOUT": "2",
    }
    return subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", str(tmp_path / "inventory.yml"), str(playbook), *args],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=False, timeout=180,
    )  # fmt: skip


@pytest.mark.parametrize(
    "playbook", ["site.yml", "rolling_restart.yml", "upgrade.yml", "fleet.yml", "smoke_test.yml"]
)
def test_a_misspelt_pooler_group_is_refused_naming_it(tmp_path: Path, playbook: str) -> None:
    proc = run(tmp_path, MISSPELT, PLAYBOOKS / playbook)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "no host in the group pgbouncer" in out, out
    assert "Its groups: pgbouncers." in out, out  # the typo is shown next to the name expected
    assert "UNREACHABLE" not in out, out  # refused before any host is contacted


def test_an_empty_inventory_is_refused(tmp_path: Path) -> None:
    proc = run(tmp_path, "all: {}\n", PLAYBOOKS / "site.yml")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "no host in the group pgbouncer" in out, out


def test_a_limit_to_pooler_hosts_passes_and_one_without_them_is_refused(tmp_path: Path) -> None:
    check = PLAYBOOKS / "steps" / "pooler_hosts.yml"
    passed = run(tmp_path, GOOD, check, "--limit", "pool1")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "UNREACHABLE" not in passed.stdout
    refused = run(tmp_path, GOOD, check, "--limit", "pg1")
    assert refused.returncode != 0, refused.stdout
    assert "--limit leaves no host of the group pgbouncer" in refused.stdout


def _walk(tasks: Any, found: set[str]) -> None:
    for task in tasks or []:
        if not isinstance(task, dict):
            continue
        for key in ("block", "rescue", "always"):
            _walk(task.get(key), found)
        if task.get("no_log") is True:
            if "register" in task:
                found.add(task["register"])
            facts = task.get("ansible.builtin.set_fact")
            if isinstance(facts, dict):
                found.update(str(name) for name in facts if name != "cacheable")


def secret_variables() -> set[str]:
    """Every variable a no_log task of the roles registers or sets: each may carry a secret."""
    found: set[str] = set()
    for path in sorted(ROOT.glob("roles/*/tasks/*.yml")):
        _walk(yaml.safe_load(path.read_text()), found)
    return found


def forget_play() -> dict[str, Any]:
    plays = yaml.safe_load((PLAYBOOKS / "site.yml").read_text())
    (play,) = [p for p in plays if p.get("name") == "Forget the rendered files"]
    return dict(play)


def test_the_forget_play_drops_every_secret_carrying_variable() -> None:
    (task,) = forget_play()["tasks"]
    assert task["no_log"] is True
    dropped = set(task["ansible.builtin.set_fact"])
    assert secret_variables() - dropped == set()
    assert {"_pgbouncer_limit_reads", "_pgbouncer_exporter_config"} <= dropped


def test_after_the_forget_play_no_variable_holds_a_secret(tmp_path: Path) -> None:
    names = sorted(secret_variables())
    # Set as the roles do: some by set_fact, the probe's results (and the copies') by register.
    registered = {
        "_pgbouncer_limit_reads",
        "_pgbouncer_planning",
        "_pgbouncer_shared_copy",
        "_pgbouncer_tls_on_copy",
    }
    facts = {n: {"password": SECRET} for n in names if n not in registered}
    tasks: list[dict[str, Any]] = [
        {"name": "Set the run's secrets", "ansible.builtin.set_fact": facts, "no_log": True},
    ]
    for n in sorted(registered):
        debug = {"msg": f"password={SECRET}"}
        tasks.append({"name": f"Register {n}", "ansible.builtin.debug": debug, "register": n, "no_log": True})
    dump = {
        "name": "Dump every variable of the host",
        "hosts": "pgbouncer",
        "gather_facts": False,
        "tasks": [
            {
                "name": "Write them",
                "ansible.builtin.copy": {
                    "content": "{{ hostvars[inventory_hostname] | to_json }}",
                    "dest": str(tmp_path / "vars.json"),
                    "mode": "0600",
                },
                "no_log": True,
            }
        ],
    }
    plays = [
        {"name": "Run", "hosts": "pgbouncer", "gather_facts": False, "tasks": tasks},
        forget_play(),
        dump,
    ]
    playbook = tmp_path / "forget.yml"
    playbook.write_text(yaml.safe_dump(plays, sort_keys=False))
    inventory = (
        "all:\n  children:\n    pgbouncer:\n      hosts:\n        localhost:\n"
        "          ansible_connection: local\n          ansible_python_interpreter: " + sys.executable + "\n"
    )
    proc = run(tmp_path, inventory, playbook)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    dumped = (tmp_path / "vars.json").read_text()
    assert set(names) <= set(json.loads(dumped))
    assert SECRET not in dumped
    assert SECRET not in proc.stdout + proc.stderr
