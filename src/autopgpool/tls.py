"""TLS: the files pgbouncer reads, and the checks a pooler host's certificate passes before any host changes.

The TOML says how pgbouncer uses TLS (``client_tls_sslmode``, ``server_tls_sslmode``, protocols, ciphers);
the inventory gives the files (certificate, key and CA per pooler host, the PostgreSQL CA). The role installs
them under ``<config_dir>/tls/`` at the paths :func:`host_paths` names; the renderer points pgbouncer there.

:func:`check_client_tls` and :func:`check_ca` run on the controller, per host, before any host is touched.
They return problems, each naming the inventory variable, and never a key's content: the caller runs under
``no_log`` and shows only these strings.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import ipaddress
from collections.abc import Mapping, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes

from . import defaults
from .errors import Problems

#: The TLS files pgbouncer reads, by pgbouncer setting, relative to the configuration directory.
FILES = {
    "client_tls_cert_file": "tls/client.crt",
    "client_tls_key_file": "tls/client.key",
    "client_tls_ca_file": "tls/client-ca.crt",
    "server_tls_ca_file": "tls/server-ca.crt",
}
#: The inventory variable that supplies each file (controller paths).
VARIABLES = {
    "client_tls_cert_file": "pgbouncer_client_tls_cert_file",
    "client_tls_key_file": "pgbouncer_client_tls_key_file",
    "client_tls_ca_file": "pgbouncer_client_tls_ca_file",
    "server_tls_ca_file": "pgbouncer_server_tls_ca_file",
}
CLIENT_SETTINGS = ("client_tls_cert_file", "client_tls_key_file", "client_tls_ca_file")
VERIFYING = ("verify-ca", "verify-full")


def host_paths(config_dir: str, *, client: bool, server_ca: bool) -> dict[str, str]:
    """pgbouncer setting -> path on the host, for the files the inventory supplies."""
    base = config_dir.rstrip("/")
    wanted = [*CLIENT_SETTINGS] if client else []
    if server_ca:
        wanted.append("server_tls_ca_file")
    return {name: f"{base}/{FILES[name]}" for name in wanted}


def _certificates(pem: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(pem.encode())
    except ValueError:
        return []


def check_ca(pem: str, variable: str) -> list[str]:
    """Problems with a CA bundle: it must hold at least one PEM certificate."""
    if not _certificates(pem):
        return [f"{variable}: not a PEM file of CA certificates (-----BEGIN CERTIFICATE-----)"]
    return []


def _covers(cert: x509.Certificate, name: str) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False  # clients ignore the common name when checking host names (RFC 6125)
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        wanted = name.rstrip(".").lower()
        for entry in san.get_values_for_type(x509.DNSName):
            pattern = entry.rstrip(".").lower()
            # A wildcard stands for exactly one left-most label, as libpq matches it.
            if pattern == wanted or (
                pattern.startswith("*.")
                and "." in wanted
                and fnmatch.fnmatchcase(wanted, pattern)
                and wanted.count(".") == pattern.count(".")
            ):
                return True
        return False
    return address in san.get_values_for_type(x509.IPAddress)


def _issued_by(
    cert: x509.Certificate, chain: Sequence[x509.Certificate], cas: Sequence[x509.Certificate]
) -> bool:
    """True when cert leads to one of the CAs, directly or through the intermediates after it in its file."""
    current = cert
    pool = [*chain, *cas]
    for _ in range(len(pool) + 1):
        if any(_signed(current, ca) for ca in cas):
            return True
        parent = next((c for c in chain if c is not current and _signed(current, c)), None)
        if parent is None:
            return False
        current = parent
    return False


def _signed(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _public(key: CertificateIssuerPublicKeyTypes | object) -> bytes:
    public_bytes = getattr(key, "public_bytes", None)
    if public_bytes is None:
        return b""
    data: bytes = public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return data


def check_client_tls(
    cert_pem: str,
    key_pem: str,
    ca_pem: str,
    *,
    names: Sequence[str],
    min_days: int,
    now: dt.datetime | None = None,
    variables: Mapping[str, str] = VARIABLES,
) -> list[str]:
    """Problems with one pooler host's client certificate, key and CA (empty when all is well).

    The first certificate of ``cert_pem`` is the host's; any after it are intermediates. It must match the
    key, be issued (through those intermediates) by a CA in ``ca_pem``, be valid now and for ``min_days``
    more, and name every entry of ``names`` (host names and addresses clients connect to) in its
    subjectAltName.
    """
    cert_var, key_var, ca_var = (variables[s] for s in CLIENT_SETTINGS)
    problems: list[str] = []
    chain = _certificates(cert_pem)
    if not chain:
        problems.append(f"{cert_var}: not a PEM certificate (-----BEGIN CERTIFICATE-----)")
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError):
        # TypeError: an encrypted PEM key; pgbouncer cannot ask for a passphrase (use Vault instead).
        key = None
        problems.append(f"{key_var}: not an unencrypted PEM private key (Vault-encrypt the file instead)")
    cas = _certificates(ca_pem)
    problems += check_ca(ca_pem, ca_var)
    if not chain:
        return problems
    cert = chain[0]
    if key is not None and _public(key.public_key()) != _public(cert.public_key()):
        problems.append(f"{key_var}: does not match the certificate in {cert_var}")
    if cas and not _issued_by(cert, chain[1:], cas):
        problems.append(f"{cert_var}: not issued by a CA in {ca_var}")
    moment = now or dt.datetime.now(dt.UTC)
    expires = cert.not_valid_after_utc
    if expires <= moment:
        problems.append(f"{cert_var}: expired on {expires:%Y-%m-%d %H:%M} UTC")
    elif expires - moment < dt.timedelta(days=min_days):
        days = (expires - moment).days
        problems.append(
            f"{cert_var}: expires on {expires:%Y-%m-%d} UTC, in {days} days, less than "
            f"pgbouncer_tls_min_days ({min_days}); renew it"
        )
    if cert.not_valid_before_utc > moment:
        problems.append(f"{cert_var}: not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    missing = [name for name in names if name and not _covers(cert, str(name))]
    if missing:
        problems.append(
            f"{cert_var}: its subjectAltName does not cover {', '.join(missing)} (clients verifying with "
            "verify-full connect by these names and addresses)"
        )
    return problems


SSLMODE_VARIABLES = {
    "client_tls_sslmode": "pgbouncer_client_tls_sslmode",
    "server_tls_sslmode": "pgbouncer_server_tls_sslmode",
}
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
#: autopgpool's defaults (defaults.py) are in every parsed configuration: they yield to the inventory's mode.
_TOML_DEFAULTS = {name: str(d.value) for name, d in defaults.SETTINGS.items() if name in SSLMODE_VARIABLES}
#: pgbouncer's own defaults, in effect when neither the inventory nor the TOML sets a mode.
DEFAULT_SSLMODES = {"client_tls_sslmode": "disable", "server_tls_sslmode": "prefer"}


def plan_settings(
    settings: Mapping[str, str], *, config_dir: str, tls: Mapping[str, object]
) -> tuple[dict[str, str], dict[str, str], list[tuple[str, str]]]:
    """(settings for pgbouncer.ini, TLS files by setting -> host path, (key, message) problems).

    ``tls`` is the inventory's part: ``client_sslmode`` / ``server_sslmode`` (pgbouncer_client_tls_sslmode,
    pgbouncer_server_tls_sslmode; empty: the TOML's or pgbouncer's default) and whether the client files
    (``client``) and the PostgreSQL CA (``server_ca``) are given. The file settings belong to the deployment:
    the TOML must not set them, nor an sslmode that contradicts the inventory's. Client TLS needs the client
    files; a verifying server sslmode needs the PostgreSQL CA.
    """
    problems: list[tuple[str, str]] = []
    for name in FILES:
        if name in settings:
            problems.append(
                (f"pgbouncer.{name}", f"set by the deployment: give the file in {VARIABLES[name]}")
            )
    modes: dict[str, str] = {}
    for name, variable in SSLMODE_VARIABLES.items():
        given = str(tls.get(name.split("_tls_")[0] + "_sslmode") or "")
        if given and given not in SSLMODES:
            problems.append((variable, f"expected one of {', '.join(SSLMODES)}"))
        elif given and settings.get(name, given) not in (given, _TOML_DEFAULTS.get(name)):
            problems.append(
                (
                    f"pgbouncer.{name}",
                    f'"{settings[name]}" contradicts {variable} ("{given}"); set it in one place',
                )
            )
        modes[name] = given or settings.get(name, DEFAULT_SSLMODES[name])
    client_files, server_ca = bool(tls.get("client")), bool(tls.get("server_ca"))
    if modes["client_tls_sslmode"] != "disable" and not client_files:
        problems.append(
            (
                SSLMODE_VARIABLES["client_tls_sslmode"],
                f'"{modes["client_tls_sslmode"]}" needs a certificate, key and CA per pooler host: set '
                "pgbouncer_client_tls_cert_file, pgbouncer_client_tls_key_file and "
                "pgbouncer_client_tls_ca_file",
            )
        )
    if modes["server_tls_sslmode"] in VERIFYING and not server_ca:
        problems.append(
            (
                SSLMODE_VARIABLES["server_tls_sslmode"],
                f'"{modes["server_tls_sslmode"]}" needs the CA that issued the PostgreSQL servers\' '
                "certificates: set pgbouncer_server_tls_ca_file",
            )
        )
    paths = host_paths(
        config_dir, client=client_files and modes["client_tls_sslmode"] != "disable", server_ca=server_ca
    )
    return {**modes, **paths}, paths, problems


def raise_problems(problems: Sequence[tuple[str, str]]) -> None:
    collected = Problems()
    for key, message in problems:
        collected.add(key, message)
    collected.raise_if_any()
