"""Command line: labctl image | mirror | up | down | status | poweroff | boot | deployed | ssh HOST [cmd]."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import config, deployed, mirror
from .image import build_image
from .machines import Paths, boot, down, planned, poweroff, ssh_base, status, up
from .system import LabError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labctl", description="Local lab of systemd-nspawn machines.")
    sub = parser.add_subparsers(dest="command", required=True)
    image = sub.add_parser("image", help="build the cached base image (once per suite/package list)")
    image.add_argument("--suite", default=config.DEFAULT_SUITE, choices=config.SUPPORTED_SUITES)
    image.add_argument("--force", action="store_true", help="rebuild even if cached")
    repo = sub.add_parser("mirror", help="collect (or reuse) the package mirror of a suite without booting")
    repo.add_argument("--suite", default=config.DEFAULT_SUITE, choices=config.SUPPORTED_SUITES)
    start = sub.add_parser("up", help="boot pg1 and the poolers (idempotent)")
    start.add_argument(
        "--machines", type=int, default=2, metavar="N_POOLERS", help="number of pooler hosts (default 2)"
    )
    start.add_argument("--suite", default=config.DEFAULT_SUITE, choices=config.SUPPORTED_SUITES)
    sub.add_parser("down", help="stop every lab machine and remove overlays, bridge and veths")
    sub.add_parser("status", help="show each machine and its `systemctl is-system-running`")
    cut = sub.add_parser("poweroff", help="cut a machine's power (SIGKILL, no shutdown); its disk is kept")
    cut.add_argument("host")
    start_again = sub.add_parser("boot", help="boot a machine that poweroff stopped, on its kept disk")
    start_again.add_argument("host")
    state = sub.add_parser(
        "deployed", help="record, check or forget what `make demo` deployed (a warm demo skips its playbooks)"
    )
    state.add_argument("action", choices=("check", "record", "forget"))
    ssh = sub.add_parser("ssh", help="ssh to a lab machine as ops")
    ssh.add_argument("host")
    ssh.add_argument("cmd", nargs=argparse.REMAINDER)
    return parser


def _deployed(action: str, paths: Paths) -> int:
    """check: 0 when the lab still runs what the last `record` saw, else 1 with what changed."""
    stamp = paths.deployed
    if action == "forget":
        stamp.unlink(missing_ok=True)
        return 0
    machines, _suite = planned(paths)
    current = deployed.fingerprint(machines, {m.name: ssh_base(paths, m) for m in machines})
    if action == "record":
        deployed.write(stamp, current)
        return 0
    changed = deployed.differences(deployed.read(stamp), current)
    for what in changed:
        print(f"labctl deployed: changed since the last full deployment: {what}")
    return 1 if changed else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    paths = Paths(config.STATE_DIR)
    try:
        if args.command == "image":
            build_image(args.suite, force=args.force)
        elif args.command == "mirror":
            print(f"lab mirror: {mirror.collect(args.suite, build_image(args.suite))}")
        elif args.command == "up":
            up(args.machines, args.suite, paths)
        elif args.command == "down":
            down(paths)
        elif args.command == "status":
            return status(paths)
        elif args.command == "poweroff":
            poweroff(args.host, paths)
        elif args.command == "boot":
            boot(args.host, paths)
        elif args.command == "deployed":
            return _deployed(args.action, paths)
        elif args.command == "ssh":
            if not paths.ssh_config.is_file():
                raise LabError("the lab is not up (no .lab/ssh_config); run `labctl up`")
            cmd = ["ssh", "-F", str(paths.ssh_config), args.host, *args.cmd]
            os.execvp(cmd[0], cmd)  # noqa: S606 - hand the terminal to ssh
    except (LabError, ValueError) as exc:
        print(f"labctl: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
