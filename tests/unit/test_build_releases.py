"""The pgbouncer_build role's one table of known releases (roles/pgbouncer_build/vars/main/releases.yml):
the pin, digests and known CVEs that the role, the integration build, the lab inventory and the docs use."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from autopgpool.pgbouncer_settings import VERSION

REPO = Path(__file__).resolve().parents[2]
TABLE = yaml.safe_load((REPO / "roles/pgbouncer_build/vars/main/releases.yml").read_text())
PIN = TABLE["pgbouncer_build_pinned_version"]
RELEASES = TABLE["pgbouncer_build_releases"]
DRILL_RELEASES = ("1.24.1", PIN)


def test_pin_is_a_known_release_with_a_digest() -> None:
    assert PIN in RELEASES
    assert re.fullmatch(r"[0-9a-f]{64}", RELEASES[PIN]["sha256"])


def test_entries_are_well_formed() -> None:
    for version, entry in RELEASES.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version)
        assert entry["sha256"] is None or re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]), version
        for cve, fixed in entry["known_cves"].items():
            assert re.fullmatch(r"CVE-\d{4}-\d{4,}", cve), (version, cve)
            assert fixed in RELEASES, f"{version}: {cve} fixed in {fixed}, which the table does not list"


def test_pinned_release_is_known_vulnerable_until_the_pin_moves() -> None:
    # 1.25.2: three CVEs fixed in 1.26.0 (2026-09-23) and three in 1.26.1 (2026-10-14).
    assert sorted(RELEASES["1.25.2"]["known_cves"].values()) == ["1.26.0"] * 3 + ["1.26.1"] * 3
    assert set(RELEASES["1.25.2"]["known_cves"]) <= set(RELEASES["1.24.1"]["known_cves"])


def test_the_fix_release_has_debians_digest_and_provenance() -> None:
    """1.26.1 fixes every CVE of the pin; its digest comes from Debian's signed source index (unstable,
    1.26.1-1), recorded with its size and source because no machine of ours could fetch the tarball."""
    fixed = RELEASES["1.26.1"]
    assert fixed["sha256"] == "00886a2994b4844cd37110970df777772cfc42a74c400522c82fba509a3f42d9"
    assert fixed["size"] == 898_647
    assert "Debian" in fixed["source"]
    assert "1.26.1-1" in fixed["source"]
    assert fixed["known_cves"] == {}
    assert set(RELEASES[PIN]["known_cves"].values()) <= {"1.26.0", "1.26.1"}


def test_the_pin_stays_behind_the_fix_knowingly() -> None:
    """The pin stays on 1.25.2 while a release without known CVEs exists: releases.yml says why, and the
    README leads operators to the fixed release (tests/unit/test_first_deploy.py runs it through the role)."""
    table = (REPO / "roles/pgbouncer_build/vars/main/releases.yml").read_text()
    pin_comment = table.split("pgbouncer_build_pinned_version:", 1)[0].rsplit("\n\n", 1)[1]
    assert "not reachable" in pin_comment
    assert "1.26.1" in pin_comment
    readme = (REPO / "README.md").read_text()
    assert 'pgbouncer_build_version: "1.26.1"' in readme
    assert RELEASES["1.26.1"]["sha256"] in readme


def test_integration_build_reads_the_table() -> None:
    source = (REPO / "tests/integration/pgbouncer_build.py").read_text()
    assert PIN not in source
    assert RELEASES[PIN]["sha256"] not in source


def test_pin_is_written_nowhere_else_in_the_role() -> None:
    role = REPO / "roles/pgbouncer_build"
    for path in [*role.glob("defaults/*.yml"), *role.glob("tasks/*.yml"), role / "vars/main/derived.yml"]:
        assert PIN not in path.read_text(), path


def test_lab_accepts_exactly_the_cves_of_the_releases_it_runs() -> None:
    lab = yaml.safe_load((REPO / "inventories/lab/group_vars/pgbouncer.yml").read_text())
    expected = {cve for version in DRILL_RELEASES for cve in RELEASES[version]["known_cves"]}
    assert set(lab["pgbouncer_build_accept_known_vulnerabilities"]) == expected


def test_operations_doc_names_every_cve_of_the_pin() -> None:
    doc = (REPO / "docs/operations.md").read_text()
    for cve in RELEASES[PIN]["known_cves"]:
        assert cve in doc, cve
    assert "pgbouncer_build_accept_known_vulnerabilities" in doc


def test_the_core_describes_the_pinned_release() -> None:
    """The core's knowledge of pgbouncer's settings (names, reload/restart, number ranges) is of one release;
    moving the pin without reviewing it would let the core's messages name a release nobody runs."""
    assert VERSION == PIN, "review src/autopgpool/pgbouncer_settings.py for the new release, then VERSION"
