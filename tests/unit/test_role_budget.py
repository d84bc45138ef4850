"""The connection budget in the pgbouncer role's controller-side checks (tasks/validate.yml), run by a real
ansible-playbook over a two-host inventory on localhost, as site.yml's first play runs it: every host of the
group is counted (also under --limit), a fleet beyond the budget or PostgreSQL's limit stops the run before
the files are rendered, and an unreadable server is reported by name without its password."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from demo_example import DEMO_ENV

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples/autopgpool.toml"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"

PLAY = """\
- name: Validate like site.yml's first play
  hosts: pgbouncer
  gather_facts: false
  tasks:
    - name: Validate and render
      ansible.builtin.include_role:
        name: autopgpool.pool.pgbouncer
        tasks_from: validate.yml
    - name: Show what the instances get
      ansible.builtin.debug:
        msg: "app pool_size per instance {{ pgbouncer_summary.pools.app.pool_size }}"
"""

INVENTORY = """\
pgbouncer:
  hosts:
    pool1: {pool1}
    pool2: {pool2}
  vars:
    ansible_connection: local
    ansible_python_interpreter: "{python}"
"""


def run(tmp_path: Path, *args: str, extra: dict[str, Any] | None = None, **hosts: Any) -> tuple[int, str]:
    (tmp_path / "play.yml").write_text(PLAY)
    host_vars = {name: json.dumps(hosts.get(name, {})) for name in ("pool1", "pool2")}
    (tmp_path / "hosts.yml").write_text(INVENTORY.format(python=sys.executable, **host_vars))
    variables = {
        "pgbouncer_config_file": str(EXAMPLE),
        "pgbouncer_secrets": dict(DEMO_ENV),
        "pgbouncer_scram_salt_key": "a-salt-key-of-forty-characters-xxxxxxxxx",
        **(extra or {}),
    }
    (tmp_path / "vars.json").write_text(json.dumps(variables))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(
        # The checkout as the collection autopgpool.pool (the link `make venv` makes).
        ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".cache" / "collections"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_CONFIG=str(tmp_path / "ansible.cfg"),
    )
    (tmp_path / "ansible.cfg").write_text("")
    proc = subprocess.run(
        [
            str(ANSIBLE_PLAYBOOK),
            "-i",
            str(tmp_path / "hosts.yml"),
            "-e",
            f"@{tmp_path / 'vars.json'}",
            *args,
            str(tmp_path / "play.yml"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=180,
        check=False,
    )
    output = proc.stdout + proc.stderr
    for name, secret in DEMO_ENV.items():
        assert secret not in output, f"the value of {name} was printed"
    return proc.returncode, output


PG1 = {"pgbouncer_postgres_servers": {"pg1:5432": {"max_connections": 100, "other_clients": 10}}}


def test_every_host_of_the_group_is_counted_even_under_limit(tmp_path: Path) -> None:
    code, output = run(
        tmp_path,
        "--limit",
        "pool1",
        extra=PG1,
        pool1={"pgbouncer_instances": 3},
        pool2={"pgbouncer_instances": 1},
    )
    assert code == 0, output
    assert "each number is a budget for all 4 pgbouncer instances on 2 hosts" in output
    assert "app pool_size per instance 5" in output  # 20 / (3 + 1)
    assert "server pg1:5432: pools app, reporting may open 40 connections in all; it takes 87" in output
    assert "this run deploys to 1 of the 2 pooler hosts" in output


def test_hosts_without_an_instance_count_are_asked_for_their_vcpus(tmp_path: Path) -> None:
    code, output = run(tmp_path, extra=PG1, pool1={"pgbouncer_instances": 1})
    assert code == 0, output
    total = 1 + (os.cpu_count() or 1)
    assert f"budget for all {total} pgbouncer instances on 2 hosts" in output
    assert "Read the vCPU count of pooler hosts whose instance count comes from it] ***" in output


def test_growing_beyond_the_budget_stops_before_rendering(tmp_path: Path) -> None:
    code, output = run(tmp_path, "-e", "pgbouncer_instances=64", extra=PG1)
    assert code != 0
    assert "pools.app.pool_size: pool_size 20 cannot be divided among 128 pgbouncer instances" in output
    assert "Keep the rendered files" not in output


def test_a_fleet_beyond_the_servers_limit_stops_before_rendering(tmp_path: Path) -> None:
    tight = {"pgbouncer_postgres_servers": {"pg1:5432": {"max_connections": 100, "other_clients": 80}}}
    code, output = run(
        tmp_path,
        "-e",
        "pgbouncer_connection_scope=instance",
        extra=tight,
        pool1={"pgbouncer_instances": 2},
        pool2={"pgbouncer_instances": 2},
    )
    assert code != 0
    assert "PostgreSQL server pg1:5432: the pooler fleet may open 164 server connections" in output
    assert (
        "but the server takes 17 (max_connections 100 - superuser_reserved_connections 3 - other clients 80"
        in output
    )
    assert "Keep the rendered files" not in output


def test_an_unreadable_server_is_named_and_its_password_never_shown(tmp_path: Path) -> None:
    # Nothing declared: the first pooler host logs in to pg1 as app_owner, and pg1 does not exist here.
    code, output = run(tmp_path, pool1={"pgbouncer_instances": 1}, pool2={"pgbouncer_instances": 1})
    assert code != 0
    assert "pool1 could not read max_connections from PostgreSQL pg1:5432" in output
    assert "declare its limits in pgbouncer_postgres_servers" in output
    assert "Keep the rendered files" not in output
