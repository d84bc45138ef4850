"""``python -m bench {pgbench,generate,converge}``: one markdown table per part (docs/benchmarks.md).

Uses the lab but never locks it: run it under ``flock /run/lock/autopgpool-lab.lock`` (``make bench`` does).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from . import layouts, toolkit


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="part", required=True)
    pg = sub.add_parser("pgbench", help="pgbench -S: PostgreSQL vs bare pgbouncer vs instance vs stack")
    pg.add_argument("--targets", default="direct,bare,instance,stack")
    pg.add_argument("--clients", type=_ints, default=[1, 8, 32])
    pg.add_argument("--reps", type=int, default=3, help="repetitions, alternated (default %(default)s)")
    pg.add_argument("--seconds", type=int, default=5, help="pgbench -T per run (default %(default)s)")
    pg.add_argument("--scale", type=int, default=10, help="pgbench -i -s (default %(default)s)")
    pg.add_argument("--json", type=Path, help="also write every repetition here")
    pg.add_argument(
        "--haproxy-global",
        action="append",
        default=[],
        metavar="LINE",
        help="target 'variant': add LINE to the global section of a copy of the deployed haproxy.cfg",
    )
    pg.add_argument(
        "--haproxy-defaults",
        action="append",
        default=[],
        metavar="LINE",
        help="target 'variant': add LINE to its defaults section",
    )
    pg.add_argument(
        "--auth",
        choices=["scram-sha-256", "md5"],
        default="scram-sha-256",
        help="how bench_user and bench_owner authenticate (default %(default)s)",
    )
    pg.add_argument(
        "--threads",
        type=int,
        help="pgbench -j for every run (default: one per client with -C, at most 2 for persistent runs)",
    )
    pg.add_argument(
        "--sslmode",
        choices=["disable", "prefer", "require"],
        help="PGSSLMODE for every run (default: libpq's, prefer: TLS wherever the server offers it)",
    )
    pg.add_argument(
        "--client-tls",
        choices=["disable", "prefer", "require"],
        help="pgbouncer_client_tls_sslmode of the stack during the run (default: the lab's, require)",
    )
    pg.add_argument(
        "--variant-unix",
        action="store_true",
        help="target 'variant': HAProxy reaches the instances over their unix sockets (the old transport)",
    )
    pg.add_argument(
        "--hold-ms",
        type=int,
        metavar="MS",
        help="instead of -S, every transaction holds its server connection MS ms (SELECT pg_sleep): queueing",
    )
    pg.add_argument(
        "--bare-pool-size",
        type=int,
        default=20,
        help="default_pool_size of the bare pgbouncer (default %(default)s, pgbouncer's stock value)",
    )
    gen = sub.add_parser("generate", help="autopgpool generate on a large config (no lab needed)")
    gen.add_argument("--users", type=int, default=10_000)
    gen.add_argument("--pools", type=int, default=1_000)
    gen.add_argument("--reps", type=int, default=3)
    conv = sub.add_parser("converge", help="lab converge: cold (labctl down/up first) and warm re-run")
    conv.add_argument("--cold", action="store_true", help="destroy and recreate the lab machines first")
    conv.add_argument("--timings-dir", type=Path, help="per-task times of each playbook (JSON)")
    args = parser.parse_args(argv)
    if args.part == "pgbench":
        for option, value in (("--hold-ms", args.hold_ms), ("--bare-pool-size", args.bare_pool_size)):
            if value is not None and value < 1:
                parser.error(f"{option}: expected a positive number, got {value}")
        targets = [t for t in args.targets.split(",") if t]
        unknown = sorted(set(targets) - set(layouts.TARGET_NAMES))
        if unknown:
            parser.error(f"unknown targets {unknown}; choose from {sorted(layouts.TARGET_NAMES)}")
        out = layouts.main(
            targets,
            args.clients,
            args.reps,
            layouts.RunShape(args.seconds, args.threads, args.sslmode, args.hold_ms),
            args.scale,
            args.json,
            args.haproxy_global,
            args.haproxy_defaults,
            args.auth,
            args.client_tls,
            args.variant_unix,
            args.bare_pool_size,
        )
    elif args.part == "generate":
        out = toolkit.generate(args.users, args.pools, args.reps)
    else:
        out = toolkit.converge(args.cold, args.timings_dir)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
