"""Monitoring as an operator sees it: the lab Prometheus (on pg1, group `monitoring`) scrapes every pooler
host's exporter, the shipped alert rules fire on a saturated pool and a stopped instance and resolve after,
the exporter refuses scrapers outside its allow-list and keeps its credentials to itself, and the fleet view
prints every instance's pools without a secret."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from autopgpool.exporter import DEFAULT_MAX_CONNECTIONS, DEFAULT_TIMEOUT, FD_RESERVE

from .stack import Host, ansible_playbook, demo_secrets, example_config, poolers, postgres_host

pytestmark = pytest.mark.e2e

try:
    POOLERS = poolers()
    # inventories/lab/hosts.yml puts pg1, the PostgreSQL machine, in group monitoring.
    PROMETHEUS = f"http://{postgres_host().address}:9090"
except AssertionError:  # lab down: test_clients.test_the_lab_is_up fails loudly
    POOLERS = []
    PROMETHEUS = ""
EXPORTER_PORT = 9127
# lab_prometheus_interval: scrapes and rule evaluations every 5 s.
INTERVAL = 5.0


def _get(path: str, **params: str) -> Any:
    url = f"{PROMETHEUS}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]


def _query(expr: str) -> dict[tuple[str, ...], float]:
    """Instant query; results keyed by (host, instance_id)."""
    return {
        (r["metric"].get("host", ""), r["metric"].get("instance_id", "")): float(r["value"][1])
        for r in _get("/api/v1/query", query=expr)["result"]
    }


def _alerts(name: str, **labels: str) -> list[dict[str, Any]]:
    return [
        a
        for a in _get("/api/v1/alerts")["alerts"]
        if a["labels"].get("alertname") == name and all(a["labels"].get(k) == v for k, v in labels.items())
    ]


def _firing(name: str, **labels: str) -> bool:
    return any(a["state"] == "firing" for a in _alerts(name, **labels))


def _wait(check: Callable[[], bool], what: str, timeout: float) -> float:
    """Seconds until check() holds, polled every second; fails after timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(1)
    pytest.fail(f"{what}: not within {timeout:.0f} s")


def _instance_ids(host: Host) -> list[str]:
    units = host.run("systemctl list-units --plain --no-legend --state=active 'pgbouncer@*.service'")
    return sorted(re.findall(r"pgbouncer@(\d+)\.service", units), key=int)


def _connect(host: Host, user: str, secret: str, dbname: str, timeout: int = 10) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=host.address, port=example_config().listen_port, user=user, password=demo_secrets()[secret],
        dbname=dbname, connect_timeout=timeout,
    )  # fmt: skip


def _touch_every_pool(host: Host, instances: int) -> None:
    """pgbouncer creates a pool on its first client. HAProxy balances leastconn, so 2 concurrent sessions per
    instance and database reach every instance."""
    conns = []
    try:
        for _ in range(2 * instances):
            for user, secret, db in (("app_user", "APP_USER_PASSWORD", "app"),
                                     ("report_user", "REPORT_USER_PASSWORD", "reporting")):  # fmt: skip
                conn = _connect(host, user, secret, db)
                conns.append(conn)
                conn.execute("SELECT 1")
    finally:
        for conn in conns:
            conn.close()


def test_prometheus_sees_every_instance_of_every_host_up_with_pool_metrics() -> None:
    assert POOLERS, "no pooler host in the lab inventory"
    expected = set()
    for host in POOLERS:
        ids = _instance_ids(host)
        assert ids, f"{host.name}: no pgbouncer instance"
        _touch_every_pool(host, len(ids))
        expected |= {(host.name, i) for i in ids}

    def targets_up() -> bool:
        targets = _get("/api/v1/targets")["activeTargets"]
        healthy = {
            t["labels"].get("host")
            for t in targets
            if t["labels"].get("job") == "pgbouncer" and t["health"] == "up"
        }
        return healthy == {h.name for h in POOLERS}

    _wait(targets_up, "one healthy pgbouncer target per pooler host", 60)

    def all_up() -> bool:
        up = _query("pgbouncer_up")
        return set(up) == expected and all(v == 1 for v in up.values())

    _wait(all_up, f"pgbouncer_up == 1 for {sorted(expected)}", 30)
    for metric in ("pgbouncer_pool_clients", "pgbouncer_pool_servers", "pgbouncer_pool_maxwait_seconds",
                   "pgbouncer_stats_transactions_total", "pgbouncer_fds_connections"):  # fmt: skip
        expr = f"count by (host, instance_id) ({metric})"
        _wait(lambda e=expr: set(_query(e)) == expected, f"{metric} for every instance", 30)  # type: ignore[misc]
    rules = {r["name"] for g in _get("/api/v1/rules")["groups"] for r in g["rules"]}
    assert {"PgbouncerClientsWaiting", "PgbouncerInstanceDown", "PostgresConnectionBudgetNearLimit"} <= rules
    print(f"Prometheus: {len(expected)} instances up on {len(POOLERS)} hosts, {len(rules)} rules loaded")


