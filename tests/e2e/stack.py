"""What the end-to-end tests know about the deployed lab: hosts, the example config and its secrets.

Everything is read the way an operator would find it: the lab's inventory, the TOML that was deployed and
the demo secrets it was deployed with.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from autopgpool.config import parse_config
from autopgpool.model import Config
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


def _playbook_command(args: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    command = [
        str(REPO / ".venv" / "bin" / "ansible-playbook"),
        "-i",
        str(LAB_INVENTORY),
        "-i",
        str(REPO / "inventories" / "lab"),
        *args,
    ]
    # The operator's environment, not the caller's: molecule exports its own ANSIBLE_CONFIG, colours, etc.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "MOLECULE_"))}
    env.update(ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1", PYTHONUNBUFFERED="1")
    return command, env


def ansible_playbook(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run a playbook against the lab exactly as `make demo` does."""
    command, env = _playbook_command(args)
    return subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def ansible_playbook_watched(
    *args: str, on_line: Callable[[str], bool], timeout: float = 900
) -> tuple[int | None, str]:
    """Run a playbook, calling ``on_line`` with each line of its output as it comes. When ``on_line`` returns
    True the playbook is killed (SIGKILL to all its processes), as a lost controller would stop it.
    Returns the exit code (None when killed) and the output."""
    command, env = _playbook_command(args)
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    killed = False
    deadline = time.monotonic() + timeout
    try:
        for line in proc.stdout:
            lines.append(line)
            if on_line(line) or time.monotonic() > deadline:
                killed = True
                break
    finally:
        if killed:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)
    return (None if killed else proc.returncode), "".join(lines)


def ansible_playbook_killed(*args: str, after: str, timeout: float = 600) -> str:
    """Kill the playbook right after the task named by ``after`` has finished on every host of its batch (at
    the next task's header). Fails unless it got there."""
    seen = False

    def at_next_task(line: str) -> bool:
        nonlocal seen
        if seen and line.startswith("TASK ["):
            return True
        seen = seen or after in line
        return False

    returncode, output = ansible_playbook_watched(*args, on_line=at_next_task, timeout=timeout)
    if returncode is not None or not seen:
        raise AssertionError(
            f"the playbook was not stopped after {after!r} (rc {returncode}):\n{output[-3000:]}"
        )
    return output


def haproxy_servers(host: Host) -> dict[str, dict[str, str]]:
    """`show stat` of the instances' backend, read on the host with Python (no socat needed): by server name,
    its status (UP, DOWN, DRAIN, MAINT...), current sessions and session limit."""
    out = host.run("python3 -", stdin=_SHOW_STAT)
    servers = {}
    for line in out.splitlines():
        fields = line.split(",")
        if len(fields) > 17 and fields[0] == "pgbouncer_instances" and fields[1].startswith("pgbouncer"):
            servers[fields[1]] = {"status": fields[17], "sessions": fields[4], "limit": fields[6]}
    return servers


def haproxy_admin(host: Host, command: str, socket_path: str = "/run/haproxy/admin.sock") -> str:
    """One command on the admin socket, e.g. ``set server pgbouncer_instances/pgbouncer1 state ready``."""
    return host.run(f"python3 - {shlex.quote(command)} {shlex.quote(socket_path)}", stdin=_ADMIN_COMMAND)


# `show stat` as a shell command, for loops timed on the host itself (Python's standard library: the hosts
# have no socat, which no role installs).
SHOW_STAT_SH = (
    'python3 -c \'import socket; s = socket.socket(socket.AF_UNIX); s.connect("/run/haproxy/admin.sock"); '
    's.sendall(b"show stat\\n"); s.shutdown(socket.SHUT_WR); print(s.makefile().read(), end="")\''
)

