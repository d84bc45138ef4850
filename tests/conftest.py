"""Puts tests/ on sys.path (pytest does so for a conftest outside a package), so every suite can import
the shared helpers in tests/demo_example.py; and, inside make test's molecule verify, leaves out the lab
tests that the other platform's scenario runs (tests/platforms.py); and gives every lab test a time limit, so
a hang fails that test within minutes instead of running into CI's 90 minutes."""

from __future__ import annotations

import os
import signal
from collections.abc import Generator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

import platforms

TESTS = Path(__file__).resolve().parent

# Seconds a test body may run (fixtures not counted). Far above the slowest test seen in CI (see the
# --durations lines of molecule's verify), low enough that a hang costs one test, not the run.
# AUTOPGPOOL_LAB_TEST_TIMEOUT overrides both (0 turns the limit off, e.g. under a debugger).
LAB_TEST_TIMEOUTS = {"e2e/": 600, "drills/": 1200}


def _lab_module(item: pytest.Item) -> str | None:
    """tests/e2e/... or tests/drills/... as platforms.SHARED names it; None for any other test."""
    try:
        module = item.path.resolve().relative_to(TESTS).as_posix()
    except ValueError:
        return None
    return module if module.startswith(("e2e/", "drills/")) else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not platforms.split_enabled():
        return
    lab_items = [(item, module) for item in items if (module := _lab_module(item))]
    if not lab_items:
        return
    suite = platforms.lab_suite()  # only now: a run without lab tests needs no lab
    elsewhere = [
        item
        for item, module in lab_items
        if not platforms.runs_here(module, suite, getattr(item, "originalname", item.name))
    ]
    if elsewhere:
        config.hook.pytest_deselected(items=elsewhere)
        items[:] = [item for item in items if item not in elsewhere]


def _time_limit(module: str) -> int:
    override = os.environ.get("AUTOPGPOOL_LAB_TEST_TIMEOUT")
    if override is not None:
        return int(override)
    return next(limit for prefix, limit in LAB_TEST_TIMEOUTS.items() if module.startswith(prefix))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    module = _lab_module(item)
    limit = _time_limit(module) if module else 0
    if limit <= 0:
        return (yield)

    def expire(signum: int, frame: FrameType | None) -> None:
        # Raised in the test's own frame: a subprocess.run() it waits on kills its child on the way out.
        pytest.fail(f"{item.nodeid} ran longer than its {limit} s limit (tests/conftest.py)", pytrace=False)

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(limit)
    try:
        return (yield)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
