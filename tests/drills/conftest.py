"""Operations drills (marker ``drill``): each runs one operation of docs/operations.md on the deployed lab
while pgbench loads both pooler hosts, and prints its figures. Run them with ``make drills`` (mk/drills.mk)
or ``pytest -m drill -s tests/drills``; they need the lab booted and deployed with the example config, and
they leave it that way.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from e2e.stack import Host

from .fleet import assert_fleet_healthy, lab_poolers, lab_postgres


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "drill: operations drill on the deployed lab under load (pytest -m drill -s tests/drills)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Drills restart, upgrade and kill things on the shared lab: run them only when asked for by marker.

    The project's default ``-m 'not e2e and not lab'`` would otherwise select them in ``make unit``.
    """
    if "drill" in (config.getoption("markexpr") or ""):
        return
    kept = [item for item in items if item.get_closest_marker("drill") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept


@pytest.fixture(scope="session")
def poolers() -> list[Host]:
    hosts = lab_poolers()
    if len(hosts) < 2:
        pytest.fail(f"the drills need two pooler hosts, the lab inventory has {len(hosts)}")
    return hosts


@pytest.fixture(scope="session")
def postgres() -> Host:
    return lab_postgres()


@pytest.fixture(autouse=True)
def healthy_fleet(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every drill starts from, and must leave, a fleet with every instance active and UP in HAProxy."""
    if request.node.get_closest_marker("drill") is None:
        yield
        return
    hosts = lab_poolers()
    assert_fleet_healthy(hosts, timeout=30)
    yield
    assert_fleet_healthy(hosts, timeout=30)
