"""Smoke test on real machines: up twice, every host `running` over SSH, down leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autopgpool_lab import config, machines, mirror, system

LABCTL = [sys.executable, str(Path(__file__).resolve().parents[2] / "lab" / "labctl.py")]

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
]


def labctl(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*LABCTL, *args], capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"labctl {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_up_twice_then_down_leaves_nothing() -> None:
    plan = config.plan_machines()
    paths = machines.Paths(config.STATE_DIR)
    try:
        labctl("up")
        started = time.monotonic()
        labctl("up")
        assert time.monotonic() - started < 30, "a second up on a running lab must be quick"
        for machine in plan:
            proc = subprocess.run(
                [
                    "ssh",
                    "-F",
                    str(paths.ssh_config),
                    machine.name,
                    "hostname; systemctl is-system-running; apt-cache policy haproxy | grep -c 3142/debian",
                ],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            seen = f"{machine.name}: {proc.stdout}{proc.stderr}"
            # The lab mirror serves what the roles install; the machine's apt lists know it.
            assert proc.stdout.split() == [machine.name, "running", "1"], seen
        assert paths.inventory.is_file()
    finally:
        labctl("down")

    assert machines.nspawn_pids() == []
    assert mirror.server_pids() == []
    assert not any(machines.container_processes(m.name) for m in plan)
    assert not machines.bridge_exists()
    assert machines.lab_veths() == []
    assert system.mounts_under(config.MACHINES_DIR) == []
    assert not config.MACHINES_DIR.exists() or list(config.MACHINES_DIR.iterdir()) == []
