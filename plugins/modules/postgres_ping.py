#!/usr/bin/python
"""Log in to PostgreSQL (or a pooler) the way a client does and run one query, with nothing but Python's
standard library: the pooler hosts and the controller need no psql, psycopg or libpq.

Speaks the frontend/backend protocol 3.0: SSLRequest and TLS (disable, prefer, require, verify-ca,
verify-full), startup, SCRAM-SHA-256 (server signature checked) and, only on verified TLS and when allowed,
MD5 and cleartext authentication; one simple query. Or TLS only: handshake, verify, close.

Whoever answers at host:port may ask for the password in clear (or as an MD5 digest anyone can replay and
guess offline). So the module sends it that way only to a server whose certificate it verified, and only for a
method the caller allowed; SCRAM sends a proof that is useless without the password (and checks that the
server knows the verifier), so it is the default and the only method on an unverified connection.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import socket
import ssl
import struct
import time
from typing import Any

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: postgres_ping
short_description: Log in to PostgreSQL or a pooler as a client and run one query, or check its TLS
description:
  - Connects to I(host):I(port), negotiates TLS as libpq does (SSLRequest first), authenticates and runs one
    simple query.
  - Authentication is SCRAM-SHA-256 by default (the server's SCRAM signature is verified; an iteration count
    outside 4096 to 10,000,000, which the server chooses, is refused before a proof is sent). C(md5) and
    C(password) (cleartext) are used only when listed in I(auth_methods) B(and) the connection is TLS whose
    certificate was verified (I(sslmode) C(verify-ca) or C(verify-full)); otherwise the module refuses before
    sending anything derived from the password, naming the server (host:port) and the method.
  - With I(tls_only), only the TLS handshake and its verification, then close; no startup message, no login
    (for checking that a CA and a name verify a server before anything depends on it).
  - Needs only Python's standard library. Changes nothing; runs in check mode too.
  - The password is never returned or shown; error messages are the server's or name the step that failed.
options:
  host:
    description: Host name or address to connect to.
    type: str
    required: true
  port:
    description: TCP port.
    type: int
    default: 5432
  user:
    description: User to log in as. Required unless I(tls_only).
    type: str
  password:
    description: Its password. Required unless I(tls_only).
    type: str
  database:
    description: Database to connect to. Required unless I(tls_only).
    type: str
  query:
    description: One statement; the rows come back as text.
    type: str
    default: SELECT 1
  sslmode:
    description:
      - C(disable); C(prefer) (TLS when the server offers it, verifying nothing); C(require) (TLS, verifying
        nothing); C(verify-ca) (the certificate must chain to the CA); C(verify-full) (the CA and the name
        I(server_name)).
    type: str
    choices: [disable, prefer, require, verify-ca, verify-full]
    default: disable
  sslrootcert:
    description: CA file on the host running the module, for C(verify-ca) and C(verify-full).
    type: path
  sslrootcert_data:
    description:
      - The CA certificates as PEM text, instead of I(sslrootcert) (e.g. a controller file read with
        C(lookup('ansible.builtin.file', ...)) that is not on the host running the module yet).
    type: str
  server_name:
    description: Name the certificate must carry for C(verify-full); defaults to I(host).
    type: str
  auth_methods:
    description:
      - Authentication methods the module may answer. C(md5) and C(password) are still refused unless
        I(sslmode) is C(verify-ca) or C(verify-full).
    type: list
    elements: str
    choices: [scram-sha-256, md5, password]
    default: [scram-sha-256]
  tls_only:
    description: Handshake and verify TLS as I(sslmode) says, then close; no login, no query.
    type: bool
    default: false
  connect_timeout:
    description: Seconds for the whole exchange.
    type: float
    default: 10
  shown:
    description:
      - How messages name the server instead of I(host):I(port), e.g. C($DB_HOST:5432) when the host comes
        from a variable whose value must not be shown.
    type: str
"""

EXAMPLES = r"""
- name: Query PostgreSQL through this host's front door
  autopgpool.pool.postgres_ping:
    host: 127.0.0.1
    port: 6432
    user: app_user
    password: "{{ vault_app_user_password }}"
    database: app
    query: SELECT current_database()
    sslmode: verify-full
    sslrootcert: /etc/ssl/certs/pooler-ca.pem
    server_name: pool1.example.internal

- name: Check that a controller-side CA verifies a PostgreSQL server, from a pooler host
  autopgpool.pool.postgres_ping:
    host: pg1.example.internal
    sslmode: verify-full
    sslrootcert_data: "{{ lookup('ansible.builtin.file', 'files/postgres-ca.crt') }}"
    tls_only: true
"""

