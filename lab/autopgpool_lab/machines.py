"""Bring lab machines up and down: overlays, systemd-nspawn processes, the bridge, SSH readiness."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from . import ca, config, mirror, render
from .config import Machine
from .image import build_image
from .system import (
    LabError,
    alive,
    all_pids,
    children,
    mounts_under,
    read_cmdline,
    remove_cgroup_tree,
    run,
    systemd_cgroup_roots,
    unmount_all_under,
)

BOOT_TIMEOUT = 120.0
STOP_GRACE = 20.0
SSH_PROBE_TIMEOUT = 8.0


@dataclass(frozen=True)
class Paths:
    """Files in the lab's state dir (<repo>/.lab)."""

    state: Path

    @property
    def key(self) -> Path:
        return self.state / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.state / "known_hosts"

    @property
    def ssh_config(self) -> Path:
        return self.state / "ssh_config"

    @property
    def inventory(self) -> Path:
        return self.state / "inventory.yml"

    @property
    def lab_json(self) -> Path:
        return self.state / "lab.json"

    @property
    def deployed(self) -> Path:
        """What the last full `make demo` left on the machines (deployed.py)."""
        return self.state / "deployed.json"

    def log(self, name: str) -> Path:
        return self.state / "logs" / f"{name}.log"

    def pidfile(self, name: str) -> Path:
        return self.state / "run" / f"{name}.pid"


def machine_dir(name: str) -> Path:
    return config.MACHINES_DIR / name


def machine_root(name: str) -> Path:
    return machine_dir(name) / "root"


# ---------------------------------------------------------------- discovery of what is there


def nspawn_pids(unit_name: str | None = None) -> list[int]:
    """Live systemd-nspawn processes of the lab (optionally of one machine), found from /proc."""
    found = []
    for pid in all_pids():
        argv = read_cmdline(pid)
        if not argv or os.path.basename(argv[0]) != "systemd-nspawn":
            continue
        names = [a.split("=", 1)[1] for a in argv if a.startswith("--machine=")]
        if not names or not names[0].startswith(config.MACHINE_PREFIX):
            continue
        if (unit_name is None or names[0] == unit_name) and alive(pid):
            found.append(pid)
    return found


MARKER_ENV = "AUTOPGPOOL_LAB_MACHINE"


def container_processes(name: str) -> list[int]:
    """Processes of a machine's container, found by the marker nspawn puts in its init's environment.

    /proc/<pid>/root cannot tell (it reads "/" from another mount namespace), and a container whose
    nspawn was SIGKILLed keeps running, reparented to the host's init.
    """
    marker = f"{MARKER_ENV}={config.machine_tag(name)}".encode()
    out = []
    for pid in all_pids():
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if marker in env.split(b"\0") and alive(pid):
            out.append(pid)
    return out


def lab_veths() -> list[str]:
    """Host-side veths nspawn made for lab machines (vb-apg-*)."""
    proc = run(["ip", "-o", "link", "show"], capture=True, quiet=True)
    names = []
    for line in proc.stdout.splitlines():
        parts = line.split(":")
        if len(parts) > 1:
            name = parts[1].strip().split("@", 1)[0]
            if name.startswith("vb-" + config.MACHINE_PREFIX):
                names.append(name)
    return names


def bridge_exists() -> bool:
    return run(["ip", "link", "show", config.BRIDGE], check=False, capture=True, quiet=True).returncode == 0


def known_machine_names(paths: Paths) -> list[str]:
    """Every machine with any trace: a dir, a pid file, or a running nspawn."""
    names: set[str] = set()
    if config.MACHINES_DIR.is_dir():
        names.update(p.name for p in config.MACHINES_DIR.iterdir() if p.is_dir())
    run_dir = paths.state / "run"
    if run_dir.is_dir():
        names.update(p.stem for p in run_dir.glob("*.pid"))
    for pid in nspawn_pids():
        for arg in read_cmdline(pid):
            if arg.startswith("--machine=" + config.MACHINE_PREFIX):
                names.add(arg.split("=", 1)[1][len(config.MACHINE_PREFIX) :])
    return sorted(names)


