"""The exporter's configuration (both sides), its samples and allow-list, and the fleet table.

The exporter against a real pgbouncer is in tests/integration/test_exporter_real.py.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from autopgpool import ConfigError
from autopgpool.exporter import (
    Collector,
    ExporterConfigError,
    Instance,
    Snapshot,
    allowed,
    parse_exporter_config,
    samples,
)
from autopgpool.monitoring import exporter_config, file_sd, fleet_table
from demo_example import DEMO_ENV, EXAMPLE_CONFIG

TOML = EXAMPLE_CONFIG.read_text()
ENDPOINTS = [
    {"id": 1, "port": 6401, "socket_dir": "/run/pgbouncer/1", "socket": "/run/pgbouncer/1/.s.PGSQL.6401"},
    {"id": 2, "port": 6402, "socket_dir": "/run/pgbouncer/2", "socket": "/run/pgbouncer/2/.s.PGSQL.6402"},
]


def _config(**kwargs: object) -> dict[str, object]:
    return exporter_config(TOML, DEMO_ENV, host="pool1", endpoints=ENDPOINTS, **kwargs)  # type: ignore[arg-type]


def test_exporter_config_uses_the_stats_user_and_its_password() -> None:
    cfg = _config(fd_limit=1100, postgres_max_connections={"pg1:5432": 100})
    assert cfg["user"] == "stats"
    assert cfg["password"] == DEMO_ENV["STATS_PASSWORD"]
    assert cfg["instances"] == [
        {"id": 1, "socket_dir": "/run/pgbouncer/1", "port": 6401, "fd_limit": 1100},
        {"id": 2, "socket_dir": "/run/pgbouncer/2", "port": 6402, "fd_limit": 1100},
    ]
    assert cfg["listen_address"] == "127.0.0.1"
    assert cfg["allow"] == ["127.0.0.0/8"]
    assert cfg["postgres_max_connections"] == {"pg1:5432": 100}
    # What the role writes is exactly what the exporter accepts.
    parsed = parse_exporter_config(json.loads(json.dumps(cfg)))
    assert parsed.user == "stats"
    assert len(parsed.instances) == 2
    assert DEMO_ENV["STATS_PASSWORD"] not in repr(parsed)


def test_exporter_config_refuses_an_admin_or_unknown_user_naming_keys_not_values() -> None:
    with pytest.raises(ConfigError) as exc:
        _config(stats_user="admin")
    assert "pgbouncer_exporter_stats_user" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        _config(
            stats_user="nobody",
            listen_address="not-an-ip",
            listen_port=0,
            allow=["10.0.0.0/33"],
            postgres_max_connections={"pg1": 0},
        )
    message = str(exc.value)
    for key in (
        "pgbouncer_exporter_stats_user",
        "pgbouncer_exporter_listen_address",
        "pgbouncer_exporter_port",
        "pgbouncer_exporter_allowlist[0]",
        "pgbouncer_exporter_postgres_max_connections.pg1",
    ):
        assert key in message
    assert "not-an-ip" not in message
    for secret in DEMO_ENV.values():
        assert secret not in message


def test_exporter_config_without_stats_users_says_so() -> None:
    toml = TOML.replace('stats_users = ["stats"]\n', "")
    with pytest.raises(ConfigError, match=r"pgbouncer\.stats_users"):
        exporter_config(toml, DEMO_ENV, host="pool1", endpoints=ENDPOINTS)


def test_parse_exporter_config_collects_every_problem_without_values() -> None:
    with pytest.raises(ExporterConfigError) as exc:
        parse_exporter_config(
            {"host": "h", "user": "stats", "password": "", "listen_address": "x", "listen_port": 70000,
             "allow": ["bad"],
             "instances": [{"id": 1, "socket_dir": "/s", "port": 1}, {"id": 1, "port": "p"}]}
        )  # fmt: skip
    message = str(exc.value)
    for key in ("password", "listen_address", "listen_port", "allow[0]", "instances[1].socket_dir",
                "instances[1].port", "every id must be unique"):  # fmt: skip
        assert key in message


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1", True),
        ("10.231.0.10", True),
        ("10.231.0.1", False),
        ("::ffff:10.231.0.10", True),
        ("::1", False),
        ("garbage", False),
    ],
)
def test_allow_list(address: str, expected: bool) -> None:
    nets = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("10.231.0.10/32")]
    assert allowed(address, nets) is expected


POOL_ROW = {
    "database": "app", "user": "app_owner", "cl_active": 3, "cl_waiting": 2, "cl_active_cancel_req": 0,
    "cl_waiting_cancel_req": 0, "sv_active": 3, "sv_active_cancel": 0, "sv_being_canceled": 0, "sv_idle": 1,
    "sv_used": 0, "sv_tested": 0, "sv_login": 0, "maxwait": 4, "maxwait_us": 500000,
    "pool_mode": "transaction",
}  # fmt: skip


def _snapshot(up: bool = True) -> Snapshot:
    inst = Instance(id=1, socket_dir="/run/pgbouncer/1", port=6401, fd_limit=1100)
    if not up:
        return Snapshot(inst, up=False)
    return Snapshot(
        inst,
        up=True,
        pools=[POOL_ROW],
        stats=[{"database": "app", "total_xact_count": 10, "total_query_time": 2_000_000}],
        databases=[
            {
                "name": "app",
                "host": "pg1",
                "port": 5432,
                "pool_size": 20,
                "reserve_pool_size": 5,
                "max_connections": 0,
                "current_connections": 4,
                "paused": 0,
                "disabled": 0,
            }
        ],
        lists={"used_clients": 5, "login_clients": 1, "used_servers": 4, "free_clients": 45},
        config={"max_client_conn": "500"},
    )


def test_samples_carry_host_instance_and_pool_labels_in_base_units() -> None:
    got = {(s.name, s.labels): s.value for s in samples("pool1", [_snapshot()], {"pg1:5432": 100})}
    pool = (("database", "app"), ("host", "pool1"), ("instance_id", "1"))
    assert got[("pgbouncer_pool_clients", (*pool, ("state", "waiting"), ("user", "app_owner")))] == 2
    assert got[("pgbouncer_pool_servers", (*pool, ("state", "idle"), ("user", "app_owner")))] == 1
    assert got[("pgbouncer_pool_maxwait_seconds", (*pool, ("user", "app_owner")))] == 4.5
    assert got[("pgbouncer_stats_query_time_seconds", pool)] == 2.0
    assert got[("pgbouncer_stats_transactions", pool)] == 10
    inst = (("host", "pool1"), ("instance_id", "1"))
    assert got[("pgbouncer_up", inst)] == 1
    assert got[("pgbouncer_fd_limit", inst)] == 1100
    assert got[("pgbouncer_fds_connections", inst)] == 10
    assert got[("pgbouncer_config_max_client_conn", inst)] == 500
    db = (("backend", "pg1:5432"), ("database", "app"), ("host", "pool1"), ("instance_id", "1"))
    assert got[("pgbouncer_database_current_connections", db)] == 4
    assert got[("autopgpool_postgres_max_connections", (("backend", "pg1:5432"), ("host", "pool1")))] == 100


def test_a_down_instance_reports_up_zero_and_nothing_else() -> None:
    names = {s.name for s in samples("pool1", [_snapshot(up=False)], {})}
    assert names == {"pgbouncer_up", "pgbouncer_exporter_scrape_duration_seconds", "pgbouncer_fd_limit"}


def test_collector_output_is_valid_exposition_with_an_unreachable_instance(tmp_path: Path) -> None:
    config = parse_exporter_config(
        {"host": "pool1", "user": "stats", "password": "x", "listen_address": "127.0.0.1",
         "listen_port": 9127, "allow": ["127.0.0.0/8"], "connect_timeout": 1,
         "instances": [{"id": 7, "socket_dir": str(tmp_path), "port": 6407}]}
    )  # fmt: skip
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(config))  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    assert 'pgbouncer_up{host="pool1",instance_id="7"} 0.0' in text


def _report(host: str, *instances: dict[str, object]) -> dict[str, object]:
    return {"host": host, "instances": list(instances)}


def test_fleet_table_lists_every_pool_side_by_side_with_totals() -> None:
    other = {**POOL_ROW, "cl_waiting": 0, "maxwait": 0, "maxwait_us": 0, "cl_active": 1}
    table = fleet_table(
        [
            _report(
                "pool2",
                {"id": 1, "up": True, "pools": [other]},
                {"id": 2, "up": False, "pools": []},
                {"id": 3, "up": True, "pools": []},
            ),
            _report(
                "pool1", {"id": 2, "up": True, "pools": [POOL_ROW]}, {"id": 1, "up": True, "pools": [other]}
            ),
        ]
    )
    lines = table.splitlines()
    assert lines[0].split() == ["host", "inst", "database", "user", "mode", "cl_active", "cl_waiting",
                                "sv_active", "sv_idle", "sv_used", "maxwait_s"]  # fmt: skip
    body = [line.split() for line in lines[2:7]]
    assert [row[:2] for row in body] == [
        ["pool1", "1"],
        ["pool1", "2"],
        ["pool2", "1"],
        ["pool2", "2"],
        ["pool2", "3"],
    ]
    assert body[3][2] == "DOWN"
    assert body[4][2:] == ["-"]  # up, no pool opened yet: still listed
    totals = [line.split() for line in lines if line.startswith("TOTAL")]
    # app/app_owner: cl_active 1 + 3 + 1, cl_waiting 2, maxwait is the largest (4.5 s), not a sum.
    assert totals[0] == ["TOTAL", "app", "app_owner", "5", "2", "9", "3", "0", "4.5"]
    assert totals[-1][:3] == ["TOTAL", "*", "*"]
    assert lines[-1] == "2 host(s), 5 instance(s), 1 down"


def test_file_sd_is_sorted_and_brackets_ipv6() -> None:
    got = file_sd(
        [
            {"host": "pool2", "address": "fd00::2", "port": 9127},
            {"host": "pool1", "address": "10.0.0.1", "port": 9127},
        ]
    )
    assert got == [
        {"targets": ["10.0.0.1:9127"], "labels": {"host": "pool1"}},
        {"targets": ["[fd00::2]:9127"], "labels": {"host": "pool2"}},
    ]
    with pytest.raises(ConfigError, match=r"targets\[0\]"):
        file_sd([{"host": "x"}])


def test_exporter_script_runs_standalone_and_checks_its_config(tmp_path: Path) -> None:
    """The role copies exporter.py alone onto the hosts: it must not import the rest of the package."""
    script = Path(__file__).resolve().parents[2] / "src/autopgpool/exporter.py"
    path = tmp_path / "exporter.json"
    path.write_text(json.dumps(_config()))
    proc = subprocess.run(
        [sys.executable, "-I", str(script), "--config", str(path), "check"],
        capture_output=True, text=True, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "2 instance(s)" in proc.stdout
    path.write_text(json.dumps({**_config(), "listen_port": "secret-looking"}))
    proc = subprocess.run(
        [sys.executable, "-I", str(script), "--config", str(path), "check"],
        capture_output=True, text=True, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "listen_port" in proc.stderr
    assert "secret-looking" not in proc.stderr
    assert DEMO_ENV["STATS_PASSWORD"] not in proc.stderr


def test_metrics_server_refuses_addresses_outside_the_allow_list(tmp_path: Path) -> None:
    """Serve on loopback with an allow-list that excludes 127.0.0.1: the connection is closed unanswered."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = Path(__file__).resolve().parents[2] / "src/autopgpool/exporter.py"
    for allow, refused in ((["10.0.0.0/8"], True), (["127.0.0.1/32"], False)):
        path = tmp_path / "exporter.json"
        path.write_text(json.dumps({**_config(listen_port=port), "allow": allow}))
        proc = subprocess.Popen(
            [sys.executable, str(script), "--config", str(path), "serve"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            assert "listening on 127.0.0.1" in proc.stdout.readline()
            url = f"http://127.0.0.1:{port}/metrics"
            if refused:
                with pytest.raises((ConnectionError, urllib.error.URLError, OSError)):
                    urllib.request.urlopen(url, timeout=10).read()
            else:
                body = urllib.request.urlopen(url, timeout=10).read().decode()
                assert 'pgbouncer_up{host="pool1",instance_id="1"} 0.0' in body
        finally:
            proc.terminate()
            proc.wait(timeout=10)