@pytest.mark.parametrize("host", POOLERS[:1], ids=lambda h: h.name)
def test_a_saturated_pool_fires_the_waiting_alert_and_it_resolves(host: Host) -> None:
    """reporting is a session pool: 3 more slow clients per instance than its size keep clients queued.
    Bounded: at most `clients` connections, each query 10 s, the whole load at most 180 s."""
    pool_size = next(p.pool_size for p in example_config().pools if p.name == "reporting")
    assert pool_size is not None
    instances = len(_instance_ids(host))
    clients = instances * (pool_size + 3)
    stop = threading.Event()
    deadline = time.monotonic() + 180
    errors: list[str] = []

    def client() -> None:
        # A queued client waits at most one query (10 s): under pgbouncer's query_wait_timeout (30 s) and the
        # connect timeout, so the queue never empties while the load runs.
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                with _connect(host, "report_user", "REPORT_USER_PASSWORD", "reporting", timeout=25) as conn:
                    conn.execute("SELECT pg_sleep(10)")
            except psycopg.Error as exc:
                errors.append(type(exc).__name__)
                time.sleep(1)

    labels = {"host": host.name, "database": "reporting", "user": "reporting_owner"}
    assert not _alerts("PgbouncerClientsWaiting", **labels), "alert active before the load"
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    try:
        for t in threads:
            t.start()
        waiting = f'sum(pgbouncer_pool_clients{{host="{host.name}",database="reporting",state="waiting"}})'
        _wait(lambda: sum(_query(waiting).values()) > 0, "waiting clients in Prometheus", 60)
        print(f"{host.name}: waiting clients seen: {sum(_query(waiting).values()):.0f}")
        # for: 1m, then up to one scrape and one evaluation late.
        fired = _wait(
            lambda: _firing("PgbouncerClientsWaiting", **labels), "PgbouncerClientsWaiting fires", 90
        )
        print(f"{host.name}: {clients} clients on {instances} x {pool_size}: alert firing {fired:.0f} s "
              f"after clients were seen waiting")  # fmt: skip
        assert 60 - 2 * INTERVAL <= fired <= 60 + 4 * INTERVAL
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=40)
    resolved = _wait(lambda: not _alerts("PgbouncerClientsWaiting", **labels), "the alert resolves", 60)
    print(f"{host.name}: resolved {resolved:.0f} s after the load stopped; client errors: {len(errors)}")


@pytest.mark.parametrize("host", POOLERS[-1:], ids=lambda h: h.name)
def test_stopping_an_instance_fires_instance_down(host: Host) -> None:
    instance = _instance_ids(host)[-1]
    labels = {"host": host.name, "instance_id": instance}
    try:
        host.run(f"systemctl stop pgbouncer@{instance}.service")
        fired = _wait(lambda: _firing("PgbouncerInstanceDown", **labels), "PgbouncerInstanceDown fires", 60)
        print(f"{host.name}: instance {instance} stopped, PgbouncerInstanceDown firing after {fired:.0f} s")
        assert fired >= 30 - 2 * INTERVAL  # for: 30s
    finally:
        host.run(f"systemctl start pgbouncer@{instance}.service")
    _wait(lambda: not _alerts("PgbouncerInstanceDown", **labels), "PgbouncerInstanceDown resolves", 60)


@pytest.mark.parametrize("host", POOLERS, ids=lambda h: h.name)
def test_scrapes_from_outside_the_allow_list_are_refused(host: Host) -> None:
    url = f"http://{host.address}:{EXPORTER_PORT}/metrics"
    # The controller (10.231.0.1) is not on the lab's allow-list (127.0.0.0/8 and the monitoring host).
    try:
        urllib.request.urlopen(url, timeout=5).read()
    except OSError as exc:  # dropped by systemd's IP filter (timeout) or closed by the exporter (reset)
        print(f"{host.name}: scrape from the controller refused: {type(exc).__name__}")
    else:
        pytest.fail(f"{host.name}: the exporter answered a scraper outside its allow-list")
    # The monitoring host is.
    body = postgres_host().run(
        f"python3 -c \"import urllib.request as u; print(u.urlopen('{url}', timeout=5).read().decode())\""
    )
    assert f'pgbouncer_up{{host="{host.name}",instance_id="1"}} 1.0' in body


