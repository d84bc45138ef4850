"""Each role's checks of a host's inventory variables (src/autopgpool/inventory.py), run by
site.yml's first play
before any host changes: every bad value is refused naming the variable and the host, never the value."""

from __future__ import annotations

from typing import Any

import pytest

from autopgpool.inventory import haproxy_problems, keepalived_problems, pgbouncer_problems, tls_warnings

PGBOUNCER: dict[str, Any] = {
    "pgbouncer_instances": 2,
    "pgbouncer_base_port": 6400,
    "listen_port": 6432,
    "pgbouncer_config_dir": "/etc/pgbouncer",
    "pgbouncer_binary": "/opt/pgbouncer/current/bin/pgbouncer",
    "file_descriptor_limit": 1200,
    "pgbouncer_nofile_hard_limit": 524288,
}
HAPROXY: dict[str, Any] = {
    "haproxy_client_allowlist": ["10.0.0.0/8", "127.0.0.1/32"],
    "haproxy_stats_allowlist": ["127.0.0.0/8"],
    "haproxy_stats_address": "127.0.0.1",
    "haproxy_stats_port": 8404,
    "haproxy_bind_port": "6432",
    "haproxy_source_address": "127.0.0.2",
}
FACTS = {
    "interfaces": ["lo", "eth0"],
    "eth0": {"ipv4": {"address": "10.0.0.11"}},
    "lo": {"ipv4": {"address": "127.0.0.1"}},
}


def test_good_values_pass() -> None:
    assert pgbouncer_problems("pool1", PGBOUNCER) == []
    assert haproxy_problems("pool1", HAPROXY) == []
    assert keepalived_problems("pool1", {"keepalived_interface": "", "keepalived_unicast_src_ip": "10.0.0.11",
                                         "facts": FACTS}) == []  # fmt: skip
    assert keepalived_problems("pool1", {"keepalived_interface": "eth0", "facts": FACTS}) == []


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("pgbouncer_instances", 0),
        ("pgbouncer_instances", 65),
        ("pgbouncer_instances", "two"),
        ("pgbouncer_instances", True),
        ("pgbouncer_instances", None),
        ("pgbouncer_base_port", 80),
        ("pgbouncer_base_port", 65534),
        ("pgbouncer_base_port", 6430),  # instance 2 would take the client port 6432
        ("pgbouncer_base_port", "64oo"),
        ("pgbouncer_config_dir", "etc/pgbouncer"),
        ("pgbouncer_config_dir", "/etc/pgbouncer/"),
        ("pgbouncer_binary", "pgbouncer"),
        ("pgbouncer_nofile_hard_limit", 1000),
        ("pgbouncer_nofile_hard_limit", "lots"),
    ],
)
def test_bad_pgbouncer_values_name_the_variable_and_host(key: str, value: object) -> None:
    problems = pgbouncer_problems("pool7", {**PGBOUNCER, key: value})
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{key} (pool7): ")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("haproxy_client_allowlist", []),
        ("haproxy_client_allowlist", "10.0.0.0/8"),  # a string, not a list
        ("haproxy_client_allowlist", ["10.0.0.0/8", "SECRETnet"]),
        ("haproxy_client_allowlist", ["10.0.0.300/8"]),
        ("haproxy_client_allowlist", ["10.0.0.1"]),  # no prefix
        ("haproxy_client_allowlist", None),
        ("haproxy_stats_allowlist", ["127.0.0.0/8", "SECRETnet/24"]),
        ("haproxy_stats_allowlist", "127.0.0.0/8"),
        ("haproxy_stats_address", "SECREThost"),
        ("haproxy_stats_address", "127.0.0.1/8"),
        ("haproxy_stats_port", 0),
        ("haproxy_stats_port", 6432),  # the client port
        ("haproxy_bind_port", 70000),
        ("haproxy_source_address", "10.0.0.1"),
        ("haproxy_source_address", "::1"),
    ],
)
def test_bad_haproxy_values_name_the_variable_and_host_never_the_value(key: str, value: object) -> None:
    problems = haproxy_problems("pool7", {**HAPROXY, key: value})
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{key} (pool7): ")
    assert "SECRET" not in problems[0]


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"keepalived_interface": "eth9", "facts": FACTS}, "keepalived_interface"),
        ({"keepalived_interface": "eth0; rm -rf /", "facts": FACTS}, "keepalived_interface"),
        ({"keepalived_interface": "a" * 16, "facts": FACTS}, "keepalived_interface"),
        ({"keepalived_interface": "", "keepalived_unicast_src_ip": "10.0.0.99", "facts": FACTS},
         "keepalived_unicast_src_ip"),
    ],
)  # fmt: skip
def test_bad_keepalived_values_name_the_variable(values: dict[str, Any], key: str) -> None:
    problems = keepalived_problems("pool7", values)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{key} (pool7): ")
    assert "rm -rf" not in problems[0]


def test_tls_warnings_name_the_setting() -> None:
    verified = {"server_tls_sslmode": "verify-full", "client_tls": True}
    assert tls_warnings(verified) == []
    assert tls_warnings({**verified, "server_tls_sslmode": "verify-ca"}) == []
    for mode in ("disable", "allow", "prefer", "require"):
        (warning,) = tls_warnings({**verified, "server_tls_sslmode": mode})
        assert warning.startswith("pgbouncer_server_tls_sslmode")
        assert "verify-full" in warning
    (warning,) = tls_warnings({**verified, "client_tls": False})
    assert warning.startswith("client_tls_sslmode")
    assert len(tls_warnings({"server_tls_sslmode": "prefer", "client_tls": False})) == 2
