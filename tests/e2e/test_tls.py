"""TLS end to end on the lab (issue 13): clients verify the pooler with the lab CA (verify-full), plaintext
and clients trusting another CA are refused, pgbouncer talks TLS to PostgreSQL and refuses a server it cannot
verify, the TLS files on the hosts are not world-readable, and unusable TLS input stops a run before any host
changes. Real clients: psql, psycopg and asyncpg.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import ssl
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization

from .stack import REPO, Host, ansible_playbook, console_rows, demo_secrets, example_config, poolers

sys.path.insert(0, str(REPO / "lab"))
from autopgpool_lab.ca import issue, make_ca, pem

pytestmark = pytest.mark.e2e

try:
    POOLERS = poolers()
except AssertionError:  # lab down: test_clients.test_the_lab_is_up fails loudly
    POOLERS = []

LAB_CA = REPO / ".lab" / "tls" / "ca.crt"
BASE_PORT = 6400


def _user(name: str):  # type: ignore[no-untyped-def]
    return next(user for user in example_config().users if user.username == name)


def _connect(host: Host, **kwargs: object) -> psycopg.Connection[tuple[object, ...]]:
    user = _user("app_user")
    params: dict[str, object] = {
        "host": host.name, "hostaddr": host.address, "port": example_config().listen_port,
        "user": user.username, "password": user.password, "dbname": "app", "connect_timeout": 5,
    }  # fmt: skip
    params.update(kwargs)
    return psycopg.connect(**params)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cert, _ = make_ca("a CA nobody here trusts")
    path = tmp_path_factory.mktemp("other-ca") / "ca.crt"
    path.write_bytes(pem(cert))
    return path


@pytest.mark.parametrize("host", POOLERS, ids=lambda h: h.name)
def test_psql_verify_full_by_name_and_by_address(host: Host) -> None:
    user = _user("both_user")
    for target in (f"host={host.name} hostaddr={host.address}", f"host={host.address}"):
        result = subprocess.run(
            ["psql", "-XAt", f"{target} port={example_config().listen_port} user={user.username} "
             f"dbname={user.grants[0]} sslmode=verify-full sslrootcert={LAB_CA}",
             "-c", "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", "-c", "SELECT 40 + 2"],
            env={"PGPASSWORD": user.password, "PATH": "/usr/bin:/bin", "PGCONNECT_TIMEOUT": "5"},
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert result.returncode == 0, f"{target}: {result.stderr}"
        # pg_stat_ssl is PostgreSQL's view of pgbouncer's server connection: TLS on that hop too.
        assert result.stdout.split() == ["t", "42"], result.stdout


@pytest.mark.parametrize("host", POOLERS, ids=lambda h: h.name)
def test_psycopg_verify_full_sees_tls(host: Host) -> None:
    with _connect(host, sslmode="verify-full", sslrootcert=str(LAB_CA)) as conn:
        assert conn.pgconn.ssl_in_use
        row = conn.execute("SELECT current_database()").fetchone()
    assert row == ("app_db",)


@pytest.mark.parametrize("host", POOLERS, ids=lambda h: h.name)
def test_asyncpg_with_a_verifying_context(host: Host) -> None:
    context = ssl.create_default_context(cafile=str(LAB_CA))
    assert context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED
    user = _user("app_user")

    async def run() -> int:
        conn = await asyncpg.connect(
            host=host.address, port=example_config().listen_port, user=user.username, password=user.password,
            database="app", ssl=context, statement_cache_size=0, timeout=10,
        )  # fmt: skip
        try:
            value: int = await conn.fetchval("SELECT 7 * 6")
            assert conn.get_server_version() is not None
            return value
        finally:
            await conn.close()

    assert asyncio.run(run()) == 42


@pytest.mark.parametrize("host", POOLERS, ids=lambda h: h.name)
def test_plaintext_is_refused(host: Host) -> None:
    with pytest.raises(psycopg.OperationalError) as err:
        _connect(host, sslmode="disable").close()
    assert "SSL required" in str(err.value) or "rejected" in str(err.value), err


@pytest.mark.parametrize("host", POOLERS, ids=lambda h: h.name)
def test_a_client_trusting_another_ca_fails(host: Host, other_ca: Path) -> None:
    with pytest.raises(psycopg.OperationalError) as err:
        _connect(host, sslmode="verify-full", sslrootcert=str(other_ca)).close()
    assert "certificate verify failed" in str(err.value), err


@pytest.mark.parametrize("host", POOLERS, ids=lambda h: h.name)
def test_console_through_the_front_door_is_refused_with_tls_too(host: Host) -> None:
    admin = example_config().admin_users[0]
    with pytest.raises(psycopg.OperationalError) as err:
        _connect(
            host, user=admin, password=_user(admin).password, dbname="pgbouncer",
            sslmode="verify-full", sslrootcert=str(LAB_CA),
        ).close()  # fmt: skip
    assert "login rejected" in str(err.value), err


def _console(host: Host, instance: int, command: str) -> list[dict[str, str]]:
    admin = example_config().admin_users[0]
    return console_rows(host, "127.0.0.1", BASE_PORT + instance, admin, _user(admin).password, command)


@pytest.mark.parametrize("host", POOLERS, ids=lambda h: h.name)
def test_show_servers_shows_tls_towards_postgresql(host: Host) -> None:
    with _connect(host) as conn:
        conn.execute("SELECT 1")
    servers = []
    instances = int(host.run("systemctl list-units --plain --no-legend 'pgbouncer@*.service' | wc -l"))
    for n in range(1, instances + 1):
        servers += _console(host, n, "SHOW SERVERS")
    assert servers, f"{host.name}: no server connection on any instance"
    for server in servers:
        assert server["tls"].startswith("TLSv1."), f"{host.name}: {server}"


@pytest.mark.parametrize("host", POOLERS, ids=lambda h: h.name)
def test_tls_files_are_root_and_group_only(host: Host) -> None:
    out = host.run("stat -c '%a %U %G %n' /etc/pgbouncer/tls /etc/pgbouncer/tls/*")
    modes = {line.split()[3]: line.split()[:3] for line in out.splitlines()}
    assert modes["/etc/pgbouncer/tls"] == ["750", "root", "pgbouncer"]
    assert modes["/etc/pgbouncer/tls/client.key"] == ["640", "root", "pgbouncer"]
    assert set(modes) >= {f"/etc/pgbouncer/tls/{f}" for f in ("client.crt", "client-ca.crt", "server-ca.crt")}
    assert all(mode[0].endswith("0") for mode in modes.values()), modes


def test_a_server_that_does_not_verify_is_refused(other_ca: Path) -> None:
    """pgbouncer with a PostgreSQL CA that did not issue pg1's certificate opens no server connection."""
    host = POOLERS[0]
    path = "/etc/pgbouncer/tls/server-ca.crt"
    instances = int(host.run("systemctl list-units --plain --no-legend 'pgbouncer@*.service' | wc -l"))

    def reconnect() -> None:
        host.run("systemctl reload 'pgbouncer@*.service'")
        time.sleep(0.5)
        for n in range(1, instances + 1):
            _console(host, n, "RECONNECT")

    host.run(f"cp -p {path} /root/server-ca.crt.keep && cat > {path}", stdin=other_ca.read_text())
    since = host.run("date '+%Y-%m-%d %H:%M:%S'").strip()
    try:
        reconnect()
        # Every instance needs a new server connection now; none can be made, so queries fail.
        user = _user("app_user")
        for _ in range(2):
            result = subprocess.run(
                ["timeout", "20", "psql", "-XAt", f"host={host.address} port={example_config().listen_port} "
                 f"user={user.username} dbname=app connect_timeout=5", "-c", "SELECT 1"],
                env={"PGPASSWORD": user.password, "PATH": "/usr/bin:/bin"},
                capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
            assert result.returncode != 0, result.stdout
        log = host.run(f"journalctl -q --no-pager -u 'pgbouncer@*' --since '{since}'")
        assert "certificate verify failed" in log, log[-2000:]
    finally:
        host.run(f"cp -p /root/server-ca.crt.keep {path} && rm -f /root/server-ca.crt.keep")
        reconnect()
    time.sleep(1.5)  # server_login_retry
    with _connect(host) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def _digests(host: Host) -> str:
    return host.run(
        "sha256sum /etc/pgbouncer/* /etc/pgbouncer/tls/* /etc/haproxy/haproxy.cfg 2>/dev/null; "
        "for u in $(systemctl list-units --plain --no-legend 'pgbouncer@*.service' | cut -d' ' -f1); "
        "do echo $u $(systemctl show -P MainPID $u); done"
    )


def test_unusable_tls_files_stop_the_run_before_any_host_changes(tmp_path: Path) -> None:
    """A key that does not match its certificate, an expired certificate and a CA file that is not PEM: the
    run names each variable, never shows a key, and nothing changes on any host."""
    throwaway = make_ca("throwaway")
    expired, expired_key = issue(
        *throwaway,
        ["pool1"],
        not_before=dt.datetime(2019, 1, 1, tzinfo=dt.UTC),
        not_after=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
    )
    _, stray_key = issue(*throwaway, ["pool1"])

    def key_pem(key) -> bytes:  # type: ignore[no-untyped-def]
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    (tmp_path / "stray.key").write_bytes(key_pem(stray_key))
    (tmp_path / "expired.crt").write_bytes(pem(expired))
    (tmp_path / "not-a-ca.crt").write_text("this is not a certificate\n")
    extra = tmp_path / "bad-tls.json"
    extra.write_text(
        json.dumps(
            {
                "pgbouncer_client_tls_key_file": str(tmp_path / "stray.key"),
                "pgbouncer_server_tls_ca_file": str(tmp_path / "not-a-ca.crt"),
            }
        )
    )
    before = {host.name: _digests(host) for host in POOLERS}

    result = ansible_playbook("playbooks/site.yml", "-e", f"@{extra}")

    output = result.stdout + result.stderr
    flat = " ".join(output.split())  # the YAML callback wraps long messages
    assert result.returncode != 0
    assert "pgbouncer_client_tls_key_file: does not match the certificate" in flat
    assert "pgbouncer_server_tls_ca_file: not a PEM file" in flat
    assert "PRIVATE KEY" not in output
    assert "TASK [autopgpool.pool.pgbouncer_build" not in result.stdout
    for secret in demo_secrets().values():
        assert secret not in output
    assert {host.name: _digests(host) for host in POOLERS} == before

    (tmp_path / "expired.key").write_bytes(key_pem(expired_key))
    extra.write_text(
        json.dumps(
            {
                "pgbouncer_client_tls_cert_file": str(tmp_path / "expired.crt"),
                "pgbouncer_client_tls_key_file": str(tmp_path / "expired.key"),
            }
        )
    )
    result = ansible_playbook("playbooks/site.yml", "-e", f"@{extra}")
    assert result.returncode != 0
    assert "pgbouncer_client_tls_cert_file: expired on 2020-01-01" in " ".join(result.stdout.split())
    assert {host.name: _digests(host) for host in POOLERS} == before
