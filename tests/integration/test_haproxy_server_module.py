"""The haproxy_server module against a real HAProxy on loopback: drain, ready, maint, waits, check mode,
errors.

HAProxy runs in the foreground with its admin socket in a temporary directory and two servers whose health
checks connect to listeners the test owns, so the test decides which server is UP.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "plugins" / "modules"))

import haproxy_server  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Lab:
    def __init__(self, tmp: Path) -> None:
        self.admin = str(tmp / "admin.sock")
        self.front = _free_port()
        self.listeners = {name: socket.socket() for name in ("s1", "s2")}
        ports = {}
        for name, sock in self.listeners.items():
            sock.bind(("127.0.0.1", 0))
            sock.listen(16)
            ports[name] = sock.getsockname()[1]
        cfg = tmp / "haproxy.cfg"
        cfg.write_text(
            f"""global
    stats socket {self.admin} mode 600 level admin
defaults
    mode tcp
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout check 300ms
frontend fe
    bind 127.0.0.1:{self.front}
    default_backend be
backend be
    default-server check inter 200ms fall 1 rise 1
    server s1 127.0.0.1:{ports["s1"]}
    server s2 127.0.0.1:{ports["s2"]}
"""
        )
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if os.path.exists(self.admin) and self.status() == {"s1": "UP", "s2": "UP"}:
                return
            time.sleep(0.1)
        raise AssertionError(f"HAProxy did not come up: {self.status()}")

    def run(self, **params: object) -> dict[str, object]:
        return haproxy_server.run({"socket": self.admin, "backend": "be", **params})

    def status(self) -> dict[str, str]:
        try:
            servers = haproxy_server.servers_of(haproxy_server.send(self.admin, "show stat"), "be")
        except haproxy_server.HAProxyError:
            return {}
        return {name: s["status"] for name, s in servers.items()}

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        for sock in self.listeners.values():
            sock.close()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    yield lab
    lab.close()


def test_drain_then_ready_changes_once_each(lab: Lab) -> None:
    first = lab.run(servers=["s1"], state="drain")
    assert first["changed"] is True
    assert lab.status() == {"s1": "DRAIN", "s2": "UP"}
    assert lab.run(servers=["s1"], state="drain")["changed"] is False
    back = lab.run(servers=["s1"], state="ready", wait="up", timeout=5)
    assert back["changed"] is True
    assert back["timed_out"] is False
    assert lab.status() == {"s1": "UP", "s2": "UP"}


def test_check_mode_predicts_without_sending(lab: Lab) -> None:
    result = haproxy_server.run(
        {"socket": lab.admin, "backend": "be", "servers": ["s2"], "state": "maint"}, check_mode=True
    )
    assert result["changed"] is True
    assert lab.status() == {"s1": "UP", "s2": "UP"}


def test_wait_idle_waits_for_the_session_to_end(lab: Lab) -> None:
    client = socket.create_connection(("127.0.0.1", lab.front))
    deadline = time.monotonic() + 5
    while sum(s["sessions"] for s in lab.run()["servers"].values()) == 0:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the client session never reached a server"
        time.sleep(0.05)
    busy = next(n for n, s in lab.run()["servers"].items() if s["sessions"])  # type: ignore[attr-defined]
    timed_out = lab.run(servers=[busy], state="drain", wait="idle", timeout=0.5)
    assert timed_out["timed_out"] is True
    client.close()
    # The test's listener stands in for pgbouncer: the session ends once the server side closes too.
    lab.listeners[busy].settimeout(0.2)
    with contextlib.suppress(TimeoutError):
        while True:
            lab.listeners[busy].accept()[0].close()
    idle = lab.run(servers=[busy], wait="idle", timeout=5)
    assert idle["timed_out"] is False


def test_wait_up_times_out_for_a_down_server(lab: Lab) -> None:
    lab.listeners["s2"].close()
    deadline = time.monotonic() + 5
    while lab.status()["s2"] != "DOWN":
        assert time.monotonic() < deadline, "the health check never noticed the closed listener"
        time.sleep(0.05)
    result = lab.run(wait="up", timeout=1)
    assert result["timed_out"] is True
    assert result["servers"]["s2"]["status"] == "DOWN"  # type: ignore[index]


def test_unknown_server_and_missing_socket_are_named(lab: Lab, tmp_path: Path) -> None:
    with pytest.raises(haproxy_server.HAProxyError, match=r"no server pgbouncer9; it has s1, s2"):
        lab.run(servers=["pgbouncer9"], state="drain")
    with pytest.raises(haproxy_server.HAProxyError, match=r"no backend 'nope'"):
        haproxy_server.run({"socket": lab.admin, "backend": "nope"})
    with pytest.raises(haproxy_server.HAProxyError, match=r"admin socket .*missing.sock"):
        haproxy_server.run({"socket": str(tmp_path / "missing.sock"), "backend": "be"})


def test_through_ansible_playbook(lab: Lab, tmp_path: Path) -> None:
    """The module as roles call it: by FQCN from the collection, failing with the message above."""
    playbook = tmp_path / "play.yml"
    playbook.write_text(
        f"""- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - autopgpool.pool.haproxy_server: {{socket: {lab.admin}, backend: be, servers: [s2], state: maint}}
      register: out
    - ansible.builtin.debug: {{msg: "{{{{ out | to_json }}}}"}}
    - autopgpool.pool.haproxy_server: {{socket: {lab.admin}, backend: be, servers: [s2], state: maint}}
      register: again
    - ansible.builtin.assert: {{that: [out.changed, not again.changed, "out.servers.s2.status == 'MAINT'"]}}
"""
    )
    env = {
        **os.environ,
        "ANSIBLE_COLLECTIONS_PATH": str(REPO / ".cache" / "collections"),
        "ANSIBLE_NOCOLOR": "1",
    }
    bin_dir = Path(sys.executable).parent
    result = subprocess.run(
        [
            str(bin_dir / "ansible-playbook"),
            "-i",
            "localhost,",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            str(playbook),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert lab.status()["s2"] == "MAINT"
    assert json.dumps("MAINT") in result.stdout


def test_a_drained_server_that_is_down_is_still_put_back(lab: Lab) -> None:
    """Drained, then down (a restart in progress): `show stat` says DOWN, not DRAIN. Ready must still be sent,
    or the server comes back UP but drained and never takes a session again."""
    lab.run(servers=["s2"], state="drain")
    lab.listeners["s2"].close()
    deadline = time.monotonic() + 5
    while lab.status()["s2"] != "DOWN":
        assert time.monotonic() < deadline, lab.status()
        time.sleep(0.05)
    assert lab.run(servers=["s2"])["servers"]["s2"]["admin_state"] == "drain"  # type: ignore[index]
    result = lab.run(servers=["s2"], state="ready")
    assert result["changed"] is True
    assert result["servers"]["s2"]["admin_state"] == "ready"  # type: ignore[index]
