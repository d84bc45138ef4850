"""HAProxy as operators see it: health checks that notice dead and hung instances, root-only admin socket,
loopback-only metrics, a hardened unit, and reloads that keep established sessions."""

from __future__ import annotations

import re
import socket
import time

import psycopg
import pytest

from autopgpool.frontdoor import haproxy_limits

from .stack import SHOW_STAT_SH, Host, example_config, haproxy_admin, poolers, postgres_host

pytestmark = pytest.mark.e2e

try:
    POOLERS = poolers()
except AssertionError:  # lab down: test_clients.test_the_lab_is_up fails loudly
    POOLERS = []


def _server_states(host: Host) -> dict[str, str]:
    out = haproxy_admin(host, "show stat")
    states = {}
    for line in out.splitlines():
        fields = line.split(",")
        if len(fields) > 17 and fields[0] == "pgbouncer_instances" and fields[1].startswith("pgbouncer"):
            states[fields[1]] = fields[17]
    return states


def _seconds_until(host: Host, action: str, server: str, wanted: str, limit: float) -> float:
    """Run `action` on the host and time, there (no SSH round trips in the figure), until HAProxy reports
    `server` in state `wanted`; sampled every 0.1 s, fails after `limit` seconds."""
    limit_ms = int(limit * 1000)
    out = host.run(
        f"{action}; start=$(date +%s%N); "
        "while :; do "
        f"state=$({SHOW_STAT_SH} "
        f'| awk -F, \'$1 == "pgbouncer_instances" && $2 == "{server}" {{ print $18 }}\'); '
        "now=$(date +%s%N); "
        "ms=$(( (now - start) / 1000000 )); "
        f'if [ "$state" = "{wanted}" ]; then echo $ms; exit 0; fi; '
        f'if [ $ms -gt {limit_ms} ]; then echo "timeout $state"; exit 0; fi; '
        "sleep 0.1; done"
    ).strip()
    assert not out.startswith("timeout"), f"{host.name}: {server} not {wanted} after {limit}s ({out})"
    return int(out) / 1000


def _query(host: Host) -> int:
    user = next(u for u in example_config().users if u.username == "app_user")
    with psycopg.connect(
        host=host.address, port=example_config().listen_port, user=user.username, password=user.password,
        dbname="app", connect_timeout=5,
    ) as conn:  # fmt: skip
        row = conn.execute("SELECT 1").fetchone()
    assert row is not None
    return int(row[0])  # type: ignore[call-overload]


@pytest.mark.parametrize("host", POOLERS, ids=lambda h: h.name)
def test_all_instances_are_in_rotation(host: Host) -> None:
    states = _server_states(host)
    assert len(states) >= 2
    assert set(states.values()) == {"UP"}, states


@pytest.mark.parametrize("host", POOLERS[:1], ids=lambda h: h.name)
def test_stopped_instance_leaves_rotation_within_3s_and_returns(host: Host) -> None:
    try:
        down_after = _seconds_until(host, "systemctl stop pgbouncer@1.service", "pgbouncer1", "DOWN", 5.0)
        print(f"{host.name}: stopped instance DOWN after {down_after:.1f}s")
        assert down_after <= 3.0
        assert all(_query(host) == 1 for _ in range(10))  # the other instances serve every client
    finally:
        up_after = _seconds_until(host, "systemctl start pgbouncer@1.service", "pgbouncer1", "UP", 10.0)
    print(f"{host.name}: restarted instance UP after {up_after:.1f}s")


@pytest.mark.parametrize("host", POOLERS[:1], ids=lambda h: h.name)
def test_hung_instance_leaves_rotation_within_3s_and_returns(host: Host) -> None:
    """A hung process still accepts connections (the kernel queues them): only a protocol check sees it."""
    pid = host.run("systemctl show -P MainPID pgbouncer@2.service").strip()
    assert pid not in ("", "0")
    try:
        down_after = _seconds_until(host, f"kill -STOP {pid}", "pgbouncer2", "DOWN", 5.0)
        print(f"{host.name}: hung instance DOWN after {down_after:.1f}s")
        assert down_after <= 3.0
        assert all(_query(host) == 1 for _ in range(10))
    finally:
        up_after = _seconds_until(host, f"kill -CONT {pid}", "pgbouncer2", "UP", 10.0)
    print(f"{host.name}: resumed instance UP after {up_after:.1f}s")


