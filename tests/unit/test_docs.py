"""docs/configuration.md repeats the opinionated defaults for operators; keep it in step with defaults.py."""

import re
from pathlib import Path

from autopgpool import defaults
from autopgpool.model import MODELED_KEYS, POOL_KEYS, REMOTE_KEYS, USER_KEYS

DOC = (Path(__file__).resolve().parents[2] / "docs/configuration.md").read_text()


def test_defaults_table_matches_defaults_py() -> None:
    section = DOC.split("### Opinionated defaults")[1].split("\n## ")[0].split("\n### ")[0]
    rows = re.findall(r"^\| `([a-z_]+)` +\| `([^`]+)` +\|", section, re.M)
    assert dict(rows) == {name: str(d.value) for name, d in defaults.SETTINGS.items()}


def test_every_key_is_documented() -> None:
    for key in (*USER_KEYS, *POOL_KEYS, *REMOTE_KEYS, *MODELED_KEYS):
        assert f"| `{key}`" in DOC, key
