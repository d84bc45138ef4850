"""CVE-2026-107349 against the real pinned pgbouncer on loopback: an unauthenticated client whose startup
packet carries ``options = "-c="`` must not stop the instance from answering everyone else.

What the bug is (pgbouncer 1.25.2, src/client.c set_startup_options and src/util.c strlist_contains): "-c="
parses to an empty key; pgbouncer then looks the empty key up in ignore_startup_parameters, and that search
only ends when the list holds a comma followed by whitespace (or ends in a comma). A non-empty list without
one, such as "extra_float_digits" (autopgpool's old default) or "options" alone, makes the process spin at
full CPU, forever, before any authentication: every client of the instance stops getting answers.

autopgpool's default renders "extra_float_digits, options", which ends the search. These tests render the
shipped example with ``autopgpool generate``, start the real pinned build, send the startup packet, and
measure whether a second client's admin-console query still gets an answer, and the CPU the process burns.
A control test shows the measurement catches the hang on the list the old default rendered. Every wait here
is bounded; an instance is killed with SIGKILL at the end (a spinning pgbouncer never reads its SIGTERM).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import yaml

from demo_example import DEMO_ENV, EXAMPLE_CONFIG

from .pgbouncer_build import RELEASES_FILE, VERSION, ensure_pgbouncer
from .test_pgbouncer_real import _chown, _ensure_user, _free_port, _run_as, _wait_port

CVE = "CVE-2026-107349"
# The values of the `options` startup parameter that parse to an empty key on 1.25.2.
EMPTY_KEY_OPTIONS = ("-c=", "--=", "-c =x", "-c  =")
# A second client must be answered within this; a healthy instance answers in a few milliseconds.
ANSWER_WITHIN_S = 2.0
# Measured over this window after the attack packet: a spinning instance uses ~70-100 % of a core.
CPU_WINDOW_S = 2.0


def _startup_packet(params: dict[str, str]) -> bytes:
    body = struct.pack("!I", 196608)  # protocol 3.0
    body += b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack("!I", len(body) + 4) + body


def first_reply(port: int, params: dict[str, str], timeout: float = 1.0) -> bytes | None:
    """Send one startup packet, return the first bytes of pgbouncer's answer (None: no answer in time)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(_startup_packet(params))
        try:
            return sock.recv(4096)
        except TimeoutError:
            return None


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Instance:
    port: int
    pid: int
    conf: Path

    def admin_query_seconds(self) -> float | None:
        """Seconds for the admin console's SHOW VERSION as a real client (None: no answer in time)."""
        start = time.monotonic()
        try:
            with psycopg.connect(
                host="127.0.0.1", port=self.port, dbname="pgbouncer", user="admin",
                password=DEMO_ENV["ADMIN_PASSWORD"], connect_timeout=int(ANSWER_WITHIN_S), autocommit=True,
            ) as conn:  # fmt: skip
                conn.execute("SHOW VERSION").fetchall()
        except psycopg.OperationalError:
            return None
        return time.monotonic() - start

    def attack(self, options: str) -> dict[str, float | str | None]:
        """Send the startup packet with `options`, then measure a second client and the process's CPU."""
        reply = first_reply(self.port, {"user": "app_user", "database": "app", "options": options})
        cpu_before, started = cpu_seconds(self.pid), time.monotonic()
        answered = self.admin_query_seconds()
        time.sleep(max(0.0, CPU_WINDOW_S - (time.monotonic() - started)))
        cpu = (cpu_seconds(self.pid) - cpu_before) / (time.monotonic() - started)
        return {
            "reply": "none" if reply is None else reply[:1].decode(),
            "second_client_s": answered,
            "cpu": cpu,
        }


@contextmanager
def instance(
    ignore_startup_parameters: list[str] | str | None = None, *, instance_line: str = ""
) -> Iterator[Instance]:
    """The shipped example rendered by the CLI (optionally with the TOML setting the list) and served by the
    real pinned pgbouncer on a free loopback port, as the role lays an instance out. ``instance_line`` is
    written into instance-1.ini after the include (a value the TOML refuses, for the control)."""
    binary_src = ensure_pgbouncer()
    _ensure_user()
    base = Path(tempfile.mkdtemp(prefix="autopgpool-cve-"))
    base.chmod(0o755)
    conf = base / "conf"
    conf.mkdir()
    toml = EXAMPLE_CONFIG.read_text()
    if ignore_startup_parameters is not None:
        toml = toml.replace(
            "[pgbouncer]\n",
            f"[pgbouncer]\nignore_startup_parameters = {json.dumps(ignore_startup_parameters)}\n",
            1,
        )
    toml_path = base / "autopgpool.toml"
    toml_path.write_text(toml)
    proc: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(
            [sys.executable, "-m", "autopgpool.cli", "generate", "--config-path", str(toml_path),
             "--output-dir", str(conf), "--config-dir", str(conf)],
            check=True, capture_output=True, env={"PATH": os.environ["PATH"], **DEMO_ENV},
        )  # fmt: skip
        port = _free_port()
        (conf / "instance-1.ini").write_text(
            f"%include {conf}/pgbouncer.ini\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n"
            f"unix_socket_dir =\nlogfile = {base}/pgbouncer.log\n{instance_line}"
        )
        for path in (base, conf, *conf.iterdir()):
            _chown(path)
        binary = base / "pgbouncer"  # the cache may sit in root's home, which the service user cannot enter
        shutil.copy2(binary_src, binary)
        with (base / "pgbouncer.stderr").open("wb") as log:
            proc = subprocess.Popen(
                [str(binary), str(conf / "instance-1.ini")],
                stdout=subprocess.DEVNULL,
                stderr=log,
                **_run_as(),
            )
        _wait_port(port, proc, "pgbouncer", base / "pgbouncer.stderr")
        yield Instance(port, proc.pid, conf)
    finally:
        if proc is not None:
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(base, ignore_errors=True)


