"""Operating the deployed fleet: --check tells the truth, a bad TOML touches nothing, a password change is a
reload (same PIDs, same clients) -- all through playbooks/site.yml exactly as operators run it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import psycopg
import pytest

from .stack import (
    EXAMPLE_CONFIG,
    Host,
    ansible_playbook,
    demo_secrets,
    example_config,
    haproxy_admin,
    poolers,
    task_ran,
)

pytestmark = pytest.mark.e2e

try:
    POOLERS = poolers()
except AssertionError:  # lab down: test_clients.test_the_lab_is_up fails loudly
    POOLERS = []


def _recap(output: str) -> dict[str, dict[str, int]]:
    recap = {}
    for match in re.finditer(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", output, re.MULTILINE):
        recap[match.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(2))}
    return recap


def _state(host: Host) -> str:
    """What must not move unless we mean it: the files' digests and every instance's MainPID."""
    return host.run(
        "find /etc/pgbouncer -type f | sort | xargs sha256sum; sha256sum /etc/haproxy/haproxy.cfg; "
        "for u in $(systemctl list-units --plain --no-legend 'pgbouncer@*.service' | cut -d' ' -f1); "
        "do echo $u $(systemctl show -P MainPID $u); done; systemctl show -P MainPID haproxy.service"
    )


def _pids(host: Host) -> str:
    return host.run(
        "for u in $(systemctl list-units --plain --no-legend 'pgbouncer@*.service' | cut -d' ' -f1); "
        "do echo $u $(systemctl show -P MainPID $u); done"
    )


def _can_login(host: Host, user: str, password: str, dbname: str) -> bool:
    try:
        with psycopg.connect(
            host=host.address, port=example_config().listen_port, user=user, password=password, dbname=dbname,
            connect_timeout=5,
        ) as conn:  # fmt: skip
            conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return False
    return True


def test_check_diff_on_the_converged_fleet_reports_no_change() -> None:
    result = ansible_playbook("--check", "--diff", "playbooks/site.yml")
    assert result.returncode == 0, result.stdout[-3000:]
    recap = _recap(result.stdout)
    assert {h.name for h in POOLERS} <= set(recap)
    for host, counts in recap.items():
        assert counts["changed"] == 0, f"{host}: {counts}\n{result.stdout[-3000:]}"
        assert counts["failed"] == 0, f"{host}: {counts}"
    for secret in demo_secrets().values():
        assert secret not in result.stdout + result.stderr


def test_bad_toml_stops_before_any_host_task_and_changes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "autopgpool.toml"
    text = EXAMPLE_CONFIG.read_text().replace("port = 5432", 'port = "abc"', 1)
    bad.write_text(text.replace("pool_size = 20", "pool_szie = 20", 1))
    before = {host.name: _state(host) for host in POOLERS}

    result = ansible_playbook("playbooks/site.yml", "-e", f"pgbouncer_config_file={bad}")

    assert result.returncode != 0
    assert "pools.app.remote.port" in result.stdout
    assert "pools.app.pool_szie" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert "TASK [autopgpool.pool.pgbouncer_build" not in result.stdout
    for secret in demo_secrets().values():
        assert secret not in result.stdout + result.stderr
    assert {host.name: _state(host) for host in POOLERS} == before


def test_password_change_is_applied_by_reload(tmp_path: Path) -> None:
    changed = dict(demo_secrets(), APP_USER_PASSWORD="rotated-app-user-pw")
    extra = tmp_path / "rotated.json"
    extra.write_text(json.dumps({"pgbouncer_secrets": changed}))
    extra.chmod(0o600)
    before = {host.name: _pids(host) for host in POOLERS}
    old = demo_secrets()["APP_USER_PASSWORD"]
    try:
        # Kept on request (pgbouncer_keep_previous_files), for going back by hand.
        keep = "pgbouncer_keep_previous_files=true"
        result = ansible_playbook("playbooks/site.yml", "-e", f"@{extra}", "-e", keep)
        assert result.returncode == 0, result.stdout[-3000:]
        assert task_ran(result.stdout, "Reload pgbouncer instances"), (
            "the rotated password was not applied by a reload"
        )
        assert "rotated-app-user-pw" not in result.stdout + result.stderr
        for host in POOLERS:
            assert _pids(host) == before[host.name], f"{host.name}: an instance was restarted"
            assert _can_login(host, "app_user", "rotated-app-user-pw", "app")
            assert not _can_login(host, "app_user", old, "app")
            # The replaced file is kept for going back by hand, as protected as the live one.
            kept = host.run("stat -c '%U %G %a' /etc/pgbouncer/previous/userlist.txt /etc/pgbouncer/previous")
            assert kept.split() == ["root", "pgbouncer", "640", "root", "pgbouncer", "750"], kept
            sums = host.run("sha256sum /etc/pgbouncer/userlist.txt /etc/pgbouncer/previous/userlist.txt")
            assert len({line.split()[0] for line in sums.splitlines()}) == 2, "previous/ holds the new file"
    finally:
        restore = ansible_playbook("playbooks/site.yml")
    assert restore.returncode == 0, restore.stdout[-3000:]
    for host in POOLERS:
        assert _pids(host) == before[host.name]
        assert _can_login(host, "app_user", old, "app")
        # By default the replaced files (the rotated-out password's verifier) are gone once the instances run
        # the new ones.
        assert host.run("ls -A /etc/pgbouncer/previous").split() == [], f"{host.name}: previous/ kept files"


def _haproxy_servers(host: Host) -> list[str]:
    out = haproxy_admin(host, "show stat")
    return sorted(
        line.split(",")[1] for line in out.splitlines() if line.startswith("pgbouncer_instances,pgbouncer")
    )


def test_shrinking_and_growing_the_instance_count() -> None:
    host = POOLERS[0]
    first_pid = host.run("systemctl show -P MainPID pgbouncer@1.service").strip()
    user = next(u for u in example_config().users if u.username == "app_user")
    try:
        shrink = ansible_playbook("playbooks/site.yml", "--limit", host.name, "-e", "pgbouncer_instances=1")
        assert shrink.returncode == 0, shrink.stdout[-3000:]
        # The surplus instance was drained in HAProxy (its sessions waited for) before it was stopped.
        assert "Drain the instances beyond the instance count and wait for their sessions" in shrink.stdout
        assert host.run("systemctl is-active pgbouncer@2.service || true").strip() == "inactive"
        assert host.run("systemctl is-enabled pgbouncer@2.service 2>/dev/null || true").strip() != "enabled"
        assert host.run("ls /etc/pgbouncer").split().count("instance-2.ini") == 0
        assert _haproxy_servers(host) == ["pgbouncer1"]
        assert _can_login(host, user.username, user.password, "app")
    finally:
        grow = ansible_playbook("playbooks/site.yml", "--limit", host.name)
    assert grow.returncode == 0, grow.stdout[-3000:]
    assert host.run("systemctl is-active pgbouncer@2.service").strip() == "active"
    assert _haproxy_servers(host) == ["pgbouncer1", "pgbouncer2"]
    assert host.run("systemctl show -P MainPID pgbouncer@1.service").strip() == first_pid
