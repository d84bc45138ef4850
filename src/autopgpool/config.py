"""Validate autopgpool.toml into the frozen dataclasses of model.py (reading.py reads the text).

Every problem is collected with the key path it is about and raised once as :class:`ConfigError`. The checks
that decide what can be written into pgbouncer.ini, userlist.txt and pgbouncer_hba.conf live here too, so the
renderer never has to refuse anything.

What can be represented (derived from pgbouncer 1.25.2's parsers, see docs/configuration.md):

* No string anywhere may contain NUL, CR or LF: all three files are line based.
* Pool names are ``[databases]`` keys and hba database names: 1 to 63 bytes (PostgreSQL's name limit), no
  control characters, no single quote (pgbouncer's ini parser quotes keys with ``'...'`` and has no escape
  for ``'``), no leading or trailing whitespace, and not ``pgbouncer`` (the admin console) or ``*`` (the
  fallback database).
* Usernames are userlist.txt fields, hba user names and ``[users]`` keys and may appear in admin_users /
  stats_users, which pgbouncer splits at commas: 1 to 63 bytes, no control characters, no single quote, no
  comma, no leading or trailing whitespace. Double quotes are fine (doubled in userlist and hba).
* Remote connection values are written as pgbouncer connection-string values, quoted with ``'...'`` and ``''``
  for a quote; backslashes are literal there, so any printable text works.
* Remote (backend) passwords are written to userlist.txt in plain text, not into ``[databases]`` (see
  render.py for the pgbouncer bug this works around). userlist.txt holds one password per username, so a
  backend username used by several pools, or also declared in ``[[users]]``, must have one password
  everywhere; and pgbouncer stops reading userlist.txt at a password field of 2048 bytes or more as written
  (each ``"`` doubled). A backend password shaped like an MD5 or SCRAM verifier would be taken for one by
  pgbouncer (``get_password_type``), so it is refused.

What can be used:

* ``$VAR`` is expanded only in users' passwords and the five remote keys (secrets.EXPANDED_KEYS); a value from
  a variable is never put into a message or the summary, only the key and the variable's name.
* Numbers are held to what pgbouncer 1.25.2 stores without wrapping or rounding to 0 (pgbouncer_settings), and
  a refusal says what pgbouncer would have stored.
* ``[pgbouncer].listen_addr`` goes into HAProxy's ``bind <addr>:<port>``: one IP address or ``*``.

What works but may surprise a user of autopg-pool is a warning (Config.warnings), not an error: the ignored
``[pools.<name>.replica]`` table, and a global pool_mode that now reaches pools autopg-pool ran in
transaction mode.
"""

from __future__ import annotations

import contextlib
import difflib
import ipaddress
import json
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import cast

from . import defaults
from .errors import Problem, Problems
from .model import (
    AUTH_TYPES,
    DEPLOYMENT_OWNED,
    LIST_SETTINGS,
    MODELED_KEYS,
    NAME_MAX_BYTES,
    POOL_KEYS,
    REMOTE_KEYS,
    REMOTE_PASSWORD_MAX_BYTES,
    SIZE_MAX,
    TOP_KEYS,
    USER_KEYS,
    AuthType,
    Config,
    Pool,
    PoolMode,
    Remote,
    User,
)
from .pgbouncer_settings import (
    AUTH_TYPES as PGBOUNCER_AUTH_TYPES,
)
from .pgbouncer_settings import (
    MAX_SECONDS,
    POOL_MODES,
    SETTINGS,
    VERSION,
    as_pgbouncer_reads_int,
    as_pgbouncer_reads_seconds,
    int_bounds,
)
from .reading import load_toml
from .secrets import expand, references

# ---------------------------------------------------------------------------------------------------------
# helpers


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def key_path(parent: str, key: str) -> str:
    """Join a TOML key path, quoting keys that are not bare TOML keys: ``pools."my db".remote``."""
    part = key if _BARE_KEY.fullmatch(key) else json.dumps(key, ensure_ascii=False)
    return f"{parent}.{part}" if parent else part


_SHOWN_MAX = 80


def _describe(value: object) -> str:
    """A literal value written in the TOML, for a message (never call this with an expanded value)."""
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, str):
        shown = json.dumps(value, ensure_ascii=False)
        return (
            shown if len(shown) <= _SHOWN_MAX else f'{shown[: _SHOWN_MAX - 4]}..." ({len(value)} characters)'
        )
    if isinstance(value, int | float):
        shown = repr(value)
        return shown if len(shown) <= _SHOWN_MAX else f"a number of {len(shown)} digits"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


_TYPE_NAMES = ((bool, "a boolean"), (str, "a string"), (int, "an integer"), (float, "a float"))


def _type_name(value: object) -> str:
    for cls, name in (*_TYPE_NAMES, (dict, "a table"), (list, "an array")):
        if isinstance(value, cls):
            return name
    return type(value).__name__


def _unknown_keys(
    table: Mapping[str, object], allowed: tuple[str, ...], path: str, problems: Problems
) -> None:
    for key in table:
        if key not in allowed:
            problems.add(key_path(path, key), _unknown_message(key, allowed, problems))


#: How alike a "did you mean" must be (difflib's ratio). At 0.6, statement_timeout (a PostgreSQL setting)
#: drew suspend_timeout, a pgbouncer setting with another meaning; typos score 0.85 and above.
_CLOSE_CUTOFF = 0.75