_ADMIN_COMMAND = """
import socket, sys
with socket.socket(socket.AF_UNIX) as sock:
    sock.connect(sys.argv[2] if len(sys.argv) > 2 else "/run/haproxy/admin.sock")
    sock.settimeout(10)
    sock.sendall(sys.argv[1].encode() + b"\\n")
    sock.shutdown(socket.SHUT_WR)  # the master's CLI answers and closes only once our side is done
    sys.stdout.write(sock.makefile().read())
"""
_SHOW_STAT = _ADMIN_COMMAND.replace("sys.argv[1].encode()", 'b"show stat"')


# --- PgBouncer's admin console, from the pooler host itself ----------------------------------------------
#
# Pooler hosts have no psql: no role installs postgresql-client there (the lab image is a fresh server).
# The console is reached with python3-psycopg, which roles/pgbouncer_exporter installs on every pooler host
# for the exporter; values are libpq's text, as psql -A prints them ('' for NULL), one dict per row.

Rows = list[dict[str, str]]

_CONSOLE = """
import json, sys, time
import psycopg
from psycopg import pq

user, command, samples, pause = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
targets = json.loads(sys.argv[5])
password = sys.stdin.readline().rstrip("\\n")
conns = [
    psycopg.connect(host=h, port=p, dbname="pgbouncer", user=user, password=password, connect_timeout=10,
                    autocommit=True, prepare_threshold=None)
    for h, p in targets
]
for sample in range(samples):
    for index, conn in enumerate(conns):
        res = conn.pgconn.exec_(command.encode())
        if res.status == pq.ExecStatus.TUPLES_OK:
            names = [res.fname(c).decode() for c in range(res.nfields)]
            rows = [
                {names[c]: (res.get_value(r, c) or b"").decode() for c in range(res.nfields)}
                for r in range(res.ntuples)
            ]
        elif res.status == pq.ExecStatus.COMMAND_OK:
            rows = []
        else:
            sys.exit(f"{targets[index]}: {command}: {(res.error_message or b'').decode().strip()}")
        print(json.dumps({"target": index, "rows": rows}), flush=True)
    if sample + 1 < samples:
        time.sleep(pause)
"""


def console_samples(
    host: Host,
    targets: Sequence[tuple[str, int]],
    user: str,
    password: str,
    command: str,
    *,
    samples: int = 1,
    pause: float = 0.0,
    timeout: float = 60,
) -> list[tuple[int, Rows]]:
    """``command`` on each console (host or socket directory, port), ``samples`` times with ``pause`` seconds
    between rounds, over one connection per console: (index into targets, rows) in order. The password travels
    on stdin, never on a command line."""
    argv = (user, command, str(samples), str(pause), json.dumps([list(t) for t in targets]))
    args = " ".join(shlex.quote(a) for a in argv)
    out = host.run(f"python3 -c {shlex.quote(_CONSOLE)} {args}", stdin=password + "\n", timeout=timeout)
    results = []
    for line in out.splitlines():
        data = json.loads(line)
        results.append((int(data["target"]), list(data["rows"])))
    return results


def console_rows(host: Host, target: str, port: int, user: str, password: str, command: str) -> Rows:
    """Rows of one console command on the host, e.g. ``SHOW POOLS`` on 127.0.0.1 or /run/pgbouncer/1."""
    return console_samples(host, [(target, port)], user, password, command)[0][1]


# --- What a playbook run did --------------------------------------------------------------------------------


def task_ran(output: str, task: str) -> bool:
    """Whether a task whose name starts with ``task`` did something on some host (ansible-playbook's default
    output). Its header is printed even when every host skipped it, so the header alone proves nothing: one
    of its sections must report a host ``changed``, ``ok`` or ``included``."""
    for section in re.split(r"\n(?=TASK \[|RUNNING HANDLER \[|PLAY )", output):
        if not section.startswith("TASK ["):
            continue
        header, _, body = section.partition("\n")
        name = header[len("TASK [") :].rsplit("]", 1)[0].split(" : ", 1)[-1]
        if name.startswith(task) and re.search(r"^(changed|ok): \[|^included: ", body, re.MULTILINE):
            return True
    return False
