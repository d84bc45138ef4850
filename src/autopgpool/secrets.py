"""Secrets from the environment: ``"$VAR"``, ``"...${VAR}..."`` and ``$$`` for a literal ``$``.

Rules (also in docs/configuration.md):

* A string that is exactly ``$NAME`` is replaced by the variable ``NAME`` (autopg-pool's form).
* ``${NAME}`` anywhere in a string is replaced by the variable ``NAME``.
* ``$$`` stands for one literal ``$``.
* Any other ``$`` is an error, so a typo never silently becomes part of a password.
* Expansion is a single pass: a value taken from a variable is never looked at again, so a secret that itself
  contains ``$X`` stays exactly as it is.
* Variables are expanded only where a secret or a connection detail belongs (:data:`EXPANDED_KEYS`). Anywhere
  else a reference is an error naming the key and the variable: a value written there may end up in
  pgbouncer.ini, ``SHOW CONFIG``, the summary or an error message, and must not come from a secret.

``NAME`` is ``[A-Za-z_][A-Za-z0-9_]*``. Values come from a mapping passed in; :func:`merge_sources` builds it
for callers that have both an explicit mapping (Ansible's, possibly from Vault) and a process environment:
the explicit mapping wins. No message built here ever contains a value, only key paths and variable names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from .errors import Problems

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_WHOLE = re.compile(rf"\$({_NAME})")
_TOKEN = re.compile(rf"\$\$|\$\{{({_NAME})\}}|\$")

#: The keys whose strings may refer to variables (as they are written in docs/configuration.md).
EXPANDED_KEYS = (
    "users[].password",
    "pools.<name>.remote.host",
    "pools.<name>.remote.port",
    "pools.<name>.remote.database",
    "pools.<name>.remote.username",
    "pools.<name>.remote.password",
)
_WHERE = "users[].password and pools.<name>.remote.{host,port,database,username,password}"


def merge_sources(explicit: Mapping[str, object] | None, environ: Mapping[str, str]) -> dict[str, str]:
    """Variables visible to the config: ``environ`` overlaid by ``explicit`` (explicit wins)."""
    merged = dict(environ)
    for key, value in (explicit or {}).items():
        merged[str(key)] = str(value)
    return merged


def references(value: str) -> list[str]:
    """Names of the variables ``value`` refers to, in order (``$$`` is no reference)."""
    whole = _WHOLE.fullmatch(value)
    if whole:
        return [whole.group(1)]
    return [m.group(1) for m in _TOKEN.finditer(value) if m.group(1)]


def expand(value: str, path: str, env: Mapping[str, str], problems: Problems, *, allowed: bool = True) -> str:
    """Return ``value`` with variables substituted; report missing variables and stray ``$``.

    With ``allowed=False`` (every key outside :data:`EXPANDED_KEYS`) only ``$$`` is understood, and a
    reference is reported with the variable's name; its value is never looked up.
    """
    whole = _WHOLE.fullmatch(value)
    if whole:
        return _lookup(whole.group(1), path, env, problems, allowed)
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
            out.append(_lookup(match.group(1), path, env, problems, allowed))
        else:
            problems.add(
                path,
                f"'$' at position {match.start()} starts no variable: "
                'write "${NAME}" for a variable or "$$" for a literal "$"',
            )
    out.append(value[pos:])
    return "".join(out)


def _lookup(name: str, path: str, env: Mapping[str, str], problems: Problems, allowed: bool) -> str:
    if not allowed:
        problems.add(
            path,
            f"refers to the variable {name}, but variables are only expanded in {_WHERE}; write the value "
            'itself here (and "$$" for a literal "$")',
        )
        return ""
    if name in env:
        return env[name]
    problems.add(path, f"environment variable {name} is not set")
    return ""
