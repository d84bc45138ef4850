"""Whether the demo's deployment is still what the last full `make demo` left (labctl deployed).

A warm `make demo` skips postgres.yml, site.yml and monitoring.yml only when nothing they depend on changed:
the same repository inputs (roles, playbooks, plugins, the package, the lab, the example TOML and its secrets
file, the pinned requirements) and, on every machine, the same boot, the same files under /etc, /usr/local and
/opt (read from the machine's root on the controller) and the same running services. Anything else (an edit, a
rebooted or powered-off machine, a file changed or a service stopped by hand) runs the playbooks in full.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from . import config
from .config import Machine
from .machines import machine_root

# What the demo's playbooks read from the checkout.
INPUT_PATHS = (
    "ansible.cfg",
    "examples",
    "filter_plugins",
    "galaxy.yml",
    "inventories",
    "lab",
    "meta",
    "monitoring",
    "playbooks",
    "plugins",
    "pyproject.toml",
    "requirements",
    "roles",
    "src",
)
# Where the roles and the lab playbooks put what they install.
HOST_TREES = ("etc", "usr/local", "opt")
RUNNING_SERVICES = ["systemctl", "list-units", "--type=service", "--state=running", "--plain", "--no-legend"]


def _hash_tree(digest: hashlib._Hash, root: Path, relative: Iterable[str]) -> None:
    """Names and contents of the regular files and symlinks under root/rel, in a stable order."""
    for rel in relative:
        top = root / rel
        if top.is_symlink() or top.is_file():
            entries = [top]
        else:
            entries = []
            for dirpath, dirnames, filenames in os.walk(top):
                dirnames.sort()
                entries += [Path(dirpath) / name for name in sorted(filenames)]
        for path in entries:
            digest.update(str(path.relative_to(root)).encode() + b"\0")
            if path.is_symlink():
                digest.update(b"-> " + os.readlink(path).encode())
            elif path.is_file():
                with path.open("rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(block)
            digest.update(b"\0")


def inputs_digest(repo: Path = config.REPO_ROOT, paths: Sequence[str] = INPUT_PATHS) -> str:
    """sha256 over the checkout's files the demo deploys from (ignored files such as .lab/ excluded)."""
    digest = hashlib.sha256()
    git_ls = ["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--"]
    try:
        listed = subprocess.run(
            [*git_ls, *paths],
            capture_output=True,
            check=True,
        ).stdout.split(b"\0")
        files: Iterable[str] = sorted({name.decode() for name in listed if name})
    except (OSError, subprocess.CalledProcessError):
        files = paths  # not a git checkout: every file under the paths
    _hash_tree(digest, repo, [f for f in files if (repo / f).exists() or (repo / f).is_symlink()])
    return digest.hexdigest()


def host_digest(root: Path, trees: Sequence[str] = HOST_TREES) -> str:
    """sha256 over the installed files of a machine, read from its root directory."""
    digest = hashlib.sha256()
    _hash_tree(digest, root, [t for t in trees if (root / t).exists()])
    return digest.hexdigest()


def fingerprint(machines: Sequence[Machine], ssh: dict[str, list[str]]) -> dict[str, object]:
    """The inputs and, per machine, its boot, its installed files and its running services."""
    hosts: dict[str, object] = {}
    for machine in machines:
        proc = subprocess.run(
            [*ssh[machine.name], "cat /proc/sys/kernel/random/boot_id && " + " ".join(RUNNING_SERVICES)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if proc.returncode != 0:
            hosts[machine.name] = {"unreachable": proc.returncode}
            continue
        boot_id, _, services = proc.stdout.partition("\n")
        hosts[machine.name] = {
            "boot_id": boot_id.strip(),
            "files": host_digest(machine_root(machine.name)),
            "running": sorted(line.split()[0] for line in services.splitlines() if line.strip()),
        }
    return {"inputs": inputs_digest(), "slot": config.SLOT, "hosts": hosts}


def differences(recorded: dict[str, object], current: dict[str, object]) -> list[str]:
    """What changed since the record, in words; empty when the deployment is the same."""
    if not recorded:
        return ["no full deployment recorded yet"]
    changed = []
    if recorded.get("inputs") != current.get("inputs"):
        changed.append("the checkout's roles, playbooks, package, lab or example files")
    if recorded.get("slot") != current.get("slot"):
        changed.append("the lab slot")
    before, now = recorded.get("hosts"), current.get("hosts")
    before = before if isinstance(before, dict) else {}
    now = now if isinstance(now, dict) else {}
    for name in sorted(set(before) | set(now)):
        old, new = before.get(name), now.get(name)
        if not isinstance(old, dict) or not isinstance(new, dict) or "unreachable" in new:
            changed.append(f"{name}: new, gone or unreachable")
            continue
        changed += [
            f"{name}: {what}"
            for key, what in (
                ("boot_id", "booted again"),
                ("files", "files under /etc, /usr/local or /opt"),
                ("running", "running services"),
            )
            if old.get(key) != new.get(key)
        ]
    return changed


def read(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write(path: Path, data: dict[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)
