"""``autopgpool generate`` as autopg-pool users run it, loaded by the real pgbouncer 1.25.2.

* With only ``--output-dir``, pgbouncer started on the output finds userlist.txt and pgbouncer_hba.conf: the
  admin user logs in to the console with SCRAM, which needs both files.
* Values at the limits the core accepts are taken by pgbouncer as written, and for values past them pgbouncer
  stores exactly what the core's error message says it would (read back with ``SHOW CONFIG``).
* The standalone render (generate's default) works on its own, in front of a real PostgreSQL:
  ``pgbouncer out/pgbouncer.ini`` listens on the TOML's listen_addr:listen_port, and an application user
  logs in over TCP from 127.0.0.1 and from another loopback address (127.0.0.5, through a relay that
  connects from it, as HAProxy connects from 127.0.0.2) and runs a query; the console answers from
  127.0.0.1 only. ``--layout instances`` (what the roles deploy) refuses the same 127.0.0.5 client.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from autopgpool import ConfigError, validate

from .pgbouncer_build import ensure_pgbouncer
from .test_pgbouncer_real import (
    PG_BIN,
    Refused,
    _chown,
    _ensure_user,
    _eventually,
    _free_port,
    _require,
    _run_as,
    _stop,
    _wait_port,
)

ENV = {"ADM_PW": "it-admin-pw-1", "R_PW": "it-backend-pw-1"}
TOML = """
[[users]]
username = "adm"
password = "$ADM_PW"
grants = []

[pools.p.remote]
host = "127.0.0.1"
port = 1
database = "d"
username = "r"
password = "$R_PW"

