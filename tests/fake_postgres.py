"""A fake PostgreSQL server on a real socket, in a thread: it answers the SSLRequest (with TLS from a given
certificate, or 'N'), reads the startup message, asks for a cleartext password or sends an MD5 challenge, and
records every byte the client sends (after TLS: what the server application would read). For proving that a
client never hands its password to whoever answers at an address."""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
from types import TracebackType

SSL_REQUEST = 80877103
#: The authentication request each mode sends (AuthenticationCleartextPassword, AuthenticationMD5Password).
REQUESTS = {"password": struct.pack("!I", 3), "md5": struct.pack("!I", 5) + b"salt"}


class FakePostgres:
    """``with FakePostgres("127.0.0.1", ask="password") as fake: ...``; then ``fake.received`` (all bytes).

    ``tls``: an SSLContext for the server side (None: answer 'N'). At most ``max_connections`` connections are
    served, each for at most ``timeout`` seconds, so a test never leaves a busy thread behind."""

    def __init__(
        self,
        host: str,
        *,
        ask: str = "password",
        tls: ssl.SSLContext | None = None,
        port: int = 0,
        max_connections: int = 8,
        timeout: float = 10,
    ) -> None:
        self.ask, self.tls, self.timeout, self.max_connections = ask, tls, timeout, max_connections
        self.listener = socket.create_server((host, port))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.received = b""
        self.connections = 0
        self.tls_errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FakePostgres:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=self.timeout + 5)
        self.listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set() and self.connections < self.max_connections:
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(self.timeout)
                with contextlib.suppress(OSError, ValueError, struct.error):
                    self._one(conn)

    def _read(self, sock: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("client closed")
            data += chunk
            self.received += chunk
        return data

    def _one(self, conn: socket.socket) -> None:
        sock: socket.socket = conn
        (length,) = struct.unpack("!I", self._read(sock, 4))
        body = self._read(sock, length - 4)
        if struct.unpack("!I", body[:4])[0] == SSL_REQUEST:
            if self.tls is None:
                sock.sendall(b"N")
            else:
                sock.sendall(b"S")
                try:
                    sock = self.tls.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError) as err:
                    self.tls_errors.append(str(err))
                    return
            (length,) = struct.unpack("!I", self._read(sock, 4))
            self._read(sock, length - 4)  # the startup message
        request = REQUESTS[self.ask]
        sock.sendall(b"R" + struct.pack("!I", len(request) + 4) + request)
        # Whatever comes now would be the password (or its MD5 digest): record it all until the client leaves.
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return
            self.received += chunk


def server_context(cert_pem: bytes, key_pem: bytes, directory: str) -> ssl.SSLContext:
    """A server-side SSLContext from PEM bytes (written under ``directory``: ssl loads chains from files)."""
    cert_path, key_path = f"{directory}/fake.crt", f"{directory}/fake.key"
    with open(cert_path, "wb") as f:
        f.write(cert_pem)
    with open(key_path, "wb") as f:
        f.write(key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context
