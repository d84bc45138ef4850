"""The rendered files in front of a real pgbouncer 1.25.2 and a real PostgreSQL 15, with real clients.

Servers listen on loopback only and run as an unprivileged system user. Every process started here is
stopped in a finally block, also when a test fails.

Secrets stay out of failure output: helpers take the *name* of a variable from examples/demo.env and look the
value up themselves, and a refused login is re-raised without the client library's frames (whose arguments
pytest would print, connection strings included).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from autopgpool.hashing import scram_verifier
from autopgpool.render import parse_userlist
from demo_example import DEMO_ENV

from .pgbouncer_build import ensure_pgbouncer

ROOT = Path(__file__).resolve().parents[2]
PG_BIN = Path(os.environ.get("AUTOPGPOOL_PG_BIN", "/usr/lib/postgresql/15/bin"))
RUN_AS = "autopgpool-test"
# reporting_owner is the reporting pool's backend user *and* a client user with the same password: one plain
# userlist.txt line must serve the backend login and md5 or SCRAM client logins.
SHARED_USER = (
    '[[users]]\nusername = "reporting_owner"\npassword = "$REPORTING_DB_PASSWORD"\ngrants = ["reporting"]\n'
)
MODES = {"pgbouncer.ini": 0o600, "userlist.txt": 0o600, "pgbouncer_hba.conf": 0o644}


class Refused(Exception):
    """A login or statement the server refused; the message is the server's, never a password."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        pytest.fail(f"integration prerequisite missing: {message}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as() -> dict[str, Any]:
    """Popen arguments that drop to the test user when we are root (PostgreSQL and pgbouncer refuse root).

    Popen(user=...) switches user in the child before exec, so the Popen's pid is the server's own pid:
    signals reach it directly, unlike through runuser, which forks and waits.
    """
    if os.geteuid() != 0:
        return {}
    return {"user": RUN_AS, "group": pwd.getpwnam(RUN_AS).pw_gid, "extra_groups": []}


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


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            detail = log.read_text() if log.exists() else ""
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


