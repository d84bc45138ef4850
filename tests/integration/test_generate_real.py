"""``autopgpool generate`` as autopg-pool users run it, loaded by the real pgbouncer 1.25.2 (no PostgreSQL).

* With only ``--output-dir``, pgbouncer started on the output finds userlist.txt and pgbouncer_hba.conf: the
  admin user logs in to the console with SCRAM, which needs both files.
* Values at the limits the core accepts are taken by pgbouncer as written, and for values past them pgbouncer
  stores exactly what the core's error message says it would (read back with ``SHOW CONFIG``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from autopgpool import ConfigError, validate

from .pgbouncer_build import ensure_pgbouncer
from .test_pgbouncer_real import _chown, _ensure_user, _free_port, _run_as, _stop, _wait_port

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
