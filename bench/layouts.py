"""pgbench -S side by side: PostgreSQL directly, one bare pgbouncer, one stack instance, the deployed stack.

Everything runs from one pooler host (pool1), with the same pgbench binary and the same user CPU budget:
direct goes over the lab bridge to pg1; the poolers are reached over loopback and themselves cross the bridge
to pg1, so every path crosses the bridge exactly once per server round trip.
"""

from __future__ import annotations

import json
import re
import shlex
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from autopgpool.api import render_files

from . import lab
from .stats import Cell, cpu_table, cpu_us_per_transaction, latencies_us, parse_summary, table

POOLER = "pool1"
PG = "pg1"
DB = "bench"
OWNER = "bench_owner"
USER = "bench_user"
PASSWORD = "bench-lab-pw-not-secret"  # noqa: S105 - lab-only throw-away, like examples/demo.env
BARE_PORT = 6499
BARE_DIR = "/run/autopgpool-bench"
BARE_UNIT = "autopgpool-bench-pgbouncer"
HBA_MARK = "# autopgpool-bench"
VARIANT_PORT = 6433
VARIANT_UNIT = "autopgpool-bench-haproxy"
PGPASS = "/tmp/autopgpool-bench.pgpass"  # noqa: S108 - on the lab machine, ops's own 0600 file
PGBOUNCER = "/opt/pgbouncer/current/bin/pgbouncer"

# The bench-only overlay: examples/autopgpool.toml plus one client user and one pool (pool size, mode and
# every setting from the example, i.e. what a user of the example gets). Appended, so the example keeps its
# meaning; removed again by redeploying the example.
OVERLAY = """
# --- bench overlay (bench/layouts.py): removed after the run ---
[[users]]
username = "bench_user"
password = "$BENCH_PASSWORD"
grants = ["bench"]
auth_type = "{auth}"

# A budget for the whole tier (the lab's scope): 40 / 4 instances = 10 per instance, so pool1 - where
# pgbench runs - has 2 x 10 = 20 server connections, the bare pgbouncer's stock default_pool_size.
[pools.bench]
pool_size = 40

[pools.bench.remote]
host = "pg1"
port = 5432
database = "bench"
username = "bench_owner"
password = "$BENCH_PASSWORD"
"""

# Stock pgbouncer: only what it needs to serve this client (address, auth file and type, the database), plus
# pool_mode = transaction, the mode the stack runs (stock session mode would starve 32 clients on 20
# server connections). Same user, same SCRAM verifier and the same backend entry as the stack's userlist.
BARE_INI = f"""[databases]
{DB} = host=pg1 port=5432 dbname={DB} user={OWNER}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {BARE_PORT}
unix_socket_dir =
auth_type = {{auth}}
auth_file = {BARE_DIR}/userlist.txt
pool_mode = transaction
default_pool_size = {{pool_size}}
"""


@dataclass(frozen=True)
class Target:
    name: str
    host: str
    port: int
    user: str


def target_table(pg_address: str) -> dict[str, Target]:
    """Every target; PostgreSQL's address is the lab slot's (from the lab inventory, lab.address)."""
    return {
        "direct": Target("direct", pg_address, 5432, OWNER),
        "bare": Target("bare", "127.0.0.1", BARE_PORT, USER),
        "instance": Target("instance", "127.0.0.1", 6401, USER),
        "stack": Target("stack", "127.0.0.1", 6432, USER),
        # The deployed haproxy.cfg with changes under test (--haproxy-global/--haproxy-defaults), run next
        # to the deployed HAProxy on another port, in front of the same instances: A/B of HAProxy tuning.
        "variant": Target("variant", "127.0.0.1", VARIANT_PORT, USER),
    }


TARGET_NAMES = tuple(target_table("pg1"))


