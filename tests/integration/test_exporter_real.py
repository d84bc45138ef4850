"""The exporter in front of the real pgbouncer of test_pgbouncer_real (same fixture): it logs in over the unix
socket as the stats user and reports pools, stats and lists, with a waiting client when a pool is full."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from autopgpool.config import parse_config
from autopgpool.exporter import Collector, parse_exporter_config, pools_report
from autopgpool.monitoring import exporter_config, fleet_table

from .test_pgbouncer_real import Lab, _free_port, _stop, _wait_port, lab  # noqa: F401  (module-scoped fixture)

ERRORS: list[str] = []


def _config(lab: Lab) -> Any:  # noqa: F811
    data = exporter_config(
        lab.toml, lab.env, host="it",
        endpoints=[{"id": 1, "port": lab.pgb_port, "socket_dir": str(lab.base / "pgbsock")}], fd_limit=1000,
    )  # fmt: skip
    return parse_exporter_config(data)


def _metrics(lab: Lab) -> str:  # noqa: F811
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(_config(lab)))  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def test_exporter_reads_every_show_command_as_the_stats_user(lab: Lab) -> None:  # noqa: F811
    assert lab.current_db("app", "app_user", "APP_USER_PASSWORD") == "app_db"  # pools appear on first use
    text = _metrics(lab)
    assert 'pgbouncer_up{host="it",instance_id="1"} 1.0' in text
    names = ["pgbouncer_pool_clients", "pgbouncer_pool_servers", "pgbouncer_pool_maxwait_seconds"]
    names += ["pgbouncer_stats_transactions_total", "pgbouncer_database_pool_size", "pgbouncer_list_items"]
    names += ["pgbouncer_fds_connections", "pgbouncer_config_max_client_conn", "pgbouncer_fd_limit"]
    for name in names:
        assert f"\n{name}{{" in text, name
    assert 'database="app",host="it",instance_id="1",state="waiting",user="app_owner"' in text
    assert 'pgbouncer_config_max_client_conn{host="it",instance_id="1"} 77.0' in text
    assert lab.env["STATS_PASSWORD"] not in text


def test_a_kept_console_connection_stays_up_scrape_after_scrape(lab: Lab) -> None:  # noqa: F811
    """One collector, many scrapes: the console connection is kept and every scrape reads it (psycopg's
    automatic prepare after 5 runs would switch to the extended protocol, which the console refuses)."""
    registry = CollectorRegistry(auto_describe=False)
    collector = Collector(_config(lab))
    registry.register(collector)  # type: ignore[arg-type]
    try:
        kept = None
        for i in range(12):
            text = generate_latest(registry).decode()
            assert 'pgbouncer_up{host="it",instance_id="1"} 1.0' in text, f"scrape {i + 1}"
            kept = kept or collector.consoles[0]._conn
            assert collector.consoles[0]._conn is kept, f"reconnected at scrape {i + 1}"
    finally:
        for console in collector.consoles:
            console.close()


def test_a_full_session_pool_shows_waiting_clients(lab: Lab) -> None:  # noqa: F811
    """reporting is a session pool of N: N + 1 clients in pg_sleep(3) leave one waiting until a session ends.
    Each client closes its own session after its query, so the last one gets a server within about 3 s."""
    size = next(p.pool_size for p in parse_config(lab.toml, lab.env).pools if p.name == "reporting")
    assert size is not None
    threads = [threading.Thread(target=_session, args=(lab,)) for _ in range(size + 1)]
    waiting = 'state="waiting",user="reporting_owner"} 1.0'
    text = ""
    for t in threads:
        t.start()
    try:
        for _ in range(30):
            text = _metrics(lab)
            if waiting in text:
                break
            time.sleep(0.05)
        assert waiting in text
        table = fleet_table([pools_report(_config(lab))])
    finally:
        for t in threads:
            t.join(timeout=15)
    assert not ERRORS, ERRORS
    row = next(line.split() for line in table.splitlines() if line.startswith("it ") and "reporting" in line)
    assert row[5:7] == [str(size), "1"], row  # cl_active, cl_waiting


def _session(lab: Lab) -> None:  # noqa: F811
    try:
        with lab.connect("reporting", "report_user", secret="REPORT_USER_PASSWORD") as conn:
            conn.execute("SELECT pg_sleep(3)")
    except Exception as exc:
        ERRORS.append(type(exc).__name__)


def _proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def test_the_real_exporter_process_survives_300_idle_connections_and_caches_its_scrape(
    lab: Lab,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The installed script as the unit runs it: 300 idle connections cost no thread and are all closed by
    the exporter within its timeout, a scrape of the real pgbouncer succeeds meanwhile, other paths are 404,
    and two scrapes inside the cache window read the console once."""
    port = _free_port()
    data = exporter_config(
        lab.toml, lab.env, host="it", listen_port=port, timeout=2, cache_seconds=3,
        endpoints=[{"id": 1, "port": lab.pgb_port, "socket_dir": str(lab.base / "pgbsock")}],
    )  # fmt: skip
    path = tmp_path / "exporter.json"
    path.write_text(json.dumps(data))
    path.chmod(0o600)
    script = Path(__file__).resolve().parents[2] / "src/autopgpool/exporter.py"
    log = tmp_path / "exporter.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-I", str(script), "--config", str(path), "serve"], stdout=out, stderr=out
        )
    idle: list[socket.socket] = []
    try:
        _wait_port(port, proc, "exporter", log)
        threads = int(_proc_status(proc.pid)["Threads"])
        start = time.monotonic()
        opened = []
        for _ in range(300):
            idle.append(socket.create_connection(("127.0.0.1", port)))
            opened.append(time.monotonic())
        url = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
            first = resp.read().decode()
        assert 'pgbouncer_up{host="it",instance_id="1"} 1.0' in first
        status = _proc_status(proc.pid)
        rss = status["VmRSS"].strip()
        print(f"exporter: {status['Threads']} threads, VmRSS {rss} with 300 idle connections")
        assert int(status["Threads"]) <= max(threads, 2), "threads grew with connections"
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
            second = resp.read().decode()
        scrapes = 'pgbouncer_exporter_console_scrapes_total{host="it"} 1.0'
        assert scrapes in first
        assert scrapes in second, "a second scrape within cache_seconds read the console again"
        for bad in ("/", "/metricsx", "/favicon.ico"):
            with pytest.raises(urllib.error.HTTPError) as exc:
                urllib.request.urlopen(f"{url}{bad}", timeout=5)
            assert exc.value.code == 404, bad
        held = []  # seconds each connection stayed open, from its connect to the exporter's close
        for sock, at in zip(idle, opened, strict=True):
            sock.settimeout(max(0.01, at + 2 + 1.5 - time.monotonic()))
            try:
                if sock.recv(1) == b"":
                    held.append(time.monotonic() - at)
            except ConnectionResetError:
                held.append(time.monotonic() - at)
            except TimeoutError:
                pass
        total = time.monotonic() - start
        print(f"exporter: {len(held)} of 300 idle connections closed, the longest after {max(held):.2f} s "
              f"(timeout 2 s; the oldest sooner, over max_connections); all in {total:.1f} s")  # fmt: skip
        assert len(held) == 300
        assert proc.poll() is None
        assert lab.env["STATS_PASSWORD"] not in log.read_text()
    finally:
        for sock in idle:
            sock.close()
        _stop(proc)