def _close_match(word: str, candidates: Iterable[str], problems: Problems) -> list[str]:
    """A "did you mean" candidate, only while the message still shows new problems: difflib is quadratic,
    and a machine-written file with 100,000 unknown keys would otherwise take minutes."""
    if not problems.worth_detail():
        return []
    return difflib.get_close_matches(word, sorted(candidates), n=1, cutoff=_CLOSE_CUTOFF)


def _unknown_message(key: str, allowed: tuple[str, ...] | list[str], problems: Problems) -> str:
    close = _close_match(key, allowed, problems)
    return f'unknown key, did you mean "{close[0]}"?' if close else "unknown key"


#: PostgreSQL settings people write under [pgbouncer], and what pgbouncer has instead (if anything).
POSTGRES_SETTINGS = {
    "statement_timeout": "pgbouncer's own query_timeout cancels a query from the pooler's side",
    "lock_timeout": "",
    "idle_in_transaction_session_timeout": "pgbouncer's own is idle_transaction_timeout",
    "idle_session_timeout": "pgbouncer's own are client_idle_timeout and server_idle_timeout",
    "max_connections": "pgbouncer's own are max_client_conn (clients) and max_db_connections (servers)",
    "superuser_reserved_connections": "",
    "work_mem": "",
    "maintenance_work_mem": "",
    "shared_buffers": "",
    "search_path": "",
    "timezone": "",
    "application_name": "",
    "ssl": "pgbouncer's own are client_tls_sslmode and server_tls_sslmode",
    "password_encryption": "the hash is chosen per user with auth_type here",
    "log_min_duration_statement": "",
    "tcp_keepalives_idle": "pgbouncer's own is tcp_keepidle",
}


def _unknown_setting_message(key: str, allowed: list[str], problems: Problems) -> str:
    if key in POSTGRES_SETTINGS:
        instead = POSTGRES_SETTINGS[key]
        return (
            f"unknown pgbouncer setting: {key} is a PostgreSQL setting, which pgbouncer does not have; "
            f"set it on the server or per role (ALTER ROLE ... SET {key} = ...)"
            + (f"; {instead}" if instead else "")
        )
    return _unknown_message(key, allowed, problems).replace("unknown key", "unknown pgbouncer setting")


def _has_control(text: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in text)


#: Characters a name may not hold because they make it look like another one in pgbouncer_hba.conf, logs
#: and SHOW output: format characters (bidi overrides U+202A-202E and isolates U+2066-2069, zero-width
#: U+200B-200D, U+2060, U+FEFF), line/paragraph separators, private-use, unassigned and surrogate code points,
#: and every space but the ASCII one (U+00A0 looks exactly like it).
_INVISIBLE_CATEGORIES = ("Cf", "Zl", "Zp", "Co", "Cn", "Cs")


def _invisible(text: str) -> str | None:
    """The first character of ``text`` that is invisible or changes direction, as U+XXXX (no value)."""
    for ch in text:
        category = unicodedata.category(ch)
        if category in _INVISIBLE_CATEGORIES or (category == "Zs" and ch != " "):
            return f"U+{ord(ch):04X}"
    return None


def _look_alike_reason(what: str, name: str) -> str | None:
    code = _invisible(name)
    if code is None:
        return None
    return (
        f"{what} contains {code}, an invisible, spacing or direction-changing character: it would land "
        "in pgbouncer_hba.conf and in logs looking like another name; write the name with visible "
        "characters only"
    )


def _check_distinct(names: Iterable[tuple[str, str]], what: str, problems: Problems) -> None:
    """Refuse names equal after Unicode NFC (one name written composed, one decomposed: pgbouncer sees two
    names, a person one); warn for names equal after NFKC and case folding ("App" and "app", a full-width
    letter and its ASCII one)."""
    by_nfc: dict[str, str] = {}
    by_fold: dict[str, str] = {}
    for name, path in names:
        nfc = unicodedata.normalize("NFC", name)
        folded = unicodedata.normalize("NFKC", nfc).casefold()
        if nfc in by_nfc:
            problems.add(
                path,
                f"{what} is the same as the one at {by_nfc[nfc]} after Unicode normalisation (NFC): "
                "pgbouncer would take them for two names that look identical; write each name once, in one "
                "form",
            )
            continue
        by_nfc[nfc] = path
        if folded in by_fold:
            problems.warn(
                path,
                f"{what} differs from the one at {by_fold[folded]} only in case or character width: "
                "pgbouncer treats them as two names, a person reading the hba file or logs may not",
            )
        else:
            by_fold[folded] = path