def is_running(machine: Machine) -> bool:
    return bool(nspawn_pids(machine.unit_name)) and bool(
        mounts_under(machine_root(machine.name)) or (machine_dir(machine.name) / "copy").exists()
    )


# ---------------------------------------------------------------- host-side setup


def ensure_ssh_key(paths: Paths) -> None:
    if paths.key.is_file() and paths.key.with_suffix(".pub").is_file():
        return
    paths.key.unlink(missing_ok=True)
    paths.key.with_suffix(".pub").unlink(missing_ok=True)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "autopgpool-lab", "-f", paths.key])


def ensure_bridge() -> None:
    """The lab bridge with the host's lab address; no NAT, no forwarding, no route out."""
    if not bridge_exists():
        run(["ip", "link", "add", config.BRIDGE, "type", "bridge"])
    addrs = run(["ip", "-o", "-4", "addr", "show", "dev", config.BRIDGE], capture=True, quiet=True).stdout
    cidr = f"{config.HOST_ADDRESS}/{config.NETWORK.prefixlen}"
    if f" {cidr} " not in addrs:
        run(["ip", "addr", "add", cidr, "dev", config.BRIDGE])
    run(["ip", "link", "set", config.BRIDGE, "up"], quiet=True)


def _passwd_ids(root: Path, user: str) -> tuple[int, int]:
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3])
    raise LabError(f"user {user!r} missing from the image; rebuild it with `labctl image --force`")


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # replace symlinks (e.g. /etc/hostname) instead of following them
    path.write_text(text)
    path.chmod(mode)


def host_pub_keys(root: Path) -> list[str]:
    return [p.read_text().strip() for p in sorted((root / "etc/ssh").glob("ssh_host_*_key.pub"))]


