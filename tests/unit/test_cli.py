import os
import stat
import subprocess
import sys
from pathlib import Path

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
