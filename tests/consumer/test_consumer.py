"""An operator's use of the released artifacts, end to end, outside this repository.

1. Build what a release ships: the collection tarball (``ansible-galaxy collection build``) and the
   ``autopgpool`` wheel.
2. A fresh virtualenv in a temporary folder, the hash-pinned dependencies of requirements/controller.txt, then
   the two install commands of README.md ("Use it from your own repository"), run as written there. Before the
   wheel is installed, a filter must fail naming the missing package and the install command.
3. An operator project of its own (inventory naming the lab's pooler hosts, its own autopgpool.toml and
   secrets, no ansible.cfg, a HOME of its own so nothing of this checkout's configuration is seen) runs
   ``autopgpool.pool.site`` by FQCN, then ``--check --diff`` (changed=0 on every host), then
   ``autopgpool.pool.rolling_restart`` (every instance gets a new process), and clients query through HAProxy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from e2e.stack import Host, demo_secrets, poolers, postgres_host

REPO = Path(__file__).resolve().parents[2]
REPO_BIN = Path(sys.executable).parent
README = REPO / "README.md"

pytestmark = pytest.mark.consumer

# The operator's own pooler description: not the example's (one pool, other sizes and port), over the database
# and owner that the lab's PostgreSQL has (lab/playbooks/postgres.yml creates them from the example).
OPERATOR_TOML = """\
[[users]]
username = "shop"
password = "$SHOP_PASSWORD"
grants = ["shop"]

[[users]]
username = "admin"
password = "$ADMIN_PASSWORD"
grants = []

[[users]]
username = "stats"
password = "$STATS_PASSWORD"
grants = []

[pools.shop]
pool_mode = "transaction"
pool_size = 8

[pools.shop.remote]
host = "pg1"
port = 5432
database = "app_db"
username = "app_owner"
password = "$APP_DB_PASSWORD"

[pgbouncer]
listen_addr = "0.0.0.0"
listen_port = 6543
auth_type = "scram-sha-256"
pool_mode = "transaction"
max_client_conn = 300
admin_users = ["admin"]
stats_users = ["stats"]
"""


def _readme_install_commands() -> list[str]:
    """The shell commands of the README's install block (the one marked ``consumer-install``)."""
    match = re.search(
        r"<!-- consumer-install -->\s*```(?:sh|bash|console)?\n(.*?)```", README.read_text(), re.S
    )
    assert match, "README.md has no install block marked <!-- consumer-install -->"
    commands = [line.strip() for line in match.group(1).splitlines()]
    return [c for c in commands if c and not c.startswith("#")]


