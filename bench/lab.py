"""Talking to the lab: ssh to a machine, ansible-playbook runs, the repository's paths. No locking here:
callers hold /run/lock/autopgpool-lab.lock around whole runs (mk/bench.mk does)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
SSH_CONFIG = REPO / ".lab" / "ssh_config"
INVENTORY = ("-i", str(REPO / ".lab" / "inventory.yml"), "-i", str(REPO / "inventories" / "lab"))
CALLBACKS = REPO / "bench" / "callback_plugins"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def ssh(host: str, argv: Sequence[str], *, stdin: str | None = None, check: bool = True) -> str:
    """Run argv on a lab machine (as ops); return stdout. argv is quoted for the remote shell."""
    remote = " ".join(shlex.quote(a) for a in argv)
    proc = subprocess.run(
        ["ssh", "-F", str(SSH_CONFIG), host, remote],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"{host}: {remote!r} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def shell(host: str, script: str, *, check: bool = True) -> str:
    """Run a bash script on a lab machine."""
    return ssh(host, ["bash", "-euo", "pipefail", "-c", script], check=check)


def put(host: str, path: str, content: str, *, owner: str, mode: str) -> None:
    """Write a root-owned file on a machine (content through stdin, never on a command line)."""
    ssh(host, ["sudo", "install", "-m", mode, "-o", "root", "-g", owner, "/dev/stdin", path], stdin=content)


def labctl(*args: str) -> None:
    subprocess.run([sys.executable, str(REPO / "lab" / "labctl.py"), *args], check=True, cwd=REPO)


def playbook(
    path: str, *, extra_vars_file: Path | None = None, timings: Path | None = None, quiet: bool = True
) -> float:
    """ansible-playbook on the lab inventory; returns wall seconds; per-task times go to ``timings``."""
    env: dict[str, str] = dict(os.environ)
    env.setdefault("ANSIBLE_CONFIG", str(REPO / "ansible.cfg"))
    if timings is not None:
        env["ANSIBLE_CALLBACK_PLUGINS"] = str(CALLBACKS)
        env["ANSIBLE_CALLBACKS_ENABLED"] = "bench_timer"
        env["AUTOPGPOOL_BENCH_TIMINGS"] = str(timings)
    argv = ["ansible-playbook", *INVENTORY, str(REPO / path)]
    if extra_vars_file is not None:
        argv += ["-e", f"@{extra_vars_file}"]
    start = time.monotonic()
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=quiet, text=True, check=False)
    took = time.monotonic() - start
    if proc.returncode != 0:
        tail = (proc.stdout or "")[-4000:] if quiet else ""
        raise RuntimeError(f"ansible-playbook {path} failed ({proc.returncode}):\n{tail}")
    return took


def _inventory() -> dict[str, Any]:
    """The lab inventory `labctl up` wrote for this lab slot (the one source of the machines' addresses)."""
    data = yaml.safe_load((REPO / ".lab" / "inventory.yml").read_text(encoding="utf-8"))
    return dict(data["all"])


def lab_network() -> str:
    """The lab bridge's network, e.g. 10.231.0.0/24."""
    return str(_inventory()["vars"]["lab_network"])


def address(host: str) -> str:
    """A lab machine's address on the bridge, from the inventory."""

    def walk(group: Mapping[str, Any]) -> str | None:
        hosts = group.get("hosts") or {}
        if host in hosts:
            return str(hosts[host]["ansible_host"])
        for child in (group.get("children") or {}).values():
            found = walk(child or {})
            if found:
                return found
        return None

    found = walk(_inventory())
    if found is None:
        raise RuntimeError(f"{host}: not in the lab inventory (.lab/inventory.yml); run `labctl up`")
    return found


def demo_secrets() -> dict[str, str]:
    """examples/demo.env as a mapping (the lab's throw-away secrets)."""
    out: dict[str, str] = {}
    for line in (REPO / "examples" / "demo.env").read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            out[key.strip()] = value
    return out


def env_with(extra: Mapping[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env