@pytest.mark.parametrize("host", POOLERS, ids=lambda h: h.name)
def test_admin_socket_is_root_only(host: Host) -> None:
    assert host.run("stat -c '%U %G %a' /run/haproxy/admin.sock").split() == ["root", "root", "600"]


@pytest.mark.parametrize("host", POOLERS, ids=lambda h: h.name)
def test_haproxy_writes_only_its_own_runtime_directory(host: Host) -> None:
    """The master runs as root: of /run it writes only /run/haproxy (pid file, master and admin sockets)."""
    assert host.run("systemctl show -P ReadWritePaths haproxy.service").split() == ["/run/haproxy"]
    assert host.run("stat -c '%U %a' /run/haproxy").split() == ["root", "700"]
    pid = host.run("systemctl show -P MainPID haproxy.service").strip()
    assert host.run("cat /run/haproxy/haproxy.pid").split()[0] == pid
    assert {"admin.sock", "haproxy.pid", "master.sock"} <= set(host.run("ls /run/haproxy").split())
    assert host.run("ls /run/haproxy.pid /run/haproxy-master.sock 2>/dev/null || true").strip() == ""


@pytest.mark.parametrize("host", POOLERS, ids=lambda h: h.name)
def test_metrics_on_loopback_only(host: Host) -> None:
    # Python's standard library: the hosts have no curl (no role installs it).
    metrics = host.run(
        "python3 -c \"import urllib.request as u; print(u.urlopen('http://127.0.0.1:8404/metrics').read().decode())\""
    )
    assert "haproxy_backend_active_servers" in metrics
    local_addresses = [line.split()[3] for line in host.run("ss -Hltn 'sport = :8404'").splitlines()]
    assert local_addresses == ["127.0.0.1:8404"], local_addresses
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host.address, 8404), timeout=3).close()


