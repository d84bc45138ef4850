"""autopgpool: one autopgpool.toml -> pgbouncer.ini, userlist.txt and pgbouncer_hba.conf."""

from .api import backends, budget_plan, deployment_plan, render_files, summarize, validate
from .errors import ConfigError, Problem
from .secrets import merge_sources

__all__ = [
    "ConfigError",
    "Problem",
    "backends",
    "budget_plan",
    "deployment_plan",
    "merge_sources",
    "render_files",
    "summarize",
    "validate",
]
