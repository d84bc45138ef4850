"""Thin helpers around processes, mounts and commands on the lab host."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


class LabError(Exception):
    """An error a user can act on; printed without a traceback."""


def run(
    cmd: Sequence[str | Path],
    *,
    check: bool = True,
    capture: bool = False,
    timeout: float | None = 600,
    env: dict[str, str] | None = None,
    quiet: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run a command with a bounded time; raise LabError with its output on failure."""
    args = [str(c) for c in cmd]
    if not quiet:
        print("+ " + " ".join(args), file=sys.stderr, flush=True)
    try:
        proc = subprocess.run(
            args,
            check=False,
            text=True,
            timeout=timeout,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.STDOUT if capture else None,
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"command timed out after {timeout}s: {' '.join(args)}") from exc
    except FileNotFoundError as exc:
        raise LabError(f"command not found: {args[0]}") from exc
    if check and proc.returncode != 0:
        tail = "\n".join((proc.stdout or "").splitlines()[-30:])
        raise LabError(f"command failed ({proc.returncode}): {' '.join(args)}\n{tail}".rstrip())
    return proc


def mounts_under(path: Path, mountinfo: str | None = None) -> list[Path]:
    """Mount points at or below path, deepest first (so they can be unmounted in order)."""
    prefix = str(path).rstrip("/")
    if mountinfo is None:
        mountinfo = Path("/proc/self/mountinfo").read_text(encoding="utf-8")
    found: list[Path] = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4:
            point = fields[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(Path(point))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def unmount_all_under(path: Path) -> None:
    """Unmount everything at or below path; lazily if a normal unmount is refused."""
    for point in mounts_under(path):
        if run(["umount", point], check=False, quiet=True).returncode != 0:
            run(["umount", "-l", point], check=False, quiet=True)
    left = mounts_under(path)
    if left:
        raise LabError(f"could not unmount: {', '.join(map(str, left))}")


def read_cmdline(pid: int) -> list[str]:
    """argv of a process, or [] if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def all_pids() -> list[int]:
    """Every pid visible in /proc."""
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def children(pid: int) -> list[int]:
    """Direct children of a process (from /proc/<pid>/task/*/children)."""
    kids: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    try:
        tasks = list(task_dir.iterdir())
    except OSError:
        return []
    for task in tasks:
        try:
            kids.extend(int(k) for k in (task / "children").read_text().split())
        except OSError:
            continue
    return kids


def alive(pid: int) -> bool:
    """True if the pid exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def systemd_cgroup_roots() -> list[Path]:
    """Where this process sits in the hierarchies systemd uses: name=systemd (v1/hybrid) and cgroup2."""
    ours: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        ours[controllers] = path
    roots: list[Path] = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        fields, extra = pre.split(), post.split()
        if len(fields) < 5 or len(extra) < 3:
            continue
        key = None
        if extra[0] == "cgroup2":
            key = ""
        elif extra[0] == "cgroup" and "name=systemd" in extra[2].split(","):
            key = "name=systemd"
        if key is not None and key in ours:
            roots.append(Path(fields[4]) / ours[key].lstrip("/"))
    return roots


def remove_cgroup_tree(path: Path) -> None:
    """rmdir a cgroup and its (empty) children, deepest first; cgroupfs only allows rmdir."""
    if not path.is_dir():
        return
    for sub, _, _ in sorted(os.walk(path), key=lambda w: len(Path(w[0]).parts), reverse=True):
        with contextlib.suppress(OSError):
            os.rmdir(sub)
