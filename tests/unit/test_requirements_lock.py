"""The controller's environment is pinned with hashes (requirements/*.txt) and the locks match pyproject.toml:
every declared dependency is locked at a version its range admits, every locked package has a sha256."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _locked(name: str) -> dict[str, tuple[str, list[str]]]:
    """package -> (version, hashes) of one lock file."""
    text = (REPO / "requirements" / name).read_text()
    found = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        match = re.match(r"([A-Za-z0-9_.-]+)==([^\s\\;]+)", block)
        if match:
            found[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = (
                match.group(2),
                re.findall(r"--hash=sha256:([0-9a-f]{64})", block),
            )
    return found


def _applicable(spec: str) -> Requirement | None:
    req = Requirement(spec)
    if req.marker is not None and not req.marker.evaluate({"python_version": "3.11"}):
        return None
    return req


@pytest.mark.parametrize(
    ("lock", "specs"),
    [
        ("controller.txt", PYPROJECT["dependencies"]),
        ("dev.txt", PYPROJECT["dependencies"] + PYPROJECT["optional-dependencies"]["dev"]),
    ],
)
def test_every_declared_dependency_is_locked_in_range(lock: str, specs: list[str]) -> None:
    locked = _locked(lock)
    for spec in specs:
        req = _applicable(spec)
        if req is None:
            continue
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in locked, f"{name} ({spec}) is not in requirements/{lock}: run `make lock`"
        version = locked[name][0]
        assert req.specifier.contains(version, prereleases=True), (
            f"{lock}: {name}=={version} is outside {spec}"
        )


@pytest.mark.parametrize("lock", ["build.txt", "controller.txt", "dev.txt"])
def test_every_locked_package_has_a_hash(lock: str) -> None:
    locked = _locked(lock)
    assert locked, f"requirements/{lock} locks nothing"
    for name, (version, hashes) in locked.items():
        assert hashes, f"requirements/{lock}: {name}=={version} has no --hash"