RETURN = r"""
rows:
  description: The rows, each a list of text values (None for NULL). Empty with I(tls_only).
  returned: success
  type: list
  sample: [["app_db"]]
tls:
  description: The TLS version in use, or null without TLS.
  returned: success
  type: str
  sample: TLSv1.3
verified:
  description: Whether the server's certificate was verified (I(sslmode) C(verify-ca) or C(verify-full)).
  returned: success
  type: bool
auth_method:
  description: The method the server asked for (C(scram-sha-256), C(md5), C(password) or C(trust)); null with
    I(tls_only).
  returned: success
  type: str
  sample: scram-sha-256
seconds:
  description: Time from connect to the query's answer (or to the end of the handshake).
  returned: success
  type: float
"""

SSL_REQUEST = 80877103
PROTOCOL_3 = 196608


class PostgresError(Exception):
    """Login or query failed; the message is the server's (never a password) or names the step."""


class _Conn:
    def __init__(self, sock: socket.socket | ssl.SSLSocket) -> None:
        self.sock = sock
        self.buffer = b""

    def send(self, kind: bytes, body: bytes) -> None:
        self.sock.sendall(kind + struct.pack("!I", len(body) + 4) + body)

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise PostgresError("the server closed the connection")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def receive(self) -> tuple[bytes, bytes]:
        kind = self._read(1)
        (length,) = struct.unpack("!I", self._read(4))
        if length < 4 or length > 64 * 1024 * 1024:
            raise PostgresError(f"malformed message from the server (length {length})")
        body = self._read(length - 4)
        if kind == b"E":
            raise PostgresError(_error_text(body))
        return kind, body


def _error_text(body: bytes) -> str:
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[part[:1]] = part[1:].decode(errors="replace")
    return f"{fields.get(b'S', 'ERROR')}:  {fields.get(b'M', 'unknown error')}"


#: SCRAM iteration counts the module computes a proof for (see _scram).
SCRAM_MIN_ITERATIONS = 4096
SCRAM_MAX_ITERATIONS = 10_000_000


def _scram(conn: _Conn, user: str, password: str, mechanisms: list[bytes]) -> None:
    if b"SCRAM-SHA-256" not in mechanisms:
        raise PostgresError(f"the server offers only {b', '.join(mechanisms).decode()}, not SCRAM-SHA-256")
    nonce = base64.b64encode(secrets.token_bytes(18)).decode()
    first_bare = f"n=,r={nonce}"
    first = ("n,," + first_bare).encode()
    conn.send(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first)
    kind, body = conn.receive()
    if kind != b"R" or struct.unpack("!I", body[:4])[0] != 11:
        raise PostgresError("SCRAM: no server-first message")
    server_first = body[4:].decode(errors="replace")
    attrs = dict(item.split("=", 1) for item in server_first.split(",") if "=" in item)
    if not attrs.get("r", "").startswith(nonce):
        raise PostgresError("SCRAM: the server's nonce does not extend ours")
    try:
        salt = base64.b64decode(attrs["s"], validate=True)
        iterations = int(attrs["i"])
    except (KeyError, ValueError) as err:  # binascii.Error is a ValueError
        raise PostgresError(f"SCRAM: malformed server-first message ({type(err).__name__})") from None
    # The server chooses the salt and the count. Whoever answers at the address can ask for i=1, and the
    # proof below then tests a password guess for one HMAC (an offline dictionary attack at full speed); a
    # huge count stalls the run in pbkdf2, outside any socket timeout. PostgreSQL's default is 4096 (RFC
    # 7677's minimum).
    if not SCRAM_MIN_ITERATIONS <= iterations <= SCRAM_MAX_ITERATIONS:
        raise PostgresError(
            f"SCRAM: the server asks for {iterations} iterations, outside {SCRAM_MIN_ITERATIONS}.."
            f"{SCRAM_MAX_ITERATIONS}; refused, no proof was sent"
        )
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    final_bare = f"c=biws,r={attrs['r']}"
    auth_message = f"{first_bare},{server_first},{final_bare}".encode()
    signature = hmac.digest(hashlib.sha256(client_key).digest(), auth_message, "sha256")
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    conn.send(b"p", f"{final_bare},p={base64.b64encode(proof).decode()}".encode())
    kind, body = conn.receive()
    if kind != b"R" or struct.unpack("!I", body[:4])[0] != 12:
        raise PostgresError("SCRAM: no server-final message")
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    expected = base64.b64encode(hmac.digest(server_key, auth_message, "sha256")).decode()
    if not hmac.compare_digest(body[4:].decode(), f"v={expected}"):
        raise PostgresError("SCRAM: the server's signature is wrong (it does not know the password)")


