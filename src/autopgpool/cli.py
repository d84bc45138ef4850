"""Command line: ``autopgpool validate`` and ``autopgpool generate`` (autopg-pool's names and flags).

Never prints a secret: success output is counts and paths, failure output is the list of problems and
warnings (which name keys and variables, never values). No input ends in a Python traceback: anything
unexpected is reported by its exception type only, since its message could hold a value.

``generate`` writes the three files as one set: each is written and synced to a temporary file beside its
destination first, and only when all three exist are they renamed into place; if a rename fails, the files
already replaced are put back, so the directory holds all old or all new files.

``generate`` renders one pgbouncer that works on its own by default (``--layout standalone``), as
autopg-pool's did: pgbouncer.ini listens on [pgbouncer] listen_addr/listen_port and the hba file lets each
user reach its pools from any address. ``--layout instances`` renders what the Ansible roles deploy instead
(a shared file for instance-N.ini to include, hba rules for HAProxy's source address), for review.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from .api import check_config_dir, render_files, summarize, validate
from .budget import MAX_INSTANCES
from .errors import ConfigError
from .reading import MAX_CONFIG_BYTES, read_config_file

DEFAULT_SALT_ENV = "AUTOPGPOOL_SCRAM_SALT_KEY"
MODES = {"pgbouncer.ini": 0o600, "userlist.txt": 0o600, "pgbouncer_hba.conf": 0o644}
LAYOUTS = ("standalone", "instances")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autopgpool",
        description="Turn autopgpool.toml into pgbouncer.ini, userlist.txt and pgbouncer_hba.conf. "
        "Secrets written as $VAR or ${VAR} (in passwords and pools.<name>.remote) are read from the "
        "environment.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    val = sub.add_parser("validate", help="check the configuration and list every problem")
    val.add_argument("--config-path", required=True, type=Path, help="path to autopgpool.toml")
    gen = sub.add_parser("generate", help="validate, then write the three pgbouncer files")
    gen.add_argument("--config-path", required=True, type=Path, help="path to autopgpool.toml")
    for command in (val, gen):
        command.add_argument(
            "--instances",
            type=_positive,
            default=1,
            metavar="N",
            help="pgbouncer processes that share the file's connection numbers (all instances of all "
            "pooler hosts): each gets the numbers divided by N, rounded down (default: 1, one pgbouncer, as "
            "autopg-pool ran; see 'Connection budget' in docs/configuration.md)",
        )
    gen.add_argument("--output-dir", required=True, type=Path, help="directory for the three files")
    gen.add_argument(
        "--config-dir",
        default=None,
        help="where pgbouncer will read userlist.txt and pgbouncer_hba.conf, written into pgbouncer.ini "
        "(default: the absolute path of --output-dir, as autopg-pool did; give it when the files are "
        "moved elsewhere, e.g. /etc/pgbouncer)",
    )
    gen.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="standalone",
        help="standalone (default): one pgbouncer listening on [pgbouncer] listen_addr:listen_port (default "
        "0.0.0.0:6432), each user reaching its pools from any address, the console from this host only, as "
        "autopg-pool ran it; instances: the files the Ansible roles deploy (no listener of its own, "
        "included by each instance-N.ini, hba rules for HAProxy's source address)",
    )
    gen.add_argument(
        "--salt-key-env",
        default=DEFAULT_SALT_ENV,
        metavar="NAME",
        help="environment variable holding the SCRAM salt key; with it (or an existing userlist.txt in "
        "the output dir) a re-run writes byte-identical files (default: %(default)s)",
    )
    return parser


def _positive(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_INSTANCES:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to {MAX_INSTANCES}")
    return int(text)


def _stage(path: Path, content: str, mode: int) -> Path:
    """Write ``content`` to a synced temporary file beside ``path`` and return its name."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".new")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def write_file_set(out: Path, files: Mapping[str, str], modes: Mapping[str, int]) -> None:
    """Replace the files in ``out`` all together: afterwards all are old or all are new (see module doc)."""
    staged: dict[str, Path] = {}
    backups: dict[str, Path] = {}
    replaced: list[str] = []
    try:
        for name, content in files.items():
            staged[name] = _stage(out / name, content, modes[name])
        for name in files:
            if (out / name).exists():
                # A second name for the old file, so it can be put back if a later rename fails.
                # os.link never overwrites, so a random name cannot clobber anything; a copy where the
                # filesystem has no hard links.
                backup = out / f".{name}.{os.urandom(8).hex()}.old"
                try:
                    os.link(out / name, backup)
                except OSError:
                    shutil.copy2(out / name, backup)
                backups[name] = backup
        try:
            for name in files:
                os.replace(staged[name], out / name)
                replaced.append(name)
        except BaseException:
            for name in reversed(replaced):
                if name in backups:
                    os.replace(backups.pop(name), out / name)
                else:
                    (out / name).unlink(missing_ok=True)
            raise
        _fsync_dir(out)
    finally:
        for path in (*staged.values(), *backups.values()):
            path.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    """Make the renames durable; a filesystem that cannot sync a directory has still renamed all three."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _previous_userlist(path: Path) -> str | None:
    """The userlist.txt already in the output directory (for stable SCRAM salts), if it can be read."""
    if not path.is_file():
        return None
    try:
        return read_config_file(path, limit=MAX_CONFIG_BYTES)
    except ConfigError:
        print(f"warning: {path} cannot be read; SCRAM verifiers get new salts", file=sys.stderr)
        return None


def _print_warnings(config_path: Path, warnings: Sequence[str]) -> None:
    for warning in warnings:
        print(f"{config_path}: warning: {warning}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a last resort: the type only, as a message could hold a value
        print(f"error: unexpected {type(exc).__name__}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    try:
        toml_text = read_config_file(args.config_path)
    except ConfigError as exc:
        print(f"error: {exc.problems[0]}", file=sys.stderr)
        return 1
    if args.command == "validate":
        return _validate(args, toml_text)
    return _generate(args, toml_text)


def _validate(args: argparse.Namespace, toml_text: str) -> int:
    env = dict(os.environ)
    try:
        validate(toml_text, env)
        info = summarize(toml_text, env, instances=args.instances)
    except ConfigError as exc:
        print(f"{args.config_path}: {exc}", file=sys.stderr)
        return 1
    _print_warnings(args.config_path, info["warnings"])
    print(f"{args.config_path}: valid ({len(info['pools'])} pools, {len(info['users'])} users)")
    for line in info["budget_lines"]:
        print(line)
    return 0


def _generate(args: argparse.Namespace, toml_text: str) -> int:
    env = dict(os.environ)
    out: Path = args.output_dir
    config_dir = args.config_dir if args.config_dir is not None else os.path.abspath(out)
    try:
        check_config_dir(config_dir)
    except ConfigError:
        flag = "--config-dir" if args.config_dir is not None else "--output-dir (used as --config-dir)"
        print(
            f"error: {flag} must be an absolute path of letters, digits and . _ @ + - /: it is written into "
            "pgbouncer.ini; give --config-dir explicitly if the output directory's path has other characters",
            file=sys.stderr,
        )
        return 1
    try:
        files = render_files(
            toml_text,
            env,
            config_dir=config_dir,
            salt_key=os.environ.get(args.salt_key_env) or None,
            previous_userlist=_previous_userlist(out / "userlist.txt"),
            instances=args.instances,
            standalone=args.layout == "standalone",
        )
        info = summarize(toml_text, env, instances=args.instances)
    except ConfigError as exc:
        print(f"{args.config_path}: {exc}", file=sys.stderr)
        return 1
    _print_warnings(args.config_path, info["warnings"])
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_file_set(out, files, MODES)
    except OSError as exc:
        print(f"error: cannot write to {out}: {exc.strerror or type(exc).__name__}", file=sys.stderr)
        return 1
    print(f"{args.config_path}: {len(info['pools'])} pools, {len(info['users'])} users")
    for name in files:
        print(f"wrote {out / name} (mode {MODES[name]:04o})")
    print(f"pgbouncer.ini reads userlist.txt and pgbouncer_hba.conf from {config_dir}")
    if args.layout == "standalone":
        endpoint = _endpoint(info["listen_addr"], info["listen_port"])
        print(f"pgbouncer.ini listens on {endpoint} and its unix socket")
    else:
        print("pgbouncer.ini has no listener: each instance-N.ini includes it and sets its own")
    return 0


def _endpoint(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


if __name__ == "__main__":
    sys.exit(main())
