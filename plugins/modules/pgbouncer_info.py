#!/usr/bin/python
"""Read what a pooler host runs: the pgbouncer@N instances present, running and enabled, what each one runs
and has loaded, and from that which instances need a reload, a new file descriptor limit or a restart.

Runs on the pooler host with Python's standard library only (the host has no autopgpool package). The
reading (systemctl, /proc, file times) and the decisions are separate functions: the decisions are pure and
unit-tested for every reason (tests/unit/test_pgbouncer_info.py); the reading is tested against real processes
there and against the lab's hosts by the e2e tests.
"""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: pgbouncer_info
short_description: Read the pgbouncer@N instances of a host and decide what they need
description:
  - Without I(instances), reads which instances are present (an instance file or an enablement link), which
    are active, and the restart-only settings the last run recorded. Call it before the run changes files.
  - With I(instances), also reads for each of them systemd's view (load, active and enabled state, main PID,
    start time, NeedDaemonReload) and the process's (executable, soft NOFILE limit, shared libraries replaced
    on disk, the time of its last load against the times of the files it reads), and decides which instances
    need a reload, a new file descriptor limit or a rolling restart (and why).
  - Changes nothing; runs in check mode too.
options:
  config_dir:
    description: pgbouncer's configuration directory (instance-N.ini and the shared files).
    type: path
    required: true
  restart_settings_path:
    description: The JSON file in which a run records the restart-only settings it deployed.
    type: path
    required: true
  wants_dir:
    description: Where systemd keeps the enablement links of multi-user.target.
    type: path
    default: /etc/systemd/system/multi-user.target.wants
  instances:
    description: The instance numbers this host should run; without them only presence is read.
    type: list
    elements: int
    default: []
  runtime_root:
    description: Parent of each instance's runtime directory (RuntimeDirectory); holds N/loaded.
    type: path
    default: /run/pgbouncer
  unit_path:
    description: The pgbouncer@.service template unit.
    type: path
    default: /etc/systemd/system/pgbouncer@.service
  binary:
    description: The installed pgbouncer (a link to the active build).
    type: path
  reload_files:
    description: Files every instance reads; an instance that loaded before any of them changed is reloaded.
    type: list
    elements: path
    default: []
  file_descriptor_limit:
    description: The soft NOFILE limit the instances should have.
    type: int
    default: 0
  active_before:
    description: The instances that were active before this run (C(active) of a first call).
    type: list
    elements: int
    default: []
  recorded_restart_settings:
    description: The restart-only settings recorded before this run (C(restart_settings) of a first call).
    type: raw
  restart_settings:
    description: The restart-only settings this run deploys.
    type: dict
    default: {}
"""

EXAMPLES = r"""
- name: Read the instances and settings already on the host
  autopgpool.pool.pgbouncer_info:
    config_dir: /etc/pgbouncer
    restart_settings_path: /etc/pgbouncer/restart-settings.json
  register: before

- name: Read the state of the instances
  autopgpool.pool.pgbouncer_info:
    config_dir: /etc/pgbouncer
    restart_settings_path: /etc/pgbouncer/restart-settings.json
    instances: [1, 2]
    binary: /opt/pgbouncer/current/bin/pgbouncer
    reload_files: [/etc/pgbouncer/pgbouncer.ini]
    file_descriptor_limit: 4096
    active_before: "{{ before.active }}"
    recorded_restart_settings: "{{ before.restart_settings }}"
    restart_settings: {autopgpool_toml: {}, instances: {}}
"""

RETURN = r"""
active:
  description: Instances whose unit is active, by number.
  returned: always
  type: list
  elements: int
configured:
  description: Instances with an instance file (instance-N.ini), by number.
  returned: always
  type: list
  elements: int
present:
  description: Instances with an instance file or an enablement link, by number.
  returned: always
  type: list
  elements: int
restart_settings:
  description: The restart-only settings the last run recorded, or null.
  returned: always
  type: raw
client_tls_sslmode:
  description: >-
    The client_tls_sslmode the installed pgbouncer.ini sets (C(disable) when it sets none, "" without the
    file). Read before a run changes files, it is the mode the running instances answer clients with.
  returned: always
  type: str
instances:
  description: What systemd and the process say of each instance of I(instances), by number (as a string).
  returned: with instances
  type: dict
installed_exe:
  description: The resolved I(binary), or "" when it does not exist (check mode before the first build).
  returned: with instances
  type: str
running:
  description: Instances that are active or reloading.
  returned: with instances
  type: list
up:
  description: Instances loaded, active and enabled (nothing to start).
  returned: with instances
  type: list
to_reload:
  description: Running instances that loaded before one of their files changed.
  returned: with instances
  type: list
to_relimit:
  description: Running instances whose soft NOFILE limit is not I(file_descriptor_limit).
  returned: with instances
  type: list
