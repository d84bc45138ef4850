"""Runs that do not go as planned: a run killed between copying files and applying them, a TOML edited while a
rollout is under way, an instance left drained by a rolling restart that failed. Each time the fleet must end
up where the inventory says, and every test here fails on a toolkit that tracks "applied" only in handlers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import psycopg
import pytest

from autopgpool import render_files

from .stack import (
    EXAMPLE_CONFIG,
    Host,
    ansible_playbook,
    ansible_playbook_killed,
    ansible_playbook_watched,
    demo_secrets,
    example_config,
    haproxy_admin,
    haproxy_servers,
    instance_count,
    poolers,
)

pytestmark = pytest.mark.e2e

try:
    POOLERS = poolers()
except AssertionError:  # lab down: test_clients.test_the_lab_is_up fails loudly
    POOLERS = []


def _can_login(host: Host, user: str, password: str) -> bool:
    try:
        with psycopg.connect(
            host=host.address, port=example_config().listen_port, user=user, password=password, dbname="app",
            connect_timeout=5,
        ) as conn:  # fmt: skip
            conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return False
    return True


def _threads(host: Host) -> int:
    """Threads of the current HAProxy worker (haproxy.cfg's nbthread, changed by a reload alone), asked
    through the master's CLI (@1: the newest worker): an old worker finishing its sessions may still answer
    on the admin socket."""
    info = haproxy_admin(host, "@1 show info", "/run/haproxy/master.sock")
    return int(next(line.split(":")[1] for line in info.splitlines() if line.startswith("Nbthread:")))


def _restore() -> None:
    result = ansible_playbook("playbooks/site.yml")
    assert result.returncode == 0, result.stdout[-3000:]


def test_a_run_killed_before_applying_is_completed_by_the_next(tmp_path: Path) -> None:
    """A rotated password and a new HAProxy setting, copied to the first batch's hosts by a run that then dies
    before any reload: the next run must apply both (new password in, old one out, new thread count live)."""
    rotated = "rotated-after-a-killed-run"
    extra = tmp_path / "rotated.json"
    extra.write_text(
        json.dumps(
            {
                "pgbouncer_secrets": dict(demo_secrets(), APP_USER_PASSWORD=rotated),
                "haproxy_nbthread": 2,
            }
        )
    )
    extra.chmod(0o600)
    old = demo_secrets()["APP_USER_PASSWORD"]
    first = POOLERS[0]
    try:
        killed = ansible_playbook_killed(
            "playbooks/site.yml", "-e", f"@{extra}", after="Install the shared pgbouncer files"
        )
        assert rotated not in killed
        # The first batch has the new files but never reloaded: the old password still works there.
        assert _can_login(first, "app_user", old)
        killed = ansible_playbook_killed("playbooks/site.yml", "-e", f"@{extra}", after="Render haproxy.cfg")
        assert _threads(first) == 1

        result = ansible_playbook("playbooks/site.yml", "-e", f"@{extra}")
        assert result.returncode == 0, result.stdout[-3000:]
        assert rotated not in result.stdout + result.stderr
        for host in POOLERS:
            assert _can_login(host, "app_user", rotated), f"{host.name}: the rotated password is refused"
            assert not _can_login(host, "app_user", old), f"{host.name}: the old password still works"
            # A reload is asynchronous (systemctl returns once the master has the signal): give it seconds.
            deadline = time.monotonic() + 15
            while _threads(host) != 2 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert _threads(host) == 2, f"{host.name}: old HAProxy configuration\n{result.stdout[-6000:]}"
    finally:
        _restore()
    for host in POOLERS:
        assert _can_login(host, "app_user", old)


def test_a_toml_edited_during_the_rollout_reaches_no_batch(tmp_path: Path) -> None:
    """One host per batch; as the second batch starts, the operator saves an edited TOML. Both hosts must get
    the configuration the run started with."""
    config = tmp_path / "autopgpool.toml"
    original = EXAMPLE_CONFIG.read_text()
    config.write_text(original)
    assert "pool_size = 20" in original
    batches = 0

    def edit_at_the_second_batch(line: str) -> bool:
        nonlocal batches
        if line.startswith("PLAY [Roll out the poolers in batches]"):
            batches += 1
            if batches == 2:
                config.write_text(original.replace("pool_size = 20", "pool_size = 19", 1))
        return False

    try:
        returncode, output = ansible_playbook_watched(
            "playbooks/site.yml", "-e", f"pgbouncer_config_file={config}", "-e", "pgbouncer_rollout_batch=1",
            on_line=edit_at_the_second_batch,
        )  # fmt: skip
        assert batches >= 2, output[-3000:]
        assert returncode == 0, output[-3000:]
        # pgbouncer.ini carries per-instance numbers (the connection budget divides 20 and 19 among the
        # fleet's instances): compare with what the core makes of each file for this fleet.
        fleet = {host.name: instance_count(host) for host in POOLERS}
        started, edited = (
            f"app = {_app_line(text, fleet)}"
            for text in (original, original.replace("pool_size = 20", "pool_size = 19", 1))
        )
        assert started != edited, "the fleet is too large for this test to tell 20 from 19"
        for host in POOLERS:
            ini = host.run("cat /etc/pgbouncer/pgbouncer.ini")
            assert started in ini, f"{host.name} got the edit made during the rollout"
            assert edited not in ini
    finally:
        _restore()


def _app_line(toml_text: str, fleet: dict[str, int]) -> str:
    ini = render_files(toml_text, demo_secrets(), instances=fleet)["pgbouncer.ini"]
    return next(line for line in ini.splitlines() if line.startswith("app = ")).removeprefix("app = ")


def test_an_instance_left_drained_is_put_back_by_site() -> None:
    host = POOLERS[0]
    haproxy_admin(host, "set server pgbouncer_instances/pgbouncer1 state drain")
    assert haproxy_servers(host)["pgbouncer1"]["status"] == "DRAIN"
    result = ansible_playbook("playbooks/site.yml", "--limit", host.name)
    assert result.returncode == 0, result.stdout[-3000:]
    assert {s["status"] for s in haproxy_servers(host).values()} == {"UP"}, haproxy_servers(host)


def test_a_failed_restart_does_not_leave_the_instance_drained() -> None:
    """The rolling restart fails on an instance that cannot start (its file unreadable): the run stops, and
    the instance is not left drained; once fixed, site.yml brings it back UP."""
    host = POOLERS[0]
    host.run("chmod 0600 /etc/pgbouncer/instance-2.ini")
    try:
        result = ansible_playbook("playbooks/rolling_restart.yml", "--limit", host.name)
        assert result.returncode != 0, result.stdout[-3000:]
        status = haproxy_servers(host)["pgbouncer2"]["status"]
        assert status not in ("DRAIN", "MAINT"), f"instance 2 left {status} after a failed restart"
    finally:
        host.run("chmod 0640 /etc/pgbouncer/instance-2.ini")
        fixed = ansible_playbook("playbooks/site.yml", "--limit", host.name)
    assert fixed.returncode == 0, fixed.stdout[-3000:]
    deadline = time.monotonic() + 10
    while {s["status"] for s in haproxy_servers(host).values()} != {"UP"}:
        assert time.monotonic() < deadline, haproxy_servers(host)
        time.sleep(0.5)
