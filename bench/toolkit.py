"""The toolkit's own speed: ``autopgpool generate`` on a large config, and lab converge (cold and warm)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import lab
from .stats import median, simple_table

SALT_KEY = "bench-salt-key-not-secret-lab-only-0001"


def big_config(users: int, pools: int, auth_type: str) -> tuple[str, dict[str, str]]:
    """A TOML with ``users`` client users (each granted one pool) and ``pools`` pools, plus its secrets."""
    parts = [f'[pgbouncer]\nauth_type = "{auth_type}"\nmax_client_conn = 1000\n']
    secrets: dict[str, str] = {}
    for p in range(pools):
        secrets[f"DB_PW_{p}"] = f"db-password-{p}"
        parts.append(
            f"[pools.pool{p}]\npool_size = 5\n[pools.pool{p}.remote]\n"
            f'host = "10.0.{p // 250}.{p % 250 + 1}"\n'
            f'port = 5432\ndatabase = "db{p}"\nusername = "owner{p}"\npassword = "$DB_PW_{p}"\n'
        )
    for u in range(users):
        secrets[f"USER_PW_{u}"] = f"user-password-{u}"
        parts.append(
            f'[[users]]\nusername = "user{u}"\npassword = "$USER_PW_{u}"\ngrants = ["pool{u % pools}"]\n'
        )
    return "\n".join(parts), secrets


def _generate(config: Path, out: Path, env: dict[str, str]) -> float:
    cmd = [str(Path(sys.executable).with_name("autopgpool")), "generate", "--config-path", str(config)]
    cmd += ["--output-dir", str(out)]
    start = time.monotonic()
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return time.monotonic() - start


def generate(users: int, pools: int, reps: int) -> str:
    """First render (empty output dir) and re-render (previous userlist present), median of ``reps``."""
    rows = [["auth", "users", "pools", "first render s", "re-render s", "identical"]]
    with tempfile.TemporaryDirectory(prefix="autopgpool-bench-gen-") as tmp:
        for auth in ("md5", "scram-sha-256"):
            text, secrets = big_config(users, pools, auth)
            config = Path(tmp) / f"{auth}.toml"
            config.write_text(text, encoding="utf-8")
            env = lab.env_with(secrets | {"AUTOPGPOOL_SCRAM_SALT_KEY": SALT_KEY})
            first: list[float] = []
            again: list[float] = []
            identical = True
            for rep in range(reps):
                out = Path(tmp) / f"out-{auth}-{rep}"
                first.append(_generate(config, out, env))
                before = {p.name: p.read_bytes() for p in out.iterdir()}
                again.append(_generate(config, out, env))
                identical &= before == {p.name: p.read_bytes() for p in out.iterdir()}
                lab.log(f"generate {auth}: first {first[-1]:.2f} s, re-render {again[-1]:.2f} s")
            rows.append(
                [auth, str(users), str(pools), f"{median(first):.2f}", f"{median(again):.2f}", str(identical)]
            )
    return simple_table(rows)


def converge(cold: bool, timings_dir: Path | None) -> str:
    """Cold: labctl down + up, then postgres.yml and site.yml from fresh machines (the pgbouncer build
    included). Warm: the same two playbooks again, nothing to change (both must report changed=0)."""
    timings_dir = timings_dir or Path(tempfile.mkdtemp(prefix="autopgpool-bench-timings-"))
    rows = [["step", "seconds"]]

    def step(name: str, seconds: float) -> None:
        rows.append([name, f"{seconds:.1f}"])
        lab.log(f"{name}: {seconds:.1f} s")

    if cold:
        start = time.monotonic()
        lab.labctl("down")
        step("labctl down", time.monotonic() - start)
        start = time.monotonic()
        lab.labctl("up")
        step("labctl up (fresh machines)", time.monotonic() - start)
    else:
        lab.labctl("up")
    label = "cold" if cold else "first"
    pg = lab.playbook("lab/playbooks/postgres.yml", timings=timings_dir / f"{label}-postgres.json")
    step(f"postgres.yml ({label})", pg)
    site = lab.playbook("playbooks/site.yml", timings=timings_dir / f"{label}-site.json")
    step(f"site.yml ({label}, pgbouncer build included when cold)", site)
    pg2 = lab.playbook("lab/playbooks/postgres.yml", timings=timings_dir / "warm-postgres.json")
    step("postgres.yml (warm, no change)", pg2)
    site2 = lab.playbook("playbooks/site.yml", timings=timings_dir / "warm-site.json")
    step("site.yml (warm, no change)", site2)
    step("whole lab warm re-run (postgres.yml + site.yml)", pg2 + site2)
    return simple_table(rows) + "\n\n" + slowest_tasks(timings_dir / "warm-site.json", 10)


def slowest_tasks(path: Path, n: int) -> str:
    """The n slowest tasks of one playbook run (from the bench_timer callback)."""
    rows: list[dict[str, object]] = json.loads(path.read_text()) if path.exists() else []
    top = sorted(rows, key=lambda r: float(str(r["seconds"])), reverse=True)[:n]
    table = [["slowest tasks of warm site.yml", "seconds"]]
    table += [[str(r["task"]), f"{float(str(r['seconds'])):.2f}"] for r in top]
    return simple_table(table)
