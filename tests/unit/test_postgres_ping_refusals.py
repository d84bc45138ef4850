"""The postgres_ping module against fake PostgreSQL servers on real sockets (tests/fake_postgres.py): one that
asks for the password in cleartext, one that sends an MD5 challenge, one that presents a certificate from a CA
the client does not trust. The password's bytes never arrive, and the refusal names the server and the method.
The positive control (a server verified with its CA, password allowed) shows the fake would have caught it."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from fake_postgres import FakePostgres, server_context

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "plugins" / "modules"))
sys.path.insert(0, str(ROOT / "lab"))

import postgres_ping  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402

from autopgpool_lab.ca import issue, make_ca, pem  # noqa: E402

PASSWORD = "owner-password-never-sent-xyz"
USER = "app_owner"


def _key_pem(key) -> bytes:  # type: ignore[no-untyped-def]
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A trusted CA and a server certificate for 127.0.0.1 from it; an attacker's CA and its certificate."""
    base = tmp_path_factory.mktemp("certs")
    trusted, rogue = make_ca("operator CA"), make_ca("rogue CA")
    good_cert, good_key = issue(*trusted, ["127.0.0.1", "db.test"])
    bad_cert, bad_key = issue(*rogue, ["127.0.0.1", "db.test"])
    (base / "good").mkdir()
    (base / "bad").mkdir()
    return {
        "ca": pem(trusted[0]).decode(),
        "good": server_context(pem(good_cert), _key_pem(good_key), str(base / "good")),
        "bad": server_context(pem(bad_cert), _key_pem(bad_key), str(base / "bad")),
    }


@pytest.fixture
def fake(request: pytest.FixtureRequest, certs: dict[str, object]) -> Iterator[FakePostgres]:
    ask, tls = request.param
    with FakePostgres("127.0.0.1", ask=ask, tls=certs[tls] if tls else None, timeout=5) as server:
        yield server


def _ping(fake: FakePostgres, **overrides: object) -> str:
    params = {"host": "127.0.0.1", "port": fake.port, "user": USER, "password": PASSWORD, "database": "db",
              "connect_timeout": 5} | overrides  # fmt: skip
    with pytest.raises(postgres_ping.PostgresError) as refused:
        postgres_ping.ping(params)
    return str(refused.value)


def _never_received(fake: FakePostgres) -> None:
    fake.__exit__(None, None, None)  # wait for the server thread: everything sent has been recorded
    inner = hashlib.md5((PASSWORD + USER).encode()).hexdigest()
    outer = hashlib.md5(inner.encode() + b"salt").hexdigest()
    assert fake.connections >= 1, "the client never connected: the test proves nothing"
    for secret in (PASSWORD.encode(), inner.encode(), outer.encode()):
        assert secret not in fake.received


@pytest.mark.parametrize(
    ("fake", "sslmode", "method"),
    [
        (("password", None), "disable", "password"),
        (("password", None), "prefer", "password"),
        (("password", "bad"), "require", "password"),
        (("md5", None), "disable", "md5"),
        (("md5", "bad"), "prefer", "md5"),
        (("md5", "bad"), "require", "md5"),
    ],
    indirect=["fake"],
)
def test_cleartext_and_md5_never_go_to_an_unverified_server(
    fake: FakePostgres, sslmode: str, method: str
) -> None:
    # Even when the caller allows the method: without a verified certificate, anyone may be answering.
    message = _ping(fake, sslmode=sslmode, auth_methods=["scram-sha-256", "md5", "password"])
    assert f"127.0.0.1:{fake.port} asks for {method} authentication" in message
    assert "not verified" in message
    assert "the password was not sent" in message
    assert PASSWORD not in message
    _never_received(fake)


@pytest.mark.parametrize("fake", [("password", None), ("md5", None)], indirect=True)
def test_the_default_allows_scram_only(fake: FakePostgres) -> None:
    message = _ping(fake)
    assert (
        f"127.0.0.1:{fake.port} asks for {fake.ask} authentication, which is not in auth_methods" in message
    )
    _never_received(fake)


