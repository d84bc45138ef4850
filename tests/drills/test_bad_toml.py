"""Drill 6: a bad TOML pushed while clients work changes nothing on any host and fails no transaction.

The check itself is tests/e2e/test_operations.py's (files' digests and PIDs before and after, every problem
named, no secret printed); the drill runs it while pgbench loads both pooler hosts.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from e2e.stack import Host
from e2e.test_operations import test_bad_toml_stops_before_any_host_task_and_changes_nothing as bad_toml_check

from .load import Load

pytestmark = pytest.mark.drill


def test_bad_toml_under_load_changes_nothing(poolers: list[Host], tmp_path: Path) -> None:
    with Load(poolers, connect=True) as load:
        time.sleep(1)
        started = time.monotonic()
        bad_toml_check(tmp_path)
        took = time.monotonic() - started
        time.sleep(1)
    print(
        f"\nDRILL bad-toml: refused in {took:.0f} s, files and PIDs unchanged on every host; {load.summary()}"
    )
    if load.failures:
        print(load.failure_lines())
    assert not load.failures, f"{len(load.failures)} failed:\n{load.failure_lines()}"
