"""Drill: certificate rotation is a reload. While pgbench opens a verify-full TLS connection per
transaction (-C) through HAProxy on both pooler hosts, and one client holds an established TLS session,
site.yml deploys a new certificate and key on every pooler: no transaction fails, no instance is restarted,
the held session keeps working, and new connections are served the new certificate. site.yml with the lab's
own files restores it.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import sys
import time
from pathlib import Path

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from e2e.stack import REPO, Host, example_config, task_ran

from .fleet import assert_fleet_healthy, fleet_pids, haproxy_servers, playbook
from .load import Load

sys.path.insert(0, str(REPO / "lab"))
from autopgpool_lab.ca import issue, pem
from autopgpool_lab.config import POOLER_VIP

pytestmark = pytest.mark.drill

TLS_DIR = REPO / ".lab" / "tls"
CA = TLS_DIR / "ca.crt"
VERIFY_FULL = {"PGSSLMODE": "verify-full", "PGSSLROOTCERT": str(CA)}


def _served_serial(host: Host) -> int:
    """The serial number of the certificate the front door presents: PostgreSQL's SSLRequest, then TLS."""
    context = ssl.create_default_context(cafile=str(CA))
    with socket.create_connection((host.address, example_config().listen_port), timeout=5) as raw:
        raw.sendall(struct.pack("!II", 8, 80877103))
        assert raw.recv(1) == b"S"
        with context.wrap_socket(raw, server_hostname=host.address) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _issue_new_certificates(poolers: list[Host], directory: Path) -> dict[str, int]:
    ca_cert = x509.load_pem_x509_certificate(CA.read_bytes())
    ca_key = serialization.load_pem_private_key((TLS_DIR / "ca.key").read_bytes(), password=None)
    serials = {}
    for host in poolers:
        cert, key = issue(ca_cert, ca_key, [host.name, host.address, str(POOLER_VIP)])  # type: ignore[arg-type]
        (directory / f"{host.name}.crt").write_bytes(pem(cert))
        key_file = directory / f"{host.name}.key"
        key_file.touch(mode=0o600)
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        serials[host.name] = cert.serial_number
    return serials


def test_certificate_rotation_is_a_reload_under_load(poolers: list[Host], tmp_path: Path) -> None:
    old = {host.name: _served_serial(host) for host in poolers}
    new = _issue_new_certificates(poolers, tmp_path)
    extra = tmp_path / "rotated.json"
    extra.write_text(
        json.dumps(
            {
                "pgbouncer_client_tls_cert_file": f"{tmp_path}/{{{{ inventory_hostname }}}}.crt",
                "pgbouncer_client_tls_key_file": f"{tmp_path}/{{{{ inventory_hostname }}}}.key",
            }
        )
    )
    user = next(u for u in example_config().users if u.username == "app_user")
    held = psycopg.connect(
        host=poolers[0].address, port=example_config().listen_port, user=user.username,
        password=user.password, dbname="app", sslmode="verify-full", sslrootcert=str(CA), connect_timeout=5,
        autocommit=True,
    )  # fmt: skip
    before = fleet_pids(poolers)
    try:
        with Load(poolers, connect=True, env=VERIFY_FULL) as load:
            time.sleep(2)
            result, took = playbook("playbooks/site.yml", "-e", f"@{extra}")
            time.sleep(2)
        after = fleet_pids(poolers)
        served = {host.name: _served_serial(host) for host in poolers}
        assert held.execute("SELECT 1").fetchone() == (1,), "the established TLS session did not survive"
    finally:
        held.close()
        restore, _ = playbook("playbooks/site.yml")
    print(f"\nDRILL tls-rotation: site.yml took {took:.0f} s; {load.summary()}")
    if load.failures:
        print(load.failure_lines())
    assert task_ran(result.stdout, "Reload pgbouncer instances"), (
        "the new certificate was not applied by a reload"
    )
    assert after == before, f"an instance was restarted: before {before}, after {after}"
    assert served == new, f"served serials {served}, expected the new ones {new} (old {old})"
    assert load.transactions > 0
    assert not load.failures, f"{len(load.failures)} failed:\n{load.failure_lines()}"
    assert {host.name: _served_serial(host) for host in poolers} == old
    assert fleet_pids(poolers) == before
    assert "PRIVATE KEY" not in result.stdout + restore.stdout


def _down_servers(poolers: list[Host]) -> list[str]:
    return [
        f"{host.name}/{name}: {row['status']}"
        for host in poolers
        for name, row in haproxy_servers(host).items()
        if row["status"] != "UP"
    ]


def test_turning_client_tls_off_and_on_fails_nothing(poolers: list[Host]) -> None:
    """require -> disable -> require under -C load with clients on sslmode=prefer (they follow the server).
    HAProxy's health check changes its expectation ('S' <-> 'N') with each step; no instance may go DOWN.
    Turning TLS on goes through `prefer` (tls_on.yml): a client answered 'N' just before a direct reload to
    `require` would be refused ("SSL required"), seen once in 40,000 connections."""
    before = fleet_pids(poolers)
    down: list[str] = []
    with Load(poolers, connect=True, env={"PGSSLMODE": "prefer"}) as load:
        time.sleep(2)
        off, took_off = playbook("playbooks/site.yml", "-e", "pgbouncer_client_tls_sslmode=disable")
        down += _down_servers(poolers)
        plain = _connect_plain(poolers[0])
        time.sleep(2)
        on, took_on = playbook("playbooks/site.yml")
        down += _down_servers(poolers)
        time.sleep(2)
    print(f"\nDRILL tls-toggle: off {took_off:.0f} s, on {took_on:.0f} s; {load.summary()}")
    if load.failures:
        print(load.failure_lines())
    assert plain, "with client TLS off a plaintext client was refused"
    assert task_ran(off.stdout, "Pause HAProxy's health checks"), "HAProxy's checks were not paused"
    assert task_ran(on.stdout, "Reload the running instances with TLS offered"), (
        "TLS required without the prefer step"
    )
    assert fleet_pids(poolers) == before, "an instance was restarted"
    assert not down, down
    assert_fleet_healthy(poolers, timeout=5)
    assert load.transactions > 0
    assert not load.failures, f"{len(load.failures)} failed:\n{load.failure_lines()}"
    with pytest.raises(psycopg.OperationalError):
        _connect_plain(poolers[0])
    assert on.returncode == 0


def _connect_plain(host: Host) -> bool:
    user = next(u for u in example_config().users if u.username == "app_user")
    with psycopg.connect(
        host=host.address, port=example_config().listen_port, user=user.username, password=user.password,
        dbname="app", sslmode="disable", connect_timeout=5,
    ) as conn:  # fmt: skip
        return conn.execute("SELECT 1").fetchone() == (1,)
