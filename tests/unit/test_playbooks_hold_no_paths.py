"""The operations playbooks take every path and name from the roles (pgbouncer_config_dir, the HAProxy admin
socket, the backend and server names): none is written out in playbooks/, so a deployment with a non-default
config dir or socket is restarted, upgraded and checked like the default one."""

import re
from pathlib import Path

PLAYBOOKS = Path(__file__).resolve().parents[2] / "playbooks"
SPELLED_OUT = re.compile(r"/etc/pgbouncer|/run/haproxy|/run/pgbouncer|pgbouncer_instances/|admin\.sock|socat")


def test_no_playbook_spells_out_a_path_socket_or_server_name() -> None:
    found = []
    for path in sorted(PLAYBOOKS.rglob("*.yml")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if SPELLED_OUT.search(line):
                found.append(f"{path.relative_to(PLAYBOOKS)}:{number}: {line.strip()}")
    assert found == [], found
