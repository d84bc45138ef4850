"""The example the project ships (examples/autopgpool.toml) and its demo-only secrets (examples/demo.env),
read once the same way by every test suite."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIG = ROOT / "examples" / "autopgpool.toml"
DEMO_ENV_FILE = ROOT / "examples" / "demo.env"


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; blank lines and # comments skipped."""
    pairs = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            pairs[key.strip()] = value.strip()
    return pairs


DEMO_ENV = read_env_file(DEMO_ENV_FILE)
