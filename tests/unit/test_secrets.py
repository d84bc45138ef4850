import pytest

from autopgpool import ConfigError, merge_sources, render_files
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


def test_merge_sources_mapping_wins_over_environment() -> None:
    merged = merge_sources({"A": "from-vault", "N": 5}, {"A": "from-env", "B": "env-only"})
    assert merged == {"A": "from-vault", "B": "env-only", "N": "5"}
