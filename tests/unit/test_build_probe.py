"""The pgbouncer_build role's host probe (roles/pgbouncer_build/files/pgbouncer_build_probe.py): what root may
build in, and when an installed build counts as installed."""

from __future__ import annotations

import importlib.util
import os
import sys
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


def test_installed_needs_marker_identity_and_version(tmp_path: Path) -> None:
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
