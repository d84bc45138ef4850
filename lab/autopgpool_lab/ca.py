"""The lab's certificate authority: one CA under .lab/tls/ that issues a certificate per lab machine.

Lab only (the product never makes keys: production certificates come from the operator's PKI through the
inventory). `labctl up` calls :func:`ensure` after the machines boot, so the demo and the tests always find:

* ``ca.crt`` (clients trust it: ``sslrootcert=.lab/tls/ca.crt sslmode=verify-full``) and ``ca.key`` (0600);
* ``<name>.crt`` / ``<name>.key`` for pg1 and every pooler, naming the machine and its lab address.

Existing files are kept while they are valid for another 30 days and still name the machine's address, so the
CA stays the same across `labctl down`/`up` and clients configured with it keep working.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .config import POOLER_VIP, Machine

CA_DAYS = 3650
LEAF_DAYS = 365
RENEW_BEFORE = dt.timedelta(days=30)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "autopgpool lab"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def make_ca(
    common_name: str = "autopgpool lab CA", *, days: int = CA_DAYS
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA (also used by the tests to make a CA that clients must not trust)."""
    key = _key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    names: Sequence[str],
    *,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A server certificate for ``names`` (DNS names and IP addresses, the first is the common name)."""
    key = _key()
    now = dt.datetime.now(dt.UTC)
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(minutes=5))
        .not_valid_after(not_after or now + dt.timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _usable(path: Path, names: Sequence[str]) -> bool:
    if not path.is_file():
        return False
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    if cert.not_valid_after_utc - dt.datetime.now(dt.UTC) < RENEW_BEFORE:
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have = {str(v) for v in san.get_values_for_type(x509.DNSName)} | {
        str(v) for v in san.get_values_for_type(x509.IPAddress)
    }
    return set(names) <= have


def names_of(machine: Machine) -> list[str]:
    """What clients and pgbouncer connect to: the machine's name (in every /etc/hosts) and its address, and
    for a pooler the virtual IP its group shares (clients verifying with verify-full connect to it)."""
    shared = [str(POOLER_VIP)] if machine.group == "pgbouncer" else []
    return [machine.name, str(machine.address), *shared]


def ensure(tls_dir: Path, machines: Sequence[Machine]) -> list[str]:
    """Create the CA and the machines' certificates where missing or stale; return the names (re)issued."""
    tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_crt, ca_key_path = tls_dir / "ca.crt", tls_dir / "ca.key"
    if not (ca_crt.is_file() and ca_key_path.is_file()):
        ca, ca_key = make_ca()
        _write_key(ca_key_path, ca_key)
        ca_crt.write_bytes(pem(ca))
    ca = x509.load_pem_x509_certificate(ca_crt.read_bytes())
    loaded = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca_key_path}: expected the lab CA's EC key")
    issued = []
    for machine in machines:
        names = names_of(machine)
        crt = tls_dir / f"{machine.name}.crt"
        if _usable(crt, names):
            continue
        cert, key = issue(ca, loaded, names)
        _write_key(tls_dir / f"{machine.name}.key", key)
        crt.write_bytes(pem(cert))
        issued.append(machine.name)
    return issued
