"""A first deploy from the README gets past the pgbouncer_build role's checks: the minimal operator repository
(option A: 1.26.1 with its digest; option B: the pin with each of its CVEs acknowledged) and the production
example pass the role's own tasks/assert.yml, run by a real ansible-playbook on localhost. Before issue 24 the
README's minimal repository was refused for the pin's six known CVEs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
TABLE = yaml.safe_load((ROOT / "roles/pgbouncer_build/vars/main/releases.yml").read_text())
PIN = TABLE["pgbouncer_build_pinned_version"]
RELEASES = TABLE["pgbouncer_build_releases"]
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
BUILD_KEYS = (
    "pgbouncer_build_version",
    "pgbouncer_build_sha256",
    "pgbouncer_build_accept_known_vulnerabilities",
)

PLAY = """\
- name: The pgbouncer_build role's checks, as site.yml runs them
  hosts: localhost
  connection: local
  gather_facts: true
  gather_subset: [min]
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  tasks:
    - name: Check the build variables
      ansible.builtin.include_role:
        name: autopgpool.pool.pgbouncer_build
        tasks_from: assert.yml
        public: true
    - name: Say it passed
      ansible.builtin.debug:
        msg: "build checks passed for {{ pgbouncer_build_version }}"
"""


def _readme_group_vars() -> list[dict[str, Any]]:
    """The README's YAML blocks for inventory/group_vars/pgbouncer.yml, in order."""
    blocks = re.findall(r"```yaml\n(# inventory/group_vars/pgbouncer\.yml.*?)```", README, re.S)
    return [yaml.safe_load(block) for block in blocks]


def _build_vars(group_vars: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in group_vars.items() if k in BUILD_KEYS}


def _assert_build(tmp_path: Path, variables: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    (tmp_path / "play.yml").write_text(PLAY)
    (tmp_path / "vars.json").write_text(json.dumps(variables))
    (tmp_path / "ansible.cfg").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(
        ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".cache" / "collections"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_CONFIG=str(tmp_path / "ansible.cfg"),
    )
    return subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", "localhost,", "-e", f"@{tmp_path / 'vars.json'}",
         str(tmp_path / "play.yml")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False,
    )  # fmt: skip


def test_readme_option_a_is_a_release_without_known_cves() -> None:
    option_a = _build_vars(_readme_group_vars()[0])
    version = option_a["pgbouncer_build_version"]
    assert RELEASES[version]["known_cves"] == {}
    assert option_a["pgbouncer_build_sha256"] == RELEASES[version]["sha256"]
    assert "pgbouncer_build_accept_known_vulnerabilities" not in option_a


def test_readme_option_b_acknowledges_exactly_the_pins_cves_one_line_each() -> None:
    blocks = _readme_group_vars()
    assert len(blocks) == 2, "the README shows the minimal group_vars and option B"
    accepted = blocks[1]["pgbouncer_build_accept_known_vulnerabilities"]
    assert sorted(accepted) == sorted(RELEASES[PIN]["known_cves"])
    option_b_text = README.split("option B: the pin", 1)[1].split("```", 1)[0]
    for cve in accepted:
        # each id is preceded by its own comment saying what it means
        assert re.search(rf"#[^\n]+\n\s+- {cve}\n", option_b_text), cve


@pytest.mark.parametrize("option", ["A", "B"])
def test_readme_minimal_repository_passes_the_cve_check(tmp_path: Path, option: str) -> None:
    blocks = _readme_group_vars()
    variables = _build_vars(blocks[0])
    if option == "B":  # "leave out the two pgbouncer_build_ lines above"
        variables = _build_vars(blocks[1])
    result = _assert_build(tmp_path, variables)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    expected = variables.get("pgbouncer_build_version", PIN)
    assert f"build checks passed for {expected}" in output
    if option == "B":
        assert "WARNING: pgbouncer 1.25.2 has 6 known vulnerabilities" in output


def test_production_example_passes_the_cve_check(tmp_path: Path) -> None:
    group_vars = yaml.safe_load((ROOT / "inventories/production/group_vars/pgbouncer/main.yml").read_text())
    result = _assert_build(tmp_path, _build_vars(group_vars))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_bare_pin_is_still_refused_naming_its_cves(tmp_path: Path) -> None:
    """The check these tests pass is real: no version and no acknowledgement is refused."""
    result = _assert_build(tmp_path, {})
    assert result.returncode != 0
    for cve in RELEASES[PIN]["known_cves"]:
        assert cve in result.stdout
