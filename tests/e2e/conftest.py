"""End-to-end tests against the deployed lab (marker ``e2e``): boot with `make lab-up`, deploy with
`make demo`, then `pytest -m e2e tests/e2e`.

Fixtures read the lab the way an operator finds it (see ``stack.py``): ``.lab/inventory.yml`` with the lab's
ssh arguments, and ``examples/autopgpool.toml`` with the demo secrets of ``examples/demo.env``.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from autopgpool.model import Config

try:
    from .stack import Host, demo_secrets, example_config, poolers, postgres_host
except ImportError:  # tests/e2e is not a package (no __init__.py): pytest put this directory on sys.path
    from stack import Host, demo_secrets, example_config, poolers, postgres_host  # type: ignore[no-redef]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "e2e: needs the lab booted and deployed (make lab-up demo); run with `pytest -m e2e tests/e2e`",
    )


@pytest.fixture(scope="session")
def lab_poolers() -> list[Host]:
    """The pooler hosts of the lab inventory; fails (not skips) when the lab is not up."""
    try:
        hosts = poolers()
    except AssertionError as exc:
        pytest.fail(str(exc))
    if not hosts:
        pytest.fail("the lab inventory has no host in group pgbouncer")
    return hosts


@pytest.fixture(scope="session")
def lab_postgres() -> Host:
    try:
        return postgres_host()
    except AssertionError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def demo_env() -> Mapping[str, str]:
    """examples/demo.env as a mapping (the values the lab was deployed with)."""
    return demo_secrets()


@pytest.fixture(scope="session")
def example() -> Config:
    """examples/autopgpool.toml, parsed and validated with the demo secrets."""
    return example_config()
