"""Every place a ``$VAR`` can be written, with secrets that are invalid there: no value ever comes back.

For each key (every [pgbouncer] setting directly and under passthrough_kwargs, every list member, every user,
pool and remote key, admin/stats users, the ignored replica table) and each secret below, the configuration is
validated, summarized and run through the CLI. Whatever happens (refused, or accepted where variables are
allowed) the secret's distinctive part must not appear in the error, the warnings, the summary or the CLI's
output. Outside the keys where variables are expanded, the refusal must name the variable.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autopgpool import ConfigError, summarize, validate
from autopgpool.cli import main
from autopgpool.model import DEPLOYMENT_OWNED
from autopgpool.pgbouncer_settings import SETTINGS

USERS = (
    '[[users]]\nusername = "u"\npassword = "pw"\ngrants = ["main"]\n'
    '[[users]]\nusername = "adm"\npassword = "apw"\ngrants = []\n'
)
POOL_HEAD = "[pools.main]\n"
REMOTE = {"host": '"h"', "port": "5432", "database": '"d"', "username": '"r"', "password": '"rpw"'}

# (secret value, the part that must never be printed)
SECRETS = [
    ("SWEEPcore7Q", "SWEEPcore7Q"),
    (" SWEEPcore7Q ", "SWEEPcore7Q"),
    ("SWEEPcore7Q\nsecond line", "SWEEPcore7Q"),
    ("SWEEPcore7Q" * 10, "SWEEPcore7Q"),
    ("SWEEPcore7Q, SWEEPcore7Q", "SWEEPcore7Q"),
    ("md5" + "5eec" * 8, "5eec5eec5eec"),
    ("SCRAM-SHA-256$4096:U1dFRVBjb3Jl$U1dFRVBjb3JlU1dFRVBjb3Jl:U1dFRVBjb3JlU1dFRVBjb3Jl", "U1dFRVBjb3Jl"),
    ("99999999999999999999", "99999999999999999999"),
    ("0.0000000001", "0000000001"),
]

EXPANDED = {f"pools.main.remote.{k}" for k in REMOTE} | {"users[0].password"}


def _remote(overrides: dict[str, str] | None = None) -> str:
    values = {**REMOTE, **(overrides or {})}
    return "[pools.main.remote]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())


def positions(ref: str) -> list[tuple[str, str]]:
    """(key path, whole TOML) for every place a string value can be written."""
    out: list[tuple[str, str]] = []
    base_pool = POOL_HEAD + _remote()
    for name in sorted(SETTINGS):
        for table, prefix in (
            ("pgbouncer", "pgbouncer"),
            ("pgbouncer.passthrough_kwargs", "pgbouncer.passthrough_kwargs"),
        ):
            out.append((f"{prefix}.{name}", USERS + base_pool + f"[{table}]\n{name} = {ref}\n"))
    for name in ("passthrough_kwargs",):
        out.append((f"pgbouncer.{name}", USERS + base_pool + f"[pgbouncer]\n{name} = {ref}\n"))
    for name in ("ignore_startup_parameters", "track_extra_parameters", "admin_users", "stats_users"):
        out.append((f"pgbouncer.{name}[1]", USERS + base_pool + f'[pgbouncer]\n{name} = ["u", {ref}]\n'))
    user = '[[users]]\nusername = "u"\npassword = "pw"\ngrants = ["main"]\n'
    tail = '[[users]]\nusername = "adm"\npassword = "apw"\ngrants = []\n' + base_pool
    for key, line in (
        ("username", f"username = {ref}"),
        ("password", f"password = {ref}"),
        ("grants[0]", f"grants = [{ref}]"),
        ("auth_type", f"auth_type = {ref}"),
        ("pool_mode", f"pool_mode = {ref}"),
        ("max_user_connections", f"max_user_connections = {ref}"),
    ):
        field = key.split("[")[0]
        lines = [ln for ln in user.splitlines() if not ln.startswith(f"{field} =")]
        out.append((f"users[0].{key}", "\n".join([*lines, line]) + "\n" + tail))
    for key in ("pool_mode", "pool_size", "min_pool_size", "reserve_pool_size", "max_db_connections"):
        out.append((f"pools.main.{key}", USERS + POOL_HEAD + f"{key} = {ref}\n" + _remote()))
    for key in REMOTE:
        out.append((f"pools.main.remote.{key}", USERS + POOL_HEAD + _remote({key: ref})))
    out.append(
        (
            "pools.main.replica.remote.password",
            USERS + base_pool + f'[pools.main.replica.remote]\nhost = "x"\npassword = {ref}\n',
        )
    )
    return out


def _outputs(toml: str, env: dict[str, str]) -> tuple[str, bool]:
    """Everything validate/summarize show for ``toml``, and whether it was refused."""
    try:
        validate(toml, env)
    except ConfigError as exc:
        return str(exc) + "\n" + "\n".join(p.message for p in exc.problems), True
    return json.dumps(summarize(toml, env)), False


@pytest.mark.parametrize("ref", ['"$SWEEP"', '"x${SWEEP}y"'])
def test_no_expanded_value_in_any_error_or_summary(ref: str) -> None:
    checked = refused = 0
    for secret, needle in SECRETS:
        env = {"SWEEP": secret}
        for path, toml in positions(ref):
            shown, was_refused = _outputs(toml, env)
            checked += 1
            refused += was_refused
            assert needle not in shown, f"{path} with secret {secrets_index(secret)} shows it"
            key = path.rsplit(".", 1)[-1].split("[")[0]
            if path.startswith("pools.main.replica"):
                assert not was_refused
                assert "ignored" in shown
            elif (
                path not in EXPANDED
                and key not in DEPLOYMENT_OWNED
                and not path.endswith(".passthrough_kwargs")
            ):
                assert was_refused, path
                if "expected an array" not in shown and "write this as [pgbouncer]" not in shown:
                    assert "variable SWEEP" in shown, (path, shown)
    assert checked == len(positions(ref)) * len(SECRETS) > 1900
    # Only the expanded keys (and the ignored replica table) may accept a variable at all.
    assert refused >= checked - (len(EXPANDED) + 1) * len(SECRETS)


def secrets_index(secret: str) -> int:
    """A test failure names the secret by its index in SECRETS, never by its value."""
    return [s for s, _ in SECRETS].index(secret)


def test_valid_variables_in_remote_fields_are_shown_as_written_in_summary() -> None:
    toml = (
        USERS
        + POOL_HEAD
        + _remote(
            {"host": '"$H"', "port": '"$P"', "database": '"db_${D}"', "username": '"$U"', "password": '"$PW"'}
        )
    )
    env = {"H": "SWEEPhost", "P": "6543", "D": "SWEEPdb", "U": "SWEEPuser", "PW": "SWEEPpw"}
    info = summarize(toml, env)
    assert info["pools"]["main"] | {"pool_size": 0, "reserve_pool_size": 0} == {
        "host": "$H",
        "port": "$P",
        "database": "db_${D}",
        "username": "$U",
        "pool_size": 0,
        "reserve_pool_size": 0,
        "pool_mode": "transaction",
    }
    assert "SWEEP" not in json.dumps(info)


def test_backend_user_conflict_names_the_variable_not_its_value() -> None:
    second = (
        '[pools.copy.remote]\nhost = "h"\nport = 1\ndatabase = "d"\nusername = "$U"\npassword = "other"\n'
    )
    toml = USERS + POOL_HEAD + _remote({"username": '"$U"'}) + second
    with pytest.raises(ConfigError) as err:
        validate(toml, {"U": "SWEEPuser"})
    assert "SWEEPuser" not in str(err.value)
    assert 'backend user "$U" is also used by pools.copy.remote' in str(err.value) or (
        'backend user "$U" is also used by pools.main.remote' in str(err.value)
    )


@pytest.mark.parametrize("secret_index", range(len(SECRETS)))
def test_cli_never_prints_a_secret(
    secret_index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    secret, needle = SECRETS[secret_index]
    monkeypatch.setenv("SWEEP", secret)
    monkeypatch.setenv("AUTOPGPOOL_SCRAM_SALT_KEY", "k")
    config = tmp_path / "autopgpool.toml"
    for n, (path, toml) in enumerate(positions('"$SWEEP"')):
        config.write_text(toml)
        command = ["validate", "--config-path", str(config)]
        if path in EXPANDED:
            command = ["generate", "--config-path", str(config), "--output-dir", str(tmp_path / f"out{n}")]
        code = main(command)
        out, err = capsys.readouterr()
        assert code in (0, 1), path
        assert needle not in out + err, path
        assert "Traceback" not in err
