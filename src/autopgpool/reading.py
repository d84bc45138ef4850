"""Reading autopgpool.toml: bounded in size, any input ending in a :class:`ConfigError`, never a traceback.

* At most :data:`MAX_CONFIG_BYTES` are read (a file like /dev/zero or a runaway generator stops there), and a
  text handed in by Ansible is held to the same limit.
* One UTF-8 byte order mark at the start is accepted and dropped (editors on Windows write one); TOML itself
  has no place for it, and tomllib would report "Invalid statement" at line 1.
* Bytes that are not UTF-8 are reported with their offset, as TOML requires UTF-8.
* Nesting too deep for the parser, and integers too long for Python's int conversion, are TOML errors too.
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from typing import Any

from .errors import ConfigError, Problem

MAX_CONFIG_BYTES = 4 * 1024 * 1024  # thousands of users and pools fit in a fraction of this
BOM = "\ufeff"


def _fail(message: str) -> ConfigError:
    return ConfigError([Problem("", message)])


def read_config_file(path: Path | str, *, limit: int = MAX_CONFIG_BYTES) -> str:
    """The file's text, at most ``limit`` bytes; ConfigError (no traceback) for anything unreadable."""
    try:
        # O_NONBLOCK: opening a FIFO without a writer must not hang; it reads as empty instead.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise _fail(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise _fail(f"cannot read {path}: it is a directory")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            try:
                chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            except BlockingIOError:
                break
            except OSError as exc:
                raise _fail(f"cannot read {path}: {exc.strerror or exc}") from None
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise _fail(f"{path} is larger than {limit} bytes; autopgpool.toml is read up to that size")
    return decode(b"".join(chunks), str(path))


def decode(data: bytes, name: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(
            f"{name} is not UTF-8 (TOML requires UTF-8): invalid byte at offset {exc.start}"
        ) from None
    return text.removeprefix(BOM)


def load_toml(text: str, *, limit: int = MAX_CONFIG_BYTES) -> dict[str, Any]:
    """Parse TOML text into a dict; ConfigError for anything that is not a usable TOML document."""
    text = text.removeprefix(BOM)
    if len(text) > limit or len(text.encode("utf-8", "surrogatepass")) > limit:
        raise _fail(f"the configuration is larger than {limit} bytes")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _fail(f"TOML syntax error: {exc}") from None
    except RecursionError:
        raise _fail("TOML nesting is too deep (arrays or inline tables inside each other)") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise _fail(f"TOML value cannot be read: {type(exc).__name__}") from None
