"""pgbench load through HAProxy on the pooler hosts, counting every failed transaction and connection error.

pgbench 15 aborts a client on any error that is not a serialization failure or a deadlock (``--max-tries``
only retries those), and a client that aborted sends nothing more: one pgbench with ``-c 8`` would undercount
and stop loading after its first error. So each client is its own ``pgbench -c 1`` run in short chunks
(``-T``), and a run that ends early is restarted at once. Every run that exits non-zero is one failure -- the
transaction or the connection it was in when it aborted -- recorded with its time, host and pgbench's message;
``number of failed transactions`` (serialization/deadlock failures, none expected for SELECTs) is added too.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from e2e.stack import Host, example_config

PGBENCH = shutil.which("pgbench") or "/usr/lib/postgresql/15/bin/pgbench"
SCRIPT = "\\set n random(1, 100000)\nSELECT :n;\n"
# After a failed run, wait this long before the next one: errors keep being counted, without a busy loop.
RETRY_PAUSE = 0.1


@dataclass(frozen=True)
class Failure:
    at: float  # time.time() when the failed run ended (pgbench exits right after the abort)
    host: str
    message: str


@dataclass
class HostFigures:
    transactions: int = 0
    failures: list[Failure] = field(default_factory=list)


class Load:
    """``with Load(hosts) as load: ...`` keeps `clients` pgbench clients per host busy until the block ends.

    connect=True: a new connection per transaction (``-C``); False: persistent connections, renewed only at
    the end of each chunk. The rate is capped per client (``-R``) so that ``-C`` does not exhaust the
    controller's ephemeral ports (TIME_WAIT) during a long drill.
    """

    def __init__(
        self,
        hosts: list[Host],
        *,
        connect: bool = True,
        clients: int = 8,
        rate: int = 25,
        chunk: int = 5,
        user: str = "app_user",
        dbname: str = "app",
        max_seconds: float = 600,
        env: dict[str, str] | None = None,
    ) -> None:
        self.hosts = hosts
        self.connect = connect
        self.clients = clients
        self.rate = rate
        self.chunk = chunk
        self.user = user
        self.dbname = dbname
        self.max_seconds = max_seconds
        self.figures = {host.name: HostFigures() for host in hosts}
        self.started = 0.0
        self.stopped = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._dir = tempfile.TemporaryDirectory(prefix="drill-load-")
        self._script = Path(self._dir.name) / "select.sql"
        self._script.write_text(SCRIPT)
        user_ = next(u for u in example_config().users if u.username == user)
        self._env = {"PGPASSWORD": user_.password, "PATH": "/usr/bin:/bin", "PGCONNECT_TIMEOUT": "5"}
        # e.g. PGSSLMODE=verify-full and PGSSLROOTCERT: libpq's TLS settings for every pgbench client.
        self._env.update(env or {})

    # -- figures -------------------------------------------------------------------------------------------
    @property
    def transactions(self) -> int:
        return sum(f.transactions for f in self.figures.values())

    @property
    def failures(self) -> list[Failure]:
        return sorted((x for f in self.figures.values() for x in f.failures), key=lambda x: x.at)

    def summary(self) -> str:
        per_host = ", ".join(
            f"{name} {f.transactions} ok/{len(f.failures)} failed" for name, f in self.figures.items()
        )
        took = (self.stopped or time.time()) - self.started
        mode = "new connection per transaction (-C)" if self.connect else "persistent connections"
        return (
            f"pgbench {self.clients} clients x {len(self.hosts)} hosts, {mode}, {took:.0f} s: "
            f"{self.transactions} transactions, {len(self.failures)} failed ({per_host})"
        )

    def failure_lines(self, limit: int = 10) -> str:
        lines = [f"  {_clock(f.at)} {f.host}: {f.message}" for f in self.failures[:limit]]
        return "\n".join(lines)

    # -- running -------------------------------------------------------------------------------------------
    def __enter__(self) -> Load:
        self.started = time.time()
        for host in self.hosts:
            for client in range(self.clients):
                thread = threading.Thread(target=self._client, args=(host,), name=f"{host.name}-{client}")
                thread.start()
                self._threads.append(thread)
        self.wait_until_flowing()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.chunk + 60)
        self.stopped = time.time()
        self._dir.cleanup()

    def wait_until_flowing(self, timeout: float = 30) -> None:
        """Block until every host has completed transactions (the first chunks have ended)."""
        deadline = time.monotonic() + timeout
        while any(f.transactions == 0 for f in self.figures.values()):
            if time.monotonic() > deadline:
                raise AssertionError(f"load not flowing after {timeout} s: {self.summary()}")
            time.sleep(0.2)

    def _command(self, host: Host, seconds: int) -> list[str]:
        return [
            PGBENCH, "-n", "-f", str(self._script), "-c", "1", "-j", "1", "-T", str(seconds),
            "-R", str(self.rate), *(["-C"] if self.connect else []),
            "-h", host.address, "-p", str(example_config().listen_port), "-U", self.user, self.dbname,
        ]  # fmt: skip

    def _client(self, host: Host) -> None:
        deadline = self.started + self.max_seconds
        while not self._stop.is_set() and time.time() < deadline:
            try:
                result = subprocess.run(
                    self._command(host, self.chunk), env=self._env, capture_output=True, text=True,
                    timeout=self.chunk + 60, check=False,
                )  # fmt: skip
                out, err, code = result.stdout, result.stderr, result.returncode
            except subprocess.TimeoutExpired:
                out, err, code = "", "pgbench hung past its -T and was killed", -1
            processed = re.search(r"number of transactions actually processed: (\d+)", out)
            failed = re.search(r"number of failed transactions: (\d+)", out)
            with self._lock:
                figures = self.figures[host.name]
                figures.transactions += int(processed.group(1)) if processed else 0
                now = time.time()
                if code != 0:
                    figures.failures.append(Failure(now, host.name, _first_error(err, code)))
                for _ in range(int(failed.group(1)) if failed else 0):
                    figures.failures.append(Failure(now, host.name, "pgbench counted a failed transaction"))
            if code != 0:
                time.sleep(RETRY_PAUSE)


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at % 1 * 1000):03d}"


def _first_error(stderr: str, code: int) -> str:
    for line in stderr.splitlines():
        if "error" in line.lower() or "aborted" in line.lower():
            return line.strip()[:200]
    return f"pgbench exited {code}: {stderr.strip()[:200]}"
