import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from autopgpool import render_files
from autopgpool.cli import main
from demo_example import DEMO_ENV

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples/autopgpool.toml"
SECRETS = [v for k, v in DEMO_ENV.items()]


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full_env = {"PATH": os.environ["PATH"], **env}
    return subprocess.run(
        [sys.executable, "-m", "autopgpool.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        check=False,
    )


def assert_no_secret(proc: subprocess.CompletedProcess[str]) -> None:
    for secret in SECRETS:
        assert secret not in proc.stdout
        assert secret not in proc.stderr


def test_validate_ok() -> None:
    proc = run("validate", "--config-path", str(EXAMPLE), env=DEMO_ENV)
    assert proc.returncode == 0, proc.stderr
    assert "valid (2 pools, 5 users)" in proc.stdout
    assert_no_secret(proc)


def test_generate_writes_files_with_modes_and_is_repeatable(tmp_path: Path) -> None:
    env = {k: v for k, v in DEMO_ENV.items() if k != "AUTOPGPOOL_SCRAM_SALT_KEY"}
    proc = run("generate", "--config-path", str(EXAMPLE), "--output-dir", str(tmp_path), env=env)
    assert proc.returncode == 0, proc.stderr
    assert_no_secret(proc)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"pgbouncer.ini": 0o600, "userlist.txt": 0o600, "pgbouncer_hba.conf": 0o644}
    first = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    # no salt key: the existing userlist.txt keeps the output byte-identical
    assert (
        run("generate", "--config-path", str(EXAMPLE), "--output-dir", str(tmp_path), env=env).returncode == 0
    )
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == first


def test_generate_with_salt_key_is_identical_in_fresh_dirs(tmp_path: Path) -> None:
    for d in ("a", "b"):
        args = ("generate", "--config-path", str(EXAMPLE), "--output-dir", str(tmp_path / d))
        assert run(*args, env=DEMO_ENV).returncode == 0
    assert (tmp_path / "a/userlist.txt").read_bytes() == (tmp_path / "b/userlist.txt").read_bytes()