# ---------------------------------------------------------------- stopping and cleaning


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_gone(pids: Sequence[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(alive(p) for p in pids):
            return True
        time.sleep(0.2)
    return not any(alive(p) for p in pids)


def stop_machines(names: Sequence[str], paths: Paths) -> None:
    """Orderly poweroff (nspawn forwards SIGTERM as the kill signal), then SIGKILL, then clean up."""
    pids = {name: nspawn_pids(config.MACHINE_PREFIX + name) for name in names}
    for plist in pids.values():
        for pid in plist:
            _signal(pid, signal.SIGTERM)
    flat = [p for plist in pids.values() for p in plist]
    if flat and not _wait_gone(flat, STOP_GRACE):
        for pid in flat:
            for child in children(pid):  # the container's PID 1: killing it ends the whole container
                _signal(child, signal.SIGKILL)
            _signal(pid, signal.SIGKILL)
        _wait_gone(flat, 10)
    for name in names:
        leftovers = container_processes(name)
        for pid in leftovers:
            _signal(pid, signal.SIGKILL)
        if leftovers and not _wait_gone(leftovers, 10):
            raise LabError(f"{name}: container processes survived SIGKILL: {leftovers}")
        _clean_nspawn_leftovers(config.MACHINE_PREFIX + name)
        for cgroup in machine_cgroups(name):
            remove_cgroup_tree(cgroup)
        clean_machine_dir(name)
        paths.pidfile(name).unlink(missing_ok=True)
    _wait_reaped([p for plist in pids.values() for p in plist], 5)


def _wait_reaped(pids: Sequence[int], timeout: float) -> None:
    """Give init a moment to reap exited nspawn processes so no trace is left in the process table."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.1)


def _clean_nspawn_leftovers(unit_name: str) -> None:
    """What a killed nspawn leaves on the host: its veth and its mount-propagation dir."""
    veth = ("vb-" + unit_name)[:15]
    if veth in lab_veths():
        run(["ip", "link", "del", veth], check=False, quiet=True)
    propagate = Path("/run/systemd/nspawn/propagate") / unit_name
    if propagate.exists():
        unmount_all_under(propagate)
        shutil.rmtree(propagate, ignore_errors=True)


def clean_machine_dir(name: str) -> None:
    """Unmount and delete a machine's dir; refuses to delete through a mount that is still there."""
    mdir = machine_dir(name)
    unmount_all_under(mdir)
    if mounts_under(mdir):
        raise LabError(f"{mdir} still has mounts; not deleting")
    if mdir.exists():
        shutil.rmtree(mdir)


def remove_network() -> None:
    for veth in lab_veths():
        run(["ip", "link", "del", veth], check=False, quiet=True)
    if bridge_exists():
        run(["ip", "link", "del", config.BRIDGE])


# ---------------------------------------------------------------- starting


def prepare_machine(
    machine: Machine,
    machines: Sequence[Machine],
    image: Path,
    paths: Paths,
    suite: str = config.DEFAULT_SUITE,
) -> str:
    """Fresh root for one machine (overlay on the image, or a copy); returns 'overlay' or 'copy'."""
    clean_machine_dir(machine.name)
    mdir = machine_dir(machine.name)
    root = mdir / "root"
    for sub in ("upper", "work", "root"):
        (mdir / sub).mkdir(parents=True)
    opts = f"lowerdir={image},upperdir={mdir / 'upper'},workdir={mdir / 'work'}"
    mode = "overlay"
    if run(["mount", "-t", "overlay", "overlay", "-o", opts, root], check=False, quiet=True).returncode != 0:
        print(f"{machine.name}: overlay mount failed, copying the image instead", file=sys.stderr)
        mode = "copy"
        root.rmdir()
        run(["cp", "-a", "--reflink=auto", image, root], quiet=True)
        (mdir / "copy").touch()
    _write(root / "etc/hostname", machine.name + "\n")
    _write(root / "etc/machine-id", uuid.uuid4().hex + "\n", 0o444)
    _write(root / "etc/systemd/network/10-host0.network", render.host0_network(machine))
    _write(root / "etc/hosts", render.hosts_file(machines, machine))
    _write(root / "etc/apt/sources.list", mirror.lab_sources(suite))
    for extra in (root / "etc/apt/sources.list.d").glob("*"):
        extra.unlink()
    run(["ssh-keygen", "-A", "-f", root], capture=True, quiet=True)
    uid, gid = _passwd_ids(root, config.LAB_USER)
    ssh_dir = root / "home" / config.LAB_USER / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    os.chown(ssh_dir, uid, gid)
    auth = ssh_dir / "authorized_keys"
    _write(auth, paths.key.with_suffix(".pub").read_text(), 0o600)
    os.chown(auth, uid, gid)
    return mode


def machine_cgroups(name: str) -> list[Path]:
    return [root / f"autopgpool-lab-{config.machine_tag(name)}" for root in systemd_cgroup_roots()]


def _in_cgroups(cgroups: Sequence[Path], cmd: list[str]) -> list[str]:
    """Wrap cmd so the process joins cgroups before it execs (no preexec_fn: boots run in threads)."""
    joins = "".join(f'echo $$ > "{cgroup}/cgroup.procs" && ' for cgroup in cgroups)
    return ["/bin/sh", "-c", joins + 'exec "$@"', "nspawn-in-cgroup", *cmd]


def start_machine(machine: Machine, paths: Paths) -> int:
    """Start nspawn detached (own session, logs to a file); there is no host systemd to supervise it.

    Each nspawn gets its own cgroup first: with --keep-unit and no host systemd, every nspawn would
    otherwise build its container's tree under the same cgroup path, and parallel boots then remove each
    other's unit cgroups (seen as "Failed at step CGROUP" and a degraded system).
    """
    cgroups = machine_cgroups(machine.name)
    for cgroup in cgroups:
        remove_cgroup_tree(cgroup)
        cgroup.mkdir(exist_ok=True)
    log_path = paths.log(machine.name)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    paths.pidfile(machine.name).parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        "systemd-nspawn",
        "--boot",
        "-D",
        str(machine_root(machine.name)),
        "--register=no",
        "--keep-unit",
        f"--network-bridge={config.BRIDGE}",
        f"--machine={machine.unit_name}",
        f"--hostname={machine.name}",
        f"--setenv={MARKER_ENV}={config.machine_tag(machine.name)}",
        "--console=read-only",
        "--link-journal=no",
        "--resolv-conf=off",
        "--timezone=off",
        "--kill-signal=SIGRTMIN+4",
        # Root on a VM may raise a running process's limits (the pgbouncer role's prlimit); nspawn drops it.
        "--capability=CAP_SYS_RESOURCE",
    ]
    with open(log_path, "ab") as log:
        log.write(f"\n==== {time.strftime('%F %T')} {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            _in_cgroups(cgroups, cmd),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    paths.pidfile(machine.name).write_text(f"{proc.pid}\n")
    _wait_exec(proc)
    return proc.pid


EXEC_TIMEOUT = 10.0


def _wait_exec(proc: subprocess.Popen[bytes]) -> None:
    """Return once the cgroup wrapper (/bin/sh) has exec'd systemd-nspawn, or has exited.

    Until then the process is not recognisable as the machine's nspawn (nspawn_pids reads argv[0]), and
    wait_ready would report "systemd-nspawn exited" and have the machines stopped: seen on a loaded host as a
    container that booted fine and was then halted.
    """
    deadline = time.monotonic() + EXEC_TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        argv = read_cmdline(proc.pid)
        if argv and os.path.basename(argv[0]) == "systemd-nspawn":
            return
        time.sleep(0.02)


def ssh_base(paths: Paths, machine: Machine) -> list[str]:
    return [
        "ssh",
        "-i",
        str(paths.key),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=3",
        "-o",
        f"UserKnownHostsFile={paths.known_hosts}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "LogLevel=ERROR",
        f"{config.LAB_USER}@{machine.address}",
    ]


def probe(paths: Paths, machine: Machine) -> str:
    """Output of `systemctl is-system-running` over SSH, or the SSH error."""
    try:
        proc = subprocess.run(
            [*ssh_base(paths, machine), "systemctl", "is-system-running"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=SSH_PROBE_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "ssh: timed out"
    return (proc.stdout.strip() or proc.stderr.strip() or f"exit {proc.returncode}").splitlines()[-1]


def log_tail(paths: Paths, name: str, lines: int = 25) -> str:
    try:
        text = paths.log(name).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def wait_ready(machine: Machine, paths: Paths, timeout: float) -> str | None:
    """None once the machine reports running; otherwise a message naming it with the last output."""
    deadline = time.monotonic() + timeout
    last = "(no answer yet)"
    while time.monotonic() < deadline:
        if not nspawn_pids(machine.unit_name):
            tail = log_tail(paths, machine.name)
            return f"{machine.name}: systemd-nspawn exited; last probe: {last}\n{tail}"
        last = probe(paths, machine)
        if last == "running":
            return None
        if last == "degraded":
            failed = subprocess.run(
                [*ssh_base(paths, machine), "systemctl", "--failed", "--no-legend"],
                capture_output=True,
                text=True,
                timeout=SSH_PROBE_TIMEOUT,
                check=False,
                stdin=subprocess.DEVNULL,
            ).stdout.strip()
            return f"{machine.name}: system is degraded; failed units:\n{failed}"
        time.sleep(0.5)
    return (
        f"{machine.name}: not running after {timeout:.0f}s; last output of "
        f"`systemctl is-system-running`: {last}\n--- nspawn log tail ({paths.log(machine.name)}):\n"
        f"{log_tail(paths, machine.name)}"
    )


def refresh_apt(machine: Machine, paths: Paths) -> str | None:
    """`apt-get update` on a machine against the lab mirror; None, or a message naming the machine."""
    proc = subprocess.run(
        [*ssh_base(paths, machine), "sudo", "apt-get", "-q", "update"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0 or "W: " in proc.stdout + proc.stderr:
        output = proc.stdout + proc.stderr
        return f"{machine.name}: apt-get update against {mirror.mirror_url()} failed:\n{output}"
    return None


def _read_lab_json(paths: Paths) -> dict[str, object]:
    try:
        data = json.loads(paths.lab_json.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def planned(paths: Paths) -> tuple[list[Machine], str]:
    """The machines and suite of the last `up`, or the defaults."""
    data = _read_lab_json(paths)
    poolers = data.get("poolers", 2)
    suite = data.get("suite", config.DEFAULT_SUITE)
    return (
        config.plan_machines(poolers if isinstance(poolers, int) else 2),
        suite if isinstance(suite, str) else config.DEFAULT_SUITE,
    )


def write_access_files(paths: Paths, machines: Sequence[Machine]) -> None:
    entries: list[str] = []
    for machine in machines:
        entries += render.known_hosts_lines(machine, host_pub_keys(machine_root(machine.name)))
    paths.known_hosts.write_text("\n".join(entries) + "\n")
    paths.inventory.write_text(render.inventory_yaml(machines, paths.key, paths.known_hosts))
    paths.ssh_config.write_text(render.ssh_config(machines, paths.key, paths.known_hosts))


def up(poolers: int, suite: str, paths: Paths) -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (mounts, bridge, systemd-nspawn)")
    machines = config.plan_machines(poolers)
    image = build_image(suite)
    repo = mirror.collect(suite, image)
    paths.state.mkdir(parents=True, exist_ok=True)
    previous = _read_lab_json(paths)
    running = [m for m in machines if is_running(m)]
    if running and previous.get("suite") not in (None, suite):
        raise LabError(
            f"the lab is up on {previous.get('suite')}; run `labctl down` before `up --suite {suite}`"
        )
    wanted = {m.name for m in machines}
    extra = [n for n in known_machine_names(paths) if n not in wanted]
    if extra:
        print(f"stopping machines not in this plan: {', '.join(extra)}")
        stop_machines(extra, paths)
    started = time.monotonic()
    ensure_ssh_key(paths)
    ensure_bridge()
    new_mirror = mirror.serve(repo, paths.log("mirror"))
    to_boot = [m for m in machines if m not in running]
    for machine in running:  # a machine added to the plan must resolve from the old ones too
        _write(machine_root(machine.name) / "etc/hosts", render.hosts_file(machines, machine))
    if to_boot:
        # nspawn processes left over without a usable root (crash mid-up) are stopped first.
        stop_machines([m.name for m in to_boot], paths)
        with ThreadPoolExecutor(max_workers=len(to_boot)) as pool:
            modes = list(pool.map(lambda m: prepare_machine(m, machines, image, paths, suite), to_boot))
        for machine in to_boot:
            start_machine(machine, paths)
        print(f"booting {', '.join(m.name for m in to_boot)} ({', '.join(sorted(set(modes)))})")
    write_access_files(paths, machines)
    paths.lab_json.write_text(json.dumps({"suite": suite, "poolers": poolers, "image": str(image)}) + "\n")
    with ThreadPoolExecutor(max_workers=len(machines)) as pool:
        errors = [e for e in pool.map(lambda m: wait_ready(m, paths, BOOT_TIMEOUT), machines) if e]
    if errors:
        raise LabError("lab did not come up:\n" + "\n".join(errors))
    # A freshly installed server knows its mirror's packages; a running one must re-read a new mirror.
    stale = machines if new_mirror else to_boot
    if stale:
        with ThreadPoolExecutor(max_workers=len(stale)) as pool:
            errors = [e for e in pool.map(lambda m: refresh_apt(m, paths), stale) if e]
        if errors:
            raise LabError("apt could not read the lab mirror:\n" + "\n".join(errors))
    issued = ca.ensure(paths.state / "tls", machines)
    if issued:
        print(f"lab CA ({paths.state / 'tls' / 'ca.crt'}) issued certificates for {', '.join(issued)}")
    elapsed = time.monotonic() - started
    print(f"lab up in {elapsed:.1f}s: {len(to_boot)} booted, {len(running)} already running ({suite})")
    for machine in machines:
        print(f"  {machine.name:<7} {machine.address!s:<12} {machine.group}")
    rel = os.path.relpath(paths.state, Path.cwd())
    print(f"reach them:  ssh -F {rel}/ssh_config pool1   |   python3 lab/labctl.py ssh pool1 [cmd]")
    print(f"ansible:     ansible -i {rel}/inventory.yml all -m ansible.builtin.ping")
    print("tear down:   python3 lab/labctl.py down")


def down(paths: Paths) -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (mounts, bridge, systemd-nspawn)")
    names = known_machine_names(paths)
    stop_machines(names, paths)
    mirror.stop()
    remove_network()
    if config.MACHINES_DIR.is_dir() and not any(config.MACHINES_DIR.iterdir()):
        config.MACHINES_DIR.rmdir()
    for path in (paths.inventory, paths.ssh_config, paths.known_hosts, paths.lab_json, paths.deployed):
        path.unlink(missing_ok=True)
    print(f"lab down: stopped {', '.join(names) if names else 'nothing'}; bridge and overlays removed")


def status(paths: Paths) -> int:
    machines, suite = planned(paths)
    all_ok = True
    print(f"suite {suite}, bridge {config.BRIDGE}: {'present' if bridge_exists() else 'absent'}")
    for machine in machines:
        up_now = is_running(machine)
        state = probe(paths, machine) if up_now and paths.known_hosts.exists() else "-"
        all_ok = all_ok and state == "running"
        print(f"  {machine.name:<7} {machine.address!s:<12} {'running' if up_now else 'stopped':<8} {state}")
    return 0 if all_ok else 3


# ---------------------------------------------------------------- power (drills)


def _planned_machine(name: str, paths: Paths) -> Machine:
    machines, _ = planned(paths)
    for machine in machines:
        if machine.name == name:
            return machine
    raise LabError(f"no lab machine named {name!r} (machines: {', '.join(m.name for m in machines)})")


def poweroff(name: str, paths: Paths) -> None:
    """Cut a machine's power: SIGKILL its container at once (no shutdown, as a power loss), keep its disk.

    Unlike `down`, the machine's root (overlay) stays, so `boot` starts it again with everything that was
    deployed on it, as a server that comes back after a power cut.
    """
    if os.geteuid() != 0:
        raise LabError("the lab needs root (mounts, bridge, systemd-nspawn)")
    machine = _planned_machine(name, paths)
    pids = nspawn_pids(machine.unit_name)
    # When the power went (drills time the failover from it; the clock is the machines' too).
    print(f"{name}: power cut at {time.time():.3f}", flush=True)
    for pid in pids:
        for child in children(pid):  # the container's PID 1 first: the whole container dies with it
            _signal(child, signal.SIGKILL)
        _signal(pid, signal.SIGKILL)
    _wait_gone(pids, 10)
    leftovers = container_processes(name)
    for pid in leftovers:
        _signal(pid, signal.SIGKILL)
    if leftovers and not _wait_gone(leftovers, 10):
        raise LabError(f"{name}: container processes survived SIGKILL: {leftovers}")
    _clean_nspawn_leftovers(machine.unit_name)
    for cgroup in machine_cgroups(name):
        remove_cgroup_tree(cgroup)
    paths.pidfile(name).unlink(missing_ok=True)
    _wait_reaped(pids, 5)
    print(f"{name}: powered off (disk kept; `labctl boot {name}` starts it again)")


def boot(name: str, paths: Paths) -> None:
    """Start a machine that `poweroff` stopped, on its kept disk, and wait until it is running."""
    if os.geteuid() != 0:
        raise LabError("the lab needs root (mounts, bridge, systemd-nspawn)")
    machine = _planned_machine(name, paths)
    if is_running(machine):
        print(f"{name}: already running")
        return
    if not (machine_root(name) / "etc" / "hostname").is_file():
        raise LabError(f"{name}: no disk to boot from; run `labctl up`")
    started = time.monotonic()
    start_machine(machine, paths)
    error = wait_ready(machine, paths, BOOT_TIMEOUT)
    if error:
        raise LabError(error)
    print(f"{name}: booted in {time.monotonic() - started:.1f}s")
