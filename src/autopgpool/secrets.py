"""Secrets from the environment: ``"$VAR"``, ``"...${VAR}..."`` and ``$$`` for a literal ``$``.

Rules (also in docs/configuration.md):

* A string that is exactly ``$NAME`` is replaced by the variable ``NAME`` (autopg-pool's form).
* ``${NAME}`` anywhere in a string is replaced by the variable ``NAME``.
* ``$$`` stands for one literal ``$``.
* Any other ``$`` is an error, so a typo never silently becomes part of a password.
* Expansion is a single pass: a value taken from a variable is never looked at again, so a secret that itself
  contains ``$X`` stays exactly as it is.

``NAME`` is ``[A-Za-z_][A-Za-z0-9_]*``. Values come from a mapping passed in; :func:`merge_sources` builds it
for callers that have both an explicit mapping (Ansible's, possibly from Vault) and a process environment:
the explicit mapping wins.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from .errors import Problems

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_WHOLE = re.compile(rf"\$({_NAME})")
_TOKEN = re.compile(rf"\$\$|\$\{{({_NAME})\}}|\$")


def merge_sources(explicit: Mapping[str, object] | None, environ: Mapping[str, str]) -> dict[str, str]:
    """Variables visible to the config: ``environ`` overlaid by ``explicit`` (explicit wins)."""
    merged = dict(environ)
    for key, value in (explicit or {}).items():
        merged[str(key)] = str(value)
    return merged


def expand(value: str, path: str, env: Mapping[str, str], problems: Problems) -> str:
    """Return ``value`` with variables substituted; report missing variables and stray ``$``."""
    whole = _WHOLE.fullmatch(value)
    if whole:
        return _lookup(whole.group(1), path, env, problems)
    if "$" not in value:
        return value
    out: list[str] = []
    pos = 0
    for match in _TOKEN.finditer(value):
        out.append(value[pos : match.start()])
        pos = match.end()
        if match.group(0) == "$$":
            out.append("$")
        elif match.group(1):
            out.append(_lookup(match.group(1), path, env, problems))
        else:
            problems.add(
                path,
                f"'$' at position {match.start()} starts no variable: "
                'write "${NAME}" for a variable or "$$" for a literal "$"',
            )
    out.append(value[pos:])
    return "".join(out)


def _lookup(name: str, path: str, env: Mapping[str, str], problems: Problems) -> str:
    if name in env:
        return env[name]
    problems.add(path, f"environment variable {name} is not set")
    return ""
