"""Inputs no one here wrote (issue 24's review): each is refused, or warned about, with a reason a user can
act on, naming the key and never the value."""

from __future__ import annotations

import unicodedata

import pytest

from autopgpool import ConfigError, summarize, validate
from autopgpool.config import parse_config

USER = '[[users]]\nusername = "u"\npassword = "pw"\ngrants = ["main"]\n'
POOL = '[pools.main.remote]\nhost = "h"\nport = 5432\ndatabase = "d"\nusername = "r"\npassword = "rpw"\n'
BASE = USER + POOL


def problems(toml: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as err:
        validate(toml, env or {})
    return [str(p) for p in err.value.problems]


def warnings(toml: str, tls: dict[str, str] | None = None) -> list[str]:
    return [str(w) for w in summarize(toml, {}, tls=tls)["warnings"]]


# --- remote hosts pgbouncer could only fail to look up ------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("[::1]", "(::1, not [::1])"),
        ("[2001:db8::5]", "IPv6 address in brackets"),
        ("db host", '"DNS lookup failed"'),
        ("db..internal", '"DNS lookup failed"'),
        ("-db.internal", '"DNS lookup failed"'),
        ("db.internal:5432", '"DNS lookup failed"'),
        ("a" * 64 + ".internal", "labels of at most 63 characters"),
        ("dätenbank.internal", '"xn--" form'),
        ("fe80::1%eth0", '"DNS lookup failed"'),
    ],
)
def test_a_remote_host_pgbouncer_cannot_resolve_is_refused_without_showing_it(host: str, why: str) -> None:
    # Written directly and through a variable: the message is the same and never holds the host.
    toml = POOL.replace('host = "h"', 'host = "$DB_HOST"')
    (message,) = problems(USER + toml, {"DB_HOST": host})
    assert message.startswith("pools.main.remote.host: ")
    assert why in message
    assert host not in message.replace("(::1, not [::1])", "")


@pytest.mark.parametrize(
    "host",
    ["db1", "db-1.internal.example.", "10.0.0.5", "::1", "2001:db8::5", "/var/run/postgresql", "pg_a,pg_b"],
)
def test_names_addresses_sockets_and_host_lists_pass(host: str) -> None:
    validate(BASE.replace('host = "h"', f'host = "{host}"'), {})


# --- names --------------------------------------------------------------------------------------------------


def test_a_pool_named_like_a_variable_is_refused_not_created_literally() -> None:
    toml = USER.replace('["main"]', '["${APP_DB}"]') + POOL.replace("[pools.main.", '[pools."${APP_DB}".')
    pool_problem, grant_problem = problems(toml, {"APP_DB": "app"})
    assert pool_problem.startswith('pools."${APP_DB}": pool name contains "$": variables are not expanded in')
    assert grant_problem.startswith("users[0].grants[0]: refers to the variable APP_DB")


LOOK_ALIKES = ["\u202e", "\u202a", "\u2066", "\u2069", "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff",
               "\u00a0", "\u2028", "\ue000"]  # fmt: skip


@pytest.mark.parametrize("char", LOOK_ALIKES)
def test_invisible_and_bidi_characters_in_pool_names_are_refused(char: str) -> None:
    name = f"ma{char}in"
    toml = USER.replace('["main"]', f'["{name}"]') + POOL.replace("[pools.main.", f'[pools."{name}".')
    (message,) = problems(toml)
    code = f"U+{ord(char):04X}"
    assert message.endswith(
        f"pool name contains {code}, an invisible, spacing or direction-changing character: it would land "
        "in pgbouncer_hba.conf and in logs looking like another name; write the name with visible "
        "characters only"
    )


@pytest.mark.parametrize("char", LOOK_ALIKES)
def test_invisible_and_bidi_characters_in_usernames_are_refused(char: str) -> None:
    (message,) = problems(BASE.replace('username = "u"', f'username = "adm{char}in"'))
    assert message.startswith("users[0].username: username contains U+")
    assert "look" in message


def test_pool_names_equal_after_nfc_are_refused() -> None:
    composed, decomposed = "caf\u00e9", unicodedata.normalize("NFD", "caf\u00e9")
    assert composed != decomposed
    pools = "".join(POOL.replace("[pools.main.", f'[pools."{n}".') for n in (composed, decomposed))
    toml = USER.replace('["main"]', f'["{composed}", "{decomposed}"]') + pools
    messages = problems(toml)
    assert len(messages) == 1
    assert "after Unicode normalisation (NFC)" in messages[0]
    assert messages[0].startswith('pools."caf')