class _Reader:
    """Typed access to the raw TOML, reporting every problem with its path."""

    def __init__(self, env: Mapping[str, str], problems: Problems) -> None:
        self.env = env
        self.problems = problems

    def table(self, value: object, path: str) -> dict[str, object] | None:
        if isinstance(value, dict):
            return cast(dict[str, object], value)
        self.problems.add(path, f"expected a table, got {_type_name(value)}")
        return None

    def string(
        self,
        value: object,
        path: str,
        *,
        secret: bool = False,
        allow_empty: bool = False,
        expand_vars: bool = False,
    ) -> str | None:
        """A string; ``expand_vars`` only for the keys listed in secrets.EXPANDED_KEYS."""
        if not isinstance(value, str):
            self.problems.add(path, f"expected a string, got {_type_name(value)}")
            return None
        before = len(self.problems)
        text = expand(value, path, self.env, self.problems, allowed=expand_vars)
        if len(self.problems) > before:  # a missing variable or stray "$": already reported
            return None
        if "\0" in text or "\n" in text or "\r" in text:
            what = "the value" if secret else "value"
            self.problems.add(
                path, f"{what} contains a NUL, CR or LF character, which cannot be written safely"
            )
            return None
        if not text and not allow_empty:
            self.problems.add(path, "must not be empty")
            return None
        return text

    def integer(
        self, value: object, path: str, low: int, high: int, *, expand_vars: bool = False, why: str = ""
    ) -> int | None:
        """An integer in [low, high]; a string of digits is accepted, as autopg-pool accepts "5433"."""
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        shown = _describe(value)
        if isinstance(value, str):
            before = len(self.problems)
            text = expand(value, path, self.env, self.problems, allowed=expand_vars)
            if len(self.problems) > before:
                return None
            if re.fullmatch(r"[0-9]{1,30}", text.strip()):
                number = int(text.strip())
            if references(value):  # from the environment: never echo it, it may be a secret
                shown = f"the value of {_describe(value)}"
        if number is None or not low <= number <= high:
            self.problems.add(path, f"expected an integer from {low} to {high}, got {shown}{why}")
            return None
        return number

    def choice(self, value: object, path: str, choices: tuple[str, ...], hint: str = "") -> str | None:
        text = self.string(value, path)
        if text is None:
            return None
        if text not in choices:
            options = ", ".join(choices)
            self.problems.add(path, f"expected one of {options}; got {_describe(value)}{hint}")
            return None
        return text

    def string_list(self, value: object, path: str) -> list[tuple[str, str]]:
        """Items of an array of strings with their paths (invalid items reported and skipped)."""
        if not isinstance(value, list):
            self.problems.add(path, f"expected an array of strings, got {_type_name(value)}")
            return []
        out = []
        for i, item in enumerate(value):
            item_path = f"{path}[{i}]"
            text = self.string(item, item_path)
            if text is not None:
                out.append((text, item_path))
        return out


#: Per-pool and per-user numbers that pgbouncer 1.25.2 does not read as 0 (src/server.c, src/objects.c): 0 is
#: refused with what pgbouncer would do instead. min_pool_size and reserve_pool_size 0 mean "none" and pass.
ZERO_IS_NO_LIMIT = {
    "pool_size": (
        "expected at least 1, got 0: pgbouncer caps a pool only when its size is above 0, so pool_size = 0 "
        "means no limit (a server connection for every waiting client, which no connection budget can "
        "count); write the most server connections this pool may open"
    ),
    "max_db_connections": (
        "expected at least 1, got 0: pgbouncer reads 0 here as no cap of the pool's own and applies "
        "[pgbouncer].max_db_connections (where 0 means no limit); leave the key out for that, or write "
        "the cap"
    ),
    "max_user_connections": (
        "expected at least 1, got 0: pgbouncer reads 0 here as no cap of the user's own and applies "
        "[pgbouncer].max_user_connections (where 0 means no limit); leave the key out for that, or write "
        "the cap"
    ),
}


def _check_pool_name(name: str, path: str, problems: Problems) -> bool:
    reason = None
    if not name:
        reason = "pool name must not be empty"
    elif len(name.encode()) > NAME_MAX_BYTES:
        reason = f"pool name is longer than {NAME_MAX_BYTES} bytes"
    elif _has_control(name):
        reason = "pool name contains a control character"
    elif "$" in name:
        reason = (
            'pool name contains "$": variables are not expanded in names (a pool would be named "${...}" '
            "literally); write the database name clients use"
        )
    elif "'" in name:
        reason = "pool name contains a single quote, which pgbouncer.ini cannot represent in a database name"
    elif name != name.strip():
        reason = "pool name has leading or trailing whitespace"
    elif _look_alike_reason("pool name", name):
        reason = _look_alike_reason("pool name", name)
    elif name == "pgbouncer":
        reason = 'pool name "pgbouncer" is reserved for pgbouncer\'s admin console'
    elif name == "*":
        reason = 'pool name "*" would be pgbouncer\'s fallback database; name pools explicitly'
    if reason:
        problems.add(path, reason)
        return False
    return True


def _check_username(name: str, path: str, problems: Problems) -> bool:
    reason = None
    if len(name.encode()) > NAME_MAX_BYTES:
        reason = f"username is longer than {NAME_MAX_BYTES} bytes"
    elif _has_control(name):
        reason = "username contains a control character"
    elif _look_alike_reason("username", name):
        reason = _look_alike_reason("username", name)
    elif "'" in name:
        reason = "username contains a single quote, which pgbouncer.ini cannot represent in a [users] key"
    elif "," in name:
        reason = "username contains a comma, which pgbouncer's admin_users/stats_users lists cannot represent"
    elif name != name.strip():
        reason = "username has leading or trailing whitespace"
    if reason:
        problems.add(path, reason)
        return False
    return True


