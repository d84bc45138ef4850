"""What the end-to-end tests know about the deployed lab: hosts, the example config and its secrets.

Everything is read the way an operator would find it: the lab's inventory, the TOML that was deployed and
the demo secrets it was deployed with.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from autopgpool.config import Config, parse_config
from demo_example import read_env_file

REPO = Path(__file__).resolve().parents[2]
LAB_INVENTORY = REPO / ".lab" / "inventory.yml"
EXAMPLE_CONFIG = REPO / "examples" / "autopgpool.toml"
DEMO_ENV = REPO / "examples" / "demo.env"


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    ssh_args: tuple[str, ...]

    def run(self, command: str, *, stdin: str | None = None, timeout: float = 60, check: bool = True) -> str:
        """Run a shell command on the host as root (the lab's ops user has passwordless sudo)."""
        result = subprocess.run(
            ["ssh", *self.ssh_args, self.address, "sudo", "-n", "bash", "-c", _quote(command)],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            stderr = result.stderr.strip()
            raise AssertionError(f"{self.name}: `{command}` exited {result.returncode}: {stderr}")
        return result.stdout


def _quote(command: str) -> str:
    return "'" + command.replace("'", "'\"'\"'") + "'"


@cache
def _inventory() -> Mapping[str, Any]:
    """The lab inventory as Ansible sees it (`ansible-inventory --list`), whatever its YAML layout."""
    if not LAB_INVENTORY.exists():
        raise AssertionError(f"{LAB_INVENTORY} is missing: boot the lab first (make lab-up)")
    listing = subprocess.run(
        [str(REPO / ".venv" / "bin" / "ansible-inventory"), "-i", str(LAB_INVENTORY), "--list"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    data: Mapping[str, Any] = json.loads(listing.stdout)
    return data


def _hosts_of(group: str) -> list[Host]:
    inventory = _inventory()
    hostvars = inventory["_meta"]["hostvars"]
    found = []
    for name in sorted(inventory[group]["hosts"]):
        vars_ = hostvars[name]
        ssh_args = (
            "-i",
            str(vars_["ansible_ssh_private_key_file"]),
            "-l",
            str(vars_["ansible_user"]),
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=5",
            *shlex.split(str(vars_.get("ansible_ssh_common_args", ""))),
        )
        found.append(Host(name, str(vars_["ansible_host"]), ssh_args))
    return found


def poolers() -> list[Host]:
    return _hosts_of("pgbouncer")


def postgres_host() -> Host:
    return _hosts_of("postgres")[0]


@cache
def demo_secrets() -> Mapping[str, str]:
    return read_env_file(DEMO_ENV)


@cache
def example_config() -> Config:
    return parse_config(EXAMPLE_CONFIG.read_text(), demo_secrets())


def instance_count(host: Host) -> int:
    units = host.run("systemctl list-units --plain --no-legend --state=active 'pgbouncer@*.service'")
    return len([line for line in units.splitlines() if line.strip()])


def ansible_playbook(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run a playbook against the lab exactly as `make demo` does."""
    command: Sequence[str] = [
        str(REPO / ".venv" / "bin" / "ansible-playbook"),
        "-i",
        str(LAB_INVENTORY),
        "-i",
        str(REPO / "inventories" / "lab"),
        *args,
    ]
    # The operator's environment, not the caller's: molecule exports its own ANSIBLE_CONFIG, colours, etc.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "MOLECULE_"))}
    env.update(ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    return subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