@pytest.mark.parametrize("host", POOLERS, ids=lambda h: h.name)
def test_haproxy_unit_is_hardened(host: Host) -> None:
    out = host.run("systemd-analyze security --no-pager haproxy.service | tail -1")
    exposure = float(re.search(r"exposure level[^:]*:\s*([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    print(f"{host.name}: haproxy.service exposure {exposure}")
    assert exposure <= 2.0, out


@pytest.mark.parametrize("host", POOLERS[:1], ids=lambda h: h.name)
def test_haproxy_reload_keeps_established_sessions(host: Host) -> None:
    user = next(u for u in example_config().users if u.username == "app_user")
    with psycopg.connect(
        host=host.address, port=example_config().listen_port, user=user.username, password=user.password,
        dbname="app", connect_timeout=5, autocommit=True,
    ) as conn:  # fmt: skip
        assert conn.execute("SELECT 1").fetchone() == (1,)
        host.run("systemctl reload haproxy.service")
        time.sleep(1)
        assert conn.execute("SELECT 2").fetchone() == (2,)
    assert _query(host) == 1
    # Once its last session is gone the old worker exits: it stops accepting at the reload, or clients would
    # keep reaching the old configuration (and drains sent to the admin socket would miss them).
    for _ in range(50):
        workers = host.run("pgrep -u haproxy -c -x haproxy || true").strip()
        if workers == "1":
            break
        time.sleep(0.2)
    assert workers == "1", host.run("ps -o pid,lstart,args -u haproxy")


def _haproxy_session_lines(host: Host, since: str) -> list[str]:
    time.sleep(0.5)  # journald receives the datagram asynchronously
    return [
        line
        for line in host.run(f"journalctl -q -o cat -u haproxy.service --since=@{since}").splitlines()
        if " pgbouncer " in line and "pgbouncer_instances/" in line
    ]


@pytest.mark.parametrize("host", POOLERS[:1], ids=lambda h: h.name)
def test_haproxy_logs_sessions_it_could_not_serve(host: Host) -> None:
    """A session HAProxy could not serve is logged, with its client address."""
    since = host.run("date +%s.%N").strip()
    servers = sorted(_server_states(host))
    try:
        for server in servers:
            haproxy_admin(host, f"set server pgbouncer_instances/{server} state maint")
        with socket.create_connection((host.address, example_config().listen_port), timeout=5) as sock:
            client = "{}:{}".format(*sock.getsockname()[:2])
            sock.sendall(bytes.fromhex("0000000804d2162f"))  # SSLRequest; no instance to hand it to
            sock.settimeout(10)
            assert sock.recv(1) == b""  # HAProxy gives up and closes
    finally:
        for server in servers:
            haproxy_admin(host, f"set server pgbouncer_instances/{server} state ready")
    lines = [line for line in _haproxy_session_lines(host, since) if "<NOSRV>" in line]
    ours = [line for line in lines if line.startswith(f"{client} ")]
    assert len(ours) == 1, lines
    # Any other refused session in that second is the virtual IP's health check (keepalived, from loopback).
    assert all(line.startswith("127.0.0.1:") for line in lines if line not in ours), lines


@pytest.mark.parametrize("host", POOLERS[:1], ids=lambda h: h.name)
def test_haproxy_does_not_log_normal_sessions(host: Host, request: pytest.FixtureRequest) -> None:
    """Normal sessions leave no line, so journald's rate limit never drops errors among thousands of connects.

    Known to fail with client TLS (docs/tls.md): pgbouncer 1.25 closes a TLS session with the client's
    close_notify unread, the kernel answers with a reset, and HAProxy logs the session as aborted (SD).
    """
    if "client_tls_sslmode = disable" not in host.run("cat /etc/pgbouncer/pgbouncer.ini"):
        request.applymarker(
            pytest.mark.xfail(reason="TLS sessions end in a reset (docs/tls.md)", strict=True)
        )
    since = host.run("date +%s.%N").strip()
    assert all(_query(host) == 1 for _ in range(5))
    lines = _haproxy_session_lines(host, since)
    assert lines == [], lines


def test_haproxy_runs_only_on_poolers() -> None:
    """Only the haproxy role installs HAProxy (the lab image has none), and only on the poolers."""
    host = postgres_host()
    assert host.run("dpkg-query -W -f='${Status}' haproxy 2>/dev/null || true") in (
        "",
        "unknown ok not-installed",
    )
    assert host.run("systemctl is-active haproxy.service", check=False).split() == ["inactive"]


@pytest.mark.parametrize("host", POOLERS, ids=lambda h: h.name)
def test_haproxy_limits_are_the_tomls_max_client_conn_times_the_instances(host: Host) -> None:
    """What an operator checks after raising max_client_conn: each instance's slot in HAProxy is exactly the
    TOML's number, the frontend admits that times the host's instances, and the unit's descriptor limit and
    the global maxconn leave room for them."""
    per_instance = example_config().int_setting("max_client_conn")
    instances = len(host.run("ls /etc/pgbouncer | grep -E '^instance-[0-9]+[.]ini$'").split())
    cfg = host.run("cat /etc/haproxy/haproxy.cfg")
    frontend = re.search(r"\nfrontend pgbouncer\n(?:    .*\n)*?    maxconn (\d+)\n", cfg)
    server = re.search(r"\n    default-server .* maxconn (\d+) ", cfg)
    global_ = re.search(r"\nglobal\n(?:    .*\n)*?    maxconn (\d+)\n", cfg)
    assert instances >= 1
    assert frontend, cfg
    assert server, cfg
    assert global_, cfg
    assert int(server.group(1)) == per_instance
    assert int(frontend.group(1)) == per_instance * instances
    assert int(global_.group(1)) > per_instance * instances
    nofile = int(host.run("systemctl show -P LimitNOFILE haproxy.service").strip())
    assert nofile >= 2 * per_instance * instances
    assert nofile == haproxy_limits(per_instance, instances)["file_descriptor_limit"]
    assert nofile == int(host.run("cat /proc/$(systemctl show -P MainPID haproxy.service)/limits | "
                                  "awk '/Max open files/ {print $4}'").strip())  # fmt: skip