def _check_listen_addr(addr: str, path: str, problems: Problems) -> bool:
    """HAProxy writes ``bind <listen_addr>:<listen_port>``: one IP address or ``*``, nothing else."""
    reason = None
    if addr == "*":
        return True
    if any(ch.isspace() for ch in addr) or "," in addr:
        reason = (
            "must be one address: HAProxy binds it as <listen_addr>:<listen_port>, and spaces or commas "
            "would turn the rest into other bind options or addresses"
        )
    else:
        host, sep, port = addr.rpartition(":")
        if _is_ip(addr):
            if "%" not in addr:
                return True
            reason = "an IPv6 zone (%...) is not supported here; write the address without it"
        elif sep and port.isdigit() and _is_ip(host.removeprefix("[").removesuffix("]")):
            reason = "holds a port; write only the address here and the port as [pgbouncer].listen_port"
        else:
            reason = (
                'expected an IPv4 or IPv6 address, or "*" for all addresses; HAProxy would resolve a '
                "host name only once, at start"
            )
    problems.add(path, reason)
    return False


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _auth_hint(value: object) -> str:
    """Why autopg-pool's other auth_type values are not accepted, and what to write instead."""
    if value == "plain":
        return (
            ': autopg-pool\'s "plain" wrote the password in clear to userlist.txt and let clients log in '
            'with md5; write "md5" for the same logins (userlist.txt then holds an MD5 verifier) or '
            '"scram-sha-256"'
        )
    if isinstance(value, str) and value in PGBOUNCER_AUTH_TYPES:
        return (
            ": pgbouncer always runs with auth_type = hba here, and each user logs in with md5 or "
            "scram-sha-256 as pgbouncer_hba.conf says"
        )
    return ""


# ---------------------------------------------------------------------------------------------------------
# sections


def _parse_remote(r: _Reader, raw: object, path: str) -> Remote | None:
    table = r.table(raw, path)
    if table is None:
        return None
    _unknown_keys(table, REMOTE_KEYS, path, r.problems)
    values: dict[str, object] = {}
    as_written: list[tuple[str, str]] = []
    for key in REMOTE_KEYS:
        if key not in table:
            r.problems.add(key_path(path, key), "required key is missing")
            continue
        sub = key_path(path, key)
        raw = table[key]
        if isinstance(raw, str) and references(raw):
            as_written.append((key, raw))
        if key == "port":
            values[key] = r.integer(table[key], sub, 1, 65535, expand_vars=True)
        elif key == "password":
            password = r.string(table[key], sub, secret=True, expand_vars=True)
            if password is not None and _looks_like_verifier(password):
                r.problems.add(sub, _VERIFIER_MESSAGE)
                password = None
            # pgbouncer measures the quoted field of userlist.txt, and a longer one makes it stop reading
            # the file: every user after it would be unknown.
            written = len(password.replace('"', '""').encode()) if password is not None else 0
            if written > REMOTE_PASSWORD_MAX_BYTES:
                r.problems.add(
                    sub,
                    f"password is longer than {REMOTE_PASSWORD_MAX_BYTES} bytes as written to userlist.txt "
                    '(each " counts twice)',
                )
                password = None
            values[key] = password
        else:
            text = r.string(table[key], sub, expand_vars=True)
            if text is not None and _has_control(text):
                r.problems.add(sub, "contains a control character")
                text = None
            if text is not None and text != text.strip():
                r.problems.add(
                    sub,
                    "has leading or trailing whitespace, which pgbouncer would pass on as part of the "
                    f"{'host name' if key == 'host' else key} (a lookup or login that fails at connect time)",
                )
                text = None
            if text is not None and key == "host" and (reason := _host_problem(text)):
                r.problems.add(sub, reason)
                text = None
            if text is not None and key in ("database", "username") and len(text.encode()) > NAME_MAX_BYTES:
                r.problems.add(sub, f"longer than {NAME_MAX_BYTES} bytes")
                text = None
            values[key] = text
    if any(values.get(k) is None for k in REMOTE_KEYS):
        return None
    return Remote(
        host=cast(str, values["host"]),
        port=cast(int, values["port"]),
        database=cast(str, values["database"]),
        username=cast(str, values["username"]),
        password=cast(str, values["password"]),
        written=tuple(as_written),
    )


_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def _host_problem(host: str) -> str | None:
    """Why pgbouncer could not connect to ``host`` (a message without the value: it may be a secret).

    pgbouncer 1.25.2 takes a unix socket directory (``/...``), an IP address or a DNS name, and a comma list
    of those; anything else fails only at connect time, as "DNS lookup failed", with clients waiting.
    """
    for part in host.split(","):
        if part.startswith("/"):
            continue
        if part.startswith("[") or part.endswith("]"):
            return (
                "an IPv6 address in brackets: pgbouncer takes the address itself (::1, not [::1]) and would "
                'try to look the bracketed text up as a host name ("DNS lookup failed")'
            )
        if _is_ip(part) and "%" not in part:
            continue
        labels = part.removesuffix(".").split(".")
        if part and len(part) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels):
            continue
        if not part.isascii():
            return (
                "expected a host name of ASCII letters, digits, '-' and '.' (an internationalised name in "
                'its "xn--" form), an IP address or a unix socket directory (/...)'
            )
        return (
            "expected a host name (letters, digits, '-', '.'; labels of at most 63 characters), an IP "
            'address or a unix socket directory starting with "/"; pgbouncer would fail at connect time '
            'with "DNS lookup failed"'
        )
    return None