VERIFYING = ("verify-ca", "verify-full")
AUTH_METHODS = ("scram-sha-256", "md5", "password")
#: Authentication request codes the module may meet, by the name auth_methods uses.
_METHOD_NAMES = {3: "password", 5: "md5", 10: "scram-sha-256"}
_REQUEST_NAMES = {2: "Kerberos V5", 6: "SCM credentials", 7: "GSSAPI", 9: "SSPI"}


def _context(params: dict[str, Any]) -> tuple[ssl.SSLContext, str | None]:
    sslmode = params["sslmode"]
    if sslmode in VERIFYING:
        cafile, cadata = params.get("sslrootcert"), params.get("sslrootcert_data")
        if not cafile and not cadata:
            raise PostgresError(f"sslmode={sslmode} needs sslrootcert or sslrootcert_data (the CA)")
        try:
            context = ssl.create_default_context(cafile=cafile or None, cadata=cadata or None)
        except (ssl.SSLError, OSError, ValueError) as err:
            raise PostgresError(f"the CA given for sslmode={sslmode} cannot be loaded: {err}") from None
        # verify-ca: the chain only, as libpq and pgbouncer check it (the name is not compared).
        context.check_hostname = sslmode == "verify-full"
        name = (params.get("server_name") or params["host"]) if sslmode == "verify-full" else None
    else:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        name = None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context, name


def _tls(
    sock: socket.socket, params: dict[str, Any], where: str, tls: tuple[ssl.SSLContext, str | None]
) -> socket.socket | ssl.SSLSocket:
    context, name = tls
    sock.sendall(struct.pack("!II", 8, SSL_REQUEST))
    answer = sock.recv(1)
    if answer == b"N" and params["sslmode"] == "prefer":
        return sock
    if answer != b"S":
        raise PostgresError(f"sslmode={params['sslmode']}, but {where} does not offer TLS")
    try:
        return context.wrap_socket(sock, server_hostname=name)
    except ssl.SSLCertVerificationError as err:
        raise PostgresError(
            f"TLS with {where}: certificate verify failed: {err.verify_message} "
            f"(sslmode={params['sslmode']}{f', name {name}' if name else ''})"
        ) from None
    except (ssl.SSLError, ssl.CertificateError) as err:
        raise PostgresError(f"TLS with {where}: {err}") from None


def _allow(code: int, params: dict[str, Any], where: str) -> None:
    """Refuse, before anything derived from the password is sent, a method that is not allowed here."""
    method = _METHOD_NAMES.get(code)
    if method is None:
        raise PostgresError(
            f"{where} asks for {_REQUEST_NAMES.get(code, f'authentication request {code}')}, which this "
            "module does not support"
        )
    allowed = params.get("auth_methods") or ["scram-sha-256"]
    if method not in allowed:
        raise PostgresError(
            f"{where} asks for {method} authentication, which is not in auth_methods "
            f"({', '.join(allowed)}); refused, the password was not sent"
        )
    if method != "scram-sha-256" and params["sslmode"] not in VERIFYING:
        raise PostgresError(
            f"{where} asks for {method} authentication over a connection whose certificate is not verified "
            f"(sslmode={params['sslmode']}); refused, the password was not sent (whoever answers at that "
            "address would receive it): use sslmode verify-full with the server's CA, or SCRAM"
        )


def _login(conn: _Conn, params: dict[str, Any], where: str) -> str:
    """Startup and authentication; returns the method the server asked for."""
    user, password, database = params["user"], params["password"], params["database"]
    startup = b"".join(
        k.encode() + b"\0" + v.encode() + b"\0"
        for k, v in (("user", user), ("database", database), ("application_name", "autopgpool"))
    )
    conn.sock.sendall(struct.pack("!II", len(startup) + 9, PROTOCOL_3) + startup + b"\0")
    method = "trust"
    while True:
        kind, body = conn.receive()
        if kind == b"Z":
            return method
        if kind != b"R":
            continue
        code = struct.unpack("!I", body[:4])[0]
        if code == 0:
            continue
        _allow(code, params, where)
        method = _METHOD_NAMES[code]
        if code == 3:
            conn.send(b"p", password.encode() + b"\0")
        elif code == 5:
            inner = hashlib.md5((password + user).encode()).hexdigest()  # noqa: S324 - the protocol's hash
            outer = hashlib.md5(inner.encode() + body[4:8]).hexdigest()  # noqa: S324
            conn.send(b"p", b"md5" + outer.encode() + b"\0")
        else:
            _scram(conn, user, password, [m for m in body[4:].split(b"\0") if m])