def _ini_value(conf: Path, name: str) -> str:
    for line in (conf / "pgbouncer.ini").read_text().splitlines():
        if line.startswith(f"{name} = "):
            return line.split(" = ", 1)[1]
    raise AssertionError(f"{name} not in pgbouncer.ini")


def test_shipped_default_keeps_answering_after_empty_key_options() -> None:
    with instance() as inst:
        assert _ini_value(inst.conf, "ignore_startup_parameters") == "extra_float_digits, options"
        baseline = inst.admin_query_seconds()
        assert baseline is not None
        for options in EMPTY_KEY_OPTIONS:
            seen = inst.attack(options)
            # pgbouncer ignores the empty key and goes on to authentication ("R"), then serves others
            assert seen["reply"] == "R", (options, seen)
            answered = seen["second_client_s"]
            assert isinstance(answered, float), (options, seen)
            assert answered < ANSWER_WITHIN_S, (options, seen)
            assert isinstance(seen["cpu"], float)
            assert seen["cpu"] < 0.3, (options, seen)
        print(f"\n{CVE} shipped default: baseline {baseline * 1000:.1f} ms, after attack {seen}")


def test_default_still_admits_jdbc_and_ignores_client_options() -> None:
    """What the default changes for clients: `options` settings pgbouncer does not track (PGOPTIONS such as
    -c search_path=...) are ignored instead of refused; extra_float_digits is still accepted."""
    with instance() as inst:
        jdbc = first_reply(inst.port, {"user": "app_user", "database": "app", "extra_float_digits": "3"})
        search_path = first_reply(
            inst.port, {"user": "app_user", "database": "app", "options": "-c search_path=x"}
        )
    assert jdbc is not None
    assert jdbc[:1] == b"R"
    assert search_path is not None
    assert search_path[:1] == b"R"


def test_operator_list_without_options_refuses_client_options() -> None:
    """The opt-out: a TOML that sets ignore_startup_parameters itself (with two or more names) gets
    pgbouncer's refusal of unknown `options` back, and stays answering after "-c="."""
    with instance(["extra_float_digits", "application_name"]) as inst:
        refused = first_reply(
            inst.port, {"user": "app_user", "database": "app", "options": "-c search_path=x"}
        )
        seen = inst.attack("-c=")
    assert refused is not None
    assert refused[:1] == b"E"
    assert b"unsupported startup parameter in options: search_path" in refused
    assert seen["reply"] == "R", seen
    assert isinstance(seen["second_client_s"], float), seen


@pytest.mark.parametrize("listed", [["extra_float_digits"], ["options"]])
def test_control_a_list_of_one_name_hangs_the_pinned_release(listed: list[str]) -> None:
    """The measurement catches the hang: on the pinned release, the list the old default rendered (and
    "options" alone) leaves the instance spinning and a second client unanswered."""
    releases = yaml.safe_load(RELEASES_FILE.read_text())["pgbouncer_build_releases"]
    if CVE not in releases[VERSION]["known_cves"]:
        pytest.skip(f"pgbouncer {VERSION} is not affected by {CVE}")
    # The TOML refuses a one-name list (tests/unit/test_adversarial.py), so the control sets it in the
    # instance file, as an operator editing the host by hand could.
    with instance(instance_line=f"ignore_startup_parameters = {listed[0]}\n") as inst:
        assert inst.admin_query_seconds() is not None
        seen = inst.attack("-c=")
    print(f"\n{CVE} with ignore_startup_parameters = {listed[0]}: {seen}")
    assert seen["reply"] == "none"
    assert seen["second_client_s"] is None
    assert isinstance(seen["cpu"], float)
    assert seen["cpu"] > 0.25  # a spinning process gets what the scheduler gives it; idle is ~0


def test_a_list_written_with_bare_commas_is_rendered_safe() -> None:
    """A TOML string with bare commas is what pgbouncer's list search loops on; the core re-joins the names
    with ", ", so the instance keeps answering."""
    with instance("extra_float_digits,options") as inst:
        assert _ini_value(inst.conf, "ignore_startup_parameters") == "extra_float_digits, options"
        seen = inst.attack("-c=")
    assert seen["reply"] == "R", seen
    assert isinstance(seen["second_client_s"], float), seen