def _eventually(check: Callable[[], bool], what: str, timeout: float = 10) -> None:
    """Poll until check() is true: a reload is applied asynchronously after SIGHUP."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Refused:
            pass
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


@dataclass
class Lab:
    base: Path
    pg_port: int
    pgb_port: int
    toml: str
    env: dict[str, str] = field(repr=False)
    pgbouncer: subprocess.Popen[bytes] | None = None

    @property
    def conf(self) -> Path:
        return self.base / "conf"

    def pg_admin(self, sql: str) -> str:
        """Run SQL as the PostgreSQL superuser over the Unix socket; the SQL goes through stdin."""
        proc = subprocess.run(
            ["psql", "-X", "-q", "-At", "-h", str(self.base / "pgsock"), "-p", str(self.pg_port),
             "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=terse", "-f", "-"],
            input=sql, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise Refused(proc.stderr.strip())
        return proc.stdout.strip()

    def connect(
        self,
        dbname: str,
        user: str,
        *,
        secret: str | None = None,
        password: str | None = None,
        port: int | None = None,
        require_auth: str | None = None,
    ) -> psycopg.Connection[tuple[Any, ...]]:
        """Log in with the password from variable ``secret`` (or a literal, non-secret ``password``).

        ``require_auth`` (libpq 16+) makes the client refuse any other method than the one named.
        """
        pw = self.env[secret] if secret is not None else password
        extra: dict[str, Any] = {"require_auth": require_auth} if require_auth else {}
        try:
            return psycopg.connect(
                host="127.0.0.1", port=port or self.pgb_port, dbname=dbname, user=user, password=pw,
                connect_timeout=5, **extra,
            )  # fmt: skip
        except psycopg.OperationalError as exc:
            raise Refused(str(exc)) from None

    def current_db(self, dbname: str, user: str, secret: str, require_auth: str | None = None) -> str:
        with self.connect(dbname, user, secret=secret, require_auth=require_auth) as conn:
            row = conn.execute("SELECT current_database()").fetchone()
            assert row is not None
            return str(row[0])

    def console(self, user: str, secret: str, command: str) -> list[list[str]]:
        """Rows of an admin console command, run with psql as ``user``."""
        proc = subprocess.run(
            ["psql", "-X", "-At", "-h", "127.0.0.1", "-p", str(self.pgb_port), "-U", user, "-d", "pgbouncer",
             "-c", command],
            capture_output=True, text=True, check=False, env={**os.environ, "PGPASSWORD": self.env[secret]},
        )  # fmt: skip
        if proc.returncode != 0:
            raise Refused(proc.stderr.strip())
        return [line.split("|") for line in proc.stdout.splitlines()]

    def show_config(self) -> dict[str, str]:
        return {row[0]: row[1] for row in self.console("admin", "ADMIN_PASSWORD", "SHOW CONFIG")}

    def pidfile_pid(self) -> int:
        return int((self.base / "pgbouncer-1.pid").read_text().strip())

    def render(self) -> None:
        """Write the three files with ``autopgpool generate --layout instances`` (what the roles deploy),
        secrets from the environment.

        The CLI replaces each file (new inode), as Ansible's template module does. That matters: pgbouncer
        re-reads userlist.txt on SIGHUP only if its stat() changed, with mtime in whole seconds, so a
        same-size rewrite in place within the same second would be ignored.
        """
        toml_path = self.base / "autopgpool.toml"
        toml_path.write_text(self.toml)
        proc = subprocess.run(
            [sys.executable, "-m", "autopgpool.cli", "generate", "--config-path", str(toml_path),
             "--output-dir", str(self.conf), "--config-dir", str(self.conf), "--layout", "instances"],
            capture_output=True, text=True, check=False, env={"PATH": os.environ["PATH"], **self.env},
        )  # fmt: skip
        if proc.returncode != 0:
            raise AssertionError(f"autopgpool generate failed: {proc.stderr}")
        for name, mode in MODES.items():
            assert stat.S_IMODE((self.conf / name).stat().st_mode) == mode
            _chown(self.conf / name)

    def write_instance(self, max_client_conn: int) -> None:
        """instance-1.ini as roles/pgbouncer lays it out: include the shared file, then per-instance values.

        No [pgbouncer] header: pgbouncer resets every setting to its default at each such header, and the
        shared file ends inside its [pgbouncer] section, which these lines continue.
        """
        path = self.conf / "instance-1.ini"
        path.write_text(
            f"%include {self.conf}/pgbouncer.ini\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.pgb_port}\n"
            f"unix_socket_dir = {self.base}/pgbsock\n"
            f"pidfile = {self.base}/pgbouncer-1.pid\n"
            f"logfile = {self.base}/pgbouncer-1.log\n"
            "peer_id = 1\n"
            f"max_client_conn = {max_client_conn}\n"
        )
        _chown(path)

    def reload(self) -> None:
        assert self.pgbouncer is not None
        os.kill(self.pgbouncer.pid, signal.SIGHUP)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    _require(
        (PG_BIN / "initdb").exists(), f"PostgreSQL 15 binaries in {PG_BIN} (apt-get install postgresql-15)"
    )
    _require(shutil.which("psql") is not None, "psql client on PATH")
    pgbouncer_bin = ensure_pgbouncer()
    _ensure_user()
    base = Path(tempfile.mkdtemp(prefix="autopgpool-it-"))
    base.chmod(0o755)
    for sub in ("pgdata", "pgsock", "pgbsock", "conf"):
        (base / sub).mkdir()
        _chown(base / sub)
    _chown(base)
    pg_port, pgb_port = _free_port(), _free_port()
    toml = SHARED_USER + (ROOT / "examples/autopgpool.toml").read_text()
    toml = toml.replace('host = "pg1"', 'host = "127.0.0.1"').replace("port = 5432", f"port = {pg_port}")
    lab = Lab(base, pg_port, pgb_port, toml, dict(DEMO_ENV))
    postgres = None
    try:
        subprocess.run(
            [str(PG_BIN / "initdb"), "-D", str(base / "pgdata"), "-U", "postgres", "--auth-local=trust",
             "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True, cwd=base, **_run_as(),
        )  # fmt: skip
        with (base / "postgres.log").open("wb") as log:
            postgres = subprocess.Popen(
                [str(PG_BIN / "postgres"), "-D", str(base / "pgdata"), "-p", str(pg_port),
                 "-k", str(base / "pgsock"), "-c", "listen_addresses=127.0.0.1",
                 "-c", "password_encryption=scram-sha-256"],
                stdout=subprocess.DEVNULL, stderr=log, cwd=base, **_run_as(),
            )  # fmt: skip
        _wait_port(pg_port, postgres, "postgres", base / "postgres.log")
        _eventually(lambda: lab.pg_admin("SELECT 1") == "1", "PostgreSQL accepts logins")
        lab.pg_admin(
            f"CREATE ROLE app_owner LOGIN PASSWORD '{lab.env['APP_DB_PASSWORD']}';\n"
            f"CREATE ROLE reporting_owner LOGIN PASSWORD '{lab.env['REPORTING_DB_PASSWORD']}';\n"
            "CREATE DATABASE app_db OWNER app_owner;\n"
            "CREATE DATABASE reporting_db OWNER reporting_owner;\n"
        )
        lab.render()
        lab.write_instance(77)
        # The cache may sit in root's home, which the service user cannot enter.
        binary = base / "pgbouncer"
        shutil.copy2(pgbouncer_bin, binary)
        binary.chmod(0o755)
        with (base / "pgbouncer-1.stderr").open("wb") as log:
            lab.pgbouncer = subprocess.Popen(
                [str(binary), str(lab.conf / "instance-1.ini")],
                stdout=subprocess.DEVNULL, stderr=log, cwd=base, **_run_as(),
            )  # fmt: skip
        _wait_port(pgb_port, lab.pgbouncer, "pgbouncer", base / "pgbouncer-1.stderr")
        yield lab
    finally:
        _stop(lab.pgbouncer)
        _stop(postgres)
        if not os.environ.get("AUTOPGPOOL_KEEP_LAB"):
            shutil.rmtree(base, ignore_errors=True)


def test_scram_and_md5_users_reach_their_remote_database(lab: Lab) -> None:
    # require_auth makes the client insist on the method, so this also proves which one pgbouncer asked for
    scram = "scram-sha-256"
    assert lab.current_db("app", "app_user", "APP_USER_PASSWORD", scram) == "app_db"
    assert (
        lab.current_db("reporting", "report_user", "REPORT_USER_PASSWORD", require_auth="md5")
        == "reporting_db"
    )
    assert lab.current_db("reporting", "both_user", "BOTH_USER_PASSWORD", scram) == "reporting_db"
    assert lab.current_db("app", "both_user", "BOTH_USER_PASSWORD", scram) == "app_db"


def test_new_server_logins_after_scram_clients_still_work(lab: Lab) -> None:
    """The pgbouncer bug this layout works around: a server login *after* SCRAM client logins failed."""
    with lab.connect("app", "app_user", secret="APP_USER_PASSWORD") as first:
        first.execute("BEGIN")
        first.execute("SELECT 1")  # holds a server connection for the rest of the block (transaction pooling)
        with lab.connect("app", "both_user", secret="BOTH_USER_PASSWORD") as second:
            second.execute("BEGIN")
            row = second.execute("SELECT current_user, pg_backend_pid()").fetchone()
            first_pid = first.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    assert first_pid is not None
    assert row[0] == "app_owner"
    assert row[1] != first_pid[0]  # a second server connection was logged in, with SCRAM, after both clients


def test_user_without_grant_is_refused(lab: Lab) -> None:
    with pytest.raises(Refused):
        lab.connect("reporting", "app_user", secret="APP_USER_PASSWORD")
    with pytest.raises(Refused):
        lab.connect("app", "admin", secret="ADMIN_PASSWORD")


def test_wrong_password_and_unknown_user_are_refused(lab: Lab) -> None:
    with pytest.raises(Refused, match="SASL authentication failed"):  # pgbouncer's words for a SCRAM failure
        lab.connect("app", "app_user", password="wrong")
    with pytest.raises(Refused, match="password authentication failed"):
        lab.connect("reporting", "report_user", password="wrong")
    with pytest.raises(Refused):
        lab.connect("app", "nobody_declared", password="wrong")


def test_log_has_one_line_per_session_and_every_failed_login(lab: Lab) -> None:
    """log_connections = 0 (the core's default): no login line, but every session's end and reason."""
    log = lab.base / "pgbouncer-1.log"
    start = log.stat().st_size
    assert lab.current_db("app", "app_user", "APP_USER_PASSWORD") == "app_db"
    with pytest.raises(Refused):
        lab.connect("reporting", "report_user", password="wrong")  # md5: logged only by log_disconnections
    with pytest.raises(Refused):
        lab.connect("app", "app_user", password="wrong")

    def new_lines() -> str:
        with log.open("rb") as f:
            f.seek(start)
            return f.read().decode()

    _eventually(lambda: new_lines().count("closing because:") >= 3, "three session ends in the log")
    text = new_lines()
    assert "login attempt" not in text
    lines = text.splitlines()
    assert any("app/app_user@" in line and "client close request" in line for line in lines), text
    assert any(
        "reporting/report_user@" in line and "password authentication failed" in line for line in lines
    ), text
    assert any("app/app_user@" in line and "SASL authentication failed" in line for line in lines), text


def test_backend_user_cannot_log_in_as_client(lab: Lab) -> None:
    # app_owner's plain password is in userlist.txt, but no hba line admits it: the reject-all tail refuses
    # it, even with the right password and even though PostgreSQL itself would let it in.
    assert parse_userlist((lab.conf / "userlist.txt").read_text())["app_owner"] == lab.env["APP_DB_PASSWORD"]
    with pytest.raises(Refused):
        lab.connect("app", "app_owner", secret="APP_DB_PASSWORD")
    with pytest.raises(Refused):
        lab.connect("pgbouncer", "app_owner", secret="APP_DB_PASSWORD")
    with lab.connect("app_db", "app_owner", secret="APP_DB_PASSWORD", port=lab.pg_port) as direct:
        assert direct.execute("SELECT current_user").fetchone() == ("app_owner",)


def test_shared_backend_and_client_user_logs_in_with_scram_and_md5(lab: Lab) -> None:
    lines = [
        line for line in (lab.conf / "userlist.txt").read_text().splitlines() if "reporting_owner" in line
    ]
    assert len(lines) == 1  # one plain line serves the backend login and the client login
    scram = lab.current_db(
        "reporting", "reporting_owner", "REPORTING_DB_PASSWORD", require_auth="scram-sha-256"
    )
    assert scram == "reporting_db"
    original = lab.toml
    lab.toml = original.replace('grants = ["reporting"]\n', 'grants = ["reporting"]\nauth_type = "md5"\n', 1)
    try:
        lab.render()
        lab.reload()
        _eventually(
            lambda: (
                lab.current_db("reporting", "reporting_owner", "REPORTING_DB_PASSWORD", require_auth="md5")
                == "reporting_db"
            ),
            "reporting_owner logs in with md5 after the reload",
        )
    finally:
        lab.toml = original
        lab.render()
        lab.reload()
    _eventually(
        lambda: (
            lab.current_db(
                "reporting", "reporting_owner", "REPORTING_DB_PASSWORD", require_auth="scram-sha-256"
            )
            == "reporting_db"
        ),
        "reporting_owner is back on SCRAM",
    )


def test_admin_console_and_include_layout(lab: Lab) -> None:
    pools = lab.console("admin", "ADMIN_PASSWORD", "SHOW POOLS")
    assert {(row[0], row[1]) for row in pools} >= {("app", "app_owner"), ("reporting", "reporting_owner")}
    settings = lab.show_config()
    assert settings["max_client_conn"] == "77"  # the instance file wins over the included shared file
    assert settings["listen_port"] == str(lab.pgb_port)
    assert settings["server_login_retry"] == "1"  # from the shared file
    assert settings["auth_type"] == "hba"
    stats = lab.console("stats", "STATS_PASSWORD", "SHOW STATS")
    assert "app" in {row[0] for row in stats}
    with pytest.raises(Refused):  # the stats user may read but not control
        lab.console("stats", "STATS_PASSWORD", "PAUSE app")


def test_reload_applies_new_password_and_settings_keeping_pid(lab: Lab) -> None:
    assert lab.pgbouncer is not None
    pid = lab.pgbouncer.pid
    assert lab.pidfile_pid() == pid
    before = parse_userlist((lab.conf / "userlist.txt").read_text())
    old_env = dict(lab.env)
    lab.env["APP_USER_PASSWORD"] = "rotated-app-user-pw"
    lab.toml = lab.toml.replace("default_pool_size = 10", "default_pool_size = 12")
    lab.render()
    lab.write_instance(78)
    lab.reload()
    _eventually(lambda: lab.show_config()["max_client_conn"] == "78", "the instance file is re-read")
    settings = lab.show_config()
    assert settings["default_pool_size"] == "12"  # and so is the included shared file
    assert lab.current_db("app", "app_user", "APP_USER_PASSWORD") == "app_db"
    with pytest.raises(Refused, match="SASL authentication failed"):
        lab.connect("app", "app_user", password=old_env["APP_USER_PASSWORD"])
    assert lab.pgbouncer.poll() is None
    assert lab.pidfile_pid() == pid
    # unchanged users keep their verifier byte for byte, and still log in
    after = parse_userlist((lab.conf / "userlist.txt").read_text())
    assert after["both_user"] == before["both_user"]
    assert after["app_user"] != before["app_user"]
    assert lab.current_db("app", "both_user", "BOTH_USER_PASSWORD") == "app_db"


def test_our_scram_verifier_is_accepted_by_postgresql(lab: Lab) -> None:
    lab.env["DIRECT_PW"] = "direct-login-pw"
    lab.env["CHANGED_PW"] = "changed-pw"
    verifier = scram_verifier(lab.env["DIRECT_PW"], os.urandom(16))
    lab.pg_admin(f"CREATE ROLE direct_login LOGIN PASSWORD '{verifier}'")
    assert lab.pg_admin("SELECT rolpassword FROM pg_authid WHERE rolname = 'direct_login'") == verifier
    with lab.connect("postgres", "direct_login", secret="DIRECT_PW", port=lab.pg_port) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("direct_login",)
    with pytest.raises(Refused, match="password authentication failed"):
        lab.connect("postgres", "direct_login", password="x", port=lab.pg_port)
    lab.pg_admin(
        f"ALTER ROLE direct_login PASSWORD '{scram_verifier(lab.env['CHANGED_PW'], os.urandom(16))}'"
    )
    with lab.connect("postgres", "direct_login", secret="CHANGED_PW", port=lab.pg_port) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(Refused, match="password authentication failed"):
        lab.connect("postgres", "direct_login", secret="DIRECT_PW", port=lab.pg_port)
