"""The validation-time max_connections probe on the lab, as an operator runs site.yml: a TOML naming a
PostgreSQL server that asks for the backend password in cleartext (a fake server on the controller's bridge
address, reachable from pool1) never gets the password, in --check too, and the run stops in its first play
naming the server. pgbouncer's server sslmode is prefer here (it verifies nothing, as on the production
example before TLS), so the probe may answer SCRAM only."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fake_postgres import FakePostgres

from .stack import EXAMPLE_CONFIG, _inventory, ansible_playbook, demo_secrets

pytestmark = pytest.mark.e2e


def test_a_server_asking_for_a_cleartext_password_never_gets_it(tmp_path: Path) -> None:
    controller = str(_inventory()["_meta"]["hostvars"]["pool1"]["lab_controller_address"])
    with FakePostgres(controller, ask="password", timeout=30) as fake:
        config = tmp_path / "autopgpool.toml"
        config.write_text(
            EXAMPLE_CONFIG.read_text().replace(
                'host = "pg1"\nport = 5432', f'host = "{controller}"\nport = {fake.port}'
            )
        )
        started = time.monotonic()
        result = ansible_playbook(
            "playbooks/site.yml", "--check", "-e", f"pgbouncer_config_file={config}",
            "-e", "pgbouncer_server_tls_sslmode=prefer", timeout=120,
        )  # fmt: skip
        took = time.monotonic() - started
    output = result.stdout + result.stderr
    assert fake.connections >= 1, f"the probe never reached the fake server:\n{output[-3000:]}"
    for name, secret in demo_secrets().items():
        assert secret.encode() not in fake.received, f"the fake server received {name}"
        assert secret not in output, f"the run printed {name}"
    assert result.returncode != 0
    assert f"could not read max_connections from PostgreSQL {controller}:{fake.port}" in output
    assert f"{controller}:{fake.port} asks for password authentication" in output
    assert "TASK [autopgpool.pool.pgbouncer_build" not in output
    assert took < 60, f"the refusal took {took:.0f} s"
