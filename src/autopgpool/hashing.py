"""Password verifiers for userlist.txt: PostgreSQL MD5 and SCRAM-SHA-256, plus the salt strategy.

MD5: ``"md5" + md5(password + username)`` in hex (PostgreSQL's format, deprecated since PostgreSQL 18).

SCRAM-SHA-256 (RFC 5802/7677, PostgreSQL's storage format)::

    SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>

with SaltedPassword = PBKDF2-HMAC-SHA256(SASLprep(password), salt, iterations),
ClientKey = HMAC(SaltedPassword, "Client Key"), StoredKey = SHA-256(ClientKey),
ServerKey = HMAC(SaltedPassword, "Server Key"). Like PostgreSQL, a password that SASLprep rejects is used as
its raw UTF-8 bytes.

Salts (see :func:`choose_scram_verifier`): a verifier from the previous userlist that still matches is kept
verbatim; otherwise the salt is derived from a per-deployment secret key with HMAC-SHA256, so re-rendering is
byte-identical while salts stay unpredictable to anyone without the key; without a key the salt is random.

Speed: one PBKDF2 (4096 rounds) per SCRAM user and render, whether the previous verifier is kept or a new one
is made. :func:`choose_scram_verifiers` spreads them over threads: ``hashlib.pbkdf2_hmac`` releases the GIL,
so 10,000 users take about 1/cores of the serial time, with the same output in the same order.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import stringprep
import unicodedata
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

SCRAM_ITERATIONS = 4096
SALT_BYTES = 16
_SALT_CONTEXT = b"autopgpool-scram-salt\0"
#: Below this many SCRAM users per thread, starting threads costs more than it saves.
_USERS_PER_THREAD = 64


def md5_verifier(username: str, password: str) -> str:
    """PostgreSQL's MD5 verifier, e.g. user1/pass1 -> md55e4eab96e8b9868ed28cc79c9ceec8b3."""
    # "md5" + md5(password || username): the format PostgreSQL and pgbouncer store. MD5 is what this format
    # is, not a choice made here (usedforsecurity=False keeps it available on FIPS-mode OpenSSL builds).
    digest = hashlib.md5((password + username).encode("utf-8"), usedforsecurity=False).hexdigest()
    return f"md5{digest}"


@dataclass(frozen=True)
class ScramKeys:
    client_key: bytes
    stored_key: bytes
    server_key: bytes


def saslprep(password: str) -> bytes:
    """RFC 4013 SASLprep as PostgreSQL applies it: on any failure, fall back to the raw UTF-8 bytes."""
    raw = password.encode("utf-8")
    if password.isascii() and password.isprintable():
        # Printable ASCII (0x20-0x7E) is mapped to itself, NFKC leaves it alone and none of it is
        # prohibited or bidirectional, so SASLprep is the identity: skip the table walk (most passwords).
        return raw
    mapped = []
    for ch in password:
        if stringprep.in_table_c12(ch):  # non-ASCII space -> space
            mapped.append(" ")
        elif not stringprep.in_table_b1(ch):  # "commonly mapped to nothing"
            mapped.append(ch)
    text = unicodedata.normalize("NFKC", "".join(mapped))
    if not text:
        return raw
    prohibited = (
        stringprep.in_table_c12,
        stringprep.in_table_c21,
        stringprep.in_table_c22,
        stringprep.in_table_c3,
        stringprep.in_table_c4,
        stringprep.in_table_c5,
        stringprep.in_table_c6,
        stringprep.in_table_c7,
        stringprep.in_table_c8,
        stringprep.in_table_c9,
        stringprep.in_table_a1,
    )
    if any(check(ch) for ch in text for check in prohibited):
        return raw
    if any(stringprep.in_table_d1(ch) for ch in text):
        # RFC 3454 section 6: RandALCat text must not contain LCat and must start and end with RandALCat.
        if any(stringprep.in_table_d2(ch) for ch in text):
            return raw
        if not (stringprep.in_table_d1(text[0]) and stringprep.in_table_d1(text[-1])):
            return raw
    return text.encode("utf-8")


def scram_keys(password: str, salt: bytes, iterations: int = SCRAM_ITERATIONS) -> ScramKeys:
    salted = hashlib.pbkdf2_hmac("sha256", saslprep(password), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    return ScramKeys(
        client_key=client_key,
        stored_key=hashlib.sha256(client_key).digest(),
        server_key=hmac.digest(salted, b"Server Key", "sha256"),
    )


def scram_verifier(password: str, salt: bytes, iterations: int = SCRAM_ITERATIONS) -> str:
    keys = scram_keys(password, salt, iterations)
    salt_b64, stored_b64, server_b64 = (
        base64.b64encode(part).decode() for part in (salt, keys.stored_key, keys.server_key)
    )
    return f"SCRAM-SHA-256${iterations}:{salt_b64}${stored_b64}:{server_b64}"


def scram_matches(verifier: str, password: str, iterations: int = SCRAM_ITERATIONS) -> bool:
    """True if ``verifier`` is a well-formed SCRAM-SHA-256 verifier of ``password`` with ``iterations``."""
    try:
        method, rest = verifier.split("$", 1)
        iter_salt, keys = rest.split("$", 1)
        iter_text, salt_b64 = iter_salt.split(":", 1)
        stored_b64, server_b64 = keys.split(":", 1)
        salt = base64.b64decode(salt_b64, validate=True)
        stored = base64.b64decode(stored_b64, validate=True)
        server = base64.b64decode(server_b64, validate=True)
    except ValueError:
        return False
    if method != "SCRAM-SHA-256" or iter_text != str(iterations) or len(salt) < SALT_BYTES:
        return False
    expected = scram_keys(password, salt, iterations)
    return hmac.compare_digest(stored, expected.stored_key) and hmac.compare_digest(
        server, expected.server_key
    )


def derived_salt(salt_key: bytes, username: str, password: str) -> bytes:
    """First 16 bytes of HMAC-SHA256(salt_key, context || username || NUL || password)."""
    message = _SALT_CONTEXT + username.encode() + b"\0" + password.encode()
    return hmac.digest(salt_key, message, "sha256")[:SALT_BYTES]


def choose_scram_verifier(
    username: str, password: str, *, salt_key: bytes | None, previous: str | None
) -> str:
    """The SCRAM verifier to write for ``username``: reuse, else keyed salt, else random salt."""
    if previous is not None and scram_matches(previous, password):
        return previous
    salt = derived_salt(salt_key, username, password) if salt_key else secrets.token_bytes(SALT_BYTES)
    return scram_verifier(password, salt)


def choose_scram_verifiers(
    requests: Sequence[tuple[str, str, str | None]], *, salt_key: bytes | None
) -> list[str]:
    """:func:`choose_scram_verifier` for many ``(username, password, previous)``, in order, on all cores."""

    def one(request: tuple[str, str, str | None]) -> str:
        username, password, previous = request
        return choose_scram_verifier(username, password, salt_key=salt_key, previous=previous)

    workers = min(len(requests) // _USERS_PER_THREAD, os.cpu_count() or 1)
    if workers <= 1:
        return [one(r) for r in requests]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="autopgpool-scram") as pool:
        return list(pool.map(one, requests, chunksize=16))