def _run(
    args: list[str], *, env: Mapping[str, str], cwd: Path, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, env=dict(env), cwd=cwd, timeout=timeout, check=False
    )


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (
        f"{result.args} exited {result.returncode}:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    )
    return result.stdout


def _recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP lines -> {host: {ok, changed, failed, ...}} (the last recap of the run)."""
    recap: dict[str, dict[str, int]] = {}
    tail = output.rsplit("PLAY RECAP", 1)[-1]
    for line in tail.splitlines():
        match = re.match(r"^(\S+)\s+:\s+(.*)$", line)
        if match:
            recap[match.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(2))}
    return recap


def _main_pids(host: Host) -> dict[str, str]:
    units = host.run("systemctl list-units --plain --no-legend --state=active 'pgbouncer@*.service'")
    names = [line.split()[0] for line in units.splitlines() if line.strip()]
    return {name: host.run(f"systemctl show -P MainPID {name}").strip() for name in names}


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="autopgpool-consumer-"))
    assert not path.resolve().is_relative_to(REPO)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def artifacts(workdir: Path) -> Path:
    """The release artifacts, built from this checkout as a release would build them."""
    dist = workdir / "dist"
    dist.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    _ok(
        _run(
            [str(REPO_BIN / "ansible-galaxy"), "collection", "build", "--output-path", str(dist)],
            env=env,
            cwd=REPO,
        )
    )
    _ok(
        _run(
            [
                str(REPO_BIN / "python"),
                "-m",
                "pip",
                "wheel",
                "-q",
                "--no-deps",
                "--no-build-isolation",
                "-w",
                str(dist),
                ".",
            ],
            env=env,
            cwd=REPO,
        )
    )
    return dist


@pytest.fixture(scope="module")
def operator_env(workdir: Path) -> dict[str, str]:
    """The operator's shell: the fresh virtualenv first on PATH, a HOME of its own, nothing of ours."""
    home = workdir / "home"
    home.mkdir()
    venv = workdir / "venv"
    _ok(_run([sys.executable, "-m", "venv", str(venv)], env=os.environ, cwd=workdir))
    return {
        "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "VIRTUAL_ENV": str(venv),
        "LANG": "C.UTF-8",
        "ANSIBLE_NOCOLOR": "1",
        "PYTHONUNBUFFERED": "1",
        # pip's configuration (index, cache) as the caller has it: where packages come from is theirs.
        **{k: v for k, v in os.environ.items() if k.startswith("PIP_")},
    }


def _project(workdir: Path, secrets: Mapping[str, str]) -> Path:
    """The operator's repository: inventory (lab hosts), group_vars, autopgpool.toml, no ansible.cfg."""
    project = workdir / "project"
    group_vars = project / "inventory" / "group_vars"
    group_vars.mkdir(parents=True)
    hosts: dict[str, Any] = {}
    builder = postgres_host()
    for host in [builder, *poolers()]:
        # Host.ssh_args is ("-i", key, "-l", user, "-o", ...): the same connection as the lab's inventory.
        key, user = host.ssh_args[1], host.ssh_args[3]
        hosts[host.name] = {
            "ansible_host": host.address,
            "ansible_user": user,
            "ansible_ssh_private_key_file": key,
            "ansible_ssh_common_args": " ".join(host.ssh_args[4:]),
        }
    inventory = {
        "all": {
            "children": {
                "builders": {"hosts": {builder.name: hosts[builder.name]}},
                # The playbooks target the group pgbouncer; an operator's own group joins it as a child.
                "pgbouncer": {
                    "children": {"shop_poolers": {"hosts": {h.name: hosts[h.name] for h in poolers()}}}
                },
            }
        }
    }
    (project / "inventory" / "hosts.yml").write_text(json.dumps(inventory, indent=2))
    controller = "10.231.{}.1".format(int(os.environ.get("AUTOPGPOOL_LAB_SLOT", "0") or 0))
    pgbouncer_vars = {
        "pgbouncer_config_file": "{{ inventory_dir }}/../autopgpool.toml",
        "pgbouncer_secrets": dict(secrets),
        "pgbouncer_scram_salt_key": "consumer-salt-key-of-forty-characters-xx",
        # The lab's pooler hosts have no compiler and no internet: pg1 builds from Debian's copy of the
        # tarball (same sha256 as upstream's), and the controller's artifact cache is the lab's (no rebuild).
        "pgbouncer_build_builder": builder.name,
        "pgbouncer_build_url": (
            "http://deb.debian.org/debian/pool/main/p/pgbouncer/"
            "pgbouncer_{{ pgbouncer_build_version }}.orig.tar.gz"
        ),
        "pgbouncer_build_artifact_dir": str(Path.home() / ".cache/autopgpool/pgbouncer-artifacts"),
        "pgbouncer_build_controller_cache": str(Path.home() / ".cache/autopgpool/pgbouncer-src"),
        "pgbouncer_build_accept_known_vulnerabilities": _lab_accepted_cves(),
        "pgbouncer_instances": 2,
        "pgbouncer_rollout_batch": 1,
        "pgbouncer_drain_timeout": 10,
        "pgbouncer_server_networks": [f"{postgres_host().address}/32"],
        "pgbouncer_postgres_servers": {"pg1:5432": {"other_clients": 10}},
        "haproxy_client_allowlist": [f"{controller}/32", "127.0.0.0/8"],
        "smoke_test_user": "shop",
        "smoke_test_password": secrets["SHOP_PASSWORD"],
        "smoke_test_database": "shop",
    }
    (group_vars / "pgbouncer.yml").write_text(json.dumps(pgbouncer_vars, indent=2))
    (project / "autopgpool.toml").write_text(OPERATOR_TOML)
    return project


def _lab_accepted_cves() -> list[str]:
    """The lab's accepted CVE list for its pinned release (inventories/lab; test machines only)."""
    text = (REPO / "inventories" / "lab" / "group_vars" / "pgbouncer.yml").read_text()
    block = text.split("pgbouncer_build_accept_known_vulnerabilities:", 1)[1]
    return re.findall(r"^\s+- (CVE-[0-9-]+)\s*$", block.split("\n#", 1)[0], re.M)


def _playbook(env: Mapping[str, str], project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(env["VIRTUAL_ENV"]) / "bin" / "ansible-playbook"), "-i", "inventory/hosts.yml", *args]
    return _run(command, env=env, cwd=project, timeout=1200)


