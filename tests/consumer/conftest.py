"""The consumer test (marker ``consumer``): the built collection and wheel, installed as README.md says into a
fresh virtualenv outside the repository, deploy the lab from an operator project of their own. ``make
consumer`` boots the lab and gives pg1 its backends first; ``make unit`` never selects it.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "consumer: installs the built artifacts outside the repository and deploys the lab (make consumer)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Select the consumer test only when its marker is asked for (the default is 'not e2e and not lab')."""
    if "consumer" in (config.getoption("markexpr") or ""):
        return
    kept = [item for item in items if item.get_closest_marker("consumer") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept
