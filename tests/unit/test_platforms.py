"""make test's split of the lab tests between Debian 12 and 13 (tests/platforms.py) leaves none out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import platforms

TESTS = Path(platforms.__file__).resolve().parent
LAB_MODULES = sorted(
    p.relative_to(TESTS).as_posix() for d in ("e2e", "drills") for p in (TESTS / d).glob("test_*.py")
)


def test_every_shared_entry_names_a_lab_test_module_or_function_and_a_platform() -> None:
    for key in platforms.SHARED:
        module, _, function = key.partition("::")
        assert module in LAB_MODULES, key
        if function:
            assert f"def {function}(" in (TESTS / module).read_text(), key
    assert set(platforms.SHARED.values()) <= set(platforms.PLATFORMS)


def test_a_function_entry_overrides_its_module() -> None:
    module = "e2e/test_monitoring.py"
    function = "test_a_saturated_pool_fires_the_waiting_alert_and_it_resolves"
    assert module not in platforms.SHARED
    assert [s for s in platforms.PLATFORMS if platforms.runs_here(module, s, function)] == ["trixie"]
    assert [
        s for s in platforms.PLATFORMS if platforms.runs_here(module, s, "test_exporter_credentials_and_unit")
    ] == list(platforms.PLATFORMS)


@pytest.mark.parametrize("module", LAB_MODULES)
def test_every_lab_test_module_runs_on_at_least_one_platform(module: str) -> None:
    where = [suite for suite in platforms.PLATFORMS if platforms.runs_here(module, suite)]
    assert where == ([platforms.SHARED[module]] if module in platforms.SHARED else list(platforms.PLATFORMS))


def test_what_differs_between_releases_runs_on_both() -> None:
    for module in ("e2e/test_packages.py", "e2e/test_build.py", "e2e/test_tls.py", "e2e/test_frontdoor.py"):
        assert module not in platforms.SHARED, module


def test_each_platform_gets_some_drills() -> None:
    drills = {suite for module, suite in platforms.SHARED.items() if module.startswith("drills/")}
    assert drills == set(platforms.PLATFORMS)


def test_the_lab_suite_comes_from_the_last_up_and_a_missing_one_is_an_error(tmp_path: Path) -> None:
    state = tmp_path / "lab.json"
    state.write_text(json.dumps({"suite": "trixie", "poolers": 2}))
    assert platforms.lab_suite(state) == "trixie"
    for text in ("{}", "[]", "not json", json.dumps({"suite": "sid"})):
        state.write_text(text)
        with pytest.raises(RuntimeError, match="no lab suite recorded"):
            platforms.lab_suite(state)
    with pytest.raises(RuntimeError):
        platforms.lab_suite(tmp_path / "missing.json")


def test_the_trixie_scenario_runs_the_default_scenarios_playbooks_on_trixie() -> None:
    """molecule treats create, verify and destroy as optional: a broken path would pass silently."""
    scenario = TESTS.parent / "molecule" / "trixie"
    spec = yaml.safe_load((scenario / "molecule.yml").read_text())
    playbooks = spec["ansible"]["playbooks"]
    assert set(playbooks) == {"create", "converge", "verify", "destroy"}
    for step, path in playbooks.items():
        assert (scenario / path).resolve() == (
            TESTS.parent / "molecule" / "default" / f"{step}.yml"
        ).resolve()
        assert (scenario / path).is_file(), path
    assert spec["ansible"]["env"] == {"AUTOPGPOOL_LAB_SUITE": "trixie"}
    assert "verify" in spec["scenario"]["test_sequence"]
    default = yaml.safe_load((TESTS.parent / "molecule" / "default" / "molecule.yml").read_text())
    assert default["ansible"]["env"] == {"AUTOPGPOOL_LAB_SUITE": "bookworm"}
    assert default["scenario"]["test_sequence"] == spec["scenario"]["test_sequence"]
