"""The one error users see: a list of problems, each naming the key it is about."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

#: Problems listed in a message; a machine-written file can have hundreds of thousands.
MAX_SHOWN = 100


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with the configuration, e.g. ``pools.main.remote.port: expected an integer ...``."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` lists every reason found, in file order."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__(self.message)

    @property
    def message(self) -> str:
        count = len(self.problems)
        header = f"invalid autopgpool configuration ({count} problem{'s' if count != 1 else ''}):"
        lines = [header, *(f"  - {p}" for p in self.problems[:MAX_SHOWN])]
        if count > MAX_SHOWN:
            lines.append(f"  ... and {count - MAX_SHOWN} more (the first {MAX_SHOWN} are shown)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.message


class Problems:
    """Collects problems while a whole configuration is checked, then raises them all at once.

    Warnings are kept apart: they do not stop a configuration, but the CLI prints them and the summary
    carries them, so they reach whoever deploys. Like problems, they name keys and variables, never values.
    """

    def __init__(self) -> None:
        self._items: list[Problem] = []
        self.warnings: list[Problem] = []

    def add(self, path: str, message: str) -> None:
        self._items.append(Problem(path, message))

    def worth_detail(self) -> bool:
        """Whether a problem added now is still among those a message shows (costly hints can be skipped)."""
        return len(self._items) < MAX_SHOWN

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(Problem(path, message))

    def __len__(self) -> int:
        return len(self._items)

    def raise_if_any(self) -> None:
        if self._items:
            raise ConfigError(self._items)