[pgbouncer]
admin_users = ["adm"]
max_packet_size = 4294967295
server_lifetime = 9223372036854
query_wait_timeout = 0.000001
server_idle_timeout = 1234567.5
"""
# Past the core's limits: written straight into the instance file, bypassing autopgpool, to see what
# pgbouncer makes of them. (setting, value, the same as a TOML line for the core)
BEYOND = [
    ("server_round_robin", "2147483648", "server_round_robin = 2147483648"),
    ("tcp_keepcnt", "99999999999999999999", "tcp_keepcnt = 99999999999999999999"),
    ("query_timeout", "0.0000001", "query_timeout = 0.0000001"),
]


class Started:
    def __init__(self, base: Path, port: int) -> None:
        self.base = base
        self.port = port
        self.out = base / "out"

    def console(self, command: str) -> dict[str, str]:
        proc = subprocess.run(
            ["psql", "-X", "-At", "-h", "127.0.0.1", "-p", str(self.port), "-U", "adm", "-d", "pgbouncer",
             "-c", command],
            capture_output=True, text=True, check=False,
            env={**os.environ, "PGPASSWORD": ENV["ADM_PW"], "PGREQUIREAUTH": "scram-sha-256"},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return {line.split("|")[0]: line.split("|")[1] for line in proc.stdout.splitlines()}


@pytest.fixture(scope="module")
def started() -> Iterator[Started]:
    if shutil.which("psql") is None:
        pytest.fail("integration prerequisite missing: psql client on PATH")
    pgbouncer_bin = ensure_pgbouncer()
    _ensure_user()
    base = Path(tempfile.mkdtemp(prefix="autopgpool-gen-"))
    base.chmod(0o755)
    run = Started(base, _free_port())
    proc = None
    try:
        (base / "autopgpool.toml").write_text(TOML)
        gen = subprocess.run(
            [sys.executable, "-m", "autopgpool.cli", "generate", "--config-path", "autopgpool.toml",
             "--output-dir", "out"],
            capture_output=True, text=True, check=False, cwd=base, env={"PATH": os.environ["PATH"], **ENV},
        )  # fmt: skip
        assert gen.returncode == 0, gen.stderr
        (base / "sock").mkdir()
        instance = base / "out/instance-1.ini"
        instance.write_text(
            f"%include {base}/out/pgbouncer.ini\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {run.port}\nunix_socket_dir = {base}/sock\n"
            f"pidfile = {base}/pgbouncer.pid\nlogfile = {base}/pgbouncer.log\n"
            + "".join(f"{name} = {value}\n" for name, value, _ in BEYOND)
        )
        for path in (base, base / "out", base / "sock", *(base / "out").iterdir()):
            _chown(path)
        binary = base / "pgbouncer"
        shutil.copy2(pgbouncer_bin, binary)
        binary.chmod(0o755)
        with (base / "pgbouncer.stderr").open("wb") as log:
            proc = subprocess.Popen(
                [str(binary), str(instance)], stdout=subprocess.DEVNULL, stderr=log, cwd=base, **_run_as()
            )
        _wait_port(run.port, proc, "pgbouncer", base / "pgbouncer.stderr")
        yield run
    finally:
        _stop(proc)
        if not os.environ.get("AUTOPGPOOL_KEEP_LAB"):
            shutil.rmtree(base, ignore_errors=True)


def test_default_config_dir_lets_pgbouncer_find_its_files(started: Started) -> None:
    ini = (started.out / "pgbouncer.ini").read_text()
    assert f"auth_file = {started.out}/userlist.txt\n" in ini
    config = started.console("SHOW CONFIG")  # a SCRAM login that needed userlist.txt and the hba file
    assert config["auth_file"] == f"{started.out}/userlist.txt"
    assert config["auth_hba_file"] == f"{started.out}/pgbouncer_hba.conf"


def test_values_at_the_limits_are_taken_as_written(started: Started) -> None:
    config = started.console("SHOW CONFIG")
    assert config["max_packet_size"] == "4294967295"
    assert float(config["server_lifetime"]) == pytest.approx(9223372036854, rel=1e-5)
    assert float(config["query_wait_timeout"]) == pytest.approx(0.000001)
    assert float(config["server_idle_timeout"]) == pytest.approx(1234567.5, rel=1e-5)


def test_values_past_the_limits_do_what_the_error_says(started: Started) -> None:
    config = started.console("SHOW CONFIG")
    base = TOML.replace("[pgbouncer]\n", "[pgbouncer]\n" + "\n".join(line for _, _, line in BEYOND) + "\n")
    with pytest.raises(ConfigError) as err:
        validate(base, ENV)
    messages = {p.path.removeprefix("pgbouncer."): p.message for p in err.value.problems}
    assert set(messages) == {name for name, _, _ in BEYOND}
    assert config["server_round_robin"] == "-2147483648"
    assert messages["server_round_robin"].endswith("would have stored it as -2147483648")
    assert config["tcp_keepcnt"] == "-1"
    assert messages["tcp_keepcnt"].endswith("would have stored it as -1")
    assert config["query_timeout"] == "0"
    assert "would read this as 0" in messages["query_timeout"]


# ---- the standalone render in front of a real PostgreSQL ------------------------------------------------

SA_ENV = {"APP_PW": "it-sa-app-pw-1", "ADM_PW": "it-sa-admin-pw-1", "OWNER_PW": "it-sa-owner-pw-1"}
SA_TOML = """
[[users]]
username = "app"
password = "$APP_PW"
grants = ["appdb"]

[[users]]
username = "adm"
password = "$ADM_PW"
grants = []

[pools.appdb.remote]
host = "127.0.0.1"
port = {pg_port}
database = "app_db"
username = "app_owner"
password = "$OWNER_PW"

[pgbouncer]
listen_addr = "127.0.0.1"
listen_port = {pgb_port}
admin_users = ["adm"]
"""
OTHER_LOOPBACK = "127.0.0.5"


class Relay:
    """Accepts on 127.0.0.1 and connects on to ``target`` from ``source``: pgbouncer then sees a client at
    ``source`` (libpq cannot choose its source address; HAProxy does the same from 127.0.0.2). Bounded: it
    serves until closed, each connection's pumps end when either side closes."""

    def __init__(self, source: str, target: int) -> None:
        self.source, self.target = source, target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = int(self.listener.getsockname()[1])
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.socket()
            upstream.bind((self.source, 0))
            try:
                upstream.connect(("127.0.0.1", self.target))
            except OSError:
                client.close()
                upstream.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.closed.set()
        self.listener.close()
        self.thread.join(timeout=5)