def test_usernames_equal_after_nfc_are_refused() -> None:
    composed, decomposed = "jos\u00e9", unicodedata.normalize("NFD", "jos\u00e9")
    toml = BASE + USER.replace('"u"', f'"{composed}"') + USER.replace('"u"', f'"{decomposed}"')
    (message,) = problems(toml)
    assert message.startswith("users[2].username: username is the same as the one at users[1].username after")


def test_names_that_differ_only_in_case_or_width_are_a_warning() -> None:
    toml = BASE + USER.replace('"u"', '"U"') + USER.replace('"u"', '"\uff55"')  # U and full-width u
    config = parse_config(toml, {})
    assert [str(w) for w in config.warnings] == [
        "users[1].username: username differs from the one at users[0].username only in case or character "
        "width: pgbouncer treats them as two names, a person reading the hba file or logs may not",
        "users[2].username: username differs from the one at users[0].username only in case or character "
        "width: pgbouncer treats them as two names, a person reading the hba file or logs may not",
    ]


# --- warnings -----------------------------------------------------------------------------------------------


def test_an_application_user_in_admin_users_is_a_warning() -> None:
    console = '[[users]]\nusername = "ops"\npassword = "pw2"\ngrants = []\n'
    toml = BASE + console + '[pgbouncer]\nadmin_users = ["ops", "u"]\n'
    found = [w for w in warnings(toml) if "admin_users" in w]
    assert found == [
        'pgbouncer.admin_users[1]: "u" is also an application user (it has grants): whoever holds that '
        "application's password can PAUSE, SHUTDOWN or RECONFIGURE every instance; give the console a user "
        "of its own with grants = []"
    ]


@pytest.mark.parametrize("addr", ["*", "0.0.0.0", "::"])
def test_md5_on_every_address_without_client_tls_is_a_warning(addr: str) -> None:
    toml = BASE + f'[pgbouncer]\nlisten_addr = "{addr}"\nauth_type = "md5"\n'
    (found,) = [w for w in warnings(toml) if w.startswith("pgbouncer.listen_addr:")]
    assert 'with client TLS off, and users "u" log in with md5' in found
    assert "pw" not in found
    # No warning with SCRAM, on one address, or with client TLS required by the TOML.
    assert not [w for w in warnings(toml.replace('"md5"', '"scram-sha-256"')) if "listen_addr" in w]
    assert not [w for w in warnings(toml.replace(f'"{addr}"', '"10.0.0.7"')) if "listen_addr" in w]


@pytest.mark.parametrize(
    ("lines", "path"),
    [
        ('auth_user = "u"\n', "pgbouncer.auth_user"),
        ('auth_query = "SELECT usename, passwd FROM pg_shadow WHERE usename=$$1"\n', "pgbouncer.auth_query"),
        ('[pgbouncer.passthrough_kwargs]\nauth_user = "u"\n', "pgbouncer.passthrough_kwargs.auth_user"),
    ],
)
def test_auth_user_and_auth_query_behind_the_reject_rules_are_a_warning(lines: str, path: str) -> None:
    found = [w for w in parse_config(BASE + "[pgbouncer]\n" + lines, {}).warnings if w.path == path]
    assert len(found) == 1
    assert "never takes effect" in found[0].message
    assert "final reject rules" in found[0].message


# --- "did you mean" -----------------------------------------------------------------------------------------


def test_postgres_settings_are_named_as_such_not_matched_to_a_pgbouncer_setting() -> None:
    (message,) = problems(BASE + "[pgbouncer]\nstatement_timeout = 5000\n")
    assert "suspend_timeout" not in message
    assert message == (
        "pgbouncer.statement_timeout: unknown pgbouncer setting: statement_timeout is a PostgreSQL setting, "
        "which pgbouncer does not have; set it on the server or per role (ALTER ROLE ... SET "
        "statement_timeout = ...); pgbouncer's own query_timeout cancels a query from the pooler's side"
    )
    (other,) = problems(BASE + "[pgbouncer.passthrough_kwargs]\nlock_timeout = 5\n")
    assert other.endswith("(ALTER ROLE ... SET lock_timeout = ...)")


def test_a_far_match_is_not_suggested_but_a_typo_still_is() -> None:
    (far,) = problems(BASE + "[pgbouncer]\nstatement_timeouts = 5\n")
    assert far == "pgbouncer.statement_timeouts: unknown pgbouncer setting"
    (typo,) = problems(BASE + "[pgbouncer]\nquery_timout = 5\n")
    assert typo.endswith('did you mean "query_timeout"?')
