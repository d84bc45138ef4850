"""Whether the demo's deployment is still what the last full `make demo` left (labctl deployed).

A warm `make demo` skips postgres.yml, site.yml and monitoring.yml only when nothing they depend on changed:
- the checkout's inputs (roles, playbooks, plugins, the package, the lab, the Makefiles, the example TOML and
  its secrets file, the pinned requirements), the lab's certificates and inventory, the ANSIBLE_* and
  AUTOPGPOOL_* environment;
- on every machine: its boot; names, modes, owners and contents under /etc, /usr/local and /opt and the dpkg
  database (read from the machine's root on the controller); its long-running services; HAProxy's server
  states.
Anything else (an edit, a renewed certificate, a rebooted or powered-off machine, a file or mode changed, a
package removed, a service stopped or an instance drained by hand) runs the playbooks in full. Not covered:
PostgreSQL's contents on pg1.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from . import config
from .config import Machine
from .machines import machine_root

# What the demo's playbooks (and the Makefile that runs them) read from the checkout.
INPUT_PATHS = (
    "Makefile",
    "ansible.cfg",
    "examples",
    "filter_plugins",
    "galaxy.yml",
    "inventories",
    "lab",
    "meta",
    "mk",
    "monitoring",
    "playbooks",
    "plugins",
    "pyproject.toml",
    "requirements",
    "roles",
    "src",
)
# What the playbooks read from the lab's state directory (.lab/): certificates, keys and the inventory.
STATE_INPUTS = ("inventory.yml", "tls")
# Where the roles and the lab playbooks put what they install, and the record of installed packages.
HOST_TREES = ("etc", "usr/local", "opt", "var/lib/dpkg/status")
ENVIRONMENT_PREFIXES = ("ANSIBLE_", "AUTOPGPOOL_")

# One SSH call per machine: its boot, the long-running services (a unit a timer started, e.g. apt-daily, comes
# and goes by itself and is left out) and, on pooler hosts, HAProxy's view of each instance.
_HAPROXY_STATES = r"""
import os, socket
path = "/run/haproxy/admin.sock"
if os.path.exists(path):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(b"show servers state\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    for line in data.decode().splitlines()[2:]:
        f = line.split()
        if len(f) > 6:
            print("haproxy", f[1], f[3], "op", f[5], "admin", f[6])
"""
_PROBE = (
    "cat /proc/sys/kernel/random/boot_id"
    " && systemctl list-timers --all --plain --no-legend | awk '{print \"timer\", $NF}'"
    " && systemctl list-units --type=service --state=running --plain --no-legend"
    " | awk '{print \"running\", $1}'"
    f" && sudo -n python3 -c '{_HAPROXY_STATES}'"
)


def _entries(top: Path) -> list[Path]:
    """top and everything under it, without following symlinks (a link to a directory is an entry)."""
    if top.is_symlink() or not top.is_dir():
        return [top]
    found = [top]
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        base = Path(dirpath)
        found += [base / name for name in sorted([*dirnames, *filenames])]
        dirnames[:] = [d for d in dirnames if not (base / d).is_symlink()]
    return found


def _hash_tree(digest: hashlib._Hash, root: Path, relative: Iterable[str]) -> None:
    """Name, type, mode, owner and content (or link target) of each entry under root/rel, sorted."""
    for rel in relative:
        for path in _entries(root / rel):
            digest.update(str(path.relative_to(root)).encode() + b"\0")
            try:
                info = path.lstat()
                digest.update(f"{info.st_mode:o} {info.st_uid} {info.st_gid}\0".encode())
                if stat.S_ISLNK(info.st_mode):
                    digest.update(b"-> " + os.readlink(path).encode())
                elif stat.S_ISREG(info.st_mode):
                    with path.open("rb") as handle:
                        for block in iter(lambda: handle.read(1 << 20), b""):
                            digest.update(block)
            except FileNotFoundError:
                digest.update(b"(gone)")
            digest.update(b"\0")


def _checkout_files(repo: Path, paths: Sequence[str]) -> list[str]:
    """The files under paths that git tracks or would track (ignored ones, .lab/ and caches, left out)."""
    git_ls = ["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--"]
    try:
        listed = subprocess.run([*git_ls, *paths], capture_output=True, check=True).stdout.split(b"\0")
        return sorted({name.decode() for name in listed if name})
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (or not one git accepts)
        found = []
        for rel in paths:
            found += [
                p.relative_to(repo).as_posix()
                for p in _entries(repo / rel)
                if not p.is_dir() and "__pycache__" not in p.parts and p.suffix != ".pyc"
            ]
        return sorted(found)


def inputs_digest(
    repo: Path = config.REPO_ROOT,
    paths: Sequence[str] = INPUT_PATHS,
    state: Path = config.STATE_DIR,
    environ: dict[str, str] | None = None,
) -> str:
    """sha256 over the checkout's files the demo deploys from, the lab's state and the environment."""
    digest = hashlib.sha256()
    files = _checkout_files(repo, paths)
    _hash_tree(digest, repo, [f for f in files if (repo / f).exists() or (repo / f).is_symlink()])
    digest.update(b"\0state\0")
    _hash_tree(digest, state, [s for s in STATE_INPUTS if (state / s).exists()])
    env = os.environ if environ is None else environ
    for name in sorted(n for n in env if n.startswith(ENVIRONMENT_PREFIXES)):
        digest.update(f"{name}={env[name]}\0".encode())
    return digest.hexdigest()


def host_digest(root: Path, trees: Sequence[str] = HOST_TREES) -> str:
    """sha256 over the installed files of a machine, read from its root directory."""
    digest = hashlib.sha256()
    _hash_tree(digest, root, [t for t in trees if (root / t).exists() or (root / t).is_symlink()])
    return digest.hexdigest()


def parse_probe(output: str) -> dict[str, object]:
    """The probe's output: boot id, long-running services, HAProxy server states."""
    boot_id, _, rest = output.partition("\n")
    timers, running, haproxy = set(), set(), []
    for line in rest.splitlines():
        kind, _, value = line.partition(" ")
        if kind == "timer":
            timers.add(value.strip())
        elif kind == "running":
            running.add(value.strip())
        elif kind == "haproxy":
            haproxy.append(value.strip())
    # user@UID.service is the login session's own manager (the probe's SSH login starts it).
    services = {unit for unit in running - timers if not unit.startswith("user@")}
    return {"boot_id": boot_id.strip(), "running": sorted(services), "haproxy": sorted(haproxy)}


def fingerprint(machines: Sequence[Machine], ssh: dict[str, list[str]]) -> dict[str, object]:
    """The inputs and, per machine, its boot, installed files, long-running services and HAProxy states."""
    hosts: dict[str, object] = {}
    for machine in machines:
        try:
            proc = subprocess.run(
                [*ssh[machine.name], _PROBE],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            hosts[machine.name] = {"unreachable": "timeout"}
            continue
        if proc.returncode != 0:
            hosts[machine.name] = {"unreachable": proc.returncode}
            continue
        hosts[machine.name] = {**parse_probe(proc.stdout), "files": host_digest(machine_root(machine.name))}
    return {"inputs": inputs_digest(), "slot": config.SLOT, "hosts": hosts}


def differences(recorded: dict[str, object], current: dict[str, object]) -> list[str]:
    """What changed since the record, in words; empty when the deployment is the same."""
    if not recorded:
        return ["no full deployment recorded yet"]
    changed = []
    if recorded.get("inputs") != current.get("inputs"):
        changed.append(
            "the checkout's deployed files, the lab's certificates or inventory, or the environment"
        )
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
                ("files", "files under /etc, /usr/local or /opt, or installed packages"),
                ("running", "running services"),
                ("haproxy", "HAProxy server states (an instance drained, down or in maintenance)"),
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
