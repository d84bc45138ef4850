"""Which lab tests `make test` runs on which Debian release (issue 12).

`make test` runs the molecule scenario twice, on Debian 12 (bookworm, scenario default) and on Debian 13
(trixie), and CI gives it 90 minutes on two cores: both platforms cannot each run every end-to-end test and
every drill. So the tests that exercise what differs between the releases (the packages the roles install,
the build toolchain, OpenSSL, HAProxy, systemd, PostgreSQL, keepalived, Prometheus) run on both, and each
test that drives the toolkit's own logic (rollout order, convergence after interrupted runs, the operations
drills but the rolling restart, which drains through HAProxy) runs once, on the release named in SHARED
below. No test is left out: every module of tests/e2e and
tests/drills is either in SHARED or runs on both, which tests/unit/test_platforms.py checks.

The split applies only when AUTOPGPOOL_PLATFORM_SPLIT=1 (molecule's verify sets it); `pytest -m e2e
tests/e2e` or `make drills` by hand runs everything on whatever the lab runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLATFORMS = ("bookworm", "trixie")

# Module (relative to tests/), or module::test function, -> the one release it runs on in make test; what is
# not listed runs on both.
SHARED: dict[str, str] = {
    # e2e: rollout order, runs killed or edited mid-way, check mode, reloads, instance counts, budgets.
    "e2e/test_convergence.py": "bookworm",
    "e2e/test_host_state.py": "bookworm",
    "e2e/test_operations.py": "trixie",
    "e2e/test_budget.py": "trixie",
    # Where $VARs come from is the core's and the filters' logic: one first-play refusal, once.
    "e2e/test_secret_sources.py": "trixie",
    # The lab's own PostgreSQL role (not a product role): sudo's journal lines are the same on both.
    "e2e/test_lab_journal.py": "bookworm",
    # The probe's refusal in site.yml's first play (the module is pure Python: nothing differs by release).
    "e2e/test_probe.py": "bookworm",
    # The exporters (prometheus-client 0.16 / 0.21) are checked on both; the two slow alert drills exercise
    # the same rules on pg1's Prometheus, once each.
    "e2e/test_monitoring.py::test_a_saturated_pool_fires_the_waiting_alert_and_it_resolves": "trixie",
    "e2e/test_monitoring.py::test_stopping_an_instance_fires_instance_down": "bookworm",
    # drills: TLS on trixie's OpenSSL 3.5, the PostgreSQL restart against its PostgreSQL 17. The rolling
    # restart is not listed: it drains through HAProxy's admin socket (2.6 / 3.0) and runs on both.
    "drills/test_upgrade.py": "bookworm",
    "drills/test_crash.py": "bookworm",
    "drills/test_bad_toml.py": "bookworm",
    "drills/test_vip.py": "bookworm",
    "drills/test_tls_rotation.py": "trixie",
    "drills/test_reload.py": "trixie",
    "drills/test_postgres_restart.py": "trixie",
}


def lab_suite(state: Path = REPO / ".lab" / "lab.json") -> str:
    """The release the lab's machines run, as the last `labctl up` recorded it."""
    try:
        suite = json.loads(state.read_text()).get("suite")
    except (OSError, ValueError, AttributeError):
        suite = None
    if suite not in PLATFORMS:
        raise RuntimeError(f"{state}: no lab suite recorded (is the lab up?)")
    return str(suite)


def runs_here(module: str, suite: str, function: str = "") -> bool:
    """Whether test `function` of `module` (path relative to tests/) runs on a lab of `suite` in make test."""
    return SHARED.get(f"{module}::{function}", SHARED.get(module, suite)) == suite


def split_enabled() -> bool:
    return os.environ.get("AUTOPGPOOL_PLATFORM_SPLIT", "") == "1"
