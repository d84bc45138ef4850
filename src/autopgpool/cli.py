"""Command line: ``autopgpool validate`` and ``autopgpool generate`` (autopg-pool's names and flags).

Never prints a secret: success output is counts and paths, failure output is the list of problems (which
name keys and variables, never values of passwords).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .api import render_files, summarize, validate
from .errors import ConfigError

DEFAULT_SALT_ENV = "AUTOPGPOOL_SCRAM_SALT_KEY"
MODES = {"pgbouncer.ini": 0o600, "userlist.txt": 0o600, "pgbouncer_hba.conf": 0o644}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autopgpool",
        description="Turn autopgpool.toml into pgbouncer.ini, userlist.txt and pgbouncer_hba.conf. "
        "Secrets written as $VAR or ${VAR} are read from the environment.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    val = sub.add_parser("validate", help="check the configuration and list every problem")
    val.add_argument("--config-path", required=True, type=Path, help="path to autopgpool.toml")
    gen = sub.add_parser("generate", help="validate, then write the three pgbouncer files")
    gen.add_argument("--config-path", required=True, type=Path, help="path to autopgpool.toml")
    gen.add_argument("--output-dir", required=True, type=Path, help="directory for the three files")
    gen.add_argument(
        "--config-dir",
        default="/etc/pgbouncer",
        help="where pgbouncer will read the files, written into pgbouncer.ini (default: %(default)s)",
    )
    gen.add_argument(
        "--salt-key-env",
        default=DEFAULT_SALT_ENV,
        metavar="NAME",
        help="environment variable holding the SCRAM salt key; with it (or an existing userlist.txt in "
        "the output dir) a re-run writes byte-identical files (default: %(default)s)",
    )
    return parser


def _write_atomic(path: Path, content: str, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    env = dict(os.environ)
    try:
        toml_text = args.config_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(
            f"error: cannot read {args.config_path}: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr
        )
        return 1
    try:
        if args.command == "validate":
            validate(toml_text, env)
            info = summarize(toml_text, env)
            print(f"{args.config_path}: valid ({len(info['pools'])} pools, {len(info['users'])} users)")
            return 0
        out: Path = args.output_dir
        previous_path = out / "userlist.txt"
        previous = previous_path.read_text(encoding="utf-8") if previous_path.is_file() else None
        files = render_files(
            toml_text,
            env,
            config_dir=args.config_dir,
            salt_key=os.environ.get(args.salt_key_env) or None,
            previous_userlist=previous,
        )
        info = summarize(toml_text, env)
    except ConfigError as exc:
        print(f"{args.config_path}: {exc}", file=sys.stderr)
        return 1
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            _write_atomic(out / name, content, MODES[name])
    except OSError as exc:
        print(f"error: cannot write to {out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"{args.config_path}: {len(info['pools'])} pools, {len(info['users'])} users")
    for name in files:
        print(f"wrote {out / name} (mode {MODES[name]:04o})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
