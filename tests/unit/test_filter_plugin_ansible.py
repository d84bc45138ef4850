"""filter_plugins/autopgpool.py loaded by a real ansible-playbook, as a playbook author uses it.

Each case runs a one-play playbook on localhost in tmp_path, with ANSIBLE_COLLECTIONS_PATH finding the
checkout as the collection autopgpool.pool (filters by FQCN) and an empty ansible.cfg, and inspects what
ansible-playbook printed and wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from autopgpool import render_files
from demo_example import DEMO_ENV

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples/autopgpool.toml"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"

PLAY = """\
- name: Use the autopgpool filters
  hosts: localhost
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{{{ ansible_playbook_python }}}}"
    toml_text: "{{{{ lookup('ansible.builtin.file', '{toml}') }}}}"
  tasks:
{tasks}
"""

RENDER_TASKS = """\
    - name: Validate
      ansible.builtin.debug:
        msg: >-
          valid={{ toml_text | autopgpool.pool.autopgpool_validate(secrets=vault_secrets,
                                                                   secrets_from_environment=env_names) }}
    - name: Summarize
      ansible.builtin.debug:
        msg: >-
          {{ toml_text | autopgpool.pool.autopgpool_summary(secrets=vault_secrets,
                                                            secrets_from_environment=env_names) }}
    - name: Render
      ansible.builtin.set_fact:
        rendered: >-
          {{ toml_text | autopgpool.pool.autopgpool_render(secrets=vault_secrets, salt_key='k',
                                                           secrets_from_environment=env_names,
                                                           config_dir='/etc/pgb') }}
      no_log: true
    - name: Write the rendered files
      ansible.builtin.copy:
        content: "{{ rendered[item] }}"
        dest: "{{ out_dir }}/{{ item }}"
        mode: "0600"
      loop: "{{ rendered.keys() | sort }}"
      no_log: true
"""


def run_play(
    tmp_path: Path,
    toml: Path,
    tasks: str,
    secrets: dict[str, str],
    env: dict[str, str],
    env_names: list[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "ansible.cfg").write_text("")
    (tmp_path / "out").mkdir(exist_ok=True)
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAY.format(toml=toml, tasks=tasks))
    extra = tmp_path / "vars.json"  # stands in for a Vault-encrypted vars file
    extra.write_text(
        json.dumps({"vault_secrets": secrets, "out_dir": str(tmp_path / "out"), "env_names": env_names or []})
    )
    full_env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "ANSIBLE_CONFIG": str(tmp_path / "ansible.cfg"),
        "ANSIBLE_HOME": str(tmp_path / ".ansible"),
        # The checkout as the collection autopgpool.pool (the link `make venv` makes): filters by FQCN.
        "ANSIBLE_COLLECTIONS_PATH": str(ROOT / ".cache" / "collections"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCALHOST_WARNING": "0",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0",
        **env,
    }
    return subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", "localhost,", "-e", f"@{extra}", str(playbook)],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=tmp_path,
        check=False,
        timeout=180,
    )


def assert_no_secret(output: str) -> None:
    leaked = [name for name, value in DEMO_ENV.items() if value in output]
    assert leaked == [], f"values of {leaked} appear in ansible-playbook output"


def test_good_config_renders_through_ansible(tmp_path: Path) -> None:
    # Secrets split between the mapping (Vault) and the controller environment, which is read only for the
    # names the operator allowed; the mapping wins where both define a name, so the environment's bogus
    # APP_USER_PASSWORD must not be used.
    mapping = {k: v for k, v in DEMO_ENV.items() if k != "STATS_PASSWORD"}
    env = {"STATS_PASSWORD": DEMO_ENV["STATS_PASSWORD"], "APP_USER_PASSWORD": "from-the-environment"}
    proc = run_play(tmp_path, EXAMPLE, RENDER_TASKS, mapping, env, ["STATS_PASSWORD", "APP_USER_PASSWORD"])
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "valid=True" in output
    assert '"file_descriptor_limit": 641' in output  # the summary arrived as a mapping: 500 + 25 + 16 + 100
    assert_no_secret(output)
    assert "from-the-environment" not in output
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["pgbouncer.ini", "pgbouncer_hba.conf", "userlist.txt"]
    ini = (out / "pgbouncer.ini").read_text()
    assert "app = host=pg1 port=5432 dbname=app_db user=app_owner " in ini
    assert "auth_file = /etc/pgb/userlist.txt\n" in ini
    expected = render_files(EXAMPLE.read_text(), DEMO_ENV, salt_key="k", config_dir="/etc/pgb")
    for name, content in expected.items():
        assert (out / name).read_text() == content, name  # byte for byte what the package renders


def test_bad_config_fails_with_key_paths_and_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(EXAMPLE.read_text().replace("port = 5432", 'port = "$APP_DB_PASSWORD"', 1))
    secrets = {k: v for k, v in DEMO_ENV.items() if k != "STATS_PASSWORD"}
    tasks = """\
    - name: Validate
      ansible.builtin.debug:
        msg: "{{ toml_text | autopgpool.pool.autopgpool_validate(secrets=vault_secrets) }}"