_MD5_VERIFIER = re.compile(r"md5[0-9a-f]{32}")
_B64 = r"[A-Za-z0-9+/]+={0,2}"
_SCRAM_VERIFIER = re.compile(rf"SCRAM-SHA-256\$[0-9]+:{_B64}\${_B64}:{_B64}")
_VERIFIER_MESSAGE = (
    "the password has the shape of a stored verifier (md5 followed by 32 hex digits, or "
    "SCRAM-SHA-256$<iterations>:<salt>$<key>:<key>); pgbouncer would take it for one and could not log in "
    'to PostgreSQL with it ("wrong password type"). A backend password must be the password itself'
)


def _looks_like_verifier(password: str) -> bool:
    """What pgbouncer's get_password_type() would not treat as plain text (src/scram.c)."""
    return bool(_MD5_VERIFIER.fullmatch(password) or _SCRAM_VERIFIER.fullmatch(password))


def _parse_pool(r: _Reader, name: str, raw: object, path: str) -> Pool | None:
    name_ok = _check_pool_name(name, path, r.problems)
    table = r.table(raw, path)
    if table is None:
        return None
    if "replica" in table:
        # Not read at all (no variables expanded, nothing checked): autopg-pool never used it either.
        r.problems.warn(
            key_path(path, "replica"),
            "ignored: autopg-pool documented [pools.<name>.replica] but it never had any effect; declare "
            "the replica as a pool of its own to use it, and remove this table to silence this warning",
        )
    _unknown_keys({k: v for k, v in table.items() if k != "replica"}, POOL_KEYS, path, r.problems)
    remote = None
    if "remote" not in table:
        r.problems.add(key_path(path, "remote"), "required table is missing")
    else:
        remote = _parse_remote(r, table["remote"], key_path(path, "remote"))
    mode = None
    if "pool_mode" in table:
        mode = r.choice(table["pool_mode"], key_path(path, "pool_mode"), POOL_MODES)
    sizes: dict[str, int | None] = {}
    for key in ("pool_size", "min_pool_size", "reserve_pool_size", "max_db_connections"):
        if key in table:
            sizes[key] = r.integer(table[key], key_path(path, key), 0, SIZE_MAX)
            if sizes[key] == 0 and key in ZERO_IS_NO_LIMIT:
                r.problems.add(key_path(path, key), ZERO_IS_NO_LIMIT[key])
                sizes[key] = None
    if remote is None or not name_ok:
        return None
    return Pool(name=name, remote=remote, pool_mode=cast(PoolMode | None, mode), **sizes)


def _parse_user(r: _Reader, raw: object, path: str, pool_names: set[str]) -> User | None:
    table = r.table(raw, path)
    if table is None:
        return None
    _unknown_keys(table, USER_KEYS, path, r.problems)
    username = password = None
    for key in ("username", "password", "grants"):
        if key not in table:
            r.problems.add(key_path(path, key), "required key is missing")
    if "username" in table:
        username = r.string(table["username"], key_path(path, "username"))
        if username is not None and not _check_username(username, key_path(path, "username"), r.problems):
            username = None
    if "password" in table:
        password = r.string(table["password"], key_path(path, "password"), secret=True, expand_vars=True)
    grants: list[str] = []
    if "grants" in table:
        seen: set[str] = set()
        for grant, grant_path in r.string_list(table["grants"], key_path(path, "grants")):
            if grant in seen:
                r.problems.add(grant_path, f"pool {_describe(grant)} is granted twice")
            elif grant not in pool_names:
                close = _close_match(grant, pool_names, r.problems)
                hint = f', did you mean "{close[0]}"?' if close else ""
                r.problems.add(grant_path, f"grant to unknown pool {_describe(grant)}{hint}")
            else:
                seen.add(grant)
                grants.append(grant)
    auth = mode = max_conn = None
    if "auth_type" in table:
        auth = r.choice(
            table["auth_type"], key_path(path, "auth_type"), AUTH_TYPES, _auth_hint(table["auth_type"])
        )
    if "pool_mode" in table:
        mode = r.choice(table["pool_mode"], key_path(path, "pool_mode"), POOL_MODES)
    if "max_user_connections" in table:
        max_conn = r.integer(
            table["max_user_connections"], key_path(path, "max_user_connections"), 0, SIZE_MAX
        )
        if max_conn == 0:
            r.problems.add(key_path(path, "max_user_connections"), ZERO_IS_NO_LIMIT["max_user_connections"])
            max_conn = None
    if username is None or password is None:
        return None
    return User(
        username=username,
        password=password,
        grants=tuple(sorted(grants)),
        auth_type=cast(AuthType | None, auth),
        pool_mode=cast(PoolMode | None, mode),
        max_user_connections=max_conn,
    )


def _startup_parameters(r: _Reader, name: str, items: list[str], path: str) -> str | None:
    """A list setting as pgbouncer's list syntax; ignore_startup_parameters never as one name.

    pgbouncer up to 1.26.0 loops forever, unauthenticated, on a startup packet whose ``options`` is ``-c=``
    when ignore_startup_parameters holds one name (or names joined by bare commas): its list search for the
    empty name ends only at a ", " or a trailing comma (CVE-2026-107349; tests/integration/
    test_startup_options_cve.py). Names are re-joined with ", "; a single name is refused.
    """
    if name == "ignore_startup_parameters" and len(items) == 1:
        r.problems.add(
            path,
            "a single name makes pgbouncer 1.25.2 loop forever on a client's startup option -c= "
            "(CVE-2026-107349, before any login); list two or more names, e.g. the default "
            '["extra_float_digits", "options"], or none ([])',
        )
        return None
    return ", ".join(items)