def test_invalid_exits_1_with_problems_and_no_secret(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(EXAMPLE.read_text().replace("port = 5432", 'port = "$APP_DB_PASSWORD"', 1))
    env = {k: v for k, v in DEMO_ENV.items() if k != "STATS_PASSWORD"}
    proc = run("generate", "--config-path", str(bad), "--output-dir", str(tmp_path / "out"), env=env)
    assert proc.returncode == 1
    assert "users[4].password: environment variable STATS_PASSWORD is not set" in proc.stderr
    assert "pools.app.remote.port: expected an integer from 1 to 65535" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
    assert 'got the value of "$APP_DB_PASSWORD"' in proc.stderr
    assert_no_secret(proc)


def test_missing_file_and_help() -> None:
    proc = run("validate", "--config-path", "/nonexistent.toml", env={})
    assert proc.returncode == 1
    assert "cannot read /nonexistent.toml" in proc.stderr
    proc = run("generate", "--help", env={})
    assert proc.returncode == 0
    assert "--salt-key-env" in proc.stdout
    assert "--output-dir" in proc.stdout


# --- generate writes one set of files --------------------------------------------------------------------

FIXTURE = Path(__file__).parent / "fixtures/autopg_example.toml"


def _snapshot(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def _generate_in_process(out: Path, *extra: str) -> int:
    return main(["generate", "--config-path", str(FIXTURE), "--output-dir", str(out), *extra])


@pytest.mark.parametrize("failing_call", [1, 2, 3])
def test_failed_rename_leaves_all_old_files(
    failing_call: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert _generate_in_process(out) == 0
    old = _snapshot(out)
    # a different configuration, so every file would change
    changed = tmp_path / "changed.toml"
    changed.write_text(FIXTURE.read_text().replace("app_password", "new_password").replace("200", "300"))
    real_replace = os.replace
    calls = []

    def flaky_replace(src: str | Path, dst: str | Path) -> None:
        calls.append(dst)
        if len(calls) == failing_call:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr("autopgpool.cli.os.replace", flaky_replace)
    code = main(["generate", "--config-path", str(changed), "--output-dir", str(out)])
    assert code == 1
    assert "cannot write to" in capsys.readouterr().err
    assert _snapshot(out) == old  # every file old, and no temporary or backup file left behind


def test_failed_staging_leaves_all_old_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert _generate_in_process(out) == 0
    old = _snapshot(out)
    real_fdopen = os.fdopen
    opened = []

    def failing_fdopen(fd: int, *args: object, **kwargs: object) -> object:
        opened.append(fd)
        if len(opened) == 3:
            os.close(fd)
            raise OSError(5, "Input/output error")
        return real_fdopen(fd, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr("autopgpool.cli.os.fdopen", failing_fdopen)
    changed = tmp_path / "changed.toml"
    changed.write_text(FIXTURE.read_text().replace("app_password", "new_password"))
    assert main(["generate", "--config-path", str(changed), "--output-dir", str(out)]) == 1
    assert _snapshot(out) == old
    capsys.readouterr()


def test_first_generate_failing_leaves_no_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def flaky_replace(src: str | Path, dst: str | Path) -> None:
        calls.append(dst)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        os.rename(src, dst)

    monkeypatch.setattr("autopgpool.cli.os.replace", flaky_replace)
    assert _generate_in_process(tmp_path / "out") == 1
    assert list((tmp_path / "out").iterdir()) == []


# --- where pgbouncer.ini points ------------------------------------------------------------------------


def test_default_config_dir_is_the_output_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "--config-path", str(FIXTURE), "--output-dir", "./out"]) == 0
    ini = (tmp_path / "out/pgbouncer.ini").read_text()
    assert f"auth_file = {tmp_path}/out/userlist.txt\n" in ini
    assert f"auth_hba_file = {tmp_path}/out/pgbouncer_hba.conf\n" in ini
    assert f"reads userlist.txt and pgbouncer_hba.conf from {tmp_path}/out" in capsys.readouterr().out
    assert (
        main(["generate", "--config-path", str(FIXTURE), "--output-dir", "./o2", "--config-dir", "/etc/x"])
        == 0
    )
    assert "auth_file = /etc/x/userlist.txt\n" in (tmp_path / "o2/pgbouncer.ini").read_text()


@pytest.mark.parametrize(
    "config_dir",
    [
        "/etc/pgbouncer\nauth_type = trust",
        "/etc/pgbouncer\rx",
        "relative/dir",
        "/etc/pg bouncer",
        "/etc/pgbouncer;x",
        "/etc/%include",
        "",
    ],
)
def test_config_dir_cannot_inject_lines(
    config_dir: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _generate_in_process(tmp_path / "out", "--config-dir", config_dir) == 1
    assert "--config-dir must be an absolute path" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_output_dir_with_odd_characters_needs_an_explicit_config_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "my out"
    assert _generate_in_process(out) == 1
    assert "--output-dir (used as --config-dir) must be an absolute path" in capsys.readouterr().err
    assert _generate_in_process(out, "--config-dir", "/etc/pgbouncer") == 0


# --- warnings, and no traceback for any input -------------------------------------------------------------


def test_warnings_are_printed_on_stderr(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        FIXTURE.read_text().replace(
            'pool_mode = "transaction"\nmax_client_conn', 'pool_mode = "session"\nmax_client_conn'
        )
        + '\n[pools.main_db.replica]\npool_mode = "statement"\n'
    )
    proc = run("validate", "--config-path", str(config), env={})
    assert proc.returncode == 0, proc.stderr
    assert f"{config}: warning: pools.main_db.replica: ignored:" in proc.stderr
    assert proc.stderr.count("warning:") == 1  # both pools set their own pool_mode: no pool_mode warning
    gen = run("generate", "--config-path", str(config), "--output-dir", str(tmp_path / "o"), env={})
    assert gen.returncode == 0
    assert "warning: pools.main_db.replica" in gen.stderr


@pytest.mark.parametrize(
    "content",
    [
        b"\xef\xbb\xbf" + FIXTURE.read_bytes(),
        b"a = " + b"[" * 50_000,
        b"\xff\xfe\x00a",
        b"port = " + b"9" * 10_000,
        b"[[users]]\n" * 1000,
        b"",
    ],
)
def test_no_traceback_for_any_file(content: bytes, tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_bytes(content)
    proc = run("generate", "--config-path", str(config), "--output-dir", str(tmp_path / "o"), env={})
    assert "Traceback" not in proc.stderr
    assert proc.returncode == (0 if content.startswith(b"\xef\xbb\xbf") else 1)


def test_unreadable_previous_userlist_only_costs_stable_salts(tmp_path: Path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / "userlist.txt").write_bytes(b"\xff\xfe garbage")
    proc = run("generate", "--config-path", str(FIXTURE), "--output-dir", str(out), env={})
    assert proc.returncode == 0, proc.stderr
    assert "cannot be read; SCRAM verifiers get new salts" in proc.stderr


def test_file_set_without_hard_links_still_rolls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert _generate_in_process(out) == 0
    old = _snapshot(out)

    def no_link(src: object, dst: object) -> None:
        raise OSError(1, "Operation not permitted")

    real_replace = os.replace
    calls = []

    def flaky_replace(src: str | Path, dst: str | Path) -> None:
        calls.append(dst)
        if len(calls) == 3:
            raise OSError(5, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr("autopgpool.cli.os.link", no_link)
    monkeypatch.setattr("autopgpool.cli.os.replace", flaky_replace)
    changed = tmp_path / "changed.toml"
    changed.write_text(FIXTURE.read_text().replace("app_password", "new_password").replace("200", "300"))
    assert main(["generate", "--config-path", str(changed), "--output-dir", str(out)]) == 1
    assert _snapshot(out) == old
    capsys.readouterr()


# --- the layout: standalone (autopg-pool's single pgbouncer) by default, or the roles' files ----------


def test_generate_by_default_listens_where_the_toml_says(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _generate_in_process(tmp_path / "out") == 0
    ini = (tmp_path / "out/pgbouncer.ini").read_text()
    assert "\nlisten_addr = 0.0.0.0\n" in ini
    assert "\nlisten_port = 6432\n" in ini
    assert "pgbouncer.ini listens on 0.0.0.0:6432 and its unix socket" in capsys.readouterr().out
    hba = (tmp_path / "out/pgbouncer_hba.conf").read_text()
    assert "127.0.0.2" not in hba
    assert [line for line in hba.splitlines() if line.startswith("host ") and " all md5" in line]


def test_generate_layout_instances_writes_what_the_roles_deploy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert _generate_in_process(out, "--layout", "instances") == 0
    assert "has no listener: each instance-N.ini includes it" in capsys.readouterr().out
    toml = FIXTURE.read_text()
    previous = (out / "userlist.txt").read_text()
    expected = render_files(toml, {}, config_dir=str(out), previous_userlist=previous)
    assert {p.name: p.read_text() for p in out.iterdir()} == expected
    assert "listen_addr" not in expected["pgbouncer.ini"].split("\n[pgbouncer]\n")[1]


def test_generate_prints_an_ipv6_listener_in_brackets(tmp_path: Path) -> None:
    toml = tmp_path / "v6.toml"
    toml.write_text(FIXTURE.read_text().replace('listen_addr = "0.0.0.0"', 'listen_addr = "::1"'))
    proc = run("generate", "--config-path", str(toml), "--output-dir", str(tmp_path / "out"), env={})
    assert proc.returncode == 0, proc.stderr
    assert "listens on [::1]:" in proc.stdout
    assert "\nlisten_addr = ::1\n" in (tmp_path / "out/pgbouncer.ini").read_text()


def test_generate_refuses_an_unknown_layout(tmp_path: Path) -> None:
    args = ("generate", "--config-path", str(FIXTURE), "--output-dir", str(tmp_path), "--layout", "x")
    proc = run(*args, env={})
    assert proc.returncode == 2
    assert "invalid choice: 'x'" in proc.stderr
    assert list(tmp_path.iterdir()) == []
