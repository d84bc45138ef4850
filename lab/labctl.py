#!/usr/bin/env python3
"""Entry point: python3 lab/labctl.py image|up|down|status|ssh (see lab/README.md)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from autopgpool_lab.cli import main

if __name__ == "__main__":
    sys.exit(main())
