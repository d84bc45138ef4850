"""site.yml's first play refuses, before any host changes, a smoke_test_user that the query after each
batch could not log in as: postgres_ping answers an MD5 challenge only when smoke_test_auth_methods lists md5
and the connection is verified TLS. Without this check such a run deploys its first batch and then fails on
the module's refusal, which names none of the inventory variables. One real ansible-playbook run on the
controller, one local host per case."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from autopgpool import summarize
from demo_example import DEMO_ENV, EXAMPLE_CONFIG

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "playbooks" / "site.yml"
TASK = "Check that the front-door query can log in as smoke_test_user"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"

SUMMARY_TLS = {"client_tls": True, "user_auth_types": {"app": "scram-sha-256", "legacy": "md5"}}
SUMMARY_NO_TLS = {"client_tls": False, "user_auth_types": {"app": "scram-sha-256", "legacy": "md5"}}
CASES: dict[str, tuple[dict[str, Any], bool]] = {
    # host: (host vars, refused?)
    "scram_user": ({"smoke_test_user": "app", "pgbouncer_summary": SUMMARY_NO_TLS}, False),
    "no_smoke_user": ({"pgbouncer_summary": SUMMARY_NO_TLS}, False),
    "md5_default_methods": (
        {"smoke_test_user": "legacy", "smoke_test_sslmode": "verify-full", "pgbouncer_summary": SUMMARY_TLS},
        True,
    ),
    "md5_without_client_tls": (
        {
            "smoke_test_user": "legacy",
            "smoke_test_auth_methods": ["md5"],
            "smoke_test_sslmode": "verify-full",
            "pgbouncer_summary": SUMMARY_NO_TLS,
        },
        True,
    ),
    "md5_unverified": (
        {
            "smoke_test_user": "legacy",
            "smoke_test_auth_methods": ["md5"],
            "smoke_test_sslmode": "require",
            "pgbouncer_summary": SUMMARY_TLS,
        },
        True,
    ),
    "md5_allowed": (
        {
            "smoke_test_user": "legacy",
            "smoke_test_auth_methods": ["scram-sha-256", "md5"],
            "smoke_test_sslmode": "verify-full",
            "pgbouncer_summary": SUMMARY_TLS,
        },
        False,
    ),
}


def test_an_md5_smoke_user_needs_its_method_allowed_over_verified_tls(tmp_path: Path) -> None:
    hosts = {name: {"ansible_connection": "local", **hostvars} for name, (hostvars, _) in CASES.items()}
    (tmp_path / "inventory.json").write_text(json.dumps({"all": {"hosts": hosts}}))
    # The task as site.yml's first play has it, alone in a play over the cases.
    (first,) = [p for p in yaml.safe_load(SITE.read_text()) if p.get("any_errors_fatal")]
    (task,) = [t for t in first["tasks"] if t.get("name") == TASK]
    play = {
        "hosts": "all",
        "gather_facts": False,
        "tasks": [task, {"ansible.builtin.debug": {"msg": "PASSED"}}],
    }
    (tmp_path / "play.yml").write_text(yaml.safe_dump([play], sort_keys=False))
    (tmp_path / "ansible.cfg").write_text("")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "ANSIBLE_CONFIG": str(tmp_path / "ansible.cfg"),
        "ANSIBLE_HOME": str(tmp_path / ".ansible"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCALHOST_WARNING": "0",
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
    }
    proc = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", str(tmp_path / "inventory.json"), str(tmp_path / "play.yml")],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=False, timeout=180,
    )  # fmt: skip
    recap = proc.stdout.split("PLAY RECAP", 1)[-1]
    refused = {line.split()[0] for line in recap.splitlines() if re.search(r"\bfailed=[1-9]", line)}
    assert refused == {name for name, (_, expected) in CASES.items() if expected}, proc.stdout[-4000:]
    assert "smoke_test_auth_methods: [md5]" in proc.stdout
    assert "Nothing was changed." in proc.stdout


def test_the_plan_says_how_each_user_authenticates() -> None:
    """What the check reads: the summary's user_auth_types (the example's report_user is an md5 client)."""
    kinds = summarize(EXAMPLE_CONFIG.read_text(), DEMO_ENV)["user_auth_types"]
    assert kinds["report_user"] == "md5"
    assert kinds["app_user"] == "scram-sha-256"
