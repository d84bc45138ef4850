"""site.yml's first play as it is written (read from playbooks/site.yml), run by a real
ansible-playbook over a
two-host inventory on localhost: each bad inventory variable stops the run there, naming the variable and the
host, before the rollout's batches touch any host (issue 24: bad inventory changes nothing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import test_role_budget as role
import yaml

SITE = Path(__file__).resolve().parents[2] / "playbooks" / "site.yml"


def first_play() -> str:
    plays = yaml.safe_load(SITE.read_text())
    (play,) = [p for p in plays if p.get("hosts") == "pgbouncer" and p.get("any_errors_fatal")]
    play["tasks"].append(
        {
            "name": "Reached only when every check passed",
            "ansible.builtin.debug": {"msg": "first play passed"},
        }
    )
    return yaml.safe_dump([play], sort_keys=False)


HOST: dict[str, Any] = {"pgbouncer_instances": 2, "haproxy_client_allowlist": ["10.9.0.0/24", "127.0.0.0/8"]}


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pool2: dict[str, Any]) -> tuple[int, str]:
    monkeypatch.setattr(role, "PLAY", first_play())
    return role.run(tmp_path, extra=dict(role.PG1), pool1=HOST, pool2={**HOST, **pool2})


def test_good_variables_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rc, out = _run(tmp_path, monkeypatch, {})
    assert rc == 0, out[-3000:]
    assert "first play passed" in out


@pytest.mark.parametrize(
    ("pool2", "named"),
    [
        ({"haproxy_stats_allowlist": ["127.0.0.0/8", "not-a-network"]}, "haproxy_stats_allowlist (pool2)"),
        ({"haproxy_stats_address": "localhost:8404"}, "haproxy_stats_address (pool2)"),
        ({"haproxy_client_allowlist": ["10.9.0.0/24", "10.9.0.1"]}, "haproxy_client_allowlist (pool2)"),
        ({"pgbouncer_base_port": 6430}, "pgbouncer_base_port (pool2)"),  # instance 2 on the client port 6432
        ({"pgbouncer_nofile_hard_limit": 100}, "pgbouncer_nofile_hard_limit (pool2)"),
        ({"pgbouncer_binary": "bin/pgbouncer"}, "pgbouncer_binary (pool2)"),
    ],
)
def test_a_bad_variable_stops_the_first_play(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pool2: dict[str, Any], named: str
) -> None:
    rc, out = _run(tmp_path, monkeypatch, pool2)
    assert rc != 0
    assert named in out, out[-3000:]
    assert "first play passed" not in out
    assert "not-a-network" not in out.split(named, 1)[1].split("\n", 1)[0]


def test_tls_off_is_warned_about_naming_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rc, out = _run(tmp_path, monkeypatch, {})
    assert rc == 0, out[-3000:]
    # The example TOML with the inventory setting no server CA: pgbouncer verifies nothing.
    assert "WARNING: pgbouncer_server_tls_sslmode" in out
