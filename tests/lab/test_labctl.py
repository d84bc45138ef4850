"""Pure unit tests of the lab's logic: no root, no booting."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autopgpool_lab import config, image, machines, mirror, render, system
from autopgpool_lab.config import Machine, image_cache_key, plan_machines

KEY = Path("/repo/.lab/id_ed25519")
KNOWN = Path("/repo/.lab/known_hosts")


# ---------------------------------------------------------------- address assignment


def test_default_plan_is_pg1_and_two_poolers() -> None:
    plan = plan_machines()
    assert [(m.name, m.group, str(m.address)) for m in plan] == [
        ("pg1", "postgres", "10.231.0.10"),
        ("pool1", "pgbouncer", "10.231.0.11"),
        ("pool2", "pgbouncer", "10.231.0.12"),
    ]


def test_more_poolers_get_consecutive_addresses_inside_the_lab_network() -> None:
    plan = plan_machines(5)
    assert [m.name for m in plan][-1] == "pool5"
    assert [int(m.address.packed[-1]) for m in plan] == [10, 11, 12, 13, 14, 15]
    assert all(m.address in config.NETWORK and m.address != config.HOST_ADDRESS for m in plan)
    assert len({m.address for m in plan}) == len(plan)


@pytest.mark.parametrize("n", [0, -1, config.MAX_POOLERS + 1])
def test_pooler_count_out_of_range_is_a_readable_error(n: int) -> None:
    with pytest.raises(ValueError, match="--machines: expected a number of poolers from 1 to"):
        plan_machines(n)


def test_veth_names_fit_the_kernel_limit() -> None:
    # nspawn names the host side vb-<machine>; longer than 15 characters would be truncated and could collide.
    assert all(len("vb-" + m.unit_name) <= 15 for m in plan_machines(config.MAX_POOLERS))


# ---------------------------------------------------------------- image cache key


def test_cache_key_is_stable_and_order_insensitive() -> None:
    key = image_cache_key("bookworm", ("a", "b"), 1)
    assert key == image_cache_key("bookworm", ("b", "a", "a"), 1)
    assert key.startswith("bookworm-")
    assert len(key) == len("bookworm-") + 12


@pytest.mark.parametrize(
    "other",
    [("trixie", ("a", "b"), 1), ("bookworm", ("a", "b", "c"), 1), ("bookworm", ("a", "b"), 2)],
)
def test_cache_key_changes_with_suite_packages_and_setup_version(
    other: tuple[str, tuple[str, ...], int],
) -> None:
    assert image_cache_key("bookworm", ("a", "b"), 1) != image_cache_key(*other)


def test_image_is_a_fresh_server_without_what_the_roles_install() -> None:
    """The image has what a fresh Debian server has; what a role installs must come from the mirror."""
    assert {"systemd-sysv", "openssh-server", "sudo", "python3"} <= set(config.IMAGE_PACKAGES)
    assert set(config.BOOTSTRAP_PACKAGES) <= set(config.IMAGE_PACKAGES)
    for suite in config.SUPPORTED_SUITES:
        installed_by_roles = set(mirror.role_packages(suite))
        assert {
            "haproxy",
            "postgresql",
            "prometheus",
            "build-essential",
            "python3-psycopg",
            "python3-prometheus-client",
            "keepalived",
        } <= installed_by_roles
        assert not installed_by_roles & set(config.IMAGE_PACKAGES), suite
    assert not {"socat", "netcat-openbsd", "acl", "haproxy", "keepalived", "postgresql"} & set(
        config.IMAGE_PACKAGES
    )


def test_mirror_reads_each_suites_packages_from_the_roles() -> None:
    bookworm, trixie = mirror.role_packages("bookworm"), mirror.role_packages("trixie")
    assert "libssl3" in bookworm
    assert "libssl3t64" not in bookworm
    assert "libssl3t64" in trixie
    assert "libssl3" not in trixie
    # pgbench for make bench (lab_pgbench): in the server package of each release's PostgreSQL.
    assert ("postgresql-15" in bookworm, "postgresql-17" in trixie) == (True, True)


def test_mirror_refuses_a_role_package_that_is_no_package_name(tmp_path: Path) -> None:
    tasks = tmp_path / "roles/demo/tasks"
    tasks.mkdir(parents=True)
    (tasks / "main.yml").write_text(
        "- name: Install\n  ansible.builtin.apt:\n    name: [socat, 'Bad Name']\n"
    )
    with pytest.raises(system.LabError, match="Bad Name"):
        mirror.role_packages("bookworm", [tmp_path / "roles"])


def test_mirror_takes_literal_apt_task_names_and_package_variables(tmp_path: Path) -> None:
    role = tmp_path / "roles/demo"
    (role / "tasks").mkdir(parents=True)
    (role / "defaults").mkdir()
    (role / "tasks/main.yml").write_text(
        "- name: Block\n  block:\n    - name: Install\n      ansible.builtin.apt:\n        name: socat\n"
        "- name: Templated\n  ansible.builtin.apt:\n    name: '{{ demo_packages }}'\n"
    )
    (role / "defaults/main.yml").write_text(
        "demo_packages:\n  bookworm: {base: [liba1]}\n  trixie: {base: [liba1t64]}\n"
        "demo_other: [notapackage]\n"
    )
    assert mirror.role_packages("trixie", [tmp_path / "roles"]) == ["liba1t64", "socat"]


def test_mirror_lists_what_apt_would_install() -> None:
    simulated = (
        "NOTE: This is only a simulation!\n"
        "Inst libevent-2.1-7 (2.1.12-stable-8 Debian:12.8/stable [amd64])\n"
        "Inst tzdata [2024a-0+deb12u1] (2025b-0+deb12u1 Debian:12.12/stable [all])\n"
        "Inst libfoo (1:2.0-1 Debian-Security:12/stable-security [amd64])\n"
        "Conf libevent-2.1-7 (2.1.12-stable-8 Debian:12.8/stable [amd64])\n"
    )
    chosen = mirror.parse_simulation(simulated)
    assert chosen == [
        ("libevent-2.1-7", "2.1.12-stable-8", "amd64"),
        ("tzdata", "2025b-0+deb12u1", "all"),
        ("libfoo", "1:2.0-1", "amd64"),
    ]
    assert mirror.deb_filename(*chosen[2]) == "libfoo_1%3a2.0-1_amd64.deb"


def test_hosts_name_only_the_lab_mirror() -> None:
    lines = [ln for ln in mirror.lab_sources("trixie").splitlines() if ln and not ln.startswith("#")]
    assert lines == [
        f"deb [trusted=yes] http://{config.HOST_ADDRESS}:{config.MIRROR_PORT}/debian trixie main"
    ]


def test_mirror_key_follows_packages_and_image() -> None:
    key = mirror.mirror_key("bookworm", ["b", "a"], Path("/x/bookworm-1"))
    assert key == mirror.mirror_key("bookworm", ["a", "b", "a"], Path("/y/bookworm-1"))
    assert key != mirror.mirror_key("bookworm", ["a"], Path("/x/bookworm-1"))
    assert key != mirror.mirror_key("bookworm", ["a", "b"], Path("/x/bookworm-2"))


def test_an_image_without_its_marker_is_not_cached(tmp_path: Path) -> None:
    assert not image.is_cached(tmp_path)
    (tmp_path / image.MARKER).write_text("{}")
    assert image.is_cached(tmp_path)


def test_image_sources_include_security_and_updates() -> None:
    sources = image._sources("trixie")
    assert "trixie main" in sources
    assert "trixie-updates main" in sources
    assert "debian-security trixie-security main" in sources


# ---------------------------------------------------------------- rendered files


def test_inventory_groups_and_connection_variables() -> None:
    text = render.inventory_yaml(plan_machines(), KEY, KNOWN)
    shape = "\n  children:\n    lab:\n      children:\n        postgres:\n          hosts:\n            pg1:"
    assert shape in text
    # The lab's own addresses, for the lab inventory's allow-lists (slot 0: the documented ones).
    addresses = '  vars:\n    lab_network: "10.231.0.0/24"\n    lab_controller_address: "10.231.0.1"\n'
    assert "all:\n" + addresses in text
    assert "        pgbouncer:\n          hosts:\n            pool1:" in text
    assert text.count('ansible_user: "ops"') == 3
    assert text.count(f'ansible_ssh_private_key_file: "{KEY}"') == 3
    assert text.count(f'"-o UserKnownHostsFile={KNOWN} -o StrictHostKeyChecking=yes"') == 3
    assert 'ansible_host: "10.231.0.12"' in text
    assert "ansible_become" not in text
    # The poolers' virtual IP (roles/keepalived): outside the machines' addresses, inside the lab network.
    assert '    lab_pooler_vip: "10.231.0.100"\n' in text
    assert config.POOLER_VIP in config.NETWORK
    assert config.POOLER_VIP not in {m.address for m in plan_machines(config.MAX_POOLERS)}


def test_inventory_parses_as_yaml_with_groups() -> None:
    yaml = pytest.importorskip("yaml")
    data = yaml.safe_load(render.inventory_yaml(plan_machines(3), KEY, KNOWN))
    groups = data["all"]["children"]["lab"]["children"]
    assert list(groups["postgres"]["hosts"]) == ["pg1"]
    assert list(groups["pgbouncer"]["hosts"]) == ["pool1", "pool2", "pool3"]
    assert groups["pgbouncer"]["hosts"]["pool3"]["ansible_host"] == "10.231.0.13"


def test_ssh_config_lets_humans_reach_hosts_by_name() -> None:
    text = render.ssh_config(plan_machines(), KEY, KNOWN)
    assert "Host pool1 apg-pool1\n    HostName 10.231.0.11\n    User ops\n" in text
    assert f"UserKnownHostsFile {KNOWN}" in text
    assert "StrictHostKeyChecking yes" in text


def test_known_hosts_lists_name_and_address_without_comment() -> None:
    pg1 = plan_machines()[0]
    lines = render.known_hosts_lines(pg1, ["ssh-ed25519 AAAAC3Nz root@builder", "garbage"])
    assert lines == ["pg1,10.231.0.10 ssh-ed25519 AAAAC3Nz"]


def test_hosts_file_resolves_every_lab_machine() -> None:
    plan = plan_machines()
    text = render.hosts_file(plan, plan[1])
    for machine in plan:
        assert f"{machine.address}\t{machine.name} " in text
    assert "127.0.0.1\tlocalhost" in text


def test_host0_network_is_static_and_has_no_gateway() -> None:
    text = render.host0_network(Machine("pool1", "pgbouncer", ipaddress.IPv4Address("10.231.0.11")))
    assert "Name=host0" in text
    assert "Address=10.231.0.11/24" in text
    assert "Gateway" not in text.replace("# No gateway", "")


# ---------------------------------------------------------------- leftovers detection


def test_mounts_under_matches_the_path_and_below_only() -> None:
    mountinfo = (
        "1 0 8:1 / / rw - ext4 /dev/vda rw\n"
        "2 1 0:5 / /var/lib/autopgpool-lab/machines/pg1/root rw - overlay overlay rw\n"
        "3 2 0:6 / /var/lib/autopgpool-lab/machines/pg1/root/proc rw - proc proc rw\n"
        "4 1 0:7 / /var/lib/autopgpool-lab/machines/pg10/root rw - overlay overlay rw\n"
    )
    found = system.mounts_under(Path("/var/lib/autopgpool-lab/machines/pg1"), mountinfo)
    assert found == [
        Path("/var/lib/autopgpool-lab/machines/pg1/root/proc"),
        Path("/var/lib/autopgpool-lab/machines/pg1/root"),
    ]


def test_known_machine_names_finds_dirs_and_stale_pid_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mdir = tmp_path / "machines"
    (mdir / "pool1").mkdir(parents=True)  # half-made machine dir
    paths = machines.Paths(tmp_path / "state")
    (paths.state / "run").mkdir(parents=True)
    (paths.state / "run" / "pg1.pid").write_text("999999\n")  # stale pid file of a crashed run
    monkeypatch.setattr(config, "MACHINES_DIR", mdir)
    monkeypatch.setattr(machines, "nspawn_pids", lambda unit_name=None: [])
    assert machines.known_machine_names(paths) == ["pg1", "pool1"]


def test_container_processes_finds_the_marker_in_the_environment() -> None:
    env = {**os.environ, machines.MARKER_ENV: "unit-test-machine"}
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], env=env)
    try:
        deadline = time.monotonic() + 5
        found: list[int] = []
        while time.monotonic() < deadline and proc.pid not in found:
            found = machines.container_processes("unit-test-machine")
        assert proc.pid in found
        assert proc.pid not in machines.container_processes("unit-test")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not system.alive(proc.pid)


def test_planned_falls_back_to_defaults_on_a_broken_state_file(tmp_path: Path) -> None:
    paths = machines.Paths(tmp_path)
    paths.lab_json.write_text("{not json")
    plan, suite = machines.planned(paths)
    assert [m.name for m in plan] == ["pg1", "pool1", "pool2"]
    assert suite == config.DEFAULT_SUITE  # bookworm, or AUTOPGPOOL_LAB_SUITE's release
    paths.lab_json.write_text(json.dumps({"suite": "trixie", "poolers": 1}))
    plan, suite = machines.planned(paths)
    assert [m.name for m in plan] == ["pg1", "pool1"]
    assert suite == "trixie"


def test_run_reports_failures_as_lab_errors() -> None:
    with pytest.raises(system.LabError, match=r"command failed \(3\)"):
        system.run(["sh", "-c", "echo boom; exit 3"], capture=True, quiet=True)
    with pytest.raises(system.LabError, match="command not found"):
        system.run(["/nonexistent/tool"], quiet=True)
