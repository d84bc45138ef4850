"""Puts tests/ on sys.path (pytest does so for a conftest outside a package), so every suite can import
the shared helpers in tests/demo_example.py; and, inside make test's molecule verify, leaves out the lab
tests that the other platform's scenario runs (tests/platforms.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

import platforms

TESTS = Path(__file__).resolve().parent


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
