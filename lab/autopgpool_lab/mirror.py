"""The lab's package mirror: the .debs the roles and lab playbooks install, served on the lab bridge.

Lab machines boot from a minimal image and have no route out, as an air-gapped fleet has. What the roles
install comes from this mirror: `collect` resolves the packages inside a throwaway copy of the image (so it
gets exactly what a minimal host lacks, with dependencies), downloads them from Debian's archive on the
controller, and writes an apt repository (dists/<suite>/main/binary-<arch>/Packages, an unsigned Release:
the hosts' sources say [trusted=yes]). `serve` runs Python's HTTP server on the bridge address only.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from . import config
from .system import LabError, alive, all_pids, read_cmdline, run

MARKER = ".autopgpool-lab-mirror.json"
# Where role variables name packages: keys ending in this in defaults/ and vars/, and literal apt task names.
_PACKAGES_KEY = "_packages"
_APT_MODULES = ("ansible.builtin.apt", "apt")
_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]*$")
_MISSING = "autopgpool-lab-missing:"
_INST = re.compile(r"^Inst (\S+) (?:\[\S+\] )?\((\S+) .*\[(\S+)\]\)")

# Runs in a throwaway overlay of the image (systemd-nspawn --volatile=overlay): nothing it does is kept
# except the .debs, which land in the bind-mounted download cache.
_COLLECT_SCRIPT = r"""
set -eu
export DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 LC_ALL=C.UTF-8
printf '%s' "$1" > /etc/apt/sources.list
rm -f /etc/apt/sources.list.d/*
shift
apt-get -q update >&2
missing=""
for p in "$@"; do
    apt-cache show --no-all-versions "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "autopgpool-lab-missing:$missing"
    exit 3
fi
apt-get -q -y --no-install-recommends --download-only install "$@" >&2
apt-get -s -y --no-install-recommends install "$@"
"""


def _yaml_files(root: Path, subdir: str) -> Iterator[Path]:
    for role in sorted(p for p in root.iterdir() if p.is_dir()):
        base = role / subdir
        if base.is_dir():
            yield from sorted(base.rglob("*.yml"))


def _load(path: Path) -> Any:
    import yaml  # noqa: PLC0415 - python3-yaml on the controller; only collection needs it

    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _strings(value: object, suite: str) -> Iterator[str]:
    """Package names in a role variable: a list, or a mapping by suite (only this suite's) or by feature."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, suite)
    elif isinstance(value, dict):
        if set(value) & set(config.SUPPORTED_SUITES):
            yield from _strings(value.get(suite, []), suite)
        else:
            for item in value.values():
                yield from _strings(item, suite)


def _apt_task_names(node: object) -> Iterator[str]:
    """Literal names of every apt task in a tasks file (templated names come from the variables)."""
    if isinstance(node, list):
        for item in node:
            yield from _apt_task_names(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key in _APT_MODULES and isinstance(value, dict):
                names = value.get("name", value.get("pkg", []))
                for name in names if isinstance(names, list) else [names]:
                    if isinstance(name, str) and "{{" not in name:
                        yield name
            else:
                yield from _apt_task_names(value)


def role_packages(suite: str, role_dirs: Iterable[Path] | None = None) -> list[str]:
    """Every package the roles (product and lab) install on this suite, read from the roles themselves."""
    dirs = (
        list(role_dirs)
        if role_dirs is not None
        else [config.REPO_ROOT / "roles", config.REPO_ROOT / "lab/roles"]
    )
    found: set[str] = set()
    for root in dirs:
        for sub in ("defaults", "vars"):
            for path in _yaml_files(root, sub):
                data = _load(path)
                if isinstance(data, dict):
                    for key, value in data.items():
                        if isinstance(key, str) and key.endswith(_PACKAGES_KEY) and not key.startswith("_"):
                            found.update(n for n in _strings(value, suite) if "{{" not in n)
        for path in _yaml_files(root, "tasks"):
            found.update(_apt_task_names(_load(path)))
    bad = sorted(n for n in found if not _NAME.match(n))
    if bad:
        raise LabError(f"roles name packages that are not Debian package names: {', '.join(bad)}")
    return sorted(found)


def mirror_key(suite: str, packages: Iterable[str], image: Path) -> str:
    """Directory name of a collected repository: changes with the suite, the packages or the image."""
    material = "\n".join([suite, image.name, *sorted(set(packages))])
    return f"{suite}-{hashlib.sha256(material.encode()).hexdigest()[:12]}"


def _upstream_sources(suite: str) -> str:
    return (
        f"deb {config.MIRROR} {suite} main\n"
        f"deb {config.MIRROR} {suite}-updates main\n"
        f"deb {config.SECURITY_MIRROR} {suite}-security main\n"
    )


def lab_sources(suite: str) -> str:
    """The hosts' only apt source: the lab mirror (unsigned, hence trusted=yes; see lab/README.md)."""
    return (
        "# Written by lab/labctl.py up: the lab's package mirror on the bridge is the only source.\n"
        f"deb [trusted=yes] {mirror_url()} {suite} main\n"
    )


def mirror_url() -> str:
    return f"http://{config.HOST_ADDRESS}:{config.MIRROR_PORT}/debian"


def parse_simulation(output: str) -> list[tuple[str, str, str]]:
    """(name, version, arch) of each package `apt-get -s install` would install."""
    out = []
    for line in output.splitlines():
        match = _INST.match(line)
        if match:
            out.append((match.group(1), match.group(2), match.group(3)))
    return out


def deb_filename(name: str, version: str, arch: str) -> str:
    """The file name apt gives a downloaded package (an epoch's colon is escaped as %3a)."""
    return f"{name}_{version.replace(':', '%3a')}_{arch}.deb"


def _release(suite: str, arch: str, files: dict[str, bytes]) -> str:
    lines = [
        "Origin: autopgpool-lab",
        "Label: autopgpool-lab",
        f"Suite: {suite}",
        f"Codename: {suite}",
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}",
        f"Architectures: {arch}",
        "Components: main",
        "SHA256:",
    ]
    for name, data in sorted(files.items()):
        lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data)} {name}")
    return "\n".join(lines) + "\n"


def collect(suite: str, image: Path) -> Path:
    """Collect (or reuse) the suite's repository for this image; returns its root (the /debian dir)."""
    packages = role_packages(suite)
    final = config.MIRROR_CACHE_DIR / mirror_key(suite, packages, image)
    if (final / MARKER).is_file():
        (final / MARKER).touch()  # last use, for _prune in other checkouts
        return final
    if os.geteuid() != 0:
        raise LabError("collecting the lab mirror needs root (systemd-nspawn)")
    debs = config.MIRROR_CACHE_DIR / "debs" / suite
    (debs / "partial").mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    print(f"collecting the lab mirror for {suite}: {' '.join(packages)}", flush=True)
    proc = run(
        [
            "systemd-nspawn",
            "--quiet",
            "-D",
            image,
            "--volatile=overlay",
            f"--bind={debs}:/var/cache/apt/archives",
            "--register=no",
            "--keep-unit",
            "--console=pipe",
            "--resolv-conf=copy-host",
            "--timezone=off",
            "/bin/sh",
            "-c",
            _COLLECT_SCRIPT,
            "collect",
            _upstream_sources(suite),
            *packages,
        ],
        check=False,
        capture=True,
        quiet=True,
        timeout=1800,
    )
    missing = [
        line[len(_MISSING) :].split() for line in proc.stdout.splitlines() if line.startswith(_MISSING)
    ]
    if missing:
        raise LabError(
            f"the lab mirror cannot hold what the roles install: no package {', '.join(missing[0])} "
            f"in Debian {suite} (check the role's *_packages variables for {suite})"
        )
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-30:])
        raise LabError(f"collecting the lab mirror for {suite} failed ({proc.returncode}):\n{tail}")
    chosen = parse_simulation(proc.stdout)
    if not chosen:
        raise LabError(f"collecting the lab mirror for {suite}: apt chose no package to install")
    arch = next((a for _, _, a in chosen if a != "all"), "amd64")
    tmp = config.MIRROR_CACHE_DIR / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    pool = tmp / "pool/main"
    pool.mkdir(parents=True)
    for name, version, deb_arch in chosen:
        source = debs / deb_filename(name, version, deb_arch)
        if not source.is_file():
            raise LabError(f"collecting the lab mirror: {source.name} was not downloaded")
        with contextlib.suppress(OSError):
            os.link(source, pool / source.name)
        if not (pool / source.name).exists():
            shutil.copy2(source, pool / source.name)
    scan = run(
        ["/bin/sh", "-c", 'cd "$1" && exec dpkg-scanpackages --multiversion pool/main', "scan", tmp],
        capture=True,
        quiet=True,
    )
    # dpkg-scanpackages writes its summary to stderr, which run() merged into stdout after the stanzas.
    text = "".join(s + "\n\n" for s in scan.stdout.split("\n\n") if s.startswith("Package: "))
    index = f"main/binary-{arch}"
    dists = tmp / "dists" / suite / index
    dists.mkdir(parents=True)
    packages_text = text.encode()
    files = {
        f"{index}/Packages": packages_text,
        f"{index}/Packages.gz": gzip.compress(packages_text, mtime=0),
    }
    for rel, data in files.items():
        (tmp / "dists" / suite / rel).write_bytes(data)
    (tmp / "dists" / suite / "Release").write_text(_release(suite, arch, files))
    meta = {
        "suite": suite,
        "image": image.name,
        "packages": packages,
        "debs": len(chosen),
        "bytes": sum(p.stat().st_size for p in pool.iterdir()),
        "collect_seconds": round(time.monotonic() - started, 1),
    }
    (tmp / MARKER).write_text(json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)
    print(
        f"lab mirror collected in {meta['collect_seconds']}s: {len(chosen)} packages, {meta['bytes']} bytes"
    )
    _prune(suite, keep=final)
    return final


def _prune(suite: str, keep: Path) -> None:
    for old in config.MIRROR_CACHE_DIR.glob(f"{suite}-*"):
        if (
            old != keep
            and (old / MARKER).is_file()
            and time.time() - (old / MARKER).stat().st_mtime > config.PRUNE_UNUSED_AFTER
            and not any(str(old.name) in " ".join(a) for a in _servers())
        ):
            shutil.rmtree(old, ignore_errors=True)
    for stale in config.MIRROR_CACHE_DIR.glob(f".tmp-{suite}-*"):
        shutil.rmtree(stale, ignore_errors=True)


# ---------------------------------------------------------------- serving it on the bridge


def _servers() -> list[list[str]]:
    return [read_cmdline(pid) for pid in server_pids()]


def server_pids() -> list[int]:
    """This slot's mirror servers: Python's http.server bound to the slot's bridge address."""
    found = []
    for pid in all_pids():
        argv = read_cmdline(pid)
        if "http.server" in argv and "--bind" in argv and str(config.HOST_ADDRESS) in argv and alive(pid):
            found.append(pid)
    return found


def serve(root: Path, log: Path) -> bool:
    """Serve root as http://<bridge address>:<port>/debian (restarted if it serves another root).

    Returns True when it started a server (the machines' apt lists may then be stale)."""
    docroot = root.parent / f".www-{root.name}"
    docroot.mkdir(exist_ok=True)
    link = docroot / "debian"
    if not link.is_symlink() or link.readlink() != root:
        link.unlink(missing_ok=True)
        link.symlink_to(root)
    for pid in server_pids():
        if str(docroot) in read_cmdline(pid):
            return False
        stop()
        break
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "http.server",
        "--bind",
        str(config.HOST_ADDRESS),
        "--directory",
        str(docroot),
        str(config.MIRROR_PORT),
    ]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    deadline = time.monotonic() + 10
    url = f"{mirror_url()}/dists/"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabError(f"the lab mirror's HTTP server exited ({proc.returncode}); see {log}")
        probe = subprocess.run(
            ["python3", "-c", f"import urllib.request as u; u.urlopen({url!r}, timeout=2)"],
            capture_output=True,
            check=False,
        )
        if probe.returncode == 0:
            print(f"lab mirror: {mirror_url()} (pid {proc.pid})")
            return True
        time.sleep(0.2)
    proc.kill()  # a server that never answered must not stay bound to the port for the next `up`
    proc.wait(timeout=5)
    raise LabError(f"the lab mirror's HTTP server did not answer on {url} within 10s; see {log}")


def stop() -> None:
    pids = server_pids()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