def test_installed_artifacts_deploy_the_lab(
    workdir: Path, artifacts: Path, operator_env: dict[str, str]
) -> None:
    env = operator_env
    venv_bin = Path(env["VIRTUAL_ENV"]) / "bin"
    started = time.monotonic()
    # Hash-pinned dependencies first (as README.md suggests), so the README's pip install needs no index.
    _ok(
        _run(
            [
                str(venv_bin / "pip"),
                "install",
                "-q",
                "--require-hashes",
                "-r",
                str(REPO / "requirements/controller.txt"),
            ],
            env=env,
            cwd=workdir,
        )
    )
    commands = _readme_install_commands()
    assert len(commands) <= 2, f"the README's install takes {len(commands)} commands: {commands}"
    pip_command = next(c for c in commands if " pip " in f" {c} ")
    galaxy_command = next(c for c in commands if c.startswith("ansible-galaxy "))

    # The collection alone: the filters fail with the instruction, not Ansible's "No filter named".
    _ok(_run(["bash", "-c", galaxy_command], env=env, cwd=artifacts))
    probe = workdir / "probe.yml"
    probe.write_text(
        "- name: Use a filter without the package\n  hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - name: Validate\n      ansible.builtin.debug:\n"
        "        msg: \"{{ '' | autopgpool.pool.autopgpool_validate }}\"\n"
    )
    missing = _run([str(venv_bin / "ansible-playbook"), str(probe)], env=env, cwd=workdir)
    assert missing.returncode != 0
    assert "'autopgpool' is not importable" in missing.stdout + missing.stderr
    assert "pip install autopgpool-" in missing.stdout + missing.stderr

    _ok(_run(["bash", "-c", pip_command], env=env, cwd=artifacts))
    installed = workdir / "home" / ".ansible" / "collections" / "ansible_collections" / "autopgpool" / "pool"
    assert (installed / "MANIFEST.json").exists(), (
        "the README's ansible-galaxy command did not install the collection"
    )
    assert not (installed / "tests").exists()
    assert not (installed / "lab").exists()
    print(f"consumer: fresh virtualenv + install {time.monotonic() - started:.0f}s")

    secrets = demo_secrets()
    own_secrets = {
        "SHOP_PASSWORD": "consumer-shop-pw-1",
        "ADMIN_PASSWORD": "consumer-admin-pw-1",
        "STATS_PASSWORD": "consumer-stats-pw-1",
        "APP_DB_PASSWORD": secrets["APP_DB_PASSWORD"],
    }
    project = _project(workdir, own_secrets)

    step = time.monotonic()
    _ok(_playbook(env, project, "autopgpool.pool.site", "--syntax-check"))
    deploy = _ok(_playbook(env, project, "autopgpool.pool.site"))
    recap = _recap(deploy)
    assert {h.name for h in poolers()} <= set(recap), recap
    assert all(v.get("failed", 0) == 0 and v.get("unreachable", 0) == 0 for v in recap.values()), recap
    print(f"consumer: autopgpool.pool.site {time.monotonic() - step:.0f}s")

    step = time.monotonic()
    check = _ok(_playbook(env, project, "autopgpool.pool.site", "--check", "--diff"))
    changed = {host: counts.get("changed", -1) for host, counts in _recap(check).items()}
    assert changed
    assert all(v == 0 for v in changed.values()), f"--check --diff after a deploy: {changed}\n{check[-4000:]}"
    print(f"consumer: --check --diff {time.monotonic() - step:.0f}s, changed {changed}")

    before = {h.name: _main_pids(h) for h in poolers()}
    assert all(len(p) == 2 for p in before.values()), before
    step = time.monotonic()
    _ok(_playbook(env, project, "autopgpool.pool.rolling_restart"))
    after = {h.name: _main_pids(h) for h in poolers()}
    for host, pids in before.items():
        assert set(after[host]) == set(pids), (host, pids, after[host])
        assert all(after[host][unit] != pid for unit, pid in pids.items()), (
            f"{host}: not restarted {pids} {after[host]}"
        )
    print(f"consumer: autopgpool.pool.rolling_restart {time.monotonic() - step:.0f}s")

    # Clients through HAProxy on each host, as the operator's smoke test does it.
    _ok(_playbook(env, project, "autopgpool.pool.smoke_test"))