@pytest.mark.parametrize("host", POOLERS, ids=lambda h: h.name)
def test_exporter_credentials_and_unit(host: Host) -> None:
    # root's file, the exporter's group reads it: the exporter cannot rewrite its own configuration.
    assert host.run("stat -c '%a %U %G' /etc/autopgpool-exporter/exporter.json").split() == [
        "640", "root", "autopgpool-exporter",
    ]  # fmt: skip
    assert host.run("stat -c '%a %U' /etc/autopgpool-exporter").split() == ["750", "root"]
    denied = host.run("runuser -u nobody -- cat /etc/autopgpool-exporter/exporter.json", check=False)
    assert demo_secrets()["STATS_PASSWORD"] not in denied
    assert host.run("systemctl show -P User autopgpool-exporter.service").strip() == "autopgpool-exporter"
    assert host.run("systemctl is-active autopgpool-exporter.service").strip() == "active"
    out = host.run("systemd-analyze security --no-pager autopgpool-exporter.service | tail -1")
    exposure = float(re.search(r"exposure level[^:]*:\s*([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    print(f"{host.name}: autopgpool-exporter.service exposure {exposure}")
    assert exposure <= 1.5, out


# Run on the monitoring host (on the exporter's allow-list): 300 idle connections, then a real scrape, then
# how long each idle one stayed open until the exporter closed it. Bounded: 300 sockets, at most 15 s.
FLOOD = r"""
import json, socket, sys, time, urllib.request
url, n, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
host, port = url.split("/")[2].rsplit(":", 1)
socks, opened = [], []
for _ in range(n):
    socks.append(socket.create_connection((host, int(port)), timeout=5))
    opened.append(time.monotonic())
time.sleep(2.1)  # past the exporter's cache window: this scrape reads the consoles during the flood
t = time.monotonic()
body = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
scrape = time.monotonic() - t
held = []
for s, at in zip(socks, opened):
    s.settimeout(max(0.01, at + limit - time.monotonic()))
    try:
        if s.recv(1) == b"":
            held.append(time.monotonic() - at)
    except ConnectionResetError:
        held.append(time.monotonic() - at)
    except OSError:
        pass
    s.close()
try:
    urllib.request.urlopen(url + "/", timeout=5)
    other = 200
except urllib.error.HTTPError as exc:
    other = exc.code
up = [line for line in body.splitlines() if line.startswith("pgbouncer_up{")]
print(json.dumps({"held": held, "scrape": scrape, "up": up, "other": other}))
"""


@pytest.mark.parametrize("host", POOLERS[:1], ids=lambda h: h.name)
def test_300_idle_connections_are_released_within_the_timeout_while_a_scrape_succeeds(host: Host) -> None:
    """The exporter's per-connection timeout (pgbouncer_exporter_timeout, 5 s) and its bound
    (pgbouncer_exporter_max_connections, 256: one more closes the oldest idle one), and the unit limits
    sized from it, as systemd shows them."""
    ids = _instance_ids(host)
    url = f"http://{host.address}:{EXPORTER_PORT}"
    pid = host.run("systemctl show -P MainPID autopgpool-exporter.service").strip()
    out = postgres_host().run(f"python3 - {url} 300 {DEFAULT_TIMEOUT + 2}", stdin=FLOOD, timeout=60)
    result = json.loads(out.strip().splitlines()[-1])
    held = result["held"]
    print(f"{host.name}: scrape during 300 idle connections took {result['scrape']:.2f} s; "
          f"{len(held)} closed by the exporter, the longest after {max(held, default=0):.1f} s")  # fmt: skip
    assert sorted(result["up"]) == sorted(
        f'pgbouncer_up{{host="{host.name}",instance_id="{i}"}} 1.0' for i in ids
    )
    assert len(held) == 300, "idle connections still open after the timeout"
    assert max(held) <= DEFAULT_TIMEOUT + 1
    assert result["other"] == 404
    threads = host.run(f"grep ^Threads: /proc/{pid}/status").split()[1]
    assert int(threads) <= 2, f"{threads} threads"
    props = "-p TasksMax -p LimitNOFILE -p MemoryMax -p InaccessiblePaths"
    shown = dict(
        line.split("=", 1)
        for line in host.run(f"systemctl show {props} autopgpool-exporter.service").splitlines()
    )
    print(f"{host.name}: {shown}")
    assert shown["TasksMax"] == "8"
    assert shown["LimitNOFILE"] == str(DEFAULT_MAX_CONNECTIONS + len(ids) + FD_RESERVE)
    assert shown["MemoryMax"] == str(160 * 1024 * 1024)
    assert "/etc/pgbouncer" in shown["InaccessiblePaths"]
    limits = host.run(f"grep 'Max open files' /proc/{pid}/limits").split()
    assert limits[3] == shown["LimitNOFILE"], limits


def test_fleet_view_prints_every_instance_and_totals_without_secrets() -> None:
    result = ansible_playbook("playbooks/fleet.yml", timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    out = result.stdout
    for host in POOLERS:
        for instance in _instance_ids(host):
            assert re.search(rf"^\s*{host.name}\s+{instance}\s+\S+", out, re.M), (host.name, instance)
    assert re.search(r"TOTAL\s+reporting\s+reporting_owner", out)
    assert re.search(rf"{len(POOLERS)} host\(s\), \d+ instance\(s\), 0 down", out)
    for value in demo_secrets().values():
        assert value not in out
    print(out[out.index("host ") - 1 :].split("PLAY RECAP")[0])