def _setting_value(r: _Reader, name: str, raw: object, path: str) -> str | None:
    """Render one pgbouncer setting as the text written after ``name =``, checking it against its kind."""
    kind = SETTINGS[name].kind
    if name in LIST_SETTINGS and isinstance(raw, list):
        items = [text for text, _ in r.string_list(raw, path)]
        if len(items) != len(raw):
            return None
        bad = [i for i in items if "," in i or i != i.strip() or not i]
        if bad:
            r.problems.add(
                path, f"list items must be non-empty names without commas, got {_describe(bad[0])}"
            )
            return None
        return _startup_parameters(r, name, items, path)
    if name == "ignore_startup_parameters" and isinstance(raw, str):
        written = r.string(raw, path, allow_empty=True)
        text = None if written is None else _free_text(r, written, path)
        if text is None:
            return None
        return _startup_parameters(r, name, [n for n in (p.strip() for p in text.split(",")) if n], path)
    if isinstance(kind, tuple):
        return r.choice(raw, path, kind)
    if kind == "int":
        return _int_setting(r, name, raw, path)
    if kind == "seconds":
        return _seconds_setting(r, raw, path)
    # free text
    if isinstance(raw, bool):
        return "1" if raw else "0"
    if isinstance(raw, int | float):
        return str(raw)
    free = r.string(raw, path, allow_empty=True)
    if free is None:
        return None
    return _free_text(r, free, path)


def _int_setting(r: _Reader, name: str, raw: object, path: str) -> str | None:
    """An integer setting, within what pgbouncer stores without wrapping (see pgbouncer_settings)."""
    low, high, low_why, high_why = int_bounds(name)
    if isinstance(raw, bool):
        raw = int(raw)
    number: int | None = None
    if isinstance(raw, int):
        number = raw
    elif isinstance(raw, str):
        text = r.string(raw, path)
        if text is None:
            return None
        if re.fullmatch(r"[+-]?[0-9]{1,30}", text.strip()):
            number = int(text.strip())
    if number is None:
        r.problems.add(path, f"expected an integer from {low} to {high}, got {_describe(raw)}")
        return None
    if not low <= number <= high:
        stored = as_pgbouncer_reads_int(name, number)
        if number > high:
            what = high_why or f"pgbouncer {VERSION} would have stored it as {stored}"
        else:
            what = low_why or f"pgbouncer {VERSION} does not check the sign and would have used {stored}"
        r.problems.add(path, f"expected an integer from {low} to {high}, got {number}: {what}")
        return None
    return str(number)


def _seconds_setting(r: _Reader, raw: object, path: str) -> str | None:
    """A time setting: pgbouncer keeps whole microseconds in 64 bits (see pgbouncer_settings)."""
    value: object = raw
    if isinstance(raw, str):
        text = r.string(raw, path)
        if text is None:
            return None
        value = text.strip()
        if re.fullmatch(r"[+-]?[0-9]{1,30}", text.strip()):
            value = int(text.strip())
        elif re.fullmatch(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]{1,3})?", text.strip()):
            with contextlib.suppress(ValueError):
                value = float(text.strip())
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value) or value < 0:
        r.problems.add(path, f"expected a number of seconds (0 or more), got {_describe(raw)}")
        return None
    if value > MAX_SECONDS:
        r.problems.add(
            path,
            f"expected at most {MAX_SECONDS} seconds, got {_describe(raw)}: pgbouncer {VERSION} keeps times "
            "in microseconds in a 64-bit integer, and a larger value would overflow it",
        )
        return None
    if value > 0 and as_pgbouncer_reads_seconds(value) == 0:
        r.problems.add(
            path,
            f"got {_describe(raw)} seconds: pgbouncer {VERSION} keeps whole microseconds and would read this "
            "as 0, which for a timeout means disabled; write 0 or at least 0.000001",
        )
        return None
    # repr: the shortest text that reads back as the same number (format "g" would round to 6 digits)
    return str(value) if isinstance(value, int) else repr(value)


def _free_text(r: _Reader, text: str, path: str) -> str | None:
    if text != text.strip():
        r.problems.add(path, "value has leading or trailing whitespace, which pgbouncer would drop")
        return None
    if _has_control(text):
        r.problems.add(path, "value contains a control character")
        return None
    return text