need_daemon_reload:
  description: Whether systemd reports a changed unit file for any instance.
  returned: with instances
  type: bool
surplus_running:
  description: Instances active before this run that are beyond I(instances) (to drain).
  returned: with instances
  type: list
surplus:
  description: Instances present or active beyond I(instances) (to stop, disable and remove).
  returned: with instances
  type: list
surplus_paths:
  description: The instance files and drop-in directories of the surplus instances.
  returned: with instances
  type: list
restart_reasons:
  description: Why running instances need a restart that a reload cannot replace; empty when none.
  returned: with instances
  type: list
  elements: str
"""

# An instance's number: the first run of digits in the name of its file or link.
_NUMBER = re.compile(r"[0-9]+")
_UNIT = re.compile(r"^pgbouncer@([0-9]+)\.service\b")
_SHOW_PROPERTIES = ("LoadState", "ActiveState", "MainPID", "ExecMainStartTimestamp", "NeedDaemonReload")

_WANTS_DIR = "/etc/systemd/system/multi-user.target.wants"

# Nothing to start: loaded, active and enabled.
_UP = ("loaded", "active", "enabled")

Run = Callable[[Sequence[str]], str]


def _systemctl(args: Sequence[str]) -> str:
    """stdout of systemctl; a failing command yields what it printed (is-enabled exits 1 for disabled)."""
    return subprocess.run(["systemctl", *args], capture_output=True, text=True, check=False).stdout


# --- Reading -----------------------------------------------------------------------------------------------


def active_units(listing: str) -> list[int]:
    """Instance numbers in `systemctl list-units --plain --no-legend` output."""
    found = (_UNIT.match(line.strip()) for line in listing.splitlines())
    return sorted({int(m.group(1)) for m in found if m})


def configured_instances(config_dir: str) -> list[int]:
    """Numbers of the instance files instance-N.ini."""
    names = (os.path.basename(p) for p in glob.glob(os.path.join(glob.escape(config_dir), "instance-*.ini")))
    found = (re.fullmatch(r"instance-([0-9]+)\.ini", name) for name in names)
    return sorted({int(m.group(1)) for m in found if m})


def present_instances(config_dir: str, wants_dir: str) -> list[int]:
    """Numbers in the names of instance files and enablement links (even of units no longer loaded)."""
    numbers = set()
    for directory in (config_dir, wants_dir):
        for pattern in ("instance-*.ini", "pgbouncer@*.service"):
            for path in glob.glob(os.path.join(glob.escape(directory), pattern)):
                match = _NUMBER.search(os.path.basename(path))
                if match:
                    numbers.add(int(match.group(0)))
    return sorted(numbers)


def recorded_settings(path: str) -> Any:
    """The restart-only settings a run recorded, or None before the first run."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None


def client_tls_sslmode(ini: str | None) -> str:
    """The client_tls_sslmode a shared pgbouncer.ini sets ("" without the file, pgbouncer's default "disable"
    when it sets none): the last assignment in a [pgbouncer] section wins, as in pgbouncer's own parser."""
    if ini is None:
        return ""
    mode, section = "disable", ""
    for raw in ini.splitlines():
        line = raw.strip()
        if not line or line[0] in ";#":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip().lower()
            continue
        key, sep, value = line.partition("=")
        if sep and section == "pgbouncer" and key.strip().lower() == "client_tls_sslmode":
            mode = value.strip().lower()
    return mode


