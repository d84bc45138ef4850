"""Where a run takes the TOML's $VARs from (docs/configuration.md, "Where the values come from").

site.yml expands a reference only from pgbouncer_secrets (the lab's Vault stand-in) and from the controller's
environment only for the names in pgbouncer_secrets_from_environment. A TOML that names a variable set only
in the controller's environment (as CI_JOB_TOKEN would be) is refused in the first play, naming the key and
the variable, never the value, and changes nothing on any host.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from .stack import EXAMPLE_CONFIG, Host, ansible_playbook, demo_secrets, poolers

pytestmark = pytest.mark.e2e

try:
    POOLERS = poolers()
except AssertionError:  # lab down: test_clients.test_the_lab_is_up fails loudly
    POOLERS = []

VARIABLE = "AUTOPGPOOL_E2E_CONTROLLER_ONLY"


def _state(host: Host) -> str:
    """The files' digests and every instance's MainPID: what a refused run must leave alone."""
    return host.run(
        "find /etc/pgbouncer -type f | sort | xargs sha256sum; "
        "for u in $(systemctl list-units --plain --no-legend 'pgbouncer@*.service' | cut -d' ' -f1); "
        "do echo $u $(systemctl show -P MainPID $u); done"
    )


def test_a_variable_only_in_the_controller_environment_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    value = f"controller-only-{secrets.token_hex(8)}"
    monkeypatch.setenv(VARIABLE, value)  # set, but not listed in pgbouncer_secrets_from_environment
    toml = tmp_path / "autopgpool.toml"
    text = EXAMPLE_CONFIG.read_text()
    assert 'password = "$APP_DB_PASSWORD"' in text
    toml.write_text(text.replace('password = "$APP_DB_PASSWORD"', f'password = "${{{VARIABLE}}}"', 1))
    before = {host.name: _state(host) for host in POOLERS}

    result = ansible_playbook("playbooks/site.yml", "-e", f"pgbouncer_config_file={toml}", timeout=300)

    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert f"pools.app.remote.password: variable {VARIABLE} is not in pgbouncer_secrets" in output
    assert "pgbouncer_secrets_from_environment (no name)" in output
    assert value not in output
    for secret in demo_secrets().values():
        assert secret not in output
    assert "Traceback" not in output
    assert "TASK [autopgpool.pool.pgbouncer_build" not in output
    assert {host.name: _state(host) for host in POOLERS} == before