@dataclass
class Standalone:
    base: Path
    pg_port: int
    pgb_port: int
    inst_port: int
    relays: dict[str, Relay] = field(default_factory=dict)
    gen_stdout: str = ""

    def login(self, port: int, dbname: str, user: str, secret: str) -> psycopg.Connection[tuple[Any, ...]]:
        """A real libpq login over TCP to 127.0.0.1:port; a refusal carries the server's message only."""
        try:
            return psycopg.connect(
                host="127.0.0.1", port=port, dbname=dbname, user=user, password=SA_ENV[secret],
                connect_timeout=5, require_auth="scram-sha-256",
            )  # fmt: skip
        except psycopg.OperationalError as exc:
            raise Refused(str(exc)) from None

    def query(self, port: int) -> tuple[Any, ...]:
        with self.login(port, "appdb", "app", "APP_PW") as conn:
            row = conn.execute("SELECT current_database(), current_user, inet_server_port()").fetchone()
            assert row is not None
            return tuple(row)


def _generate(base: Path, out: str, *extra: str) -> subprocess.CompletedProcess[str]:
    gen = subprocess.run(
        [sys.executable, "-m", "autopgpool.cli", "generate", "--config-path", "sa.toml", "--output-dir", out,
         *extra],
        capture_output=True, text=True, check=False, cwd=base, env={"PATH": os.environ["PATH"], **SA_ENV},
    )  # fmt: skip
    assert gen.returncode == 0, gen.stderr
    for path in (base / out, *(base / out).iterdir()):
        _chown(path)
    return gen


def _start(base: Path, binary: Path, ini: Path, name: str) -> subprocess.Popen[bytes]:
    with (base / f"{name}.stderr").open("wb") as log:
        return subprocess.Popen(
            [str(binary), str(ini)], stdout=subprocess.DEVNULL, stderr=log, cwd=base, **_run_as()
        )


