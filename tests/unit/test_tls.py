"""The controller-side certificate checks (tls.py) with real certificates from a throwaway CA, and the TLS
plan that renders pgbouncer's files and HAProxy's health check from the same summary."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from autopgpool import ConfigError, deployment_plan, render_files, summarize
from autopgpool.api import TLS_ON_STEP
from autopgpool.tls import check_ca, check_client_tls

# The lab's CA code makes the certificates (the same code that makes the lab's, tested here on the way).
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "lab"))
from test_render import EXAMPLE

from autopgpool_lab.ca import issue, make_ca, pem
from demo_example import DEMO_ENV

NOW = dt.datetime.now(dt.UTC)
NAMES = ["pool1", "10.231.0.11"]


def _key_pem(key) -> str:  # type: ignore[no-untyped-def]
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@pytest.fixture(scope="module")
def ca():  # type: ignore[no-untyped-def]
    return make_ca("test CA")


@pytest.fixture(scope="module")
def good(ca):  # type: ignore[no-untyped-def]
    cert, key = issue(*ca, ["pool1", "10.231.0.11", "db.example.internal"])
    return pem(cert).decode(), _key_pem(key), pem(ca[0]).decode()


def test_a_good_certificate_passes(good) -> None:  # type: ignore[no-untyped-def]
    assert check_client_tls(*good, names=NAMES, min_days=30) == []


def test_mismatched_key_names_the_key_variable(ca, good) -> None:  # type: ignore[no-untyped-def]
    _, other_key = issue(*ca, NAMES)
    problems = check_client_tls(good[0], _key_pem(other_key), good[2], names=NAMES, min_days=30)
    assert problems == [
        "pgbouncer_client_tls_key_file: does not match the certificate in pgbouncer_client_tls_cert_file"
    ]


def test_expired_and_expiring_certificates_are_refused(ca, good) -> None:  # type: ignore[no-untyped-def]
    old, key = issue(
        *ca, NAMES, not_before=NOW - dt.timedelta(days=400), not_after=NOW - dt.timedelta(days=1)
    )
    (problem,) = check_client_tls(pem(old).decode(), _key_pem(key), good[2], names=NAMES, min_days=30)
    assert problem.startswith("pgbouncer_client_tls_cert_file: expired on ")
    soon, key = issue(*ca, NAMES, not_after=NOW + dt.timedelta(days=10))
    (problem,) = check_client_tls(pem(soon).decode(), _key_pem(key), good[2], names=NAMES, min_days=30)
    assert "pgbouncer_tls_min_days (30)" in problem
    assert check_client_tls(pem(soon).decode(), _key_pem(key), good[2], names=NAMES, min_days=5) == []


def test_names_the_certificate_does_not_cover(good) -> None:  # type: ignore[no-untyped-def]
    (problem,) = check_client_tls(*good, names=[*NAMES, "10.231.0.99", "pool2"], min_days=1)
    assert problem.startswith(
        "pgbouncer_client_tls_cert_file: its subjectAltName does not cover 10.231.0.99, pool2"
    )


def test_wildcards_cover_one_label_only(ca) -> None:  # type: ignore[no-untyped-def]
    cert, key = issue(*ca, ["*.db.example.internal"])
    args = (pem(cert).decode(), _key_pem(key), pem(ca[0]).decode())
    assert check_client_tls(*args, names=["pool1.db.example.internal"], min_days=1) == []
    assert check_client_tls(*args, names=["a.pool1.db.example.internal"], min_days=1)


def test_a_certificate_from_another_ca_and_a_ca_that_is_not_pem(good) -> None:  # type: ignore[no-untyped-def]
    other_ca, _ = make_ca("another CA")
    problems = check_client_tls(good[0], good[1], pem(other_ca).decode(), names=NAMES, min_days=1)
    assert problems == ["pgbouncer_client_tls_cert_file: not issued by a CA in pgbouncer_client_tls_ca_file"]
    problems = check_client_tls(good[0], good[1], "not a certificate\n", names=NAMES, min_days=1)
    assert problems == [
        "pgbouncer_client_tls_ca_file: not a PEM file of CA certificates (-----BEGIN CERTIFICATE-----)"
    ]
    assert check_ca("", "pgbouncer_server_tls_ca_file")[0].startswith("pgbouncer_server_tls_ca_file: ")


def test_problems_never_carry_the_key(good) -> None:  # type: ignore[no-untyped-def]
    broken_key = good[1].replace("A", "B", 5)
    problems = check_client_tls("garbage", broken_key, "garbage", names=NAMES, min_days=1)
    assert [p.split(":")[0] for p in problems] == [
        "pgbouncer_client_tls_cert_file",
        "pgbouncer_client_tls_key_file",
        "pgbouncer_client_tls_ca_file",
    ]
    assert not any("BEGIN" in p and "PRIVATE" in p for p in problems)


TLS_TOML = EXAMPLE.replace(
    "[pgbouncer]\n", '[pgbouncer]\nclient_tls_sslmode = "require"\nserver_tls_sslmode = "verify-full"\n', 1
)
BOTH = {"client": True, "server_ca": True}


def test_plan_points_pgbouncer_at_the_installed_files_and_the_check_at_s() -> None:
    ini = render_files(TLS_TOML, DEMO_ENV, salt_key="k", tls=BOTH)["pgbouncer.ini"]
    for line in (
        "client_tls_sslmode = require",
        "client_tls_cert_file = /etc/pgbouncer/tls/client.crt",
        "client_tls_key_file = /etc/pgbouncer/tls/client.key",
        "client_tls_ca_file = /etc/pgbouncer/tls/client-ca.crt",
        "server_tls_sslmode = verify-full",
        "server_tls_ca_file = /etc/pgbouncer/tls/server-ca.crt",
    ):
        assert f"\n{line}\n" in ini
    summary = summarize(TLS_TOML, DEMO_ENV, tls=BOTH)
    assert summary["client_tls"] is True
    assert summary["tls_files"]["client_tls_key_file"] == "/etc/pgbouncer/tls/client.key"
    plain = summarize(EXAMPLE, DEMO_ENV)
    assert plain["client_tls"] is False
    assert plain["tls_files"] == {}


@pytest.mark.parametrize(
    ("tls", "key"),
    [
        ({"client": False, "server_ca": True}, "pgbouncer_client_tls_sslmode"),
        ({"client": True, "server_ca": False}, "pgbouncer_server_tls_sslmode"),
    ],
)
def test_tls_modes_without_their_files_are_refused(tls: dict[str, bool], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        summarize(TLS_TOML, DEMO_ENV, tls=tls)
    assert f"{key}:" in str(err.value)


def test_file_settings_belong_to_the_inventory() -> None:
    toml = EXAMPLE.replace("[pgbouncer]\n", '[pgbouncer]\nclient_tls_key_file = "/tmp/k"\n', 1)
    with pytest.raises(ConfigError) as err:
        render_files(toml, DEMO_ENV, salt_key="k")
    assert "pgbouncer.client_tls_key_file: set by the deployment" in str(err.value)
    assert "pgbouncer_client_tls_key_file" in str(err.value)


def test_the_inventory_can_turn_tls_on_and_the_toml_must_not_contradict_it() -> None:
    inventory = {"client_sslmode": "require", "server_sslmode": "verify-full", **BOTH}
    summary = summarize(EXAMPLE, DEMO_ENV, tls=inventory)
    assert summary["client_tls_sslmode"] == "require"
    assert summary["server_tls_sslmode"] == "verify-full"
    assert summary["client_tls"] is True
    assert summarize(TLS_TOML, DEMO_ENV, tls=inventory)["client_tls"] is True  # the same mode twice is fine
    with pytest.raises(ConfigError) as err:
        summarize(TLS_TOML, DEMO_ENV, tls={**inventory, "client_sslmode": "disable"})
    assert 'pgbouncer.client_tls_sslmode: "require" contradicts pgbouncer_client_tls_sslmode' in str(
        err.value
    )
    with pytest.raises(ConfigError) as err:
        summarize(EXAMPLE, DEMO_ENV, tls={**inventory, "server_sslmode": "verify_full"})
    assert "pgbouncer_server_tls_sslmode: expected one of" in str(err.value)


ONE_HOST = {"instances": {"pool1": 2}, "base_ports": {"pool1": 6432}}


@pytest.mark.parametrize("mode", ["require", "verify-ca", "verify-full"])
def test_a_plan_requiring_client_tls_carries_the_prefer_step(mode: str) -> None:
    """Turning client TLS on under load goes through `prefer` (roles/pgbouncer/tasks/tls_on.yml): the step is
    the planned pgbouncer.ini with only client_tls_sslmode changed."""
    tls = {"client_sslmode": mode, "client": True, "server_ca": True, "client_ca": mode != "require"}
    plan = deployment_plan(EXAMPLE, DEMO_ENV, salt_key="k" * 32, tls=tls, **ONE_HOST)
    final, step = plan["files"]["pgbouncer.ini"], plan["files"][TLS_ON_STEP]
    assert f"\nclient_tls_sslmode = {mode}\n" in final
    assert step == final.replace(f"\nclient_tls_sslmode = {mode}\n", "\nclient_tls_sslmode = prefer\n")
    assert set(plan["files"]) == {"pgbouncer.ini", "userlist.txt", "pgbouncer_hba.conf", TLS_ON_STEP}


@pytest.mark.parametrize("mode", ["disable", "allow", "prefer"])
def test_a_plan_that_accepts_plaintext_has_no_step(mode: str) -> None:
    tls = {"client_sslmode": mode, "client": mode != "disable", "server_ca": True}
    assert (
        TLS_ON_STEP not in deployment_plan(EXAMPLE, DEMO_ENV, salt_key="k" * 32, tls=tls, **ONE_HOST)["files"]
    )
