"""bench/layouts.py's HAProxy variant: the old unix-socket transport for the A/B against TCP on loopback."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # bench/ lives at the repository root

from bench.layouts import variant_config

DEPLOYED = """global
    user haproxy
    group haproxy
    stats socket /run/haproxy/admin.sock user root group root mode 600 level admin
frontend pgbouncer
    bind 0.0.0.0:6432 defer-accept
backend pgbouncer_instances
    source 127.0.0.2
    server pgbouncer1 127.0.0.1:6401
    server pgbouncer2 127.0.0.1:6402
"""


def test_variant_keeps_tcp_unless_asked() -> None:
    config = variant_config(DEPLOYED, [], [])
    assert "    server pgbouncer1 127.0.0.1:6401" in config
    assert "    source 127.0.0.2" in config
    assert ":6433" in config


def test_variant_unix_uses_the_sockets_as_root() -> None:
    lines = variant_config(DEPLOYED, [], [], unix=True).splitlines()
    assert "    server pgbouncer2 unix@/run/pgbouncer/2/.s.PGSQL.6402" in lines
    assert not [line for line in lines if line.strip().startswith(("user ", "group ", "source "))]