@pytest.fixture(scope="module")
def standalone() -> Iterator[Standalone]:
    _require((PG_BIN / "initdb").exists(), f"PostgreSQL binaries in {PG_BIN}")
    _require(shutil.which("psql") is not None, "psql client on PATH")
    pgbouncer_bin = ensure_pgbouncer()
    _ensure_user()
    base = Path(tempfile.mkdtemp(prefix="autopgpool-sa-"))
    base.chmod(0o755)
    for sub in ("pgdata", "pgsock", "isock"):
        (base / sub).mkdir()
        _chown(base / sub)
    _chown(base)
    run = Standalone(base, _free_port(), _free_port(), _free_port())
    procs: list[subprocess.Popen[bytes]] = []
    try:
        subprocess.run(
            [str(PG_BIN / "initdb"), "-D", str(base / "pgdata"), "-U", "postgres", "--auth-local=trust",
             "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True, cwd=base, **_run_as(),
        )  # fmt: skip
        with (base / "postgres.log").open("wb") as log:
            postgres = subprocess.Popen(
                [str(PG_BIN / "postgres"), "-D", str(base / "pgdata"), "-p", str(run.pg_port),
                 "-k", str(base / "pgsock"), "-c", "listen_addresses=127.0.0.1",
                 "-c", "password_encryption=scram-sha-256"],
                stdout=subprocess.DEVNULL, stderr=log, cwd=base, **_run_as(),
            )  # fmt: skip
        procs.append(postgres)
        _wait_port(run.pg_port, postgres, "postgres", base / "postgres.log")
        sql = (
            f"CREATE ROLE app_owner LOGIN PASSWORD '{SA_ENV['OWNER_PW']}';\n"
            "CREATE DATABASE app_db OWNER app_owner;\n"
        )

        def pg_admin() -> bool:
            proc = subprocess.run(
                ["psql", "-X", "-q", "-h", str(base / "pgsock"), "-p", str(run.pg_port), "-U", "postgres",
                 "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-f", "-"],
                input=sql, capture_output=True, text=True, check=False,
            )  # fmt: skip
            return proc.returncode == 0

        _eventually(pg_admin, "PostgreSQL takes the test roles")
        (base / "sa.toml").write_text(SA_TOML.format(pg_port=run.pg_port, pgb_port=run.pgb_port))
        # As an autopg-pool user runs it: no flag beyond the two it had.
        run.gen_stdout = _generate(base, "out").stdout
        # What the roles deploy, behind an instance file as roles/pgbouncer writes it, for the contrast.
        _generate(base, "inst", "--layout", "instances")
        instance = base / "inst/instance-1.ini"
        instance.write_text(
            f"%include {base}/inst/pgbouncer.ini\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {run.inst_port}\nunix_socket_dir = {base}/isock\n"
        )
        _chown(instance)
        binary = base / "pgbouncer"
        shutil.copy2(pgbouncer_bin, binary)
        binary.chmod(0o755)
        # Nothing but the generated file: its own listener, pgbouncer's default unix socket directory.
        procs.append(_start(base, binary, base / "out/pgbouncer.ini", "standalone"))
        _wait_port(run.pgb_port, procs[-1], "standalone pgbouncer", base / "standalone.stderr")
        procs.append(_start(base, binary, instance, "instances"))
        _wait_port(run.inst_port, procs[-1], "instances pgbouncer", base / "instances.stderr")
        run.relays = {
            "standalone": Relay(OTHER_LOOPBACK, run.pgb_port),
            "instances": Relay(OTHER_LOOPBACK, run.inst_port),
        }
        yield run
    finally:
        for relay in run.relays.values():
            relay.close()
        for proc in reversed(procs):
            _stop(proc)
        if not os.environ.get("AUTOPGPOOL_KEEP_LAB"):
            shutil.rmtree(base, ignore_errors=True)


def test_standalone_pgbouncer_listens_where_the_toml_says(standalone: Standalone) -> None:
    ini = (standalone.base / "out/pgbouncer.ini").read_text()
    assert "listen_addr = 127.0.0.1\n" in ini
    assert f"listen_port = {standalone.pgb_port}\n" in ini
    assert f"listens on 127.0.0.1:{standalone.pgb_port}" in standalone.gen_stdout
    assert standalone.query(standalone.pgb_port) == ("app_db", "app_owner", standalone.pg_port)


def test_standalone_accepts_an_application_client_from_another_address(standalone: Standalone) -> None:
    relay = standalone.relays["standalone"]
    assert standalone.query(relay.port) == ("app_db", "app_owner", standalone.pg_port)


def test_instances_layout_refuses_the_same_client(standalone: Standalone) -> None:
    # From 127.0.0.1 (an operator on the host) the role's files let the user in...
    assert standalone.query(standalone.inst_port)[0] == "app_db"
    # ...but not from a loopback address that is neither HAProxy's nor the host's operator address.
    with pytest.raises(Refused, match="login rejected"):  # pgbouncer's answer to an hba reject rule
        standalone.query(standalone.relays["instances"].port)


def test_standalone_console_answers_on_the_host_address_only(standalone: Standalone) -> None:
    with standalone.login(standalone.pgb_port, "pgbouncer", "adm", "ADM_PW") as conn:
        conn.autocommit = True
        rows = {row[0]: row[1] for row in conn.execute("SHOW CONFIG").fetchall()}
    assert rows["listen_addr"] == "127.0.0.1"
    with pytest.raises(Refused, match="login rejected"):
        standalone.login(standalone.relays["standalone"].port, "pgbouncer", "adm", "ADM_PW").close()