def variant_config(
    deployed: str, global_lines: Sequence[str], defaults_lines: Sequence[str], *, unix: bool = False
) -> str:
    """The deployed haproxy.cfg moved to free ports and its own admin socket, plus the lines under test.

    unix=True: the old transport, HAProxy -> the instances' unix sockets instead of TCP on loopback (for the
    A/B of the transport). The sockets are root and pgbouncer-group only now, so that copy runs as root.
    """
    out: list[str] = []
    section = ""
    for original in deployed.splitlines():
        line = original
        stripped = line.strip()
        if line and not line[0].isspace():
            section = stripped.split()[0]
        server = re.fullmatch(r"server (pgbouncer(\d+)) 127\.0\.0\.1:(\d+)", stripped)
        if unix and server:
            name, n, port = server.groups()
            line = f"    server {name} unix@/run/pgbouncer/{n}/.s.PGSQL.{port}"
        elif unix and (stripped.startswith(("user ", "group ", "source "))):
            continue
        elif stripped.startswith("stats socket "):
            line = f"    stats socket {BARE_DIR}/haproxy-admin.sock mode 600 level admin"
        elif stripped.startswith("bind ") and section == "frontend" and ":6432" in stripped:
            line = line.replace(":6432", f":{VARIANT_PORT}")
        elif stripped.startswith("bind "):
            line = "    bind 127.0.0.1:8405"
        out.append(line)
        if stripped == "global":
            out += [f"    {extra}" for extra in global_lines]
        elif stripped == "defaults":
            out += [f"    {extra}" for extra in defaults_lines]
    return "\n".join(out) + "\n"


def _start_variant(global_lines: Sequence[str], defaults_lines: Sequence[str], *, unix: bool = False) -> None:
    deployed = lab.ssh(POOLER, ["sudo", "cat", "/etc/haproxy/haproxy.cfg"])
    config = variant_config(deployed, global_lines, defaults_lines, unix=unix)
    lab.put(POOLER, f"{BARE_DIR}/haproxy.cfg", config, owner="root", mode="0600")
    lab.ssh(POOLER, ["sudo", "haproxy", "-c", "-q", "-f", f"{BARE_DIR}/haproxy.cfg"])
    lab.ssh(POOLER, ["sudo", "systemd-run", f"--unit={VARIANT_UNIT}", "--collect", "--quiet",
                     "haproxy", "-Ws", "-f", f"{BARE_DIR}/haproxy.cfg"])  # fmt: skip
    lab.shell(
        POOLER,
        f"for i in $(seq 50); do pg_isready -q -h 127.0.0.1 -p {VARIANT_PORT} && exit 0; sleep 0.1; done;"
        " exit 1",
    )


def _overlay_files(workdir: Path, auth: str, client_tls: str | None = None) -> tuple[Path, str]:
    """Write the overlay TOML and the extra-vars file; return the extra-vars path and the bare userlist."""
    toml = (lab.REPO / "examples" / "autopgpool.toml").read_text(encoding="utf-8") + OVERLAY.format(auth=auth)
    secrets = lab.demo_secrets() | {"BENCH_PASSWORD": PASSWORD}
    toml_path = workdir / "autopgpool-bench.toml"
    toml_path.write_text(toml, encoding="utf-8")
    extra = workdir / "bench-vars.json"
    extra_vars: dict[str, object] = {"pgbouncer_config_file": str(toml_path), "pgbouncer_secrets": secrets}
    if client_tls is not None:
        extra_vars["pgbouncer_client_tls_sslmode"] = client_tls
    extra.write_text(json.dumps(extra_vars))
    extra.chmod(0o600)
    files = render_files(toml, secrets, salt_key=secrets["AUTOPGPOOL_SCRAM_SALT_KEY"])
    wanted = (f'"{USER}" ', f'"{OWNER}" ')
    userlist = "".join(line + "\n" for line in files["userlist.txt"].splitlines() if line.startswith(wanted))
    return extra, userlist


def _hba(auth: str) -> None:
    """With --auth md5, let bench_owner log in with MD5 over the bridge: one marked line on top, then reload.
    The lab's pg_hba.conf says scram-sha-256, which refuses a role whose stored password is MD5."""
    sed = [f"/{HBA_MARK}/d"]
    if auth == "md5":
        sed.append(f"1i host {DB} {OWNER} {lab.lab_network()} md5 {HBA_MARK}")
    lab.shell(
        PG,
        "f=$(ls /etc/postgresql/*/main/pg_hba.conf); "
        + " ".join(f"sudo sed -i {shlex.quote(e)} $f;" for e in sed)
        + " sudo -u postgres psql -X -q -c 'SELECT pg_reload_conf()' >/dev/null",
    )