def _parse_pgbouncer(
    r: _Reader, raw: object, declared_users: set[str]
) -> tuple[str, int, AuthType, tuple[str, ...], tuple[str, ...], dict[str, str]]:
    settings: dict[str, str] = {k: str(d.value) for k, d in defaults.SETTINGS.items()}
    listen_addr, listen_port = defaults.CLIENT_LISTEN_ADDR, defaults.CLIENT_LISTEN_PORT
    auth: AuthType = cast(AuthType, defaults.AUTH_TYPE)
    admins: list[str] = []
    stats: list[str] = []
    table = {} if raw is None else r.table(raw, "pgbouncer")
    if table is None:
        return listen_addr, listen_port, auth, (), (), settings

    entries: list[tuple[str, object, str, bool]] = []  # (name, value, path, from passthrough)
    for key, value in table.items():
        path = key_path("pgbouncer", key)
        if key == "passthrough_kwargs":
            extra = r.table(value, path)
            for pkey, pvalue in (extra or {}).items():
                entries.append((pkey, pvalue, key_path(path, pkey), True))
        else:
            entries.append((key, value, path, False))

    seen: dict[str, str] = {}
    allowed_direct = sorted(set(MODELED_KEYS) | set(SETTINGS))
    for key, value, path, passthrough in entries:
        if key in seen:
            r.problems.add(path, f"{key} is already set at {seen[key]}")
            continue
        seen[key] = path
        if key in ("listen_addr", "listen_port", "auth_type", "admin_users", "stats_users") and passthrough:
            r.problems.add(path, f"write this as [pgbouncer].{key}, which autopgpool interprets")
        elif key == "listen_addr":
            addr = r.string(value, path)
            if addr is not None and _check_listen_addr(addr, path, r.problems):
                listen_addr = addr
        elif key == "listen_port":
            port = r.integer(value, path, 1, 65535)
            if port is not None:
                listen_port = port
        elif key == "auth_type":
            choice = r.choice(value, path, AUTH_TYPES, _auth_hint(value))
            if choice is not None:
                auth = cast(AuthType, choice)
        elif key in ("admin_users", "stats_users"):
            names = admins if key == "admin_users" else stats
            for name, item_path in r.string_list(value, path):
                if name not in declared_users:
                    r.problems.add(item_path, f"user {_describe(name)} is not declared in [[users]]")
                elif name not in names:
                    names.append(name)
        elif key in DEPLOYMENT_OWNED:
            r.problems.add(path, f"{key} cannot be set in autopgpool.toml: {DEPLOYMENT_OWNED[key]}")
        elif key not in SETTINGS:
            pool = allowed_direct if not passthrough else sorted(SETTINGS)
            r.problems.add(path, _unknown_setting_message(key, pool, r.problems))
        else:
            text = _setting_value(r, key, value, path)
            if text is not None:
                settings[key] = text
    return listen_addr, listen_port, auth, tuple(sorted(admins)), tuple(sorted(stats)), settings


# ---------------------------------------------------------------------------------------------------------
# entry point


def parse_config(toml_text: str, env: Mapping[str, str]) -> Config:
    """Parse, expand secrets and validate; raise ConfigError listing every problem found."""
    problems = Problems()
    data = load_toml(toml_text)
    r = _Reader(env, problems)
    _unknown_keys(data, TOP_KEYS, "", problems)

    pools: dict[str, Pool] = {}
    pool_names: set[str] = set()
    raw_pools = data.get("pools")
    if raw_pools is None:
        problems.add("pools", "required table is missing: declare at least one [pools.<name>]")
    else:
        pools_table = r.table(raw_pools, "pools")
        if pools_table is not None and not pools_table:
            problems.add("pools", "declare at least one [pools.<name>]")
        _check_distinct(
            ((name, key_path("pools", name)) for name in (pools_table or {})), "pool name", problems
        )
        for name, raw in (pools_table or {}).items():
            pool_names.add(name)
            pool = _parse_pool(r, name, raw, key_path("pools", name))
            if pool is not None:
                pools[name] = pool

    users: dict[str, User] = {}
    first_seen: dict[str, str] = {}
    raw_users = data.get("users")
    if raw_users is None:
        problems.add("users", "required array is missing: declare at least one [[users]]")
    elif not isinstance(raw_users, list):
        problems.add("users", f"expected an array of tables ([[users]]), got {_type_name(raw_users)}")
    else:
        if not raw_users:
            problems.add("users", "declare at least one [[users]]")
        for i, raw in enumerate(raw_users):
            path = f"users[{i}]"
            user = _parse_user(r, raw, path, pool_names)
            if user is None:
                continue
            if user.username in first_seen:
                problems.add(
                    f"{path}.username",
                    f"duplicate username {_describe(user.username)}, first declared at "
                    f"{first_seen[user.username]}",
                )
                continue
            first_seen[user.username] = f"{path}.username"
            users[user.username] = user

    _check_distinct(first_seen.items(), "username", problems)
    _check_backend_users(pools, users, first_seen, problems)

    declared = set(first_seen)
    # Users that failed other checks still count as declared, so one mistake is reported once.
    if isinstance(raw_users, list):
        for raw in raw_users:
            if isinstance(raw, dict) and isinstance(raw.get("username"), str):
                declared.add(raw["username"])
    listen_addr, listen_port, auth, admins, stats, settings = _parse_pgbouncer(
        r, data.get("pgbouncer"), declared
    )

    for pool in pools.values():
        size = (
            pool.pool_size if pool.pool_size is not None else _int_or_none(settings.get("default_pool_size"))
        )
        if pool.min_pool_size is not None and size is not None and pool.min_pool_size > size:
            problems.add(
                key_path(key_path("pools", pool.name), "min_pool_size"),
                f"min_pool_size {pool.min_pool_size} is larger than the pool size {size}",
            )

    _warn_pool_mode(data.get("pgbouncer"), pools, settings, problems)
    _warn_console_and_auth_query(data.get("pgbouncer"), users, admins, settings, problems)
    problems.raise_if_any()
    return Config(
        users=tuple(users[k] for k in sorted(users)),
        pools=tuple(pools[k] for k in sorted(pools)),
        listen_addr=listen_addr,
        listen_port=listen_port,
        auth_type=auth,
        admin_users=admins,
        stats_users=stats,
        settings=dict(sorted(settings.items())),
        warnings=tuple(problems.warnings),
    )