def read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def mtime_ns(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


def executable(pid: int, proc: str = "/proc") -> str:
    """What a process runs ("... (deleted)" once replaced on disk), or "" without a process."""
    try:
        return os.path.realpath(os.readlink(f"{proc}/{pid}/exe"))
    except OSError:
        return ""


def replaced_libraries(pid: int, proc: str = "/proc") -> list[str]:
    """Shared libraries the process maps that were replaced on disk since it started (package updates)."""
    names = set()
    try:
        with open(f"{proc}/{pid}/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                fields = line.rstrip("\n").split(None, 5)
                if len(fields) == 6 and ".so" in fields[5] and fields[5].endswith(" (deleted)"):
                    names.add(os.path.basename(fields[5].removesuffix(" (deleted)")))
    except OSError:
        return []
    return sorted(names)


def soft_nofile(pid: int, proc: str = "/proc") -> int:
    """The soft limit on open files of a process, or 0."""
    try:
        with open(f"{proc}/{pid}/limits", encoding="utf-8") as limits:
            for line in limits:
                if line.startswith("Max open files"):
                    return int(line.split()[3])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def unit_properties(show: str) -> dict[str, str]:
    """`systemctl show` output (KEY=value lines) as a dict."""
    return dict(line.split("=", 1) for line in show.splitlines() if "=" in line)


def started_at(timestamp: str) -> int:
    """Seconds since the epoch from a `--timestamp=unix` value (`@1700000000`), 0 when never started."""
    match = re.match(r"^@([0-9]+)", timestamp)
    return int(match.group(1)) if match else 0


def read_instance(
    n: int, *, config_dir: str, runtime_root: str, shared_ns: int, run: Run = _systemctl, proc: str = "/proc"
) -> dict[str, Any]:
    """What systemd and the process say of instance n."""
    unit = f"pgbouncer@{n}.service"
    args = ["show", "--timestamp=unix"]
    for prop in _SHOW_PROPERTIES:
        args += ["-p", prop]
    props = unit_properties(run([*args, unit]))
    # First line only: for an enabled unit systemd also lists the symlinks that enable it.
    enabled = (run(["is-enabled", unit]).splitlines() or [""])[0]
    pid = int(props.get("MainPID", "0") or "0")
    return {
        "load": props.get("LoadState", ""),
        "active": props.get("ActiveState", ""),
        "enabled": enabled,
        "main_pid": pid,
        "started": started_at(props.get("ExecMainStartTimestamp", "")),
        "exe": executable(pid, proc) if pid else "",
        "need_daemon_reload": props.get("NeedDaemonReload", "no") == "yes",
        "replaced_libraries": replaced_libraries(pid, proc) if pid else [],
        "nofile": soft_nofile(pid, proc) if pid else 0,
        # Loaded after every file it reads was written: nothing to reload.
        "loaded_current": mtime_ns(f"{runtime_root}/{n}/loaded")
        >= max(shared_ns, mtime_ns(f"{config_dir}/instance-{n}.ini")),
    }


# --- Deciding ----------------------------------------------------------------------------------------------


def _ids(instances: Mapping[str, Mapping[str, Any]], keep: Callable[[Mapping[str, Any]], bool]) -> list[int]:
    return sorted(int(n) for n, state in instances.items() if keep(state))


def decide(
    instances: Mapping[str, Mapping[str, Any]],
    *,
    wanted: Iterable[int],
    active_before: Iterable[int],
    present: Iterable[int],
    file_descriptor_limit: int,
    config_dir: str,
    unit_path: str,
) -> dict[str, Any]:
    """What to start, reload, relimit, drain and remove, from what the instances report."""
    wanted_ids = sorted(set(wanted))
    limit = file_descriptor_limit
    before = set(active_before)
    running = _ids(instances, lambda s: s["active"] in ("active", "reloading"))
    surplus = sorted((set(present) | before) - set(wanted_ids))
    drop_in = unit_path.replace("@", "@{}", 1) + ".d"
    return {
        "running": running,
        "up": _ids(instances, lambda s: (s["load"], s["active"], s["enabled"]) == _UP),
        "to_reload": [n for n in _ids(instances, lambda s: not s["loaded_current"]) if n in running],
        "to_relimit": [n for n in _ids(instances, lambda s: s["nofile"] != limit) if n in running],
        "need_daemon_reload": any(s["need_daemon_reload"] for s in instances.values()),
        "surplus_running": sorted(before - set(wanted_ids)),
        "surplus": surplus,
        "surplus_paths": [f"{config_dir}/instance-{n}.ini" for n in surplus]
        + [drop_in.format(n) for n in surplus],
    }


def changed_settings(recorded: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> list[str]:
    """Names of the restart-only settings that differ between two records ('instance listeners' for the
    inventory's listener settings). Without a record (first run) nothing has changed."""
    old = wanted if recorded is None else recorded
    old_toml, new_toml = old.get("autopgpool_toml") or {}, wanted.get("autopgpool_toml") or {}
    names = sorted(
        k
        for k in set(old_toml) | set(new_toml)
        if k not in old_toml or k not in new_toml or old_toml[k] != new_toml[k]
    )
    if old.get("instances", {}) != wanted.get("instances", {}):
        names.append("instance listeners")
    return names


def restart_reasons(
    instances: Mapping[str, Mapping[str, Any]],
    *,
    ids: Iterable[int],
    installed_exe: str,
    unit_mtime: int,
    settings_mtime: int,
    recorded: Mapping[str, Any] | None,
    wanted: Mapping[str, Any],
    settings_path: str,
) -> list[str]:
    """Why the running instances ``ids`` need a restart that a reload cannot replace, as the role's warning
    prints it. Start times have whole-second resolution: a file changed in the very second an instance started
    counts as picked up."""
    states = {n: instances[str(n)] for n in sorted(set(ids)) if str(n) in instances}

    def joined(keep: Callable[[Mapping[str, Any]], bool]) -> str:
        return ", ".join(str(n) for n, s in states.items() if keep(s))

    reasons = []
    stale_settings = joined(lambda s: s["started"] < settings_mtime)
    if stale_settings:
        changed = changed_settings(recorded, wanted)
        named = ", ".join(changed) if changed else f"see {settings_path}"
        reasons.append(f"restart-only settings changed ({named}), instances {stale_settings} started before")
    stale_unit = joined(lambda s: s["started"] < unit_mtime)
    if stale_unit:
        reasons.append(f"pgbouncer@.service changed, instances {stale_unit} started before")
    # An instance without a main PID (restarting) or a binary that does not resolve (check mode before the
    # first build) has no executable to compare.
    stale_exe = joined(lambda s: bool(s["exe"]) and s["exe"] != installed_exe) if installed_exe else ""
    if stale_exe:
        reasons.append(f"binary is now {installed_exe}, instances {stale_exe} run another")
    # A package update (libssl, libevent, c-ares...) replaces a library on disk; the process keeps the old
    # one.
    stale_libraries = joined(lambda s: bool(s["replaced_libraries"]))
    if stale_libraries:
        libraries = ", ".join(sorted({lib for s in states.values() for lib in s["replaced_libraries"]}))
        reasons.append(
            f"libraries updated on disk ({libraries}), instances {stale_libraries} still run the old ones"
        )
    return reasons


# --- The module --------------------------------------------------------------------------------------------


def run(params: Mapping[str, Any], *, systemctl: Run = _systemctl, proc: str = "/proc") -> dict[str, Any]:
    """The module's work, without Ansible (reads only, so the same in check mode)."""
    config_dir = params["config_dir"]
    listing = systemctl(["list-units", "--plain", "--no-legend", "--state=active", "pgbouncer@*.service"])
    result: dict[str, Any] = {
        "changed": False,
        "active": active_units(listing),
        "configured": configured_instances(config_dir),
        "present": present_instances(
            config_dir, params.get("wants_dir") or "/etc/systemd/system/multi-user.target.wants"
        ),
        "restart_settings": recorded_settings(params["restart_settings_path"]),
        "client_tls_sslmode": client_tls_sslmode(read_text(os.path.join(config_dir, "pgbouncer.ini"))),
    }
    wanted = [int(n) for n in params.get("instances") or []]
    if not wanted:
        return result
    runtime_root = params.get("runtime_root") or "/run/pgbouncer"
    unit_path = params.get("unit_path") or "/etc/systemd/system/pgbouncer@.service"
    shared_ns = max((mtime_ns(path) for path in params.get("reload_files") or []), default=0)
    instances = {
        str(n): read_instance(
            n, config_dir=config_dir, runtime_root=runtime_root, shared_ns=shared_ns, run=systemctl, proc=proc
        )
        for n in wanted
    }
    binary = params.get("binary")
    installed_exe = os.path.realpath(binary) if binary and os.path.exists(binary) else ""
    active_before = [int(n) for n in params.get("active_before") or []]
    result.update(
        instances=instances,
        installed_exe=installed_exe,
        **decide(
            instances,
            wanted=wanted,
            active_before=active_before,
            present=result["present"],
            file_descriptor_limit=int(params.get("file_descriptor_limit") or 0),
            config_dir=config_dir,
            unit_path=unit_path,
        ),
    )
    result["restart_reasons"] = restart_reasons(
        instances,
        ids=set(active_before) & set(wanted),
        installed_exe=installed_exe,
        unit_mtime=mtime_ns(unit_path) // 10**9,
        settings_mtime=mtime_ns(params["restart_settings_path"]) // 10**9,
        recorded=params.get("recorded_restart_settings"),
        wanted=params.get("restart_settings") or {},
        settings_path=params["restart_settings_path"],
    )
    return result


def main() -> None:  # pragma: no cover - exercised through ansible-playbook in the e2e tests
    module = AnsibleModule(
        argument_spec={
            "config_dir": {"type": "path", "required": True},
            "restart_settings_path": {"type": "path", "required": True},
            "wants_dir": {"type": "path", "default": _WANTS_DIR},
            "instances": {"type": "list", "elements": "int", "default": []},
            "runtime_root": {"type": "path", "default": "/run/pgbouncer"},
            "unit_path": {"type": "path", "default": "/etc/systemd/system/pgbouncer@.service"},
            "binary": {"type": "path"},
            "reload_files": {"type": "list", "elements": "path", "default": []},
            "file_descriptor_limit": {"type": "int", "default": 0},
            "active_before": {"type": "list", "elements": "int", "default": []},
            "recorded_restart_settings": {"type": "raw"},
            "restart_settings": {"type": "dict", "default": {}},
        },
        supports_check_mode=True,
    )
    try:
        result = run(module.params)
    except (OSError, ValueError, subprocess.SubprocessError) as err:
        module.fail_json(msg=f"could not read the pgbouncer instances: {err}")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
