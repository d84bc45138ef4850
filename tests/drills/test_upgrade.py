"""Drill 2: upgrade 1.24.1 -> 1.25.2 and roll back 1.25.2 -> 1.24.1 under load, without a failed transaction.

The fleet is put on 1.24.1 first (outside the load window: the first time this builds 1.24.1 beside 1.25.2),
then playbooks/upgrade.yml switches the `current` link and the rolling restart applies it while pgbench runs
with a new connection per transaction on both pooler hosts; then the same back to 1.24.1 (a link switch, no
rebuild); at the end the fleet is left on the pinned 1.25.2. Each step prints the version that every running
instance reports (`/proc/<MainPID>/exe --version`).
"""

from __future__ import annotations

import time

import pytest

from e2e.stack import Host
from integration.pgbouncer_build import release_table

from .fleet import fleet_versions, playbook
from .load import Load

pytestmark = pytest.mark.drill

OLD = "1.24.1"
NEW = release_table()["pgbouncer_build_pinned_version"]


COMPILE_TASK = "TASK [autopgpool.pool.pgbouncer_build : Compile as the build user]"


def _compiled(output: str) -> bool:
    """Whether this run compiled pgbouncer on any host (the build task reported a change)."""
    _, _, rest = output.partition(COMPILE_TASK)
    section = rest.split("\nTASK [", 1)[0]
    return "changed: [" in section


def _upgrade(version: str) -> tuple[float, bool]:
    result, took = playbook("playbooks/upgrade.yml", "-e", f"pgbouncer_build_version={version}", timeout=1200)
    return took, _compiled(result.stdout)


def _assert_on(poolers: list[Host], version: str, step: str) -> None:
    versions = fleet_versions(poolers)
    print(f"DRILL upgrade: {step}: running {versions}")
    wrong = {h: v for h, per in versions.items() for n, v in per.items() if v != version}
    assert not wrong, f"{step}: instances not on {version}: {versions}"


def _under_load(poolers: list[Host], version: str, step: str) -> None:
    with Load(poolers, connect=True) as load:
        time.sleep(2)
        took, compiled = _upgrade(version)
        time.sleep(2)
    print(f"DRILL upgrade: {step} took {took:.0f} s (compiled: {compiled}); {load.summary()}")
    if load.failures:
        print(load.failure_lines())
    _assert_on(poolers, version, step)
    assert not load.failures, f"{step}: {len(load.failures)} failed:\n{load.failure_lines()}"
    assert not compiled, f"{step}: both releases were installed already, yet pgbouncer was compiled again"


def test_upgrade_and_rollback_under_load_fail_nothing(poolers: list[Host]) -> None:
    print()
    try:
        took, compiled = _upgrade(OLD)
        _assert_on(poolers, OLD, f"start on {OLD} ({took:.0f} s, compiled: {compiled}, no load)")
        _under_load(poolers, NEW, f"upgrade {OLD} -> {NEW} under load")
        _under_load(poolers, OLD, f"rollback {NEW} -> {OLD} under load")
    finally:
        took, compiled = _upgrade(NEW)
    _assert_on(poolers, NEW, f"left on {NEW} ({took:.0f} s, compiled: {compiled}, no load)")
