"""The pgbouncer instances on each pooler host, tested like an operator would: the binary's version, systemd's
view of the units, /proc limits, systemd-analyze security, the sockets HAProxy uses, crash recovery, reload,
and cancel requests that land on another instance than the query (forwarded through [peers]).

Reloading after a password change through playbooks/site.yml is covered by test_operations.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
import subprocess
import time
from collections.abc import Iterator, Mapping

import asyncpg
import pytest

from autopgpool.api import file_descriptor_limit
from autopgpool.budget import make_fleet, plan
from autopgpool.model import Config
from integration.pgbouncer_build import release_table

pytestmark = pytest.mark.e2e

# The pinned release, from the role's release table (the one place the pin lives).
VERSION = release_table()["pgbouncer_build_pinned_version"]
BASE_PORT = 6400
MAX_EXPOSURE = 1.2
CANCEL_ROUNDS = 20
CANCEL_REQUEST_CODE = 80877102


def _instances(host) -> list[int]:  # type: ignore[no-untyped-def]
    listing = host.run("ls /etc/pgbouncer/ | sed -n 's/^instance-\\([0-9]*\\)\\.ini$/\\1/p'")
    return sorted(int(n) for n in listing.split())


def _show(host, unit: str, *props: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    args = " ".join(f"-p {p}" for p in props)
    out = host.run(f"systemctl show {args} {unit}")
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_binary_is_the_pinned_release(lab_poolers) -> None:  # type: ignore[no-untyped-def]
    for host in lab_poolers:
        lines = host.run("/opt/pgbouncer/current/bin/pgbouncer --version").splitlines()
        assert lines[0] == f"PgBouncer {VERSION}", f"{host.name}: {lines}"
        assert "systemd: yes" in lines, f"{host.name}: built without systemd: {lines}"


def test_every_instance_is_an_active_notify_unit(lab_poolers) -> None:  # type: ignore[no-untyped-def]
    for host in lab_poolers:
        ids = _instances(host)
        assert ids, f"{host.name}: no instance files"
        assert ids == list(range(1, len(ids) + 1)), f"{host.name}: instance files {ids}"
        active = host.run("systemctl list-units --plain --no-legend --state=active 'pgbouncer@*.service'")
        assert len(active.splitlines()) == len(ids), f"{host.name}: {active}"
        for n in ids:
            props = _show(host, f"pgbouncer@{n}.service", "Type", "ActiveState", "SubState", "UnitFileState")
            assert props == {
                "Type": "notify",
                "ActiveState": "active",
                "SubState": "running",
                "UnitFileState": "enabled",
            }, f"{host.name} pgbouncer@{n}: {props}"


def test_fd_limit_is_the_documented_formula(lab_poolers, example: Config) -> None:  # type: ignore[no-untyped-def]
    # Per instance: the pool sizes are the connection budget's share of each instance (docs/configuration.md).
    fleet = {host.name: len(_instances(host)) for host in lab_poolers}
    expected = file_descriptor_limit(plan(example, make_fleet(fleet)).config)
    for host in lab_poolers:
        for n in _instances(host):
            pid = _show(host, f"pgbouncer@{n}.service", "MainPID")["MainPID"]
            limits = host.run(f"cat /proc/{pid}/limits")
            match = re.search(r"^Max open files\s+(\d+)\s+(\d+)", limits, re.MULTILINE)
            assert match, limits
            # soft = the formula; the hard ceiling above it lets a grown limit reach running instances.
            # (systemd caps the role's 524288 at its own hard limit where it lacks CAP_SYS_RESOURCE: the lab.)
            assert int(match.group(1)) == expected, f"{host.name} #{n}: {match.group(0)}"
            assert int(match.group(2)) > expected, f"{host.name} #{n}: {match.group(0)}"


def test_unit_exposure_is_ok(lab_poolers) -> None:  # type: ignore[no-untyped-def]
    for host in lab_poolers:
        out = host.run("systemd-analyze security --no-pager pgbouncer@1.service")
        match = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", out)
        assert match, out[-500:]
        assert float(match.group(1)) <= MAX_EXPOSURE, f"{host.name}: {match.group(0)}"


def test_reload_keeps_the_process(lab_poolers) -> None:  # type: ignore[no-untyped-def]
    host = lab_poolers[0]
    before = _show(host, "pgbouncer@1.service", "MainPID")["MainPID"]
    host.run("systemctl reload pgbouncer@1.service")
    time.sleep(0.5)
    props = _show(host, "pgbouncer@1.service", "MainPID", "ActiveState")
    assert props == {"MainPID": before, "ActiveState": "active"}


def test_killed_instance_is_back_within_two_seconds(lab_poolers) -> None:  # type: ignore[no-untyped-def]
    host = lab_poolers[0]
    n = _instances(host)[-1]
    unit = f"pgbouncer@{n}.service"
    # Timed on the host itself, so ssh latency does not count; gives up after 5 s.
    out = host.run(
        f"old=$(systemctl show -P MainPID {unit}); t0=$(date +%s.%N); kill -KILL $old; "
        f"for i in $(seq 50); do sleep 0.05; new=$(systemctl show -P MainPID {unit}); "
        f'if [ "$(systemctl is-active {unit})" = active ] && [ "$new" != 0 ] && [ "$new" != "$old" ]; '
        f"then echo $(date +%s.%N) $t0; exit 0; fi; done; echo never; exit 0"
    ).split()
    assert out != ["never"], f"{host.name}: {unit} did not come back within 5 s"
    assert float(out[0]) - float(out[1]) < 2.0, (
        f"{host.name}: {unit} took {float(out[0]) - float(out[1]):.2f} s"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _forwards(host, remote_ports: list[int]) -> Iterator[list[int]]:  # type: ignore[no-untyped-def]
    """ssh -L from free loopback ports on the controller to the instances' loopback ports on the host."""
    local = [_free_port() for _ in remote_ports]
    args = []
    for lp, rp in zip(local, remote_ports, strict=True):
        args += ["-L", f"127.0.0.1:{lp}:127.0.0.1:{rp}"]
    proc = subprocess.Popen(
        ["ssh", *host.ssh_args, "-N", "-o", "ExitOnForwardFailure=yes", *args, host.address],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        for port in local:
            while True:
                if proc.poll() is not None:
                    raise AssertionError(
                        f"ssh forward failed: {proc.stderr.read().decode() if proc.stderr else ''}"
                    )
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"ssh forward to {host.name} not ready after 15 s")
                time.sleep(0.1)
        yield local
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def _cancel_via(port: int, pid: int, secret: int) -> None:
    """Send a bare CancelRequest (16 bytes) to another instance than the one running the query."""
    _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout=5)
    writer.write(struct.pack("!iiii", 16, CANCEL_REQUEST_CODE, pid, secret))
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def _cancel_rounds(
    query_port: int, cancel_port: int, user: str, password: str, database: str
) -> list[float]:
    """Run pg_sleep on one instance, cancel it through the other; return how long each cancel took."""
    conn = await asyncpg.connect(
        host="127.0.0.1", port=query_port, user=user, password=password, database=database,
        statement_cache_size=0, timeout=10,
    )  # fmt: skip
    took = []
    try:
        for _ in range(CANCEL_ROUNDS):
            query = asyncio.ensure_future(conn.fetchval("SELECT pg_sleep(30)"))
            await asyncio.sleep(0.3)  # the query is on the server by now
            assert not query.done(), "pg_sleep(30) returned early"
            start = time.monotonic()
            # The key pgbouncer gave this client (asyncpg keeps it on its protocol object).
            await _cancel_via(cancel_port, conn._protocol.backend_pid, conn._protocol.backend_secret)
            with contextlib.suppress(asyncpg.QueryCanceledError):
                await asyncio.wait_for(query, timeout=5)
                raise AssertionError("the query finished instead of being cancelled")
            took.append(time.monotonic() - start)
    finally:
        await asyncio.wait_for(conn.close(), timeout=10)
    return took


def test_cancel_on_another_instance_is_forwarded(lab_poolers, demo_env: Mapping[str, str]) -> None:  # type: ignore[no-untyped-def]
    for host in lab_poolers:
        ids = _instances(host)
        if len(ids) < 2:
            pytest.fail(f"{host.name} runs {len(ids)} instance(s); cancel forwarding needs at least 2")
        with _forwards(host, [BASE_PORT + ids[0], BASE_PORT + ids[1]]) as (first, second):
            took = asyncio.run(
                _cancel_rounds(first, second, "app_user", demo_env["APP_USER_PASSWORD"], "app")
            )
        assert len(took) == CANCEL_ROUNDS, f"{host.name}: {len(took)} of {CANCEL_ROUNDS} cancels succeeded"
        assert max(took) < 2.0, f"{host.name}: slowest cancel took {max(took):.2f} s"