def _query(conn: _Conn, query: str) -> list[list[str | None]]:
    conn.send(b"Q", query.encode() + b"\0")
    rows: list[list[str | None]] = []
    while True:
        kind, body = conn.receive()
        if kind == b"Z":
            return rows
        if kind != b"D":
            continue
        (count,) = struct.unpack("!H", body[:2])
        pos, row = 2, []
        for _ in range(count):
            (size,) = struct.unpack("!i", body[pos : pos + 4])
            pos += 4
            row.append(None if size < 0 else body[pos : pos + size].decode(errors="replace"))
            pos += max(size, 0)
        rows.append(row)


def ping(params: dict[str, Any]) -> dict[str, Any]:
    """Log in and run the query (or, with tls_only, verify TLS and close); returns rows, tls, verified,
    auth_method and seconds (raises PostgresError)."""
    started = time.monotonic()
    params = {"sslmode": "disable", **{k: v for k, v in params.items() if v is not None}}
    timeout = float(params.get("connect_timeout") or 10)
    port = int(params.get("port") or 5432)
    where = params.get("shown") or (
        f"[{params['host']}]:{port}" if ":" in params["host"] else f"{params['host']}:{port}"
    )
    tls_only = bool(params.get("tls_only"))
    if tls_only and params["sslmode"] == "disable":
        raise PostgresError("tls_only needs an sslmode other than disable")
    if not tls_only:
        missing = [k for k in ("user", "password", "database") if not isinstance(params.get(k), str)]
        if missing:
            raise PostgresError(f"missing {', '.join(missing)} (required unless tls_only)")
    # A CA that cannot be loaded is refused before connecting.
    tls = _context(params) if params["sslmode"] != "disable" else None
    try:
        raw = socket.create_connection((params["host"], port), timeout=timeout)
    except OSError as err:
        raise PostgresError(f"cannot connect to {where}: {err}") from None
    sock: socket.socket | ssl.SSLSocket = raw
    try:
        sock.settimeout(timeout)
        if tls is not None:
            sock = _tls(raw, params, where, tls)
        with_tls = sock.version() if isinstance(sock, ssl.SSLSocket) else None
        verified = with_tls is not None and params["sslmode"] in VERIFYING
        rows: list[list[str | None]] = []
        method = None
        if not tls_only:
            conn = _Conn(sock)
            method = _login(conn, params, where)
            rows = _query(conn, params.get("query") or "SELECT 1")
            conn.send(b"X", b"")
        return {
            "rows": rows,
            "tls": with_tls,
            "verified": verified,
            "auth_method": method,
            "seconds": round(time.monotonic() - started, 3),
        }
    except OSError as err:
        raise PostgresError(f"{where}: {err}") from None
    finally:
        sock.close()


def main() -> None:  # pragma: no cover - exercised through ansible-playbook in the tests
    module = AnsibleModule(
        argument_spec={
            "host": {"type": "str", "required": True},
            "port": {"type": "int", "default": 5432},
            "user": {"type": "str"},
            "password": {"type": "str", "no_log": True},
            "database": {"type": "str"},
            "query": {"type": "str", "default": "SELECT 1"},
            "sslmode": {
                "type": "str",
                "choices": ["disable", "prefer", "require", "verify-ca", "verify-full"],
                "default": "disable",
            },
            "sslrootcert": {"type": "path"},
            "sslrootcert_data": {"type": "str"},
            "server_name": {"type": "str"},
            "auth_methods": {
                "type": "list",
                "elements": "str",
                "choices": list(AUTH_METHODS),
                "default": ["scram-sha-256"],
            },
            "tls_only": {"type": "bool", "default": False},
            "connect_timeout": {"type": "float", "default": 10},
            "shown": {"type": "str"},
        },
        mutually_exclusive=[("sslrootcert", "sslrootcert_data")],
        required_if=[("tls_only", False, ("user", "password", "database"))],
        supports_check_mode=True,
    )
    try:
        result = ping(module.params)
    except PostgresError as err:
        module.fail_json(msg=str(err))
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
