"""The pgbouncer_build role's host probe (roles/pgbouncer_build/files/pgbouncer_build_probe.py): what root may
build in, and when an installed build counts as installed."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

PROBE = Path(__file__).resolve().parents[2] / "roles/pgbouncer_build/files/pgbouncer_build_probe.py"
IDENTITY = {"version": "1.25.2", "sha256": "a" * 64, "configure_args": ["--with-systemd"]}


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pgbouncer_build_probe", PROBE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


probe = _load()


def test_world_writable_var_tmp_is_refused() -> None:
    # The old default: any user can create /var/tmp/pgbouncer-build before root does.
    reasons = probe.unsafe_path_reasons("/var/tmp/pgbouncer-build")
    assert any("/var/tmp is writable by group or others" in r for r in reasons), reasons


def test_root_owned_system_path_is_accepted() -> None:
    if os.geteuid() != 0 or os.lstat("/var/lib").st_mode & 0o022:
        pytest.skip("needs a root-owned /var/lib (the controller runs as root)")
    assert probe.unsafe_path_reasons("/var/lib/pgbouncer-build-does-not-exist") == []


def test_symlink_and_foreign_owner_are_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o750)
    link = tmp_path / "link"
    link.symlink_to(real)
    reasons = probe.unsafe_path_reasons(str(link))
    assert f"{link} is a symbolic link" in reasons
    os.chmod(real, 0o777)
    assert any("writable by group or others (mode 0777)" in r for r in probe.unsafe_path_reasons(str(real)))


def test_relative_path_is_refused() -> None:
    assert probe.unsafe_path_reasons("var/lib/x") == ["var/lib/x is not an absolute path"]


def test_file_in_place_of_directory_is_refused(tmp_path: Path) -> None:
    planted = tmp_path / "build"
    planted.write_text("")
    assert f"{planted} is not a directory" in probe.unsafe_path_reasons(str(planted / "work"))


@pytest.fixture
def root_only(tmp_path: Path) -> Iterator[Path]:
    """A fresh directory whose every ancestor is root's alone (tmp_path is under the world-writable /tmp)."""
    base = next(
        (d for d in (Path.home(), Path("/var/lib"), Path("/run")) if not probe.unsafe_path_reasons(str(d))),
        None,
    )
    if os.geteuid() != 0 or base is None:
        pytest.skip("needs root and a directory only root can change")
    path = Path(tempfile.mkdtemp(prefix="autopgpool-probe-", dir=base))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def _binary(prefix: Path, ran: Path, version: str = "1.25.2") -> Path:
    """A stand-in pgbouncer that answers --version and leaves `ran` behind when it is executed."""
    (prefix / "bin").mkdir(exist_ok=True, mode=0o755)
    binary = prefix / "bin" / "pgbouncer"
    binary.write_text(f"#!/bin/sh\ntouch {ran}\necho 'PgBouncer {version}'\necho 'systemd: yes'\n")
    binary.chmod(0o755)
    (prefix / probe.MARKER).write_text(json.dumps(IDENTITY))
    return binary


def test_installed_needs_marker_identity_and_version(root_only: Path) -> None:
    tmp_path = root_only
    (tmp_path / "bin").mkdir()
    binary = tmp_path / "bin" / "pgbouncer"
    binary.write_text("#!/bin/sh\necho 'PgBouncer 1.25.2'\necho 'systemd: yes'\n")
    binary.chmod(0o755)
    params = {"prefix": str(tmp_path), "identity": IDENTITY, "install_root": str(tmp_path), "packages": []}

    assert probe.probe_install(params)["installed"] is False  # no marker: an interrupted install

    marker = tmp_path / probe.MARKER
    marker.write_text(
        '{"version": "1.25.2", "sha256": "' + "a" * 64 + '", "configure_args": ["--with-systemd"],'
        ' "platform": "debian-bookworm-x86_64", "built_on": "pg1"}'
    )
    assert probe.probe_install(params)["installed"] is True

    binary.write_text("#!/bin/sh\necho 'PgBouncer 1.24.1'\necho 'systemd: yes'\n")
    assert (
        probe.probe_install(params)["installed"] is False
    )  # a binary that is not the build the marker names

    binary.write_text("")
    assert probe.probe_install(params)["installed"] is False  # truncated binary


def test_other_identity_is_not_installed() -> None:
    marker = dict(IDENTITY, configure_args=["--with-systemd", "--with-pam"])
    assert probe.is_installed(marker, IDENTITY) is False
    assert probe.is_installed(None, IDENTITY) is False
    assert probe.is_installed(dict(IDENTITY), IDENTITY) is True


def test_leftovers_are_reported(tmp_path: Path) -> None:
    partial = tmp_path / ".1.25.2-x.partial"
    partial.mkdir()
    params = {
        "prefix": str(tmp_path / "1.25.2-x"),
        "identity": IDENTITY,
        "install_root": str(tmp_path),
        "leftovers": [str(partial), str(tmp_path / ".incoming")],
    }
    assert probe.probe_install(params)["leftovers"] == [str(partial)]


