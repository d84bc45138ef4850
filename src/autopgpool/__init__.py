"""autopgpool: one autopgpool.toml -> pgbouncer.ini, userlist.txt and pgbouncer_hba.conf."""

from .api import backends, render_files, summarize, validate
from .errors import ConfigError, Problem
from .secrets import merge_sources

__all__ = ["ConfigError", "Problem", "backends", "merge_sources", "render_files", "summarize", "validate"]
