"""Puts tests/ on sys.path (pytest does so for a conftest outside a package), so every suite can import
the shared helpers in tests/demo_example.py; and, inside make test's molecule verify, leaves out the lab
tests that the other platform's scenario runs (tests/platforms.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

import platforms

TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not platforms.split_enabled():
        return
    suite = platforms.lab_suite()
    elsewhere = [
        item for item in items if not platforms.runs_here(item.path.relative_to(TESTS).as_posix(), suite)
    ]
    if elsewhere:
        config.hook.pytest_deselected(items=elsewhere)
        items[:] = [item for item in items if item not in elsewhere]
