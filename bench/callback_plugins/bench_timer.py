"""Ansible callback for the benchmark: wall time per task (summed over hosts' slowest), written as JSON.

Enabled only by ``bench`` (``ANSIBLE_CALLBACK_PLUGINS`` + ``ANSIBLE_CALLBACKS_ENABLED``); the file named by
``AUTOPGPOOL_BENCH_TIMINGS`` receives ``[{"task": ..., "seconds": ...}, ...]`` in run order.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):  # type: ignore[misc]
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "bench_timer"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self._rows: list[dict[str, Any]] = []
        self._current: tuple[str, float] | None = None

    def _close(self) -> None:
        if self._current is not None:
            name, start = self._current
            self._rows.append({"task": name, "seconds": round(time.monotonic() - start, 3)})
            self._current = None

    def v2_playbook_on_task_start(self, task: Any, is_conditional: bool) -> None:
        self._close()
        self._current = (task.get_name(), time.monotonic())

    def v2_playbook_on_handler_task_start(self, task: Any) -> None:
        self._close()
        self._current = ("HANDLER " + task.get_name(), time.monotonic())

    def v2_playbook_on_play_start(self, play: Any) -> None:
        self._close()

    def v2_playbook_on_stats(self, stats: Any) -> None:
        self._close()
        path = os.environ.get("AUTOPGPOOL_BENCH_TIMINGS")
        if path:
            with open(path, "w", encoding="utf-8") as fh:
                json.dump(self._rows, fh, indent=1)
