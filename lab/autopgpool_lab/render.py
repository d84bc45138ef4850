"""Pure renderers for the files the lab writes: inventory, ssh_config, known_hosts, per-machine config."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from . import config
from .config import Machine

_HEADER = "# Written by lab/labctl.py up; regenerated on every up. Do not edit.\n"


def _q(value: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(value)


def ssh_common_args(known_hosts: Path) -> str:
    """Options every SSH connection to the lab uses: only the lab's own host keys are trusted."""
    return f"-o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking=yes"


def inventory_yaml(machines: Sequence[Machine], key_file: Path, known_hosts: Path) -> str:
    """A standard Ansible YAML inventory: groups postgres, pgbouncer, and lab containing both."""
    lines = [
        _HEADER.rstrip("\n"),
        "all:",
        "  vars:",
        f"    lab_network: {_q(str(config.NETWORK))}",
        f"    lab_controller_address: {_q(str(config.HOST_ADDRESS))}",
        f"    lab_pooler_vip: {_q(str(config.POOLER_VIP))}",
        "  children:",
        "    lab:",
        "      children:",
    ]
    groups: dict[str, list[Machine]] = {}
    for machine in machines:
        groups.setdefault(machine.group, []).append(machine)
    for group in ("postgres", "pgbouncer"):
        lines.append(f"        {group}:")
        members = groups.get(group, [])
        if not members:
            lines.append("          hosts: {}")
            continue
        lines.append("          hosts:")
        for machine in members:
            lines += [
                f"            {machine.name}:",
                f"              ansible_host: {_q(str(machine.address))}",
                f"              ansible_user: {_q(config.LAB_USER)}",
                f"              ansible_ssh_private_key_file: {_q(str(key_file))}",
                f"              ansible_ssh_common_args: {_q(ssh_common_args(known_hosts))}",
            ]
    return "\n".join(lines) + "\n"


def ssh_config(machines: Sequence[Machine], key_file: Path, known_hosts: Path) -> str:
    """ssh_config so that `ssh -F .lab/ssh_config pool1` works for humans."""
    out = [_HEADER]
    for machine in machines:
        out.append(
            f"Host {machine.name} {machine.unit_name}\n"
            f"    HostName {machine.address}\n"
            f"    User {config.LAB_USER}\n"
            f"    IdentityFile {key_file}\n"
            "    IdentitiesOnly yes\n"
            f"    UserKnownHostsFile {known_hosts}\n"
            "    StrictHostKeyChecking yes\n"
            "    HostKeyAlias " + machine.name + "\n"
            "    BatchMode yes\n"
            "    ConnectTimeout 5\n"
        )
    return "\n".join(out)


def known_hosts_lines(machine: Machine, host_pub_keys: Sequence[str]) -> list[str]:
    """known_hosts entries for a machine under its name and address (from 'type base64 [comment]' lines)."""
    names = f"{machine.name},{machine.address}"
    entries = []
    for pub in host_pub_keys:
        parts = pub.split()
        if len(parts) >= 2:
            entries.append(f"{names} {parts[0]} {parts[1]}")
    return entries


def hosts_file(machines: Sequence[Machine], this: Machine) -> str:
    """/etc/hosts for a machine: loopback plus every lab machine (and the lab host) by name."""
    lines = [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        f"{config.HOST_ADDRESS}\tlabhost",
    ]
    for machine in machines:
        lines.append(f"{machine.address}\t{machine.name} {machine.unit_name}")
    if this not in machines:
        lines.append(f"{this.address}\t{this.name}")
    return "\n".join(lines) + "\n"


def host0_network(machine: Machine) -> str:
    """networkd config for the container side of the veth; sorts before systemd's 80-container-host0."""
    return (
        "[Match]\n"
        "Name=host0\n"
        "Virtualization=container\n"
        "\n"
        "[Network]\n"
        f"Address={machine.address}/{config.NETWORK.prefixlen}\n"
        "LinkLocalAddressing=no\n"
        "IPv6AcceptRA=no\n"
        "# No gateway: the lab only talks to the lab host and its own machines.\n"
    )