def _setup_postgres(auth: str) -> None:
    # Constant names and the lab-only password: nothing from outside reaches this SQL.
    sql = "\n".join(
        [
            f"SELECT 'CREATE ROLE {OWNER} LOGIN'",
            f" WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{OWNER}')\\gexec",
            f"SET password_encryption = '{'md5' if auth == 'md5' else 'scram-sha-256'}';",
            f"ALTER ROLE {OWNER} PASSWORD '{PASSWORD}';",
            f"SELECT 'CREATE DATABASE {DB} OWNER {OWNER}'",
            f" WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{DB}')\\gexec",
            "",
        ]
    )
    lab.ssh(PG, ["sudo", "-u", "postgres", "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"], stdin=sql)


def _teardown_postgres() -> None:
    sql = f"DROP DATABASE IF EXISTS {DB} WITH (FORCE);\nDROP ROLE IF EXISTS {OWNER};\n"
    lab.ssh(PG, ["sudo", "-u", "postgres", "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"], stdin=sql)


def _setup_pooler(
    all_targets: dict[str, Target], userlist: str, scale: int, auth: str, bare_pool_size: int
) -> None:
    pg_address = all_targets["direct"].host
    lines = "".join(f"{t.host}:{t.port}:{DB}:{t.user}:{PASSWORD}\n" for t in all_targets.values())
    lab.ssh(POOLER, ["install", "-m", "0600", "/dev/stdin", PGPASS], stdin=lines)
    lab.shell(
        POOLER,
        f"PGPASSFILE={PGPASS} pgbench -i -q -s {scale} -h {pg_address} -U {OWNER} {DB} >/dev/null 2>&1"
        f" || {{ PGPASSFILE={PGPASS} pgbench -i -q -s {scale} -h {pg_address} -U {OWNER} {DB}; exit 1; }}",
    )
    lab.ssh(POOLER, ["sudo", "install", "-d", "-m", "0750", "-o", "root", "-g", "pgbouncer", BARE_DIR])
    bare_ini = BARE_INI.format(auth=auth, pool_size=bare_pool_size)
    lab.put(POOLER, f"{BARE_DIR}/pgbouncer.ini", bare_ini, owner="pgbouncer", mode="0640")
    lab.put(POOLER, f"{BARE_DIR}/userlist.txt", userlist, owner="pgbouncer", mode="0640")
    lab.ssh(
        POOLER,
        ["sudo", "systemd-run", f"--unit={BARE_UNIT}", "--collect", "--quiet", "-p", "User=pgbouncer",
         "-p", "Group=pgbouncer", PGBOUNCER, f"{BARE_DIR}/pgbouncer.ini"],
    )  # fmt: skip
    lab.shell(
        POOLER,
        f"for i in $(seq 50); do pg_isready -q -h 127.0.0.1 -p {BARE_PORT} && exit 0; sleep 0.1; done; "
        f"sudo journalctl -u {BARE_UNIT} --no-pager | tail -20 >&2; exit 1",
    )


def _teardown_pooler() -> None:
    lab.ssh(POOLER, ["sudo", "systemctl", "stop", VARIANT_UNIT], check=False)
    lab.ssh(POOLER, ["sudo", "systemctl", "stop", BARE_UNIT], check=False)
    lab.ssh(POOLER, ["sudo", "rm", "-rf", BARE_DIR, PGPASS], check=False)


# CPU time (utime + stime, in clock ticks) of the pooler host's long-running processes, summed by name. A
# process that exits between the glob and its read makes cat exit 1, which pipefail turns into a failed
# run (seen under -C, where connections come and go): hence `|| true`.
_CPU_SNAPSHOT = (
    '{ cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk \'$2 == "(haproxy)" || $2 == "(pgbouncer)" '
    '|| $2 == "(systemd-journal)" { t[$2] += $14 + $15 } END { for (k in t) print k, t[k] }\''
)
_CPU_NAMES = {"(haproxy)": "haproxy", "(pgbouncer)": "pgbouncer", "(systemd-journal)": "journald"}


