import pytest

from autopgpool import ConfigError, ansible_sources, render_files
from autopgpool.errors import Problems
from autopgpool.secrets import expand


def _expand(value: str, env: dict[str, str]) -> tuple[str, list[str]]:
    problems = Problems()
    out = expand(value, "p", env, problems)
    try:
        problems.raise_if_any()
    except ConfigError as exc:
        return out, [str(p) for p in exc.problems]
    return out, []


def test_whole_string_variable() -> None:
    assert _expand("$X", {"X": "secret"}) == ("secret", [])


def test_braced_variable_inside_string_and_dollar_escape() -> None:
    assert _expand("a${X}b$$c", {"X": "1"}) == ("a1b$c", [])
    assert _expand("$$X", {"X": "1"}) == ("$X", [])


def test_values_are_not_expanded_twice() -> None:
    assert _expand("$X", {"X": "$Y", "Y": "no"}) == ("$Y", [])
    assert _expand("${X}", {"X": "${Y}$$", "Y": "no"}) == ("${Y}$$", [])


def test_stray_dollar_is_an_error() -> None:
    _, problems = _expand("pa$word", {})
    assert problems == [
        'p: \'$\' at position 2 starts no variable: write "${NAME}" for a variable or "$$" for a literal "$"'
    ]


def test_missing_variables_reported_together_with_paths() -> None:
    toml = """
[[users]]
username = "a"
password = "$A_PW"
grants = ["p"]
[[users]]
username = "b"
password = "x${B_PW}"
grants = ["p"]
[pools.p.remote]
host = "h"
port = 5432
database = "d"
username = "u"
password = "$DB_PASS"
"""
    with pytest.raises(ConfigError) as err:
        render_files(toml, {})
    assert [str(p) for p in err.value.problems] == [
        "pools.p.remote.password: environment variable DB_PASS is not set",
        "users[0].password: environment variable A_PW is not set",
        "users[1].password: environment variable B_PW is not set",
    ]


def test_ansible_sources_read_the_environment_only_for_allowed_names() -> None:
    environ = {"A": "from-env", "B": "env-only", "CI_JOB_TOKEN": "token", "C": "c"}
    merged = ansible_sources({"A": "from-vault", "N": 5}, ["A", "B"], environ)
    assert dict(merged) == {"A": "from-vault", "B": "env-only", "N": "5"}
    assert dict(ansible_sources({"A": "v"}, [], environ)) == {"A": "v"}
    assert dict(ansible_sources(None, None, environ)) == {}


_REMOTE_TOML = """
[[users]]
username = "a"
password = "pw"
grants = ["p"]
[pools.p.remote]
host = "collector.example"
port = 5432
database = "d"
username = "u"
password = "${CI_JOB_TOKEN}"
"""


def test_a_reference_outside_the_secrets_says_where_the_run_looked() -> None:
    environ = {"CI_JOB_TOKEN": "glcbt-secret-token"}
    with pytest.raises(ConfigError) as err:
        render_files(_REMOTE_TOML, ansible_sources({"OTHER": "x"}, ["DB_PW"], environ))
    (problem,) = err.value.problems
    message = str(problem)
    assert message.startswith("pools.p.remote.password: variable CI_JOB_TOKEN is not in pgbouncer_secrets")
    assert "pgbouncer_secrets_from_environment (DB_PW)" in message
    assert "environment variable CI_JOB_TOKEN is not set" not in message  # the old, misleading wording
    assert "glcbt-secret-token" not in message


def test_an_allowed_name_missing_everywhere_names_both_places() -> None:
    with pytest.raises(ConfigError) as err:
        render_files(_REMOTE_TOML, ansible_sources({}, ["CI_JOB_TOKEN"], {}))
    assert [str(p) for p in err.value.problems] == [
        "pools.p.remote.password: variable CI_JOB_TOKEN is neither in pgbouncer_secrets nor set in the "
        "controller's environment (which pgbouncer_secrets_from_environment allows for it); add it to "
        "pgbouncer_secrets (Vault) or export it before the run"
    ]


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        ("CI_JOB_TOKEN", "pgbouncer_secrets_from_environment: expected a list of variable names"),
        (["OK", "not a name"], "pgbouncer_secrets_from_environment[1]: expected a variable name"),
        ([3], "pgbouncer_secrets_from_environment[0]: expected a variable name"),
    ],
)
def test_the_opt_in_list_is_checked(names: object, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        ansible_sources({}, names, {"CI_JOB_TOKEN": "t"})
    assert str(err.value.problems[0]).startswith(expected)
