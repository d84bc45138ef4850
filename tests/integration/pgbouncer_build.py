"""Build the real pinned pgbouncer from Debian's source tarball, once, into a cache directory.

The version and its tarball's sha256 come from the pgbouncer_build role's release table
(roles/pgbouncer_build/vars/main/releases.yml), the same one a deployment uses.

Usable as a module (``ensure_pgbouncer()`` returns the binary path) or as a script
(``python tests/integration/pgbouncer_build.py`` prints the binary path).

The cache is ``${AUTOPGPOOL_CACHE:-$HOME/.cache/autopgpool}``; a finished build is marked by the installed
binary, so an interrupted build is simply redone. The tarball's sha256 is checked before anything is unpacked.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import yaml

RELEASES_FILE = Path(__file__).resolve().parents[2] / "roles/pgbouncer_build/vars/main/releases.yml"


def release_table() -> dict[str, Any]:
    """The role's release table: pgbouncer_build_pinned_version and pgbouncer_build_releases."""
    data: dict[str, Any] = yaml.safe_load(RELEASES_FILE.read_text())
    return data


VERSION: str = release_table()["pgbouncer_build_pinned_version"]
SHA256: str = release_table()["pgbouncer_build_releases"][VERSION]["sha256"]
URL = f"http://deb.debian.org/debian/pool/main/p/pgbouncer/pgbouncer_{VERSION}.orig.tar.gz"
CONFIGURE_FLAGS = ("--with-systemd", "--with-cares", "--with-openssl")


class BuildError(RuntimeError):
    """The build could not be completed; the message says which step and shows its output."""


def cache_dir() -> Path:
    base = os.environ.get("AUTOPGPOOL_CACHE") or str(Path.home() / ".cache" / "autopgpool")
    return Path(base)


def prefix() -> Path:
    return cache_dir() / f"pgbouncer-{VERSION}"


def binary_path() -> Path:
    return prefix() / "bin" / "pgbouncer"


def _download(dest: Path) -> None:
    if dest.exists() and hashlib.sha256(dest.read_bytes()).hexdigest() == SHA256:
        return
    tmp = dest.with_suffix(".part")
    with urllib.request.urlopen(URL, timeout=120) as resp, tmp.open("wb") as out:
        shutil.copyfileobj(resp, out)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    if digest != SHA256:
        tmp.unlink()
        raise BuildError(f"checksum mismatch for {URL}: expected {SHA256}, got {digest}")
    tmp.replace(dest)


def _run(cmd: list[str], cwd: Path, log: Path) -> None:
    with log.open("ab") as fh:
        fh.write(("\n$ " + " ".join(cmd) + "\n").encode())
        fh.flush()
        proc = subprocess.run(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-4000:]
        raise BuildError(f"{' '.join(cmd)} failed with exit code {proc.returncode}; log {log}:\n{tail}")


def ensure_pgbouncer() -> Path:
    """Return the path of the pinned pgbouncer binary, building it first if the cache does not hold one."""
    binary = binary_path()
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / f"pgbouncer_{VERSION}.orig.tar.gz"
    _download(tarball)
    with tempfile.TemporaryDirectory(prefix="pgbouncer-build-", dir=cache) as tmp:
        work = Path(tmp)
        with tarfile.open(tarball) as tf:
            tf.extractall(work, filter="data")
        srcdirs = [p for p in work.iterdir() if p.is_dir()]
        if len(srcdirs) != 1:
            raise BuildError(f"unexpected tarball layout: {[p.name for p in srcdirs]}")
        src = srcdirs[0]
        log = cache / "pgbouncer-build.log"
        log.write_text("")
        # The tarball ships no prebuilt man pages and generating them needs pandoc, which tests don't need:
        # placeholders satisfy make's targets without adding a documentation toolchain to CI.
        for page in ("pgbouncer.1", "pgbouncer.5"):
            man = src / "doc" / page
            if not man.exists():
                man.write_text('.\\" man page not built: pandoc was not available\n')
        _run(["./configure", f"--prefix={prefix()}", *CONFIGURE_FLAGS], src, log)
        _run(["make", "-j2"], src, log)
        _run(["make", "install"], src, log)
    if not binary.is_file():
        raise BuildError(f"make install finished but {binary} does not exist")
    return binary


if __name__ == "__main__":
    try:
        print(ensure_pgbouncer())
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