@pytest.mark.parametrize("fake", [("password", "good"), ("md5", "good")], indirect=True)
def test_a_verified_server_gets_a_method_only_when_allowed(
    fake: FakePostgres, certs: dict[str, object]
) -> None:
    message = _ping(fake, sslmode="verify-full", sslrootcert_data=certs["ca"], auth_methods=["scram-sha-256"])
    assert f"asks for {fake.ask} authentication, which is not in auth_methods (scram-sha-256)" in message
    _never_received(fake)


@pytest.mark.parametrize("fake", [("password", "good")], indirect=True)
def test_positive_control_a_verified_server_that_is_allowed_cleartext_receives_it(
    fake: FakePostgres, certs: dict[str, object]
) -> None:
    # The fake closes after the password: the client then reports the closed connection.
    _ping(fake, sslmode="verify-full", sslrootcert_data=certs["ca"], auth_methods=["password"])
    fake.__exit__(None, None, None)
    assert PASSWORD.encode() in fake.received


@pytest.mark.parametrize("fake", [("password", "bad")], indirect=True)
@pytest.mark.parametrize("sslmode", ["verify-ca", "verify-full"])
@pytest.mark.parametrize("tls_only", [False, True])
def test_an_untrusted_certificate_is_refused_before_the_startup_message(
    fake: FakePostgres, certs: dict[str, object], sslmode: str, tls_only: bool
) -> None:
    message = _ping(fake, sslmode=sslmode, sslrootcert_data=certs["ca"], tls_only=tls_only,
                    auth_methods=["password"])  # fmt: skip
    assert message.startswith(f"TLS with 127.0.0.1:{fake.port}: certificate verify failed: ")
    assert f"sslmode={sslmode}" in message
    _never_received(fake)
    assert USER.encode() not in fake.received, "the startup message went out before verification"


@pytest.mark.parametrize("fake", [("password", "good")], indirect=True)
def test_verify_full_checks_the_name_and_tls_only_never_logs_in(
    fake: FakePostgres, certs: dict[str, object]
) -> None:
    wrong = _ping(
        fake, sslmode="verify-full", sslrootcert_data=certs["ca"], server_name="other.test", tls_only=True
    )
    assert "certificate verify failed" in wrong
    assert "other.test" in wrong
    ok = postgres_ping.ping({"host": "127.0.0.1", "port": fake.port, "sslmode": "verify-full",
                             "sslrootcert_data": certs["ca"], "server_name": "db.test", "tls_only": True,
                             "connect_timeout": 5})  # fmt: skip
    assert ok["verified"] is True
    assert ok["rows"] == []
    assert ok["auth_method"] is None
    fake.__exit__(None, None, None)
    assert USER.encode() not in fake.received


def test_a_ca_that_is_not_pem_is_named() -> None:
    with pytest.raises(
        postgres_ping.PostgresError, match="the CA given for sslmode=verify-full cannot be loaded"
    ):
        postgres_ping.ping({"host": "127.0.0.1", "port": 1, "sslmode": "verify-full", "tls_only": True,
                            "sslrootcert_data": "not a certificate"})  # fmt: skip


def test_the_documentation_parses_and_names_every_option() -> None:
    # ansible-doc and ansible-lint read these strings as YAML; a stray "word: " there breaks both.
    doc = yaml.safe_load(postgres_ping.DOCUMENTATION)
    yaml.safe_load(postgres_ping.EXAMPLES)
    returned = yaml.safe_load(postgres_ping.RETURN)
    options = doc["options"]
    assert options["auth_methods"]["default"] == ["scram-sha-256"]
    assert options["auth_methods"]["choices"] == list(postgres_ping.AUTH_METHODS)
    assert options["sslmode"]["choices"] == ["disable", "prefer", "require", "verify-ca", "verify-full"]
    assert {"sslrootcert_data", "tls_only", "server_name"} <= set(options)
    assert {"rows", "tls", "verified", "auth_method", "seconds"} == set(returned)


@pytest.mark.parametrize("fake", [("md5", None)], indirect=True)
def test_a_refusal_names_the_server_as_shown(fake: FakePostgres) -> None:
    """validate.yml passes the TOML's own spelling of a host that came from a $VAR: its value is not shown."""
    message = _ping(fake, shown="$DB_HOST:5432")
    assert message.startswith("$DB_HOST:5432 asks for md5 authentication"), message
    assert "127.0.0.1" not in message
    _never_received(fake)