"""
    proc = run_play(tmp_path, bad, tasks, secrets, {})
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "invalid autopgpool configuration (2 problems)" in output
    assert "pools.app.remote.port: expected an integer from 1 to 65535" in output
    assert "users[4].password: variable STATS_PASSWORD is not in pgbouncer_secrets" in output
    assert "Traceback" not in output
    assert_no_secret(output)


def test_environment_is_read_only_for_the_names_the_operator_allowed(tmp_path: Path) -> None:
    # An application team's pull request points a remote at its own host and its password at the CI token
    # the controller happens to have in its environment: every filter refuses, naming key and variable.
    toml = tmp_path / "exfiltrate.toml"
    toml.write_text(
        EXAMPLE.read_text().replace('password = "$APP_DB_PASSWORD"', 'password = "${CI_JOB_TOKEN}"', 1)
    )
    token = "glcbt-the-ci-token-value-4711"
    tasks = "".join(
        f"""    - name: Run {name}
      ansible.builtin.debug:
        msg: "{{{{ toml_text | autopgpool.pool.{name}(secrets=vault_secrets) }}}}"
      ignore_errors: true
"""
        for name in (
            "autopgpool_validate",
            "autopgpool_summary",
            "autopgpool_render",
            "autopgpool_plan",
            "autopgpool_backends",
            "autopgpool_limit_probes",
        )
    )
    proc = run_play(tmp_path, toml, tasks, dict(DEMO_ENV), {"CI_JOB_TOKEN": token})
    output = proc.stdout + proc.stderr
    assert "ignored=6" in output  # every filter failed
    for task in output.split("TASK [")[1:]:  # ... each with the key and the variable's name
        assert "pools.app.remote.password: variable CI_JOB_TOKEN is not in pgbouncer_secrets" in task, task
    assert "pgbouncer_secrets_from_environment (no name)" in output
    assert token not in output
    assert "Traceback" not in output
    assert_no_secret(output)
    # Allowed by name, the same reference expands from the environment (and stays out of the output).
    allowed = """    - name: Validate with CI_JOB_TOKEN allowed from the environment
      ansible.builtin.debug:
        msg: "valid={{ toml_text | autopgpool.pool.autopgpool_validate(secrets=vault_secrets,
                                                                       secrets_from_environment=env_names) }}"
"""
    proc = run_play(tmp_path, toml, allowed, dict(DEMO_ENV), {"CI_JOB_TOKEN": token}, ["CI_JOB_TOKEN"])
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "valid=True" in output
    assert token not in output


def test_summary_carries_warnings_and_render_refuses_a_bad_config_dir(tmp_path: Path) -> None:
    toml = tmp_path / "replica.toml"
    toml.write_text(EXAMPLE.read_text() + '\n[pools.app.replica]\npool_mode = "statement"\n')
    tasks = """\
    - name: Summarize
      ansible.builtin.debug:
        msg: "{{ (toml_text | autopgpool.pool.autopgpool_summary(secrets=vault_secrets)).warnings }}"
    - name: Render into a directory that would add a line to pgbouncer.ini
      ansible.builtin.set_fact:
        rendered: >-
          {{ toml_text | autopgpool.pool.autopgpool_render(secrets=vault_secrets,
                                                           config_dir='/etc/x\\nauth_type = trust') }}
"""
    proc = run_play(tmp_path, toml, tasks, dict(DEMO_ENV), {})
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "pools.app.replica: ignored: autopg-pool documented [pools.<name>.replica]" in output
    assert "config_dir: expected an absolute path" in output
    assert "Traceback" not in output
    assert_no_secret(output)