@dataclass(frozen=True)
class RunShape:
    """How every pgbench run of a benchmark is shaped."""

    seconds: int = 5
    #: pgbench -j for every run; None: see threads_for.
    threads: int | None = None
    #: PGSSLMODE for every run; None: libpq's default (prefer: TLS wherever the server offers it).
    sslmode: str | None = None
    #: None: pgbench -S. Else every transaction is one SELECT pg_sleep() that holds its server connection
    #: this many ms: more clients than server connections then queue in the pooler (the budget's queueing).
    hold_ms: int | None = None


def hold_script(hold_ms: int) -> str:
    """The pgbench script of a --hold-ms run: one statement, so in transaction mode a server connection is
    held for hold_ms and then returned to the pool."""
    return f"SELECT pg_sleep({hold_ms / 1000:.3f});\n"


def threads_for(clients: int, connect: bool, threads: int | None) -> int:
    """pgbench -j. With -C every client its own thread: pgbench connects synchronously, so clients sharing a
    thread would wait for each other's connects and the run would measure connect latency, not how many
    connections per second a layout serves to independent clients (forked workers, serverless functions).
    Persistent clients share at most 2 threads (the lab's cores); their queries are asynchronous."""
    if threads is not None:
        return min(clients, threads)
    return clients if connect else min(clients, 2)


