"""The rendered files in front of a real pgbouncer 1.25.2 and a real PostgreSQL 15, with real clients.

Servers listen on loopback only and run as an unprivileged system user. Every process started here is
stopped in a finally block, also when a test fails.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from autopgpool import render_files
from autopgpool.hashing import scram_verifier

from .pgbouncer_build import ensure_pgbouncer

ROOT = Path(__file__).resolve().parents[2]
PG_BIN = Path(os.environ.get("AUTOPGPOOL_PG_BIN", "/usr/lib/postgresql/15/bin"))
RUN_AS = "autopgpool-test"
ENV = {
    k: v
    for k, v in (
        line.split("=", 1)
        for line in (ROOT / "examples/demo.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
}


def _require(condition: bool, message: str) -> None:
    if not condition:
        pytest.fail(f"integration prerequisite missing: {message}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_user(*cmd: str) -> list[str]:
    return ["runuser", "-u", RUN_AS, "--", *cmd] if os.geteuid() == 0 else list(cmd)


def _ensure_user() -> None:
    if os.geteuid() != 0:
        return
    try:
        pwd.getpwnam(RUN_AS)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", RUN_AS], check=True
        )


def _chown(path: Path) -> None:
    if os.geteuid() == 0:
        pw = pwd.getpwnam(RUN_AS)
        os.chown(path, pw.pw_uid, pw.pw_gid)


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            detail = log.read_text() if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with {proc.returncode}\n{detail}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on port {port}")


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Lab:
    base: Path
    pg_port: int
    pgb_port: int
    conf: Path
    pgbouncer: subprocess.Popen[bytes]
    toml: str

    def pg_admin(self, sql: str) -> str:
        out = subprocess.run(
            ["psql", "-X", "-q", "-At", "-h", str(self.base / "pgsock"), "-p", str(self.pg_port), "-U", "postgres",
             "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", sql],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return out.stdout.strip()

    def connect(self, dbname: str, user: str, password: str) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host="127.0.0.1",
            port=self.pgb_port,
            dbname=dbname,
            user=user,
            password=password,
            connect_timeout=5,
        )

    def psql_pgbouncer(self, user: str, password: str, sql: str) -> str:
        out = subprocess.run(
            ["psql", "-X", "-At", "-h", "127.0.0.1", "-p", str(self.pgb_port), "-U", user, "-d", "pgbouncer",
             "-c", sql],
            capture_output=True, text=True, check=True, env={**os.environ, "PGPASSWORD": password},
        )  # fmt: skip
        return out.stdout

    def render(self, env: dict[str, str], toml: str | None = None) -> None:
        previous = (self.conf / "userlist.txt").read_text() if (self.conf / "userlist.txt").exists() else None
        files = render_files(
            toml or self.toml, env, config_dir=str(self.conf), salt_key=env["AUTOPGPOOL_SCRAM_SALT_KEY"],
            previous_userlist=previous,
        )  # fmt: skip
        modes = {"pgbouncer.ini": 0o600, "userlist.txt": 0o600, "pgbouncer_hba.conf": 0o644}
        for name, content in files.items():
            path = self.conf / name
            path.write_text(content)
            path.chmod(modes[name])
            _chown(path)


def _instance_ini(conf: Path, base: Path, port: int, max_client_conn: int) -> str:
    return (
        f"%include {conf}/pgbouncer.ini\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        f"unix_socket_dir = {base}/pgbsock\n"
        f"pidfile = {base}/pgbouncer-1.pid\n"
        f"logfile = {base}/pgbouncer-1.log\n"
        "peer_id = 1\n"
        f"max_client_conn = {max_client_conn}\n"
    )


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    _require(
        (PG_BIN / "initdb").exists(), f"PostgreSQL 15 binaries in {PG_BIN} (apt-get install postgresql-15)"
    )
    _require(shutil.which("psql") is not None, "psql client on PATH")
    _require(shutil.which("runuser") is not None or os.geteuid() != 0, "runuser (util-linux)")
    pgbouncer_bin = ensure_pgbouncer()
    _ensure_user()
    base = Path(tempfile.mkdtemp(prefix="autopgpool-it-"))
    base.chmod(0o755)
    for sub in ("pgdata", "pgsock", "pgbsock", "conf"):
        (base / sub).mkdir()
        _chown(base / sub)
    _chown(base)
    pg_port, pgb_port = _free_port(), _free_port()
    postgres = pgbouncer = None
    try:
        subprocess.run(
            _as_user(str(PG_BIN / "initdb"), "-D", str(base / "pgdata"), "-U", "postgres", "--auth-local=trust",
                     "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"),
            check=True, capture_output=True,
        )  # fmt: skip
        postgres = subprocess.Popen(
            _as_user(str(PG_BIN / "postgres"), "-D", str(base / "pgdata"), "-p", str(pg_port),
                     "-k", str(base / "pgsock"), "-c", "listen_addresses=127.0.0.1",
                     "-c", "password_encryption=scram-sha-256"),
            stdout=subprocess.DEVNULL, stderr=open(base / "postgres.log", "wb"),  # noqa: SIM115
        )  # fmt: skip
        _wait_port(pg_port, postgres, "postgres", base / "postgres.log")
        toml = (ROOT / "examples/autopgpool.toml").read_text()
        toml = toml.replace('host = "pg1"', 'host = "127.0.0.1"').replace("port = 5432", f"port = {pg_port}")
        lab = Lab(base, pg_port, pgb_port, base / "conf", None, toml)  # type: ignore[arg-type]
        for _ in range(50):  # the port may accept before the server accepts logins
            try:
                lab.pg_admin("SELECT 1")
                break
            except subprocess.CalledProcessError:
                time.sleep(0.1)
        lab.pg_admin(f"CREATE ROLE app_owner LOGIN PASSWORD '{ENV['APP_DB_PASSWORD']}'")
        lab.pg_admin(f"CREATE ROLE reporting_owner LOGIN PASSWORD '{ENV['REPORTING_DB_PASSWORD']}'")
        lab.pg_admin("CREATE DATABASE app_db OWNER app_owner")
        lab.pg_admin("CREATE DATABASE reporting_db OWNER reporting_owner")
        lab.render(ENV)
        instance = base / "conf/instance-1.ini"
        instance.write_text(_instance_ini(lab.conf, base, pgb_port, 77))
        _chown(instance)
        # The cache may sit in root's home, which the service user cannot enter.
        binary = base / "pgbouncer"
        shutil.copy2(pgbouncer_bin, binary)
        binary.chmod(0o755)
        pgbouncer = subprocess.Popen(
            _as_user(str(binary), str(instance)),
            stdout=subprocess.DEVNULL, stderr=open(base / "pgbouncer-1.stderr", "wb"),  # noqa: SIM115
        )  # fmt: skip
        _wait_port(pgb_port, pgbouncer, "pgbouncer", base / "pgbouncer-1.stderr")
        lab.pgbouncer = pgbouncer
        yield lab
    finally:
        _stop(pgbouncer)
        _stop(postgres)
        if not os.environ.get("AUTOPGPOOL_KEEP_LAB"):
            shutil.rmtree(base, ignore_errors=True)


def _current_db(lab: Lab, dbname: str, user: str, password: str) -> object:
    with lab.connect(dbname, user, password) as conn:
        row = conn.execute("SELECT current_database()").fetchone()
        assert row is not None
        return row[0]


def test_scram_and_md5_users_reach_their_remote_database(lab: Lab) -> None:
    assert _current_db(lab, "app", "app_user", ENV["APP_USER_PASSWORD"]) == "app_db"
    assert _current_db(lab, "reporting", "report_user", ENV["REPORT_USER_PASSWORD"]) == "reporting_db"
    assert _current_db(lab, "reporting", "both_user", ENV["BOTH_USER_PASSWORD"]) == "reporting_db"
    assert _current_db(lab, "app", "both_user", ENV["BOTH_USER_PASSWORD"]) == "app_db"


def test_user_without_grant_is_refused(lab: Lab) -> None:
    with pytest.raises(psycopg.OperationalError):
        lab.connect("reporting", "app_user", ENV["APP_USER_PASSWORD"])
    with pytest.raises(psycopg.OperationalError):
        lab.connect("app", "admin", ENV["ADMIN_PASSWORD"])


def test_wrong_password_is_refused(lab: Lab) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        lab.connect("app", "app_user", "wrong")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        lab.connect("reporting", "report_user", "wrong")


def test_admin_console_and_include_layout(lab: Lab) -> None:
    pools = lab.psql_pgbouncer("admin", ENV["ADMIN_PASSWORD"], "SHOW POOLS")
    assert "app|app_owner" in pools
    config = lab.psql_pgbouncer("admin", ENV["ADMIN_PASSWORD"], "SHOW CONFIG")
    settings = {line.split("|")[0]: line.split("|")[1] for line in config.splitlines() if "|" in line}
    assert settings["max_client_conn"] == "77"  # instance file wins over the included shared file
    assert settings["listen_port"] == str(lab.pgb_port)
    assert settings["server_login_retry"] == "1"  # from the shared file
    assert settings["auth_type"] == "hba"
    stats = lab.psql_pgbouncer("stats", ENV["STATS_PASSWORD"], "SHOW STATS")
    assert "app" in stats


def test_reload_applies_new_password_and_settings_keeping_pid(lab: Lab) -> None:
    pid = lab.pgbouncer.pid
    env = {**ENV, "APP_USER_PASSWORD": "rotated-pw"}
    lab.render(env, lab.toml.replace("default_pool_size = 10", "default_pool_size = 12"))
    instance = lab.conf / "instance-1.ini"
    instance.write_text(_instance_ini(lab.conf, lab.base, lab.pgb_port, 78))
    subprocess.run(["kill", "-HUP", str(pid)], check=True)
    time.sleep(1)
    assert lab.pgbouncer.poll() is None and lab.pgbouncer.pid == pid
    assert _current_db(lab, "app", "app_user", "rotated-pw") == "app_db"
    with pytest.raises(psycopg.OperationalError):
        lab.connect("app", "app_user", ENV["APP_USER_PASSWORD"])
    config = lab.psql_pgbouncer("admin", ENV["ADMIN_PASSWORD"], "SHOW CONFIG")
    settings = {line.split("|")[0]: line.split("|")[1] for line in config.splitlines() if "|" in line}
    assert settings["default_pool_size"] == "12"  # the included file was re-read
    assert settings["max_client_conn"] == "78"  # and so was the instance file
    # unchanged users keep their verifier byte for byte
    assert _current_db(lab, "app", "both_user", ENV["BOTH_USER_PASSWORD"]) == "app_db"


def test_our_scram_verifier_is_accepted_by_postgresql(lab: Lab) -> None:
    verifier = scram_verifier("direct-login-pw", os.urandom(16))
    lab.pg_admin(f"CREATE ROLE direct_login LOGIN PASSWORD '{verifier}'")
    assert lab.pg_admin("SELECT rolpassword FROM pg_authid WHERE rolname = 'direct_login'") == verifier
    with psycopg.connect(
        host="127.0.0.1", port=lab.pg_port, dbname="postgres", user="direct_login", password="direct-login-pw"
    ) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("direct_login",)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(
            host="127.0.0.1", port=lab.pg_port, dbname="postgres", user="direct_login", password="x"
        )
    lab.pg_admin(f"ALTER ROLE direct_login PASSWORD '{scram_verifier('changed-pw', os.urandom(16))}'")
    with psycopg.connect(
        host="127.0.0.1", port=lab.pg_port, dbname="postgres", user="direct_login", password="changed-pw"
    ) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