def test_a_binary_only_root_can_change_is_asked_for_its_version(root_only: Path, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    _binary(root_only, ran)
    params = {"prefix": str(root_only), "identity": IDENTITY, "install_root": str(root_only), "packages": []}
    state = probe.probe_install(params)
    assert state["installed"] is True
    assert state["binary_problems"] == []
    assert ran.exists()


@pytest.mark.parametrize(
    "planted", ["world_writable_binary", "foreign_binary", "symlinked_binary", "open_bin_dir"]
)
def test_a_binary_someone_else_could_replace_is_never_run(
    root_only: Path, tmp_path: Path, planted: str
) -> None:
    ran = tmp_path / "ran"
    binary = _binary(root_only, ran)
    if planted == "world_writable_binary":
        binary.chmod(0o777)
    elif planted == "foreign_binary":
        os.chown(binary, 65534, 65534)
    elif planted == "symlinked_binary":
        real = root_only / "real-pgbouncer"
        binary.rename(real)
        binary.symlink_to(real)
    else:
        binary.parent.chmod(0o777)
    params = {"prefix": str(root_only), "identity": IDENTITY, "install_root": str(root_only), "packages": []}
    state = probe.probe_install(params)
    assert not ran.exists(), f"{planted}: the probe executed the binary"
    assert state["installed"] is False  # so the role installs the verified artifact over it
    assert state["version"] is None
    assert state["binary_problems"], planted


def test_nothing_runs_under_an_install_root_others_can_write(root_only: Path, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    prefix = root_only / "1.25.2-abc"
    prefix.mkdir(mode=0o755)
    _binary(prefix, ran)
    root_only.chmod(0o775)
    params = {"prefix": str(prefix), "identity": IDENTITY, "install_root": str(root_only), "packages": []}
    state = probe.probe_install(params)
    assert not ran.exists()
    assert any("writable by group or others (mode 0775)" in r for r in state["install_root_problems"])
    assert state["installed"] is False


DIGEST = "b" * 64
NAME = "pgbouncer-1.25.2-abc-debian-bookworm-x86_64.tar.gz"


def test_artifact_record_in_a_root_only_build_dir_is_trusted(root_only: Path) -> None:
    assert probe.artifact_record(str(root_only), NAME) == {"sha256": None, "problems": []}  # none yet: build
    record = root_only / f"{NAME}.sha256"
    record.write_text(DIGEST + "\n")
    record.chmod(0o644)
    assert probe.probe({"mode": "artifact_record", "path": str(root_only), "name": NAME}) == {
        "sha256": DIGEST,
        "problems": [],
    }


@pytest.mark.parametrize("planted", ["foreign", "world_writable", "symlink", "not_a_digest", "open_dir"])
def test_an_artifact_record_someone_else_could_write_is_not_trusted(root_only: Path, planted: str) -> None:
    record = root_only / f"{NAME}.sha256"
    record.write_text(DIGEST + "\n")
    record.chmod(0o644)
    if planted == "foreign":
        os.chown(record, 65534, 65534)
    elif planted == "world_writable":
        record.chmod(0o666)
    elif planted == "symlink":
        real = root_only / "elsewhere"
        record.rename(real)
        record.symlink_to(real)
    elif planted == "not_a_digest":
        record.write_text("b" * 63 + "  name\n")
    else:
        root_only.chmod(0o777)
    result = probe.artifact_record(str(root_only), NAME)
    assert result["sha256"] is None, planted
    assert result["problems"], planted


def test_artifact_record_refuses_a_path_as_name(root_only: Path) -> None:
    assert probe.artifact_record(str(root_only), "../x")["sha256"] is None


def test_a_private_controller_cache_record_is_trusted(root_only: Path) -> None:
    """The controller's cache, written by the user running the deployment only: its .sha256 is trusted, so a
    new builder does not rebuild an artifact the controller already holds."""
    artifact = root_only / NAME
    artifact.write_bytes(b"artifact")
    assert probe.cache_record(str(artifact)) == {"sha256": None, "problems": []}  # no record yet: build
    record = root_only / f"{NAME}.sha256"
    record.write_text(f"{DIGEST}  {NAME}\n")  # sha256sum's format, as the role writes it
    record.chmod(0o644)
    assert probe.probe({"mode": "cache_record", "path": str(artifact)}) == {"sha256": DIGEST, "problems": []}


@pytest.mark.parametrize("planted", ["foreign", "group_writable", "symlink", "not_a_digest", "shared_dir"])
def test_a_cache_record_others_could_write_is_not_trusted(root_only: Path, planted: str) -> None:
    artifact = root_only / NAME
    artifact.write_bytes(b"artifact")
    record = root_only / f"{NAME}.sha256"
    record.write_text(f"{DIGEST}  {NAME}\n")
    record.chmod(0o644)
    if planted == "foreign":
        os.chown(record, 65534, 65534)
    elif planted == "group_writable":
        record.chmod(0o664)
    elif planted == "symlink":
        real = root_only / "elsewhere"
        record.rename(real)
        record.symlink_to(real)
    elif planted == "not_a_digest":
        record.write_text("not a digest\n")
    else:
        root_only.chmod(0o775)  # a cache directory a group shares
    result = probe.cache_record(str(artifact))
    assert result["sha256"] is None, planted
    assert result["problems"], planted
