"""The repository as the collection autopgpool.pool: metadata in step with pyproject.toml, one filter source,
documented filters, role READMEs in step with their argument specs, specs that can fail, and a built tarball
that holds the product and nothing of the lab or the tests.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_galaxy_version_is_the_package_version() -> None:
    galaxy = yaml.safe_load((ROOT / "galaxy.yml").read_text())
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    assert (galaxy["namespace"], galaxy["name"]) == ("autopgpool", "pool")
    assert galaxy["version"] == project["version"]


def test_requires_ansible_is_pyprojects_ansible_core_range() -> None:
    runtime = yaml.safe_load((ROOT / "meta" / "runtime.yml").read_text())
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    core = next(d for d in project["dependencies"] if d.startswith("ansible-core"))
    bounds = sorted(re.findall(r"([<>]=?)([0-9.]+)", core))
    runtime_bounds = sorted(re.findall(r"([<>]=?)([0-9.]+)", runtime["requires_ansible"]))
    normalise = [(op, v.removesuffix(".0") if v.count(".") == 2 else v) for op, v in runtime_bounds]
    assert normalise == bounds, (runtime["requires_ansible"], core)


def test_the_lowest_declared_ansible_core_is_the_one_ci_installs() -> None:
    """CI converges with the locked version; a floor below it would declare support nothing tests."""
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    core = next(d for d in project["dependencies"] if d.startswith("ansible-core"))
    floor = re.search(r">=([0-9.]+)", core)
    assert floor is not None, core
    for lock in ("controller.txt", "dev.txt"):
        pinned = re.search(r"^ansible-core==([0-9.]+)", (ROOT / "requirements" / lock).read_text(), re.M)
        assert pinned is not None, lock
        assert pinned.group(1) == floor.group(1), (lock, pinned.group(1), core)


def test_plugins_filter_is_filter_plugins() -> None:
    link = ROOT / "plugins" / "filter"
    assert link.is_symlink()
    assert link.resolve() == (ROOT / "filter_plugins").resolve()


def _filter_module() -> object:
    spec = importlib.util.spec_from_file_location("_apg_filters", ROOT / "filter_plugins" / "autopgpool.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_filter_has_a_name_for_the_missing_package_error_and_a_doc_file() -> None:
    module = _filter_module()
    names = set(module.FilterModule().filters())  # type: ignore[attr-defined]
    assert names == set(module.FILTER_NAMES)  # type: ignore[attr-defined]
    for name in names:
        doc = yaml.safe_load((ROOT / "filter_plugins" / f"{name}.yml").read_text())
        assert doc["DOCUMENTATION"]["name"] == name
        assert doc["EXAMPLES"].strip()
        assert f"autopgpool.pool.{name}" in doc["EXAMPLES"]
        assert "_value" in doc["RETURN"]


def test_missing_package_error_names_the_package_and_the_command() -> None:
    module = _filter_module()
    failing = module._missing_package("autopgpool_render")  # type: ignore[attr-defined]
    with pytest.raises(Exception, match=r"'autopgpool' is not importable.*pip install autopgpool-"):
        failing("x")


def test_role_readmes_are_generated_from_the_specs() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "role_docs.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_no_spec_is_required_and_defaulted() -> None:
    """A required variable with a default can never be missing: argument validation would never fail."""
    wrong = []
    for spec_file in ROOT.glob("roles/*/meta/argument_specs.yml"):
        role = spec_file.parent.parent
        defaults_file = role / "defaults" / "main.yml"
        defaults = yaml.safe_load(defaults_file.read_text()) if defaults_file.exists() else {}
        for entry, spec in yaml.safe_load(spec_file.read_text())["argument_specs"].items():
            for name, option in (spec.get("options") or {}).items():
                if option.get("required") and ("default" in option or name in (defaults or {})):
                    wrong.append(f"{role.name}:{entry}:{name}")
    assert wrong == []


def test_the_built_collection_holds_the_product_only(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    subprocess.run(
        [str(BIN / "ansible-galaxy"), "collection", "build", "--output-path", str(tmp_path)],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    (tarball,) = tmp_path.glob("autopgpool-pool-*.tar.gz")
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
        manifest = json.load(tar.extractfile("MANIFEST.json"))  # type: ignore[arg-type]
        link = tar.getmember("plugins/filter")
    tops = {name.split("/")[0] for name in names}
    assert {"roles", "playbooks", "plugins", "filter_plugins", "meta", "README.md"} <= tops
    assert not tops & {
        "lab",
        "tests",
        "bench",
        "molecule",
        "src",
        ".venv",
        ".lab",
        ".cache",
        "ansible.cfg",
    }, tops
    assert "inventories/lab" not in {"/".join(n.split("/")[:2]) for n in names}
    assert link.issym()
    assert link.linkname == "../filter_plugins"
    roles = {n.split("/")[1] for n in names if n.startswith("roles/") and n.count("/") >= 2}
    assert {"pgbouncer", "haproxy", "pgbouncer_build", "pgbouncer_exporter"} <= roles
    assert manifest["collection_info"]["version"] == _pyproject()["project"]["version"]  # type: ignore[index]
