"""The pgbouncer_build role on the lab, against the review's findings (issue 17): a local user cannot get
their source tree built and installed by root, an interrupted build or install is redone, pooler hosts never
compile (pg1 builds one artifact that both poolers install), and a vulnerable release needs an explicit
acknowledgement.

Everything goes to a scratch install root with `pgbouncer_build_activate: false` and a fresh controller
artifact directory, so the deployed fleet keeps running untouched and the build really happens.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from .stack import REPO, Host, ansible_playbook, poolers, postgres_host

pytestmark = pytest.mark.e2e

TABLE = yaml.safe_load((REPO / "roles/pgbouncer_build/vars/main/releases.yml").read_text())
VERSION = TABLE["pgbouncer_build_pinned_version"]
CVES = sorted(TABLE["pgbouncer_build_releases"][VERSION]["known_cves"])
BUILD_ID = f"{VERSION}-{hashlib.sha256(b'--with-systemd --with-cares --with-openssl').hexdigest()[:10]}"
SCRATCH = "/opt/pgbouncer-e2e-build"
PREFIX = f"{SCRATCH}/{BUILD_ID}"
OLD_BUILD_DIR = "/var/tmp/pgbouncer-build"  # the role's build directory before issue 17
NEW_BUILD_DIR = "/var/lib/pgbouncer-build"
HIJACKED = "/var/tmp/autopgpool-hijacked"  # written by the planted configure if it ever runs

# A source tree's configure that leaves a marker and makes `make pgbouncer` produce a fake binary that passes
# a `--version` check: what a local user would plant.
FAKE = f"printf '#!/bin/sh\\\\necho PgBouncer {VERSION}\\\\necho systemd: yes\\\\n' > pgbouncer"
PLANTED_CONFIGURE = f"""#!/bin/sh
echo "planted configure ran as $(id -un) on $(hostname)" >> {HIJACKED}
printf 'pgbouncer:\\n\\t%s; chmod 755 pgbouncer\\n' "{FAKE}" > Makefile
"""


# How ansible-playbook heads the role's tasks (the collection's role, named by FQCN in the playbooks).
ROLE_TASK = "TASK [autopgpool.pool.pgbouncer_build : "


def _plant(host: Host, directory: str, *, as_user: str) -> None:
    """A source tree with the planted configure in `directory`, made by `as_user` (its dirs open to all)."""
    src = f"{directory}/pgbouncer-{VERSION}"
    host.run(
        f"runuser -u {as_user} -- sh -c "
        f"'umask 000; mkdir -p {src} && cat > {src}/configure && chmod 777 {src}/configure'",
        stdin=PLANTED_CONFIGURE,
    )


def _run(artifacts: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    scratch = {
        "pgbouncer_build_install_root": SCRATCH,
        "pgbouncer_build_activate": False,
        "pgbouncer_build_artifact_dir": str(artifacts),
    }
    return ansible_playbook("tests/e2e/build_only.yml", "-e", json.dumps(scratch), *extra, timeout=900)


def _section(output: str, task: str) -> str:
    """All output lines of every occurrence of `TASK [autopgpool.pool.pgbouncer_build : <task>]`."""
    parts = output.split(f"{ROLE_TASK}{task}]")[1:]
    return "\n".join(part.split("\nTASK [", 1)[0] for part in parts)


def _recap(output: str) -> dict[str, dict[str, int]]:
    recap: dict[str, dict[str, int]] = {}
    for match in re.finditer(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", output, re.MULTILINE):
        counts = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(2))}
        prev = recap.get(match.group(1), {})
        recap[match.group(1)] = {k: prev.get(k, 0) + v for k, v in counts.items()}
    return recap


@pytest.fixture(scope="module")
def hosts() -> Iterator[tuple[Host, list[Host]]]:
    builder, pools = postgres_host(), poolers()
    every = [builder, *pools]
    cleanup = f"rm -rf {SCRATCH} {OLD_BUILD_DIR} {HIJACKED} {NEW_BUILD_DIR}/work-{BUILD_ID}"
    for host in every:
        host.run(cleanup)
    yield builder, pools
    for host in every:
        host.run(cleanup)


@pytest.fixture(scope="module")
def first_build(hosts: tuple[Host, list[Host]], tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """Plant trees where the old role built (as `nobody`, before the first build) and where the new one builds
    (as root: what an interrupted build leaves), leave a half-installed prefix on pool1, then build once."""
    builder, pools = hosts
    for host in [builder, *pools]:
        _plant(host, f"{OLD_BUILD_DIR}/{BUILD_ID}", as_user="nobody")
    # The build directory as the role leaves it (root-owned 0750), with a stale work tree in it.
    builder.run(f"install -d -o root -g root -m 0750 {NEW_BUILD_DIR}")
    _plant(builder, f"{NEW_BUILD_DIR}/work-{BUILD_ID}", as_user="root")
    pools[0].run(
        f"mkdir -p {SCRATCH}/.{BUILD_ID}.partial {PREFIX}/bin && "
        f"printf '#!/bin/sh\\necho PgBouncer {VERSION}\\n' > {PREFIX}/bin/pgbouncer && "
        f"chmod 755 {PREFIX}/bin/pgbouncer"
    )
    artifacts = tmp_path_factory.mktemp("artifacts")
    result = _run(artifacts)
    assert result.returncode == 0, result.stdout[-4000:]
    return result.stdout, artifacts


def test_planted_source_tree_is_never_built(
    hosts: tuple[Host, list[Host]], first_build: tuple[str, Path]
) -> None:
    builder, pools = hosts
    for host in [builder, *pools]:
        ran = host.run(f"cat {HIJACKED} 2>/dev/null || true").strip()
        assert not ran, f"{host.name}: {ran}"


def test_installed_binary_is_the_verified_build(
    hosts: tuple[Host, list[Host]], first_build: tuple[str, Path]
) -> None:
    _, pools = hosts
    for host in pools:
        magic = host.run(f"head -c 4 {PREFIX}/bin/pgbouncer | od -An -c").split()
        assert magic == ["177", "E", "L", "F"], (
            f"{host.name}: {PREFIX}/bin/pgbouncer is not an ELF binary: {magic}"
        )
        version = host.run(f"{PREFIX}/bin/pgbouncer --version").splitlines()
        assert version[0] == f"PgBouncer {VERSION}"
        assert "systemd: yes" in version
        marker = json.loads(host.run(f"cat {PREFIX}/autopgpool-build.json"))
        assert marker["built_on"] == "pg1", marker
        assert marker["sha256"] == TABLE["pgbouncer_build_releases"][VERSION]["sha256"]
        leftovers = host.run(f"ls -A {SCRATCH}").split()
        assert leftovers == [BUILD_ID], f"{host.name}: {leftovers}"


def test_only_the_builder_compiles_and_batches_reuse_its_artifact(
    hosts: tuple[Host, list[Host]], first_build: tuple[str, Path]
) -> None:
    output, artifacts = first_build
    builder, pools = hosts
    compiled = _section(output, "Compile as the build user")
    # Delegated results read "changed: [pool1 -> pg1(10.231.0.10)]": the first batch's host, run on pg1.
    assert re.findall(r"^changed: \[(\w+) -> (\w+)", compiled, re.M) == [("pool1", "pg1")], compiled
    deps = _section(output, "Install the build dependencies on the builder")
    assert all("-> pg1" in line for line in deps.splitlines() if line.startswith(("ok:", "changed:"))), deps
    for host in pools:
        assert host.run(f"test -e {NEW_BUILD_DIR} && echo yes || echo no").strip() == "no", host.name
    files = sorted(p.name for p in artifacts.iterdir())
    release = builder.run(". /etc/os-release && echo $VERSION_CODENAME").strip()  # the lab runs 12 and 13
    name = f"pgbouncer-{BUILD_ID}-debian-{release}-x86_64.tar.gz"
    assert files == [name, f"{name}.sha256"]
    recorded = (artifacts / f"{name}.sha256").read_text().split()[0]
    assert recorded == hashlib.sha256((artifacts / name).read_bytes()).hexdigest()


def test_build_dir_on_builder_is_root_only_and_cleaned(
    hosts: tuple[Host, list[Host]], first_build: tuple[str, Path]
) -> None:
    """Nothing of the build is left but the builder's root-owned record of the artifact's sha256: the digest
    an artifact on the controller must match to be installed (the controller's .sha256 is not trusted)."""
    builder, _ = hosts
    _, artifacts = first_build
    assert builder.run(f"stat -c '%U:%G %a' {NEW_BUILD_DIR}").strip() == "root:pgbouncer-build 750"
    (artifact,) = [p for p in artifacts.iterdir() if p.name.endswith(".tar.gz")]
    assert builder.run(f"ls -A {NEW_BUILD_DIR}").split() == [f"{artifact.name}.sha256"]
    record = f"{NEW_BUILD_DIR}/{artifact.name}.sha256"
    assert builder.run(f"stat -c '%U:%G %a' {record}").strip() == "root:root 644"
    assert builder.run(f"cat {record}").strip() == hashlib.sha256(artifact.read_bytes()).hexdigest()


def test_second_run_changes_nothing_and_builds_nothing(first_build: tuple[str, Path]) -> None:
    _, artifacts = first_build
    result = _run(artifacts)
    assert result.returncode == 0, result.stdout[-4000:]
    assert "changed:" not in _section(result.stdout, "Compile as the build user")
    for host, counts in _recap(result.stdout).items():
        assert counts["changed"] == 0, f"{host}: {counts}\n{result.stdout[-4000:]}"
    check = _run(artifacts, "--check", "--diff")
    assert check.returncode == 0, check.stdout[-4000:]
    for host, counts in _recap(check.stdout).items():
        assert counts["changed"] == 0, f"--check {host}: {counts}"


def test_symlinked_build_dir_is_refused(hosts: tuple[Host, list[Host]], tmp_path: Path) -> None:
    builder, pools = hosts
    for host in pools:  # so that the run needs an install, and (fresh artifact directory) a build
        host.run(f"rm -rf {SCRATCH}")
    builder.run(
        f"mv {NEW_BUILD_DIR} {NEW_BUILD_DIR}.aside && mkdir -p /tmp/evil && ln -s /tmp/evil {NEW_BUILD_DIR}"
    )
    try:
        result = _run(tmp_path / "artifacts")
        assert result.returncode != 0
        assert f"pgbouncer_build_dir ({NEW_BUILD_DIR}) on pg1 is not safe" in result.stdout
        assert f"{NEW_BUILD_DIR} is a symbolic link" in result.stdout
        assert f"{ROLE_TASK}Install the build dependencies on the builder]" not in result.stdout
        assert builder.run("ls -A /tmp/evil").split() == []
    finally:
        builder.run(f"rm -f {NEW_BUILD_DIR}; rmdir /tmp/evil; mv {NEW_BUILD_DIR}.aside {NEW_BUILD_DIR}")


def test_vulnerable_release_needs_every_cve_acknowledged(tmp_path: Path) -> None:
    result = _run(tmp_path, "-e", json.dumps({"pgbouncer_build_accept_known_vulnerabilities": CVES[1:]}))
    assert result.returncode != 0
    refusal = _section(result.stdout, "Refuse a vulnerable release unless each of its CVEs is acknowledged")
    assert f"pgbouncer {VERSION} is vulnerable to {CVES[0]} " in refusal, refusal
    assert not any(cve in refusal for cve in CVES[1:])
    assert f"{ROLE_TASK}Read the state of the installed build]" not in result.stdout

    accepted = _run(tmp_path, "--check")
    warning = _section(accepted.stdout, f"Report the known vulnerabilities of pgbouncer {VERSION}")
    for cve in CVES:
        assert cve in warning, warning
