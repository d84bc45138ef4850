"""The exporter's console reads against a fake pgbouncer on a real unix socket that logs the exporter in and
then never answers a query (a stopped, spinning or swapped-out instance). libpq's connect_timeout bounds the
connection only, so without a watchdog the scrape thread, and every /metrics request waiting for it, would
wait for ever. The instance must read as down within connect_timeout + the read bound, and the next snapshot
reconnects; the positive control (a fake that answers) reads as up."""

from __future__ import annotations

import socket
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("psycopg")

from autopgpool.exporter import Console, ExporterConfig, Instance

PORT = 6499


def _msg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


class FakeConsole:
    """``answer``: reply to each query with an empty result (True) or never (False)."""

    def __init__(self, directory: Path, *, answer: bool) -> None:
        self.answer = answer
        self.path = directory / f".s.PGSQL.{PORT}"
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.path))
        self.listener.listen(8)
        self.listener.settimeout(0.2)
        self.logins = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        buf = b""

        def need(n: int) -> bytes:
            nonlocal buf
            while len(buf) < n and not self.stop.is_set():
                try:
                    chunk = conn.recv(4096)
                except TimeoutError:
                    continue
                if not chunk:
                    raise EOFError
                buf += chunk
            if len(buf) < n:
                raise EOFError
            data, buf = buf[:n], buf[n:]
            return data

        with conn:
            try:
                (length,) = struct.unpack("!I", need(4))
                need(length - 4)  # startup
                self.logins += 1
                conn.sendall(
                    _msg(b"R", struct.pack("!I", 0))
                    + _msg(b"S", b"server_version\x0016.0\x00")
                    + _msg(b"S", b"client_encoding\x00UTF8\x00")
                    + _msg(b"K", struct.pack("!II", 1, 2))
                    + _msg(b"Z", b"I")
                )
                while not self.stop.is_set():
                    kind = need(1)
                    (length,) = struct.unpack("!I", need(4))
                    need(length - 4)
                    if kind == b"X":
                        return
                    if self.answer:
                        conn.sendall(
                            _msg(b"T", struct.pack("!H", 0)) + _msg(b"C", b"SHOW\x00") + _msg(b"Z", b"I")
                        )
                    # else: never answer, as a hung instance
            except (EOFError, OSError):
                return

    def __enter__(self) -> FakeConsole:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(2)
        self.listener.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A unix socket path must stay under 108 bytes: pytest's tmp_path may be longer."""
    with tempfile.TemporaryDirectory(prefix="apgp-") as name:
        yield Path(name)


def _console(directory: Path) -> Console:
    config = ExporterConfig(
        host="h",
        user="stats",
        password="pw",
        instances=(Instance(1, str(directory), PORT),),
        connect_timeout=1,
    )
    return Console(config, config.instances[0], read_seconds=1.0)


def _snapshot_within(console: Console, seconds: float) -> object:
    result: list[object] = []
    worker = threading.Thread(target=lambda: result.append(console.snapshot()), daemon=True)
    worker.start()
    worker.join(seconds)
    assert result, f"the snapshot did not return within {seconds} s: the scrape thread would hang"
    return result[0]


def test_an_instance_that_stops_answering_reads_as_down_in_bounded_time(short_dir: Path) -> None:
    with FakeConsole(short_dir, answer=False) as fake:
        console = _console(short_dir)
        started = time.monotonic()
        snap = _snapshot_within(console, 10)
        assert snap.up is False  # type: ignore[attr-defined]
        assert time.monotonic() - started < 6
        # The next scrape reconnects instead of reusing the shut-down socket.
        snap = _snapshot_within(console, 10)
        assert snap.up is False  # type: ignore[attr-defined]
        assert fake.logins == 2
        console.close()


def test_positive_control_an_answering_instance_reads_as_up(short_dir: Path) -> None:
    with FakeConsole(short_dir, answer=True) as fake:
        console = _console(short_dir)
        snap = _snapshot_within(console, 10)
        assert snap.up is True  # type: ignore[attr-defined]
        snap = _snapshot_within(console, 10)  # the kept connection serves the next scrape
        assert snap.up is True  # type: ignore[attr-defined]
        assert fake.logins == 1
        console.close()
