"""The postgres_ping module against a real PostgreSQL 15 on loopback: SCRAM logins, MD5 and cleartext only
over verified TLS and when allowed, TLS with verify-ca/verify-full against a CA made here (also given as PEM
text, and TLS-only), and the refusals (wrong password, wrong CA, wrong name, MD5/cleartext unverified)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from autopgpool.api import LIMITS_QUERY, server_limits
from autopgpool.budget import make_limits

from .test_pgbouncer_real import (
    PG_BIN,
    _chown,
    _ensure_user,
    _eventually,
    _free_port,
    _run_as,
    _stop,
    _wait_port,
)

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "plugins" / "modules"))

import postgres_ping  # noqa: E402

PASSWORD = "ping-test-pw-not-secret"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_ca(base: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=base)  # fmt: skip


@pytest.fixture(scope="module")
def server() -> Iterator[dict[str, object]]:
    _ensure_user()
    base = Path(tempfile.mkdtemp(prefix="autopgpool-ping-"))
    base.chmod(0o755)
    _make_ca(base, "ca")
    _make_ca(base, "other-ca")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=db.test", "-keyout", "server.key",
             "-out", "server.csr", cwd=base)  # fmt: skip
    (base / "san.ext").write_text("subjectAltName=DNS:db.test,IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", "san.ext", "-out", "server.crt", cwd=base)  # fmt: skip
    for name in ("server.key", "server.crt"):
        (base / name).chmod(0o600)
        _chown(base / name)
    (base / "pgdata").mkdir()
    _chown(base / "pgdata")
    _chown(base)
    port = _free_port()
    postgres = None
    try:
        subprocess.run(
            [str(PG_BIN / "initdb"), "-D", str(base / "pgdata"), "-U", "postgres", "--auth-local=trust",
             "--auth-host=scram-sha-256", "--no-sync"],
            check=True, capture_output=True, cwd=base, **_run_as(),
        )  # fmt: skip
        hba = base / "pgdata" / "pg_hba.conf"
        hba.write_text(
            "local all all trust\n"
            "host all md5_user 127.0.0.1/32 md5\n"
            "host all plain_user 127.0.0.1/32 password\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
        )
        with (base / "postgres.log").open("wb") as log:
            postgres = subprocess.Popen(
                [str(PG_BIN / "postgres"), "-D", str(base / "pgdata"), "-p", str(port), "-k", str(base),
                 "-c", "listen_addresses=127.0.0.1", "-c", "ssl=on",
                 "-c", f"ssl_cert_file={base / 'server.crt'}", "-c", f"ssl_key_file={base / 'server.key'}"],
                stdout=subprocess.DEVNULL, stderr=log, cwd=base, **_run_as(),
            )  # fmt: skip
        _wait_port(port, postgres, "postgres", base / "postgres.log")

        def admin(sql: str) -> bool:
            psql = [str(PG_BIN / "psql"), "-h", str(base), "-p", str(port), "-U", "postgres", "-XAtqc", sql]
            subprocess.run(psql, check=True, capture_output=True, **_run_as())
            return True

        _eventually(lambda: admin("SELECT 1"), "PostgreSQL accepts logins")
        admin(f"CREATE ROLE scram_user LOGIN PASSWORD '{PASSWORD}'")
        admin(f"SET password_encryption = 'md5'; CREATE ROLE md5_user LOGIN PASSWORD '{PASSWORD}'")
        admin(f"CREATE ROLE plain_user LOGIN PASSWORD '{PASSWORD}'")
        yield {"host": "127.0.0.1", "port": port, "database": "postgres", "base": base}
    finally:
        _stop(postgres)
        if not os.environ.get("AUTOPGPOOL_KEEP_LAB"):
            subprocess.run(["rm", "-rf", str(base)], check=False)


def _ping(server: dict[str, object], **overrides: object) -> dict[str, object]:
    params = {"host": server["host"], "port": server["port"], "database": server["database"],
              "user": "scram_user", "password": PASSWORD, "connect_timeout": 5} | overrides  # fmt: skip
    return postgres_ping.ping(params)


def test_logs_in_with_scram_and_queries(server: dict[str, object]) -> None:
    result = _ping(server, query="SELECT current_user, NULL::text, 1 + 1")
    assert result["rows"] == [["scram_user", None, "2"]]
    assert result["tls"] is None
    assert result["auth_method"] == "scram-sha-256"
    assert result["verified"] is False


@pytest.mark.parametrize(("user", "method"), [("md5_user", "md5"), ("plain_user", "password")])
def test_md5_and_cleartext_only_over_verified_tls_when_allowed(
    server: dict[str, object], user: str, method: str
) -> None:
    base = server["base"]
    for sslmode in ("disable", "prefer", "require"):
        with pytest.raises(postgres_ping.PostgresError) as refused:
            _ping(server, user=user, sslmode=sslmode, auth_methods=[method, "scram-sha-256"])
        message = str(refused.value)
        assert f"127.0.0.1:{server['port']} asks for {method} authentication" in message
        assert "not verified" in message
        assert PASSWORD not in message
    with pytest.raises(postgres_ping.PostgresError, match="not in auth_methods"):
        _ping(server, user=user, sslmode="verify-full", sslrootcert=f"{base}/ca.crt")
    result = _ping(server, user=user, sslmode="verify-full", sslrootcert=f"{base}/ca.crt",
                   auth_methods=[method], query="SELECT current_user")  # fmt: skip
    assert result["rows"] == [[user]]
    assert result["auth_method"] == method
    assert result["verified"] is True


def test_verify_full_against_the_right_ca_and_name(server: dict[str, object]) -> None:
    base = server["base"]
    result = _ping(server, sslmode="verify-full", sslrootcert=f"{base}/ca.crt", server_name="db.test",
                   query="SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")  # fmt: skip
    assert result["rows"] == [["t"]]
    assert str(result["tls"]).startswith("TLSv1.")
    by_address = _ping(server, sslmode="verify-full", sslrootcert=f"{base}/ca.crt")
    assert by_address["rows"] == [["1"]]
    # The CA as PEM text (a controller file not yet on the host running the module).
    pem = (base / "ca.crt").read_text()
    as_text = _ping(server, sslmode="verify-full", sslrootcert_data=pem, server_name="db.test")
    assert as_text["verified"] is True
    # verify-ca checks the chain only, as pgbouncer does: another name is fine.
    assert _ping(server, sslmode="verify-ca", sslrootcert_data=pem, server_name="other.test")["verified"]


def test_tls_only_checks_the_certificate_without_logging_in(server: dict[str, object]) -> None:
    base = server["base"]
    pem = (base / "ca.crt").read_text()
    params = {"host": server["host"], "port": server["port"], "sslmode": "verify-full", "tls_only": True,
              "connect_timeout": 5}  # fmt: skip
    result = postgres_ping.ping({**params, "sslrootcert_data": pem, "server_name": "db.test"})
    assert result["verified"] is True
    assert result["rows"] == []
    assert result["auth_method"] is None
    with pytest.raises(postgres_ping.PostgresError) as refused:
        postgres_ping.ping({**params, "sslrootcert_data": (base / "other-ca.crt").read_text()})
    assert f"TLS with 127.0.0.1:{server['port']}: certificate verify failed" in str(refused.value)


def test_tls_refusals_name_the_problem(server: dict[str, object]) -> None:
    base = server["base"]
    with pytest.raises(postgres_ping.PostgresError, match="certificate verify failed"):
        _ping(server, sslmode="verify-full", sslrootcert=f"{base}/other-ca.crt")
    with pytest.raises(postgres_ping.PostgresError, match=r"match|mismatch"):
        _ping(server, sslmode="verify-full", sslrootcert=f"{base}/ca.crt", server_name="other.test")
    assert _ping(server, sslmode="require")["tls"]


def test_wrong_password_is_the_servers_message_without_the_password(server: dict[str, object]) -> None:
    base = server["base"]
    verified = {"sslmode": "verify-full", "sslrootcert": f"{base}/ca.crt", "auth_methods": ["md5"]}
    for user, extra in (("scram_user", {}), ("md5_user", verified)):
        with pytest.raises(postgres_ping.PostgresError) as refused:
            _ping(server, user=user, password="wrong-password-xyz", **extra)
        assert "password authentication failed" in str(refused.value)
        assert "wrong-password-xyz" not in str(refused.value)
        assert PASSWORD not in str(refused.value)


def test_unreachable_port_is_named() -> None:
    with pytest.raises(postgres_ping.PostgresError, match=r"cannot connect to 127\.0\.0\.1:"):
        postgres_ping.ping({"host": "127.0.0.1", "port": _free_port(), "user": "u", "password": "p",
                            "database": "d", "connect_timeout": 2})  # fmt: skip


def test_reads_the_connection_limits_the_budget_needs(server: dict[str, object]) -> None:
    """What the pgbouncer role asks a PostgreSQL server whose limits the inventory does not declare: as an
    ordinary login role, and PostgreSQL 15 has no reserved_connections (read as 0)."""
    result = _ping(server, query=LIMITS_QUERY)
    assert result["rows"] == [["100", "3", "0"]]
    limits = server_limits({"127.0.0.1:5432": {"other_clients": 7}}, [{"server": "127.0.0.1:5432", **result}])
    assert make_limits(limits)["127.0.0.1:5432"].budget == 100 - 3 - 7