def _cpu_seconds(before: str, after: str, pgbench_times: str, tick_hz: int) -> dict[str, float]:
    def ticks(text: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in _CPU_NAMES:
                out[_CPU_NAMES[name]] = int(value)
        return out

    start, end = ticks(before), ticks(after)
    seconds = {name: (end[name] - start.get(name, 0)) / tick_hz for name in end}
    user, system = (float(x) for x in pgbench_times.split())
    seconds["pgbench"] = user + system
    return seconds


def run_pgbench(
    target: Target, clients: int, connect: bool, shape: RunShape
) -> tuple[str, list[int], dict[str, float]]:
    """One bounded pgbench -S run on the pooler host; returns its report, per-transaction latencies and the
    CPU seconds of pgbench, pgbouncer, HAProxy and journald on that host during the run."""
    workload = ["-S"] if shape.hold_ms is None else ["-f", "$d/hold.sql"]
    argv = ["pgbench", "-n", *workload, "-T", str(shape.seconds), "-c", str(clients)]
    argv += ["-j", str(threads_for(clients, connect, shape.threads))]
    argv += ["-C"] if connect else []
    argv += ["-l", "--log-prefix", "$d/tx", "-h", target.host, "-p", str(target.port), "-U", target.user, DB]
    cmd = " ".join(a if a.startswith("$d") else shlex.quote(a) for a in argv)
    hold = ""
    if shape.hold_ms is not None:
        hold = f'printf {shlex.quote(hold_script(shape.hold_ms))} >"$d/hold.sql"; '
    script = (
        f'd=$(mktemp -d); trap \'rm -rf "$d"\' EXIT; cd "$d"; {hold}'
        f"export PGPASSFILE={PGPASS}{f' PGSSLMODE={shlex.quote(shape.sslmode)}' if shape.sslmode else ''}; "
        'TIMEFORMAT="%U %S"; '
        f'{_CPU_SNAPSHOT} >"$d/cpu0"; '
        f'{{ time {cmd} >"$d/out" 2>"$d/err"; }} 2>"$d/time" || {{ cat "$d/err" >&2; exit 1; }}; '
        f'{_CPU_SNAPSHOT} >"$d/cpu1"; '
        f'cat "$d/out"; echo ==CPU==; cat "$d/cpu0"; echo ==; cat "$d/cpu1"; echo ==; cat "$d/time"; '
        f'getconf CLK_TCK; echo ==LOG==; cat "$d"/tx.*'
    )
    out = lab.shell(POOLER, script)
    report, _, rest = out.partition("==CPU==\n")
    cpu_text, _, log_text = rest.partition("==LOG==\n")
    before, after, tail = cpu_text.split("==\n")
    pgbench_times, tick_hz = tail.splitlines()
    cpu = _cpu_seconds(before, after, pgbench_times, int(tick_hz))
    return report, latencies_us(log_text.splitlines()), cpu


def matrix(  # noqa: PLR0917
    all_targets: dict[str, Target],
    targets: Sequence[str],
    clients: Sequence[int],
    modes: Sequence[str],
    reps: int,
    shape: RunShape,
) -> dict[tuple[str, str, int], Cell]:
    """Alternate: for each repetition, for each (mode, clients), every target in turn (A,B,C,A,B,C,...)."""
    cells: dict[tuple[str, str, int], Cell] = {}
    for target in targets:  # warm-up: fill pools, caches and pgbench's page cache, not recorded
        run_pgbench(all_targets[target], 8, False, RunShape(2, shape.threads, shape.sslmode, shape.hold_ms))
    for rep in range(reps):
        for mode in modes:
            for n in clients:
                for name in targets:
                    report, lat, cpu = run_pgbench(all_targets[name], n, mode == "-C", shape)
                    summary = parse_summary(report)
                    if summary.failed:
                        raise RuntimeError(f"{name} {mode} {n}: {summary.failed} failed transactions")
                    per_tx = cpu_us_per_transaction(cpu, summary.transactions)
                    cells.setdefault((name, mode, n), Cell()).add(summary, lat, per_tx)
                    lab.log(f"rep {rep + 1}/{reps} {mode:10} c={n:<3} {name:9} tps={summary.tps:9.0f}")
    return cells


def main(  # noqa: PLR0917
    targets: Sequence[str],
    clients: Sequence[int],
    reps: int,
    shape: RunShape,
    scale: int,
    json_out: Path | None,
    haproxy_global: Sequence[str] = (),
    haproxy_defaults: Sequence[str] = (),
    auth: str = "scram-sha-256",
    client_tls: str | None = None,
    variant_unix: bool = False,
    bare_pool_size: int = 20,
) -> str:
    modes = ["persistent", "-C"]
    lab.labctl("up")  # idempotent; after `make test` the lab may be down or fresh
    all_targets = target_table(lab.address(PG))
    lab.log("postgres.yml (the lab's PostgreSQL with the example's backends)")
    lab.playbook("lab/playbooks/postgres.yml")
    lab.log(f"bench.yml (pgbench on {POOLER}, from the lab mirror: the hosts are fresh servers)")
    lab.playbook("lab/playbooks/bench.yml")
    with tempfile.TemporaryDirectory(prefix="autopgpool-bench-") as tmp:
        extra, userlist = _overlay_files(Path(tmp), auth, client_tls)
        try:
            lab.log("postgres: bench role and database")
            _setup_postgres(auth)
            _hba(auth)
            lab.log("site.yml with the bench overlay (one more user and pool)")
            lab.playbook("playbooks/site.yml", extra_vars_file=extra)
            lab.log(f"pool1: pgbench -i -s {scale}, bare pgbouncer on 127.0.0.1:{BARE_PORT}")
            _teardown_pooler()  # leftovers of an interrupted run
            _setup_pooler(all_targets, userlist, scale, auth, bare_pool_size)
            if "variant" in targets:
                lab.log(f"pool1: HAProxy variant on :{VARIANT_PORT}: {[*haproxy_global, *haproxy_defaults]}")
                _start_variant(haproxy_global, haproxy_defaults, unix=variant_unix)
            cells = matrix(all_targets, targets, clients, modes, reps, shape)
        finally:
            lab.log("restore: stop the bare pgbouncer, redeploy the example, drop the bench database")
            _teardown_pooler()
            lab.playbook("playbooks/site.yml")
            _teardown_postgres()
            _hba("scram-sha-256")
    if json_out is not None:
        json_out.write_text(
            json.dumps(
                {f"{t}|{m}|{n}": vars(c) for (t, m, n), c in cells.items()}, indent=1, ensure_ascii=False
            )
        )
    cpu = cpu_table(cells, targets, modes, clients)
    return f"{table(cells, targets, modes, clients)}\n\nCPU µs per transaction on {POOLER}:\n\n{cpu}"
