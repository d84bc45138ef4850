"""Secrets for the TOML's variables: ``"$VAR"``, ``"...${VAR}..."`` and ``$$`` for a literal ``$``.

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

``NAME`` is ``[A-Za-z_][A-Za-z0-9_]*``. Values come from a mapping passed in. The CLI passes its whole
environment (autopg-pool's way: a container's ``-e``). The Ansible filters pass :func:`ansible_sources`: the
operator's mapping (``pgbouncer_secrets``, Vault) and, from the controller's environment, only the names the
operator listed in ``pgbouncer_secrets_from_environment``. Whoever can edit the TOML (an application team's
pull request) can then not make a run read ``CI_JOB_TOKEN`` or ``AWS_SECRET_ACCESS_KEY`` into a remote
password and send it to a host of their choosing. A :class:`Secrets` mapping says where it looked, so a
missing variable is reported with the places the run searched. No message built here ever contains a value,
only key paths and variable names.
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


#: The Ansible variables a reference is looked up in (named in messages; the exporter role's own
#: pgbouncer_exporter_secrets* default to these).
SECRETS_VARIABLE = "pgbouncer_secrets"
ENVIRONMENT_VARIABLE = "pgbouncer_secrets_from_environment"


class Secrets(dict[str, str]):
    """The variables a configuration may use, and where they were looked for (:meth:`missing`)."""

    def __init__(self, values: Mapping[str, str], *, environment_names: tuple[str, ...] = ()) -> None:
        super().__init__(values)
        self.environment_names = environment_names

    def missing(self, name: str) -> str:
        """The message for a reference to ``name`` that has no value: where the run looked, no value."""
        if name in self.environment_names:
            return (
                f"variable {name} is neither in {SECRETS_VARIABLE} nor set in the controller's environment "
                f"(which {ENVIRONMENT_VARIABLE} allows for it); add it to {SECRETS_VARIABLE} (Vault) or "
                "export it before the run"
            )
        allowed = ", ".join(self.environment_names) if self.environment_names else "no name"
        return (
            f"variable {name} is not in {SECRETS_VARIABLE} (the run's secrets, e.g. from Vault); the "
            f"controller's environment is read only for the names listed in {ENVIRONMENT_VARIABLE} "
            f"({allowed}). Add {name} to {SECRETS_VARIABLE}, or to {ENVIRONMENT_VARIABLE} to take it from "
            "the environment"
        )


def ansible_sources(
    explicit: Mapping[str, object] | None, environment_names: object, environ: Mapping[str, str]
) -> Secrets:
    """What the Ansible filters expand from: ``explicit`` (pgbouncer_secrets) and, from ``environ``, only
    the names in ``environment_names`` (pgbouncer_secrets_from_environment); the explicit mapping wins.

    Raises ConfigError when ``environment_names`` is not a list of variable names or ``explicit`` not a
    mapping (the message names the Ansible variable, never a value).
    """
    problems = Problems()
    names: list[str] = []
    if environment_names is None:
        environment_names = []
    if isinstance(environment_names, str | bytes) or not isinstance(environment_names, list | tuple):
        problems.add(ENVIRONMENT_VARIABLE, "expected a list of variable names, e.g. [DB_PASSWORD]")
    else:
        for i, item in enumerate(environment_names):
            if isinstance(item, str) and re.fullmatch(_NAME, item):
                names.append(item)
            else:
                problems.add(f"{ENVIRONMENT_VARIABLE}[{i}]", f"expected a variable name ({_NAME})")
    if explicit is not None and not isinstance(explicit, Mapping):
        problems.add(SECRETS_VARIABLE, "expected a mapping of variable names to values")
    problems.raise_if_any()
    values = {name: environ[name] for name in names if name in environ}
    for key, value in (explicit or {}).items():
        values[str(key)] = str(value)
    return Secrets(values, environment_names=tuple(names))


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
    if isinstance(env, Secrets):
        problems.add(path, env.missing(name))
    else:  # the CLI: its environment is the source (autopg-pool's way)
        problems.add(path, f"environment variable {name} is not set")
    return ""
