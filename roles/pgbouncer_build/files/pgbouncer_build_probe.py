#!/usr/bin/env python3
"""Read-only probe of the pgbouncer_build role, run on a host with `ansible.builtin.script`.

One JSON argument in, one JSON object out. Four questions, asked with {"mode": ...}:

- "install": is the build identified by `identity` (version, tarball sha256, configure options) installed
  in `prefix`, what does its binary say to `--version` (asked only when the install root and the binary are
  root's alone: nothing another user could have placed runs as root), what did an interrupted run leave behind
  (`leftovers`), are the run-time packages installed and marked manual, and is `install_root` a directory
  only root can change.
- "artifact_record": the sha256 the builder recorded, in its root-owned build directory `path`, for the
  artifact `name` it built (None when that record is missing or cannot be trusted).
- "cache_record": on the controller, the sha256 beside the cached artifact `path`, trusted only when the
  controller's user (or root) alone can have written it.
- "build_dir": may root build under `path`? Only if the path and every existing ancestor are directories,
  no symbolic links, owned by root and writable by nobody else (so no local user can plant or swap
  anything there).

Plain Python 3 standard library (the hosts have nothing else); the pure functions are unit-tested
(tests/unit/test_build_probe.py).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

MARKER = "autopgpool-build.json"
# The marker keys that identify a build; others (platform, builder) describe where it was made.
IDENTITY_KEYS = ("version", "sha256", "configure_args")


def unsafe_path_reasons(path: str, owners: tuple[int, ...] = (0,)) -> list[str]:
    """Why root must not trust `path` (empty when it may): the path and each existing ancestor must be a real
    directory owned by root (or one of `owners`) and not writable by group or others. A world-writable
    ancestor (such as /var/tmp) lets any user create the path first, sticky bit or not."""
    reasons = []
    target = Path(path)
    if not target.is_absolute():
        return [f"{path} is not an absolute path"]
    for candidate in (target, *target.parents):
        try:
            st = os.lstat(candidate)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if stat.S_ISLNK(st.st_mode):
            reasons.append(f"{candidate} is a symbolic link")
        elif not stat.S_ISDIR(st.st_mode):
            reasons.append(f"{candidate} is not a directory")
        else:
            if st.st_uid not in (0, *owners):
                reasons.append(f"{candidate} is owned by uid {st.st_uid}, not {_owner_names(owners)}")
            if st.st_mode & 0o022:
                reasons.append(f"{candidate} is writable by group or others (mode {st.st_mode & 0o7777:04o})")
    return reasons


def _owner_names(owners: tuple[int, ...]) -> str:
    return " or ".join(["root", *(f"uid {uid}" for uid in owners if uid != 0)])


def unsafe_binary_reasons(binary: str) -> list[str]:
    """Why root must not execute `binary` (empty when it may): a regular file, not a symbolic link, owned by
    root and writable by nobody else, in directories that are all root's alone (unsafe_path_reasons). A binary
    that another user could have replaced is not run, not even for `--version`."""
    target = Path(binary)
    reasons = unsafe_path_reasons(str(target.parent))
    try:
        st = os.lstat(target)
    except (FileNotFoundError, NotADirectoryError):
        return reasons
    if stat.S_ISLNK(st.st_mode):
        reasons.append(f"{target} is a symbolic link")
    elif not stat.S_ISREG(st.st_mode):
        reasons.append(f"{target} is not a regular file")
    else:
        if st.st_uid != 0:
            reasons.append(f"{target} is owned by uid {st.st_uid}, not root")
        if st.st_mode & 0o022:
            reasons.append(f"{target} is writable by group or others (mode {st.st_mode & 0o7777:04o})")
    return reasons


def read_marker(prefix: str) -> dict[str, Any] | None:
    """The build marker in the prefix, or None when it is missing, unreadable or not a JSON object."""
    try:
        data = json.loads((Path(prefix) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_installed(marker: dict[str, Any] | None, identity: dict[str, Any]) -> bool:
    """Whether the marker records exactly this build (version, tarball digest, configure options)."""
    if marker is None:
        return False
    return all(marker.get(key) == identity.get(key) for key in IDENTITY_KEYS)


def binary_version(binary: str) -> dict[str, Any] | None:
    """`<binary> --version` as {rc, stdout, stderr}; None when there is no binary."""
    if not os.path.lexists(binary):
        return None
    try:
        run = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return {"rc": 126, "stdout": "", "stderr": str(err)}
    return {"rc": run.returncode, "stdout": run.stdout, "stderr": run.stderr}


def packages_ok(packages: list[str]) -> bool:
    """All packages installed and marked manual (as the apt task leaves them)."""
    if not packages:
        return True
    status = subprocess.run(
        ["dpkg-query", "-W", "-f=${db:Status-Abbrev}\\n", *packages],
        capture_output=True,
        text=True,
        check=False,
    )
    auto = subprocess.run(["apt-mark", "showauto", *packages], capture_output=True, text=True, check=False)
    return (
        status.returncode == 0
        and all(line.startswith("ii ") for line in status.stdout.splitlines())
        and auto.returncode == 0
        and not auto.stdout.strip()
    )


def version_ok(version: dict[str, Any] | None, expected: str) -> bool:
    """Whether `--version` ran and names the expected release built with systemd support."""
    if version is None or version["rc"] != 0:
        return False
    lines = str(version["stdout"]).splitlines()
    return bool(lines) and lines[0] == f"PgBouncer {expected}" and "systemd: yes" in lines


def probe_install(params: dict[str, Any]) -> dict[str, Any]:
    """The installed build, as the role needs it: installed means marker, binary and `--version` all agree, so
    an interrupted or damaged install is simply installed again."""
    prefix = str(params["prefix"])
    identity = params["identity"]
    # Who can change the install root and the binary is settled before anything there runs as root.
    install_root_problems = unsafe_path_reasons(str(params["install_root"]))
    binary = str(Path(prefix) / "bin" / "pgbouncer")
    binary_problems = unsafe_binary_reasons(binary)
    marker = read_marker(prefix)
    runnable = marker is not None and not install_root_problems and not binary_problems
    version = binary_version(binary) if runnable else None
    return {
        "installed": runnable
        and is_installed(marker, identity)
        and version_ok(version, str(identity["version"])),
        "marker": marker,
        "version": version,
        "leftovers": [p for p in params.get("leftovers", []) if os.path.lexists(p)],
        "packages": packages_ok(list(params.get("packages", []))),
        "install_root_problems": install_root_problems,
        # A prefix whose binary someone else could have replaced is not run and counts as not installed.
        "binary_problems": binary_problems,
    }


def _read_record(record: Path, owners: tuple[int, ...], problems: list[str]) -> str | None:
    """The sha256 a record file holds (its first word: a bare digest or sha256sum's line), or None with the
    reason in `problems`: missing (no reason: nothing recorded yet), not a regular file (a symbolic link
    included), owned by someone other than root or `owners`, writable by group or others, or not a digest."""
    try:
        st = os.lstat(record)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not stat.S_ISREG(st.st_mode):
        problems.append(f"{record} is not a regular file")
    elif st.st_uid not in (0, *owners):
        problems.append(f"{record} is owned by uid {st.st_uid}, not {_owner_names(owners)}")
    elif st.st_mode & 0o022:
        problems.append(f"{record} is writable by group or others (mode {st.st_mode & 0o7777:04o})")
    else:
        fields = record.read_text(errors="replace").split()
        text = fields[0] if fields else ""
        if len(text) == 64 and all(c in "0123456789abcdef" for c in text):
            return text
        problems.append(f"{record} does not hold a sha256")
    return None


def artifact_record(build_dir: str, name: str) -> dict[str, Any]:
    """The sha256 the builder recorded for artifact `name` when it built it (`<build_dir>/<name>.sha256`), or
    None when the record cannot be trusted: the build directory is not root's alone, or the record is not
    (_read_record). This record is writable only by root on the builder."""
    problems = unsafe_path_reasons(build_dir)
    if "/" in name or name in ("", ".", ".."):
        problems.append(f"{name!r} is not a file name")
    digest = None if problems else _read_record(Path(build_dir) / f"{name}.sha256", (0,), problems)
    return {"sha256": digest, "problems": problems}


def cache_record(artifact: str) -> dict[str, Any]:
    """The sha256 in `<artifact>.sha256` of the controller's cache, or None when it cannot be trusted. Run on
    the controller as the user who runs the deployment: the record counts only when that user (or root) alone
    can have written it (the directories up to / and the record owned by them, writable by nobody else). Such
    a cache is as trustworthy as that user's own account, which holds the inventory and the collection too; a
    cache others can write (a shared directory, a group-writable mode) is of unknown provenance."""
    me = os.geteuid()
    problems = unsafe_path_reasons(str(Path(artifact).parent), owners=(me,))
    digest = None if problems else _read_record(Path(f"{artifact}.sha256"), (me,), problems)
    return {"sha256": digest, "problems": problems}


def probe(params: dict[str, Any]) -> dict[str, Any]:
    if params.get("mode") == "cache_record":
        return cache_record(str(params["path"]))
    if params.get("mode") == "build_dir":
        return {"problems": unsafe_path_reasons(str(params["path"]))}
    if params.get("mode") == "artifact_record":
        return artifact_record(str(params["path"]), str(params["name"]))
    return probe_install(params)


def main(argv: list[str]) -> int:
    print(json.dumps(probe(json.loads(argv[1]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
