"""labctl deployed: what lets a warm `make demo` skip its playbooks, and what must not."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from autopgpool_lab import deployed


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "roles/pgbouncer/tasks").mkdir(parents=True)
    (repo / "roles/pgbouncer/tasks/main.yml").write_text("---\n- name: a task\n")
    (repo / "examples").mkdir()
    (repo / "examples/autopgpool.toml").write_text("[pgbouncer]\n")
    (repo / "docs").mkdir()
    (repo / "docs/index.md").write_text("# docs\n")
    (repo / ".gitignore").write_text(".lab/\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    return repo


def test_inputs_change_with_a_role_an_untracked_file_or_the_example_but_not_with_docs(checkout: Path) -> None:
    first = deployed.inputs_digest(checkout)
    assert deployed.inputs_digest(checkout) == first

    (checkout / "docs/index.md").write_text("# docs, edited\n")
    (checkout / ".lab").mkdir()
    (checkout / ".lab/deployed.json").write_text("{}")
    assert deployed.inputs_digest(checkout) == first, "docs and ignored lab state are not deployed"

    (checkout / "roles/pgbouncer/tasks/main.yml").write_text("---\n- name: a changed task\n")
    second = deployed.inputs_digest(checkout)
    assert second != first

    (checkout / "roles/pgbouncer/tasks/new.yml").write_text("---\n")  # untracked, not ignored
    third = deployed.inputs_digest(checkout)
    assert third != second

    (checkout / "examples/demo.env").write_text("APP_USER_PASSWORD=other\n")
    assert deployed.inputs_digest(checkout) != third


def test_host_files_change_with_content_a_symlink_target_or_a_removed_file(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/pgbouncer").mkdir(parents=True)
    (root / "etc/pgbouncer/pgbouncer.ini").write_text("[pgbouncer]\nmax_client_conn = 100\n")
    (root / "usr/local/bin").mkdir(parents=True)
    (root / "usr/local/bin/pgbouncer").write_bytes(b"\x7fELF")
    (root / "etc/alternatives").mkdir()
    (root / "etc/alternatives/x").symlink_to("/usr/bin/a")
    (root / "var/log").mkdir(parents=True)

    first = deployed.host_digest(root)
    (root / "var/log/syslog").write_text("logs come and go\n")
    assert deployed.host_digest(root) == first

    (root / "etc/pgbouncer/pgbouncer.ini").write_text("[pgbouncer]\nmax_client_conn = 101\n")
    second = deployed.host_digest(root)
    assert second != first

    (root / "etc/alternatives/x").unlink()
    (root / "etc/alternatives/x").symlink_to("/usr/bin/b")
    third = deployed.host_digest(root)
    assert third != second

    (root / "usr/local/bin/pgbouncer").unlink()
    assert deployed.host_digest(root) != third


def _record(**hosts: dict[str, object]) -> dict[str, object]:
    return {"inputs": "i", "slot": 0, "hosts": hosts}


POOL1 = {"boot_id": "b1", "files": "f1", "running": ["haproxy.service", "pgbouncer@1.service"]}


def test_the_same_deployment_has_no_differences() -> None:
    assert deployed.differences(_record(pool1=POOL1), _record(pool1=dict(POOL1))) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"boot_id": "b2"}, "pool1: booted again"),
        ({"files": "f2"}, "pool1: files under /etc, /usr/local or /opt, or installed packages"),
        ({"running": ["pgbouncer@1.service"]}, "pool1: running services"),
    ],
)
def test_a_changed_host_is_named_with_what_changed(change: dict[str, object], expected: str) -> None:
    assert deployed.differences(_record(pool1=POOL1), _record(pool1={**POOL1, **change})) == [expected]


def test_no_record_an_unreachable_or_added_host_and_changed_inputs_all_deploy() -> None:
    assert deployed.differences({}, _record(pool1=POOL1)) == ["no full deployment recorded yet"]
    assert deployed.differences(_record(pool1=POOL1), _record(pool1={"unreachable": 255})) == [
        "pool1: new, gone or unreachable"
    ]
    assert deployed.differences(_record(pool1=POOL1), _record(pool1=POOL1, pool2=POOL1)) == [
        "pool2: new, gone or unreachable"
    ]
    changed_inputs = {**_record(pool1=POOL1), "inputs": "j"}
    assert deployed.differences(_record(pool1=POOL1), changed_inputs) == [
        "the checkout's deployed files, the lab's certificates or inventory, or the environment"
    ]


def test_the_record_survives_a_round_trip_and_a_corrupt_one_reads_as_none(tmp_path: Path) -> None:
    stamp = tmp_path / "deployed.json"
    deployed.write(stamp, _record(pool1=POOL1))
    assert deployed.read(stamp) == _record(pool1=POOL1)
    stamp.write_text("{not json")
    assert deployed.read(stamp) == {}
    assert deployed.differences(deployed.read(stamp), _record(pool1=POOL1)) == [
        "no full deployment recorded yet"
    ]


def test_host_modes_owners_directories_and_linked_directories_count(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/pgbouncer").mkdir(parents=True)
    userlist = root / "etc/pgbouncer/userlist.txt"
    userlist.write_text('"app" "md5..."\n')
    userlist.chmod(0o600)
    (root / "opt/pgbouncer/1.25.2").mkdir(parents=True)
    (root / "opt/pgbouncer/1.24.1").mkdir(parents=True)
    (root / "opt/pgbouncer/current").symlink_to("/opt/pgbouncer/1.25.2")

    first = deployed.host_digest(root)
    userlist.chmod(0o644)  # a secret made world-readable by hand
    second = deployed.host_digest(root)
    assert second != first

    (root / "etc/pgbouncer/empty.d").mkdir()
    third = deployed.host_digest(root)
    assert third != second

    (root / "opt/pgbouncer/current").unlink()
    (root / "opt/pgbouncer/current").symlink_to("/opt/pgbouncer/1.24.1")  # a rollback switches the link
    fourth = deployed.host_digest(root)
    assert fourth != third

    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text("Package: haproxy\nStatus: install ok installed\n")
    fifth = deployed.host_digest(root)
    assert fifth != fourth
    (root / "var/lib/dpkg/status").write_text("Package: haproxy\nStatus: deinstall ok config-files\n")
    assert deployed.host_digest(root) != fifth


def test_lab_state_and_environment_are_inputs(checkout: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "tls").mkdir(parents=True)
    (state / "tls/pool1.crt").write_text("cert 1\n")
    (state / "logs").mkdir()
    env = {"ANSIBLE_CONFIG": "/repo/ansible.cfg", "HOME": "/root"}
    first = deployed.inputs_digest(checkout, state=state, environ=env)
    (state / "logs/pool1.log").write_text("boot log\n")
    assert deployed.inputs_digest(checkout, state=state, environ={**env, "HOME": "/other"}) == first

    (state / "tls/pool1.crt").write_text("cert 2, renewed\n")
    second = deployed.inputs_digest(checkout, state=state, environ=env)
    assert second != first
    assert (
        deployed.inputs_digest(checkout, state=state, environ={**env, "AUTOPGPOOL_LAB_SUITE": "trixie"})
        != second
    )
    assert deployed.inputs_digest(checkout, state=state, environ={**env, "ANSIBLE_FORKS": "1"}) != second


def test_the_probe_leaves_out_services_that_timers_start() -> None:
    output = (
        "b0a7\n"
        "timer apt-daily.service\n"
        "timer e2scrub_all.service\n"
        "running apt-daily.service\n"
        "running haproxy.service\n"
        "running pgbouncer@1.service\n"
        "running user@1000.service\n"
        "haproxy pgbouncer_instances pgbouncer1 op 2 admin 0\n"
        "haproxy pgbouncer_instances pgbouncer2 op 2 admin 1\n"
    )
    assert deployed.parse_probe(output) == {
        "boot_id": "b0a7",
        "running": ["haproxy.service", "pgbouncer@1.service"],
        "haproxy": [
            "pgbouncer_instances pgbouncer1 op 2 admin 0",
            "pgbouncer_instances pgbouncer2 op 2 admin 1",
        ],
    }


def test_a_drained_instance_is_a_difference() -> None:
    drained = {**POOL1, "haproxy": ["pgbouncer_instances pgbouncer1 op 2 admin 1"]}
    ready = {**POOL1, "haproxy": ["pgbouncer_instances pgbouncer1 op 2 admin 0"]}
    assert deployed.differences(_record(pool1=ready), _record(pool1=drained)) == [
        "pool1: HAProxy server states (an instance drained, down or in maintenance)"
    ]
