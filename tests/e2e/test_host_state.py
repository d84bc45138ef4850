"""What the pgbouncer role reads from the host on every run: each instance pinned to the build it was
started with, and a library replaced on disk under a running instance flagged and applied by the rolling
restart (drain, restart, back in rotation)."""

from __future__ import annotations

import pytest

from .stack import Host, ansible_playbook, poolers

pytestmark = pytest.mark.e2e

try:
    POOLERS = poolers()
except AssertionError:  # lab down: test_clients.test_the_lab_is_up fails loudly
    POOLERS = []


def _instances(host: Host) -> list[int]:
    listing = host.run("ls /etc/pgbouncer/ | sed -n 's/^instance-\\([0-9]*\\)\\.ini$/\\1/p'")
    return sorted(int(n) for n in listing.split())


@pytest.mark.parametrize("host", POOLERS, ids=lambda h: h.name)
def test_every_instance_runs_the_build_its_drop_in_pins(host: Host) -> None:
    """An upgrade switches /opt/pgbouncer/current, but an instance only moves when the rolling restart pins
    it: the unit runs the versioned build itself, never the moving link."""
    for n in _instances(host):
        unit = f"pgbouncer@{n}.service"
        pinned = host.run(f"cat /etc/systemd/system/{unit}.d/build.conf")
        exec_start = host.run(f"systemctl show -P ExecStart {unit}")
        assert "/opt/pgbouncer/current/" not in exec_start, exec_start
        binary = exec_start.split("path=")[1].split(";")[0].strip()
        assert binary.startswith("/opt/pgbouncer/1."), exec_start
        assert binary in pinned, pinned
        pid = host.run(f"systemctl show -P MainPID {unit}").strip()
        assert host.run(f"readlink /proc/{pid}/exe").strip() == binary


def test_a_library_replaced_under_running_instances_is_applied_by_the_rolling_restart() -> None:
    """A package update replaces libevent on disk; the running instances keep the old copy mapped. The next
    site.yml names the reason and restarts them one at a time behind a drain."""
    host = POOLERS[0]
    pid = host.run("systemctl show -P MainPID pgbouncer@1.service").strip()
    library = host.run(f"grep -o '/[^ ]*libevent-[^ ]*\\.so[^ ]*' /proc/{pid}/maps | head -n 1").strip()
    assert library, "pgbouncer maps no libevent"
    # What dpkg does on an upgrade: a new file renamed over the old one (a new inode).
    host.run(f"cp -p {library} {library}.autopgpool-test && mv -f {library}.autopgpool-test {library}")
    assert "(deleted)" in host.run(f"grep -F {library} /proc/{pid}/maps")
    ids = _instances(host)
    before = {n: host.run(f"systemctl show -P MainPID pgbouncer@{n}.service").strip() for n in ids}
    result = ansible_playbook("playbooks/site.yml", "--limit", host.name)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "libraries updated on disk" in result.stdout, result.stdout[-3000:]
    for n, old_pid in before.items():
        new_pid = host.run(f"systemctl show -P MainPID pgbouncer@{n}.service").strip()
        assert new_pid != old_pid, f"pgbouncer@{n} was not restarted"
        assert "(deleted)" not in host.run(f"cat /proc/{new_pid}/maps")
    again = ansible_playbook("playbooks/site.yml", "--limit", host.name)
    assert "libraries updated on disk" not in again.stdout
