"""The pgbouncer role's validation (tasks/validate.yml) by a real ansible-playbook against fake PostgreSQL
servers on 127.0.0.1 (tests/fake_postgres.py): a server that asks for the backend password in cleartext never
gets it, and a PostgreSQL CA that does not verify a server stops the run, both before the files are rendered,
each naming the server and the reason."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from test_role_budget import EXAMPLE, run

from demo_example import DEMO_ENV
from fake_postgres import FakePostgres, server_context

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "lab"))
from autopgpool_lab.ca import issue, make_ca, pem

BACKEND_PASSWORDS = [DEMO_ENV["APP_DB_PASSWORD"], DEMO_ENV["REPORTING_DB_PASSWORD"]]
ONE_INSTANCE = {"pool1": {"pgbouncer_instances": 1}, "pool2": {"pgbouncer_instances": 1}}


def _toml_naming(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "autopgpool.toml"
    path.write_text(
        EXAMPLE.read_text().replace('host = "pg1"\nport = 5432', f'host = "127.0.0.1"\nport = {port}')
    )
    return path


def _key_pem(key) -> bytes:  # type: ignore[no-untyped-def]
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.mark.parametrize("ask", ["password", "md5"])
def test_a_server_asking_for_cleartext_or_md5_never_gets_the_password(tmp_path: Path, ask: str) -> None:
    with FakePostgres("127.0.0.1", ask=ask, timeout=20) as fake:
        config = _toml_naming(tmp_path, fake.port)
        code, output = run(tmp_path, "--check", extra={"pgbouncer_config_file": str(config)}, **ONE_INSTANCE)
    assert fake.connections == 1, output
    for password in BACKEND_PASSWORDS:
        assert password.encode() not in fake.received
    assert code != 0
    assert f"pool1 could not read max_connections from PostgreSQL 127.0.0.1:{fake.port}" in output
    assert f"127.0.0.1:{fake.port} asks for {ask} authentication, which is not in auth_methods" in output
    assert "Keep the rendered files" not in output


def test_a_ca_that_does_not_verify_a_server_stops_before_rendering(tmp_path: Path) -> None:
    operator, rogue = make_ca("operator CA"), make_ca("pooler CA")
    cert, key = issue(*rogue, ["127.0.0.1"])
    (tmp_path / "certs").mkdir()
    ca_file = tmp_path / "server-ca.crt"
    ca_file.write_bytes(pem(operator[0]))
    with FakePostgres(
        "127.0.0.1", tls=server_context(pem(cert), _key_pem(key), str(tmp_path / "certs"))
    ) as fake:
        config = _toml_naming(tmp_path, fake.port)
        extra = {
            "pgbouncer_config_file": str(config),
            "pgbouncer_server_tls_sslmode": "verify-full",
            "pgbouncer_server_tls_ca_file": str(ca_file),
            # Declared: no login, but its TLS is checked all the same.
            "pgbouncer_postgres_servers": {f"127.0.0.1:{fake.port}": {"max_connections": 100}},
        }
        code, output = run(tmp_path, "--check", extra=extra, **ONE_INSTANCE)
    assert code != 0
    assert "these do not verify with pgbouncer_server_tls_ca_file and their names" in output
    assert f"127.0.0.1:{fake.port}: TLS with 127.0.0.1:{fake.port}: certificate verify failed" in output
    assert "Read the connection limits of PostgreSQL servers" not in output
    assert "Keep the rendered files" not in output
    assert b"app_owner" not in fake.received


def test_the_right_ca_passes_the_check(tmp_path: Path) -> None:
    operator = make_ca("operator CA")
    cert, key = issue(*operator, ["127.0.0.1"])
    (tmp_path / "certs").mkdir()
    ca_file = tmp_path / "server-ca.crt"
    ca_file.write_bytes(pem(operator[0]))
    with FakePostgres(
        "127.0.0.1", tls=server_context(pem(cert), _key_pem(key), str(tmp_path / "certs"))
    ) as fake:
        config = _toml_naming(tmp_path, fake.port)
        extra = {
            "pgbouncer_config_file": str(config),
            "pgbouncer_server_tls_sslmode": "verify-full",
            "pgbouncer_server_tls_ca_file": str(ca_file),
            "pgbouncer_postgres_servers": {f"127.0.0.1:{fake.port}": {"max_connections": 100}},
        }
        code, output = run(tmp_path, "--check", extra=extra, **ONE_INSTANCE)
    assert code == 0, output
    assert "Check that every PostgreSQL server verified" in output
    assert fake.connections == 1  # one TLS check, no login
    assert b"app_owner" not in fake.received


def test_a_ca_that_is_not_pem_is_reported_with_the_other_tls_files_and_nothing_connects(
    tmp_path: Path,
) -> None:
    ca_file = tmp_path / "not-a-ca.crt"
    ca_file.write_text("this is not a certificate\n")
    with FakePostgres("127.0.0.1", ask="password") as fake:
        config = _toml_naming(tmp_path, fake.port)
        extra = {
            "pgbouncer_config_file": str(config),
            "pgbouncer_server_tls_sslmode": "verify-full",
            "pgbouncer_server_tls_ca_file": str(ca_file),
        }
        code, output = run(tmp_path, "--check", extra=extra, **ONE_INSTANCE)
    assert code != 0
    assert "pgbouncer_server_tls_ca_file: not a PEM file" in output
    assert fake.connections == 0
