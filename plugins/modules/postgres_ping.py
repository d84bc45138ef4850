#!/usr/bin/python
"""Log in to PostgreSQL (or a pooler) the way a client does and run one query, with nothing but Python's
standard library: the pooler hosts and the controller need no psql, psycopg or libpq.

Speaks the frontend/backend protocol 3.0: SSLRequest and TLS (disable, require, verify-full), startup,
cleartext, MD5 and SCRAM-SHA-256 authentication (server signature checked), one simple query.
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
short_description: Log in to PostgreSQL or a pooler as a client and run one query
description:
  - Connects to I(host):I(port), negotiates TLS as libpq does (SSLRequest first), authenticates with
    cleartext, MD5 or SCRAM-SHA-256 (the server's SCRAM signature is verified) and runs one simple query.
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
    description: User to log in as.
    type: str
    required: true
  password:
    description: Its password.
    type: str
    required: true
    no_log: true
  database:
    description: Database to connect to.
    type: str
    required: true
  query:
    description: One statement; the rows come back as text.
    type: str
    default: SELECT 1
  sslmode:
    description: C(disable), C(require) (encrypt, verify nothing) or C(verify-full) (CA and host name).
    type: str
    choices: [disable, require, verify-full]
    default: disable
  sslrootcert:
    description: CA file for C(verify-full).
    type: path
  server_name:
    description: Name the certificate must carry for C(verify-full); defaults to I(host).
    type: str
  connect_timeout:
    description: Seconds for the whole exchange.
    type: float
    default: 10
"""

EXAMPLES = r"""
- name: Query PostgreSQL through this host's front door
  postgres_ping:
    host: 127.0.0.1
    port: 6432
    user: app_user
    password: "{{ vault_app_user_password }}"
    database: app
    query: SELECT current_database()
    sslmode: verify-full
    sslrootcert: /etc/ssl/certs/pooler-ca.pem
    server_name: pool1.example.internal
"""

RETURN = r"""
rows:
  description: The rows, each a list of text values (None for NULL).
  returned: success
  type: list
  sample: [["app_db"]]
tls:
  description: The TLS version in use, or null without TLS.
  returned: success
  type: str
  sample: TLSv1.3
seconds:
  description: Time from connect to the query's answer.
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
    server_first = body[4:].decode()
    attrs = dict(item.split("=", 1) for item in server_first.split(","))
    if not attrs.get("r", "").startswith(nonce):
        raise PostgresError("SCRAM: the server's nonce does not extend ours")
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
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


def _tls(sock: socket.socket, params: dict[str, Any]) -> ssl.SSLSocket:
    sock.sendall(struct.pack("!II", 8, SSL_REQUEST))
    answer = sock.recv(1)
    if answer != b"S":
        raise PostgresError(f"sslmode={params['sslmode']}, but the server does not offer TLS")
    if params["sslmode"] == "verify-full":
        if not params.get("sslrootcert"):
            raise PostgresError("sslmode=verify-full needs sslrootcert")
        context = ssl.create_default_context(cafile=params["sslrootcert"])
        name = params.get("server_name") or params["host"]
    else:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        name = None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        return context.wrap_socket(sock, server_hostname=name)
    except (ssl.SSLError, ssl.CertificateError) as err:
        raise PostgresError(f"TLS: {err}") from None


def _login(conn: _Conn, user: str, password: str, database: str) -> None:
    startup = b"".join(
        k.encode() + b"\0" + v.encode() + b"\0"
        for k, v in (("user", user), ("database", database), ("application_name", "autopgpool"))
    )
    conn.sock.sendall(struct.pack("!II", len(startup) + 9, PROTOCOL_3) + startup + b"\0")
    while True:
        kind, body = conn.receive()
        if kind == b"Z":
            return
        if kind != b"R":
            continue
        code = struct.unpack("!I", body[:4])[0]
        if code == 3:
            conn.send(b"p", password.encode() + b"\0")
        elif code == 5:
            inner = hashlib.md5((password + user).encode()).hexdigest()  # noqa: S324 - the protocol's hash
            outer = hashlib.md5(inner.encode() + body[4:8]).hexdigest()  # noqa: S324
            conn.send(b"p", b"md5" + outer.encode() + b"\0")
        elif code == 10:
            _scram(conn, user, password, [m for m in body[4:].split(b"\0") if m])
        elif code != 0:
            raise PostgresError(f"unsupported authentication request {code}")


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
    """Log in and run the query; returns rows, tls and seconds (raises PostgresError)."""
    started = time.monotonic()
    timeout = float(params.get("connect_timeout") or 10)
    where = f"{params['host']}:{params.get('port') or 5432}"
    try:
        raw = socket.create_connection((params["host"], int(params.get("port") or 5432)), timeout=timeout)
    except OSError as err:
        raise PostgresError(f"cannot connect to {where}: {err}") from None
    sock: socket.socket | ssl.SSLSocket = raw
    try:
        sock.settimeout(timeout)
        if params.get("sslmode", "disable") != "disable":
            sock = _tls(raw, params)
        conn = _Conn(sock)
        _login(conn, params["user"], params["password"], params["database"])
        rows = _query(conn, params.get("query") or "SELECT 1")
        conn.send(b"X", b"")
        with_tls = sock.version() if isinstance(sock, ssl.SSLSocket) else None
        return {"rows": rows, "tls": with_tls, "seconds": round(time.monotonic() - started, 3)}
    except OSError as err:
        raise PostgresError(f"{where}: {err}") from None
    finally:
        sock.close()


def main() -> None:  # pragma: no cover - exercised through ansible-playbook in the tests
    module = AnsibleModule(
        argument_spec={
            "host": {"type": "str", "required": True},
            "port": {"type": "int", "default": 5432},
            "user": {"type": "str", "required": True},
            "password": {"type": "str", "required": True, "no_log": True},
            "database": {"type": "str", "required": True},
            "query": {"type": "str", "default": "SELECT 1"},
            "sslmode": {
                "type": "str",
                "choices": ["disable", "require", "verify-full"],
                "default": "disable",
            },
            "sslrootcert": {"type": "path"},
            "server_name": {"type": "str"},
            "connect_timeout": {"type": "float", "default": 10},
        },
        supports_check_mode=True,
    )
    try:
        result = ping(module.params)
    except PostgresError as err:
        module.fail_json(msg=str(err))
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