def _warn_pool_mode(
    raw: object, pools: Mapping[str, Pool], settings: Mapping[str, str], problems: Problems
) -> None:
    """autopg-pool wrote pool_mode=transaction on every [databases] line, so its [pgbouncer].pool_mode never
    reached a pool. Here it is the default of every pool without a pool_mode of its own: say so when that
    changes what a migrated file does."""
    mode = settings.get("pool_mode")
    if not isinstance(raw, dict) or mode == "transaction":
        return
    path = "pgbouncer.pool_mode"
    if "pool_mode" not in raw:
        extra = raw.get("passthrough_kwargs")
        if not isinstance(extra, dict) or "pool_mode" not in extra:
            return
        path = "pgbouncer.passthrough_kwargs.pool_mode"
    affected = sorted(p.name for p in pools.values() if p.pool_mode is None)
    if affected:
        names = ", ".join(key_path("", n) for n in affected[:10]) + (" ..." if len(affected) > 10 else "")
        problems.warn(
            path,
            f"{mode} applies to the pools without a pool_mode of their own ({names}); autopg-pool ran them "
            "in transaction mode whatever this said, because it wrote pool_mode=transaction on every "
            'database line. Set pool_mode = "transaction" in those pools to keep that behaviour',
        )


#: Settings that only matter for users pgbouncer_hba.conf lets in without a userlist.txt line: there are none.
AUTH_QUERY_SETTINGS = ("auth_user", "auth_query", "auth_dbname")


def _warn_console_and_auth_query(
    raw: object,
    users: Mapping[str, User],
    admins: Iterable[str],
    settings: Mapping[str, str],
    problems: Problems,
) -> None:
    """What works but is not what the writer meant: an application login that can also stop the pooler,
    and auth_query settings the rendered hba file makes unreachable."""
    table = raw if isinstance(raw, dict) else {}
    admin_list = table.get("admin_users")
    for i, item in enumerate(admin_list if isinstance(admin_list, list) else []):
        user = users.get(item) if isinstance(item, str) else None
        if user is not None and user.grants and item in admins:
            problems.warn(
                f"pgbouncer.admin_users[{i}]",
                f"{_describe(item)} is also an application user (it has grants): whoever holds that "
                "application's password can PAUSE, SHUTDOWN or RECONFIGURE every instance; give the console "
                "a user of its own with grants = []",
            )
    for key in AUTH_QUERY_SETTINGS:
        if key in settings and settings[key] != "":
            where = "pgbouncer." + (key if key in table else f"passthrough_kwargs.{key}")
            problems.warn(
                where,
                "never takes effect: pgbouncer runs with auth_type = hba, pgbouncer_hba.conf admits only "
                "the [[users]] users, every one of which has its line in userlist.txt, and its final reject "
                "rules refuse everyone else before auth_query would be asked; declare the users in [[users]] "
                "(or remove this setting)",
            )


def exposure_warnings(config: Config, client_tls_sslmode: str) -> list[Problem]:
    """Warnings that need the deployment's client TLS mode (tls.plan_settings): md5 logins in clear text on
    every address. Like all warnings they name keys, never values."""
    out: list[Problem] = []
    everywhere = config.listen_addr in ("*", "0.0.0.0", "::")  # noqa: S104 (a check, not a bind)
    md5_users = [u.username for u in config.users if config.user_auth_type(u) == "md5"]
    if everywhere and md5_users and client_tls_sslmode == "disable":
        names = ", ".join(_describe(n) for n in md5_users[:5]) + (" ..." if len(md5_users) > 5 else "")
        out.append(
            Problem(
                "pgbouncer.listen_addr",
                f"{_describe(config.listen_addr)} listens on every address with client TLS off, and users "
                f"{names} log in with md5: anyone on the path can record the challenge and response and "
                "replay or crack it offline. Turn client TLS on (client_tls_sslmode = require; in Ansible "
                "pgbouncer_client_tls_sslmode), use scram-sha-256, or listen on one internal address",
            )
        )
    return out


def _check_backend_users(
    pools: Mapping[str, Pool], users: Mapping[str, User], user_paths: Mapping[str, str], problems: Problems
) -> None:
    """userlist.txt keeps one password per name: every use of a backend username must agree on it.

    Only the key paths are named, never the values: they are secrets.
    """
    first_pool: dict[str, str] = {}  # backend username -> path of the first pool's remote table
    passwords: dict[str, str] = {}
    for pool in pools.values():
        remote = pool.remote
        path = key_path(key_path("pools", pool.name), "remote")
        name = remote.username
        shown = _describe(remote.shown("username"))
        if name in first_pool:
            if passwords[name] != remote.password:
                first_password = key_path(first_pool[name], "password")
                problems.add(
                    key_path(path, "password"),
                    f"backend user {shown} is also used by {first_pool[name]} with a different "
                    f"password; pgbouncer keeps one password per user in userlist.txt, so "
                    f"{first_password} and {key_path(path, 'password')} must be equal",
                )
            continue
        first_pool[name] = path
        passwords[name] = remote.password
        user = users.get(name)
        if user is not None and user.password != remote.password:
            user_path = user_paths[name].removesuffix(".username")
            problems.add(
                key_path(path, "password"),
                f"backend user {shown} is also declared as a client at {user_paths[name]} with a "
                f"different password; pgbouncer keeps one password per user in userlist.txt, so "
                f"{user_path}.password and {key_path(path, 'password')} must be equal",
            )


def _int_or_none(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None
