"""postgres_ping against a fake SCRAM server on a real socket that chooses the iteration count: whoever
answers at an address may ask for i=1 (the proof then tests a password guess with one HMAC, an offline
dictionary attack at full speed) or for billions (the run stalls in pbkdf2, outside any socket timeout). The
module refuses both before it sends a proof; the positive control (i=4096) shows the fake would have received
one."""

from __future__ import annotations

import base64
import socket
import struct
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "plugins" / "modules"))

import postgres_ping  # noqa: E402


class FakeScram:
    """Asks for SCRAM-SHA-256, answers the client-first with ``server_first`` (``{nonce}`` filled in), records
    the messages the client sends after it."""

    def __init__(self, server_first: str) -> None:
        self.server_first = server_first
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(5)
        self.port = self.listener.getsockname()[1]
        self.after: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FakeScram:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(5)
        self.listener.close()

    @staticmethod
    def _read(sock: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def _message(self, sock: socket.socket) -> tuple[bytes, bytes]:
        kind = self._read(sock, 1)
        (length,) = struct.unpack("!I", self._read(sock, 4))
        return kind, self._read(sock, length - 4)

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        conn.settimeout(3)
        with conn:
            (length,) = struct.unpack("!I", self._read(conn, 4))
            self._read(conn, length - 4)  # the startup message
            sasl = struct.pack("!I", 10) + b"SCRAM-SHA-256\0\0"
            conn.sendall(b"R" + struct.pack("!I", len(sasl) + 4) + sasl)
            _, body = self._message(conn)  # SASLInitialResponse
            nonce = body.split(b"r=", 1)[1].decode()
            first = struct.pack("!I", 11) + self.server_first.format(nonce=nonce).encode()
            conn.sendall(b"R" + struct.pack("!I", len(first) + 4) + first)
            try:
                while True:
                    kind, body = self._message(conn)
                    self.after.append(kind + body)
            except (EOFError, OSError):
                return


def _ping(fake: FakeScram) -> str:
    with pytest.raises(postgres_ping.PostgresError) as err:
        postgres_ping.ping(
            {"host": "127.0.0.1", "port": fake.port, "user": "u", "password": "pw-xyz", "database": "d",
             "connect_timeout": 5}
        )  # fmt: skip
    return str(err.value)


SALT = base64.b64encode(b"0123456789abcdef").decode()


@pytest.mark.parametrize("iterations", [1, 4095, 2**31 - 1])
def test_an_iteration_count_outside_the_bounds_is_refused_before_the_proof(iterations: int) -> None:
    with FakeScram(f"r={{nonce}}srv,s={SALT},i={iterations}") as fake:
        message = _ping(fake)
    assert f"asks for {iterations} iterations" in message
    assert all(not m.startswith(b"p") for m in fake.after), "a proof was sent"


@pytest.mark.parametrize(
    "server_first", ["r={nonce}srv,i=4096", "r={nonce}srv,s=!!,i=4096", "r={nonce}srv,s=" + SALT + ",i=x"]
)
def test_a_malformed_server_first_message_is_an_error_not_a_traceback(server_first: str) -> None:
    with FakeScram(server_first) as fake:
        message = _ping(fake)
    assert message.startswith("SCRAM: malformed server-first message")
    assert all(not m.startswith(b"p") for m in fake.after)


def test_positive_control_4096_iterations_gets_a_proof() -> None:
    """The fake then sends nothing more, so the login fails, but only after the proof arrived."""
    with FakeScram(f"r={{nonce}}srv,s={SALT},i=4096") as fake:
        _ping(fake)
    assert any(m.startswith(b"pc=biws,r=") for m in fake.after)
