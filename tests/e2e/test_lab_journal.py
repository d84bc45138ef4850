"""The lab's PostgreSQL role keeps the backend passwords out of pg1's journal.

become runs a task as `sudo ... /bin/sh -c '<environment> python3 ...'` and sudo logs that command line, so a
password passed in `environment:` (PGPASSWORD) lands in the journal on every run of
lab/playbooks/postgres.yml.
The role passes it as a module argument instead; this runs the playbook (changed=0 on a deployed
lab) and reads
everything pg1 logged meanwhile.
"""

from __future__ import annotations

import pytest

from autopgpool import backends

from .stack import EXAMPLE_CONFIG, ansible_playbook, demo_secrets, postgres_host

pytestmark = pytest.mark.e2e


def test_postgres_playbook_logs_no_backend_password() -> None:
    host = postgres_host()
    since = host.run("date '+%Y-%m-%d %H:%M:%S'").strip()
    result = ansible_playbook("lab/playbooks/postgres.yml")
    assert result.returncode == 0, result.stdout[-3000:]
    passwords = {b["password"] for b in backends(EXAMPLE_CONFIG.read_text(), demo_secrets())}
    assert passwords
    # Everything logged since, sudo's COMMAND= lines included (journalctl as root reads every unit's lines).
    log = host.run(f"journalctl -q --no-pager --since '{since}'")
    assert "COMMAND=" in log, "sudo logged nothing: the check would not see a leak"
    leaked = sorted(b["username"] for b in backends(EXAMPLE_CONFIG.read_text(), demo_secrets())
                    if b["password"] in log)  # fmt: skip
    assert leaked == [], f"pg1's journal holds the backend password of {leaked}"
    assert result.stdout.count("changed=0") >= 1
