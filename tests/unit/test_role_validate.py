"""The pgbouncer role's controller-side checks (tasks/validate.yml), run by a real ansible-playbook on
localhost: placeholder secrets and short SCRAM salt keys are refused by name, never by value; a good
configuration is rendered once and its digest recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from demo_example import DEMO_ENV

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples/autopgpool.toml"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
GOOD_SALT_KEY = "a-salt-key-of-forty-characters-xxxxxxxxx"

PLAY = """\
- name: Validate like site.yml's first play
  hosts: localhost
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  tasks:
    - name: Validate and render
      ansible.builtin.include_role:
        name: autopgpool.pool.pgbouncer
        tasks_from: validate.yml
    - name: Show the digest's length
      ansible.builtin.debug:
        msg: "digest has {{ _pgbouncer_plan_digest | length }} characters"
"""


def _run(tmp_path: Path, secrets: dict[str, str], salt_key: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "play.yml").write_text(PLAY)
    extra = tmp_path / "vars.json"
    extra.write_text(
        json.dumps(
            {
                "pgbouncer_config_file": str(EXAMPLE),
                "pgbouncer_secrets": secrets,
                "pgbouncer_scram_salt_key": salt_key,
                # Declared, so the run does not log in to the lab's pg1 (tests/unit/test_role_budget.py does).
                "pgbouncer_postgres_servers": {"pg1:5432": {"max_connections": 100}},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(
        # The checkout as the collection autopgpool.pool (the link `make venv` makes).
        ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".cache" / "collections"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_CONFIG=str(tmp_path / "ansible.cfg"),
    )
    (tmp_path / "ansible.cfg").write_text("")
    return subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", "localhost,", "-e", f"@{extra}", str(tmp_path / "play.yml")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )


def test_a_good_configuration_is_rendered_with_a_digest(tmp_path: Path) -> None:
    result = _run(tmp_path, dict(DEMO_ENV), GOOD_SALT_KEY)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "digest has 64 characters" in result.stdout
    for secret in DEMO_ENV.values():
        assert secret not in result.stdout + result.stderr


def test_placeholder_secrets_are_refused_by_name(tmp_path: Path) -> None:
    secrets = dict(
        DEMO_ENV, APP_USER_PASSWORD="change-me", STATS_PASSWORD="  CHANGEME ", ADMIN_PASSWORD="xxxx"
    )
    result = _run(tmp_path, secrets, GOOD_SALT_KEY)
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "still hold a placeholder value" in message
    for name in ("APP_USER_PASSWORD", "STATS_PASSWORD", "ADMIN_PASSWORD"):
        assert name in message
    assert "REPORT_USER_PASSWORD" not in message
    assert "TASK [autopgpool.pool.pgbouncer : Keep the rendered files]" not in message


def test_a_placeholder_salt_key_is_refused(tmp_path: Path) -> None:
    result = _run(tmp_path, dict(DEMO_ENV), "change-me")
    assert result.returncode != 0
    assert "pgbouncer_scram_salt_key" in result.stdout


def test_a_short_scram_salt_key_is_refused_without_showing_it(tmp_path: Path) -> None:
    short = "only-20-characters!!"
    result = _run(tmp_path, dict(DEMO_ENV), short)
    assert result.returncode != 0
    assert "at least 32 characters (20 given)" in result.stdout
    assert short not in result.stdout + result.stderr
