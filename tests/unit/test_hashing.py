import base64
import hashlib
import hmac

from autopgpool.hashing import (
    choose_scram_verifier,
    derived_salt,
    md5_verifier,
    scram_keys,
    scram_matches,
    scram_verifier,
)

RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")


def test_md5_known_answer() -> None:
    assert md5_verifier("user1", "pass1") == "md55e4eab96e8b9868ed28cc79c9ceec8b3"
    assert md5_verifier("admin", "1234") == "md545f2603610af569b6155c45067268c6b"


def test_scram_rfc7677_example() -> None:
    # RFC 7677 section 3: user "user", password "pencil", i=4096, the nonces below; the client proof and
    # server signature printed in the RFC follow from ClientKey/StoredKey/ServerKey.
    keys = scram_keys("pencil", RFC_SALT, 4096)
    client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO"
    server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    client_final_bare = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    auth = f"{client_first_bare},{server_first},{client_final_bare}".encode()
    signature = hmac.digest(keys.stored_key, auth, "sha256")
    proof = bytes(a ^ b for a, b in zip(keys.client_key, signature, strict=True))
    assert base64.b64encode(proof).decode() == "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    server_sig = hmac.digest(keys.server_key, auth, "sha256")
    assert base64.b64encode(server_sig).decode() == "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    assert keys.stored_key == hashlib.sha256(keys.client_key).digest()


def test_scram_verifier_format_and_match() -> None:
    verifier = scram_verifier("pencil", RFC_SALT)
    method, iter_salt, key_pair = verifier.split("$")
    assert method == "SCRAM-SHA-256"
    assert iter_salt == "4096:W22ZaJ0SNY7soEsUEjb6gQ=="
    stored, server = (base64.b64decode(k) for k in key_pair.split(":"))
    assert len(stored) == len(server) == 32
    assert scram_matches(verifier, "pencil")
    assert not scram_matches(verifier, "pencil2")
    assert not scram_matches("md5abc", "pencil")
    assert not scram_matches("SCRAM-SHA-256$1000:" + iter_salt.split(":")[1] + "$" + key_pair, "pencil")


def test_salt_strategy() -> None:
    key = b"deployment-key"
    a = choose_scram_verifier("u", "pw", salt_key=key, previous=None)
    assert a == choose_scram_verifier("u", "pw", salt_key=key, previous=None)
    assert a != choose_scram_verifier("u", "pw", salt_key=b"other-key", previous=None)
    assert a != choose_scram_verifier("v", "pw", salt_key=key, previous=None)
    assert len(derived_salt(key, "u", "pw")) == 16
    assert derived_salt(key, "u", "pw") != derived_salt(key, "u", "pw2")
    # random without a key
    r1 = choose_scram_verifier("u", "pw", salt_key=None, previous=None)
    r2 = choose_scram_verifier("u", "pw", salt_key=None, previous=None)
    assert r1 != r2
    assert scram_matches(r1, "pw")
    assert scram_matches(r2, "pw")
    # reuse a previous verifier verbatim while it matches; replace it once the password changed
    assert choose_scram_verifier("u", "pw", salt_key=key, previous=r1) == r1
    changed = choose_scram_verifier("u", "new", salt_key=key, previous=r1)
    assert changed != r1
    assert scram_matches(changed, "new")


def test_saslprep_non_ascii_space_is_mapped() -> None:
    # U+00A0 NO-BREAK SPACE maps to an ASCII space under SASLprep, as PostgreSQL does.
    assert scram_verifier("a\u00a0b", RFC_SALT) == scram_verifier("a b", RFC_SALT)
