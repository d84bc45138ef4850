"""autopgpool: one autopgpool.toml -> pgbouncer.ini, userlist.txt and pgbouncer_hba.conf."""

from .api import backends, budget_plan, deployment_plan, render_files, summarize, validate
from .errors import ConfigError, Problem
from .secrets import Secrets, ansible_sources

__all__ = [
    "ConfigError",
    "Problem",
    "Secrets",
    "ansible_sources",
    "backends",
    "budget_plan",
    "deployment_plan",
    "render_files",
    "summarize",
    "validate",
]
