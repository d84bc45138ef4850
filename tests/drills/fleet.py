"""The fleet as the drills see it: instance PIDs and running versions, HAProxy's view, playbook runs.

Host access, the inventory and the example config come from tests/e2e/stack.py (the lead's); this module only
adds what the drills need on top.
"""

from __future__ import annotations

import re
import subprocess
import time

from e2e.stack import Host, ansible_playbook, haproxy_admin, poolers, postgres_host

# What the role's installed.yml (the operations playbooks' instance list) reads: the instance files of the
# lab's config dir (inventories/lab: the role's default pgbouncer_config_dir).
CONFIG_DIR = "/etc/pgbouncer"


def instance_ids(host: Host) -> list[int]:
    """The instances configured on the host: one instance-N.ini each."""
    names = host.run(f"ls -1 {CONFIG_DIR}").split()
    return sorted(int(m.group(1)) for m in (re.fullmatch(r"instance-([0-9]+)\.ini", n) for n in names) if m)


def lab_poolers() -> list[Host]:
    return poolers()


def lab_postgres() -> Host:
    return postgres_host()


def instance_pids(host: Host) -> dict[int, int]:
    """{instance: MainPID} of every instance configured on the host (0 when not running)."""
    return {n: int(host.run(f"systemctl show -P MainPID pgbouncer@{n}.service")) for n in instance_ids(host)}


def fleet_pids(hosts: list[Host]) -> dict[str, dict[int, int]]:
    return {host.name: instance_pids(host) for host in hosts}


def running_versions(host: Host) -> dict[int, str]:
    """{instance: first line of `--version`} of the executable each running instance was started from."""
    versions = {}
    for n in instance_ids(host):
        line = host.run(
            f"pid=$(systemctl show -P MainPID pgbouncer@{n}.service); /proc/$pid/exe --version | head -n1"
        )
        versions[n] = line.removeprefix("PgBouncer ").strip()
    return versions


def fleet_versions(hosts: list[Host]) -> dict[str, dict[int, str]]:
    return {host.name: running_versions(host) for host in hosts}


def haproxy_servers(host: Host) -> dict[str, dict[str, str]]:
    """HAProxy's `show stat` rows of the pgbouncer servers, by server name, as {column: value}."""
    out = haproxy_admin(host, "show stat")
    lines = out.splitlines()
    header = lines[0].lstrip("# ").split(",")
    rows = {}
    for line in lines[1:]:
        fields = line.split(",")
        if fields[0] == "pgbouncer_instances" and fields[1].startswith("pgbouncer"):
            rows[fields[1]] = dict(zip(header, fields, strict=False))
    return rows


def _problems(host: Host) -> list[str]:
    problems = []
    pids = instance_pids(host)
    problems += [f"pgbouncer@{n} not running" for n, pid in pids.items() if pid == 0]
    servers = haproxy_servers(host)
    problems += [f"{name} is {row['status']}" for name, row in servers.items() if row["status"] != "UP"]
    if sorted(servers) != sorted(f"pgbouncer{n}" for n in pids):
        problems.append(f"HAProxy servers {sorted(servers)} do not match instances {sorted(pids)}")
    return problems


def assert_fleet_healthy(hosts: list[Host], timeout: float) -> None:
    """Every instance running and UP (in rotation) in HAProxy on every host, within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        problems = [f"{host.name}: {p}" for host in hosts for p in _problems(host)]
        if not problems:
            return
        if time.monotonic() > deadline:
            raise AssertionError("fleet not healthy: " + "; ".join(problems))
        time.sleep(0.5)


def recap(output: str) -> dict[str, dict[str, int]]:
    found = {}
    for match in re.finditer(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", output, re.MULTILINE):
        found[match.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(2))}
    return found


def playbook(*args: str, timeout: float = 900) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run a playbook on the lab (tests/e2e/stack.py's way); fails with the output's tail unless it succeeds.

    Returns the result and how long it took, in seconds.
    """
    started = time.monotonic()
    result = ansible_playbook(*args, timeout=timeout)
    took = time.monotonic() - started
    assert result.returncode == 0, (
        f"ansible-playbook {' '.join(args)} exited {result.returncode}:\n"
        f"{result.stdout[-4000:]}\n{result.stderr[-2000:]}"
    )
    return result, took
