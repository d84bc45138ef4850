"""Drill 3: a password rotation and a new pool go out by reload while pgbench holds persistent connections:
no error, no instance restarted, the new pool reachable with the new password, the old password refused.

A temporary copy of examples/autopgpool.toml adds pool `drill_extra` (granted to both_user) and the demo
secrets rotate both_user's password; pgbench runs as app_user, whose connections must survive the reload.
At the end site.yml with the example config restores everything (again by reload).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import psycopg
import pytest

from e2e.stack import EXAMPLE_CONFIG, Host, demo_secrets, example_config

from .fleet import fleet_pids, playbook
from .load import Load

pytestmark = pytest.mark.drill

NEW_POOL = "drill_extra"
# The pgbouncer role's reasons for a restart (roles/pgbouncer/tasks/restart.yml), as its warning prints them.
RESTART_REASON = r"restart-only settings changed \([^)]*\)|pgbouncer@\.service changed|binary is now \S+"
NEW_PASSWORD = "drill-rotated-both-user-pw"
EXTRA_POOL = f"""
[pools.{NEW_POOL}]
pool_mode = "transaction"
# A budget for the whole pooler tier (docs/configuration.md): at least one connection per instance.
pool_size = 8

[pools.{NEW_POOL}.remote]
host = "pg1"
port = 5432
database = "app_db"
username = "app_owner"
password = "$APP_DB_PASSWORD"
"""


def _login(host: Host, user: str, password: str, dbname: str) -> str:
    """'ok' or the error a client sees (through HAProxy, like an application)."""
    try:
        with psycopg.connect(
            host=host.address, port=example_config().listen_port, user=user, password=password,
            dbname=dbname, connect_timeout=5,
        ) as conn:  # fmt: skip
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        return str(exc).strip().splitlines()[-1]
    return "ok"


def _changed_config(tmp_path: Path) -> Path:
    text = EXAMPLE_CONFIG.read_text()
    granted = 'username = "both_user"\npassword = "$BOTH_USER_PASSWORD"\ngrants = ["app", "reporting"]'
    assert granted in text, "examples/autopgpool.toml changed: update the drill's both_user grant"
    text = text.replace(granted, granted.replace('"reporting"]', f'"reporting", "{NEW_POOL}"]'))
    path = tmp_path / "autopgpool.toml"
    path.write_text(text + EXTRA_POOL)
    extra = tmp_path / "rotation.json"
    extra.write_text(
        json.dumps(
            {
                "pgbouncer_config_file": str(path),
                "pgbouncer_secrets": dict(demo_secrets(), BOTH_USER_PASSWORD=NEW_PASSWORD),
            }
        )
    )
    extra.chmod(0o600)
    return extra


def test_password_rotation_and_new_pool_by_reload_under_load(poolers: list[Host], tmp_path: Path) -> None:
    old_password = demo_secrets()["BOTH_USER_PASSWORD"]
    extra = _changed_config(tmp_path)
    before = fleet_pids(poolers)
    print()
    try:
        with Load(poolers, connect=False, chunk=20) as load:
            time.sleep(2)
            result, took = playbook("playbooks/site.yml", "-e", f"@{extra}")
            during = fleet_pids(poolers)
            seen = {
                host.name: {
                    "new pool, new password": _login(host, "both_user", NEW_PASSWORD, NEW_POOL),
                    "app, new password": _login(host, "both_user", NEW_PASSWORD, "app"),
                    "app, old password": _login(host, "both_user", old_password, "app"),
                }
                for host in poolers
            }
            time.sleep(2)
        print(f"DRILL reload: rotation + new pool by site.yml took {took:.0f} s; {load.summary()}")
        print(f"DRILL reload: logins after the change: {seen}")
        if load.failures:
            print(load.failure_lines())
        warnings = sorted(set(re.findall(RESTART_REASON, " ".join(result.stdout.split()))))
        if warnings:
            print("DRILL reload: site.yml flagged a restart: " + " | ".join(warnings))
        assert not warnings, "the change needed a restart (see above)"
        assert during == before, f"instances restarted: before {before}, after {during}"
        assert NEW_PASSWORD not in result.stdout + result.stderr
        for host, logins in seen.items():
            assert logins["new pool, new password"] == "ok", f"{host}: {logins}"
            assert logins["app, new password"] == "ok", f"{host}: {logins}"
            assert logins["app, old password"] != "ok", f"{host}: the old password still works"
        assert not load.failures, f"{len(load.failures)} failed:\n{load.failure_lines()}"
    finally:
        _, restore_took = playbook("playbooks/site.yml")
    after = fleet_pids(poolers)
    restored = {
        host.name: (
            _login(host, "both_user", old_password, "app"),
            _login(host, "both_user", old_password, NEW_POOL),
        )
        for host in poolers
    }
    print(
        f"DRILL reload: restored by site.yml in {restore_took:.0f} s; "
        f"old password on app / {NEW_POOL}: {restored}"
    )
    assert after == before, f"instances restarted by the restore: before {before}, after {after}"
    assert all(app == "ok" and extra_pool != "ok" for app, extra_pool in restored.values()), restored
