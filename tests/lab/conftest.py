"""Lab tests: unit tests of labctl's logic, plus a smoke test that boots real machines (marker `lab`)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

LAB_DIR = Path(__file__).resolve().parents[2] / "lab"
if str(LAB_DIR) not in sys.path:
    sys.path.insert(0, str(LAB_DIR))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "lab: boots real systemd-nspawn machines (root); run with `pytest -m lab tests/lab`"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Booting (and finally tearing down) the shared lab must be asked for explicitly.
    if "lab" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="boots the lab; run with `pytest -m lab tests/lab` as root")
    for item in items:
        if "lab" in item.keywords:
            item.add_marker(skip)
