"""Statistics and the printed table: medians over repetitions, latency percentiles, ratios. Pure functions."""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

_TPS = re.compile(r"^tps = ([0-9.]+)", re.MULTILINE)
_CONN = re.compile(r"^average connection time = ([0-9.]+) ms", re.MULTILINE)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)
_DONE = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)

#: Processes on the pooler host whose CPU time a run charges to its transactions, as the table names them.
CPU_PARTS = ("pgbench", "pgbouncer", "haproxy", "journald")


@dataclass(frozen=True)
class PgbenchSummary:
    tps: float
    connect_ms: float | None
    failed: int
    transactions: int


def parse_summary(text: str) -> PgbenchSummary:
    """tps, average connection time (with -C) and failures from pgbench's report."""
    tps = _TPS.search(text)
    if tps is None:
        raise ValueError(f"no 'tps = ' line in pgbench output:\n{text}")
    conn = _CONN.search(text)
    failed = _FAILED.search(text)
    done = _DONE.search(text)
    return PgbenchSummary(
        tps=float(tps.group(1)),
        connect_ms=float(conn.group(1)) if conn else None,
        failed=int(failed.group(1)) if failed else 0,
        transactions=int(done.group(1)) if done else 0,
    )


def cpu_us_per_transaction(seconds: dict[str, float], transactions: int) -> dict[str, float]:
    """CPU seconds per process kind over a run -> µs per transaction (nan without transactions)."""
    if not transactions:
        return dict.fromkeys(CPU_PARTS, math.nan)
    return {part: seconds.get(part, 0.0) * 1e6 / transactions for part in CPU_PARTS}


def latencies_us(log_lines: Iterable[str]) -> list[int]:
    """Latencies (µs) from pgbench --log lines: ``client_id tx_no time_us script_no epoch us``."""
    out: list[int] = []
    for line in log_lines:
        parts = line.split()
        if len(parts) >= 6 and parts[2].isdigit():
            out.append(int(parts[2]))
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted values; the value a real transaction had."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


@dataclass
class Cell:
    """Repetitions of one (target, mode, clients) combination."""

    tps: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    connect_ms: list[float] = field(default_factory=list)
    cpu_us: dict[str, list[float]] = field(default_factory=dict)

    def add(
        self, summary: PgbenchSummary, lat_us: Sequence[int], cpu_us: dict[str, float] | None = None
    ) -> None:
        self.tps.append(summary.tps)
        for part, value in (cpu_us or {}).items():
            self.cpu_us.setdefault(part, []).append(value)
        self.p50_ms.append(percentile(lat_us, 50) / 1000)
        self.p99_ms.append(percentile(lat_us, 99) / 1000)
        if summary.connect_ms is not None:
            self.connect_ms.append(summary.connect_ms)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def _fmt(value: float, digits: int) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


#: Column names of the targets in every table.
LABELS = {"direct": "PG", "bare": "bare", "instance": "inst", "stack": "stack", "variant": "var"}


def simple_table(rows: Sequence[Sequence[str]]) -> str:
    """A markdown table from a header row and data rows."""
    head, *body = rows
    lines = [head, ["---"] * len(head), *body]
    return "\n".join("| " + " | ".join(r) + " |" for r in lines)


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def table(
    cells: dict[tuple[str, str, int], Cell],
    targets: Sequence[str],
    modes: Sequence[str],
    clients: Sequence[int],
) -> str:
    """One markdown table: per (mode, clients) the median tps of every target, the stack's ratios, latency."""
    short = [LABELS.get(t, t) for t in targets]
    head = ["mode", "clients"]
    head += [f"tps {s}" for s in short]
    have = set(targets)
    ratios = [
        (a, b) for a, b in (("stack", "direct"), ("stack", "bare"), ("instance", "bare")) if {a, b} <= have
    ]
    head += [f"{LABELS[a]}/{LABELS[b]}" for a, b in ratios]
    head += ["p50 ms " + " / ".join(short), "p99 ms " + " / ".join(short)]
    if {"stack", "bare"} <= have:
        head.append("stack-bare p50 ms")
    if "-C" in modes:
        head.append("connect ms " + " / ".join(short))
    rows = [head]
    for mode in modes:
        for n in clients:
            got = {t: cells.get((t, mode, n), Cell()) for t in targets}
            tps = {t: median(c.tps) for t, c in got.items()}
            p50 = {t: median(c.p50_ms) for t, c in got.items()}
            row = [mode, str(n)]
            row += [_fmt(tps[t], 0) for t in targets]
            row += [_fmt(ratio(tps[a], tps[b]), 2) + "x" for a, b in ratios]
            row.append(" / ".join(_fmt(p50[t], 3) for t in targets))
            row.append(" / ".join(_fmt(median(got[t].p99_ms), 3) for t in targets))
            if {"stack", "bare"} <= have:
                row.append(_fmt(p50["stack"] - p50["bare"], 3))
            if "-C" in modes:
                row.append(
                    " / ".join(_fmt(median(got[t].connect_ms), 2) for t in targets) if mode == "-C" else ""
                )
            rows.append(row)
    return simple_table(rows)


def cpu_table(
    cells: dict[tuple[str, str, int], Cell],
    targets: Sequence[str],
    modes: Sequence[str],
    clients: Sequence[int],
) -> str:
    """CPU time on the pooler host per transaction (median µs), by process kind, for every target."""
    head = ["mode", "clients"]
    head += [f"{LABELS.get(t, t)}: " + " / ".join(CPU_PARTS) + " = total" for t in targets]
    rows = [head]
    for mode in modes:
        for n in clients:
            row = [mode, str(n)]
            for t in targets:
                got = cells.get((t, mode, n), Cell()).cpu_us
                parts = [median(got.get(part, [])) for part in CPU_PARTS]
                row.append(" / ".join(_fmt(v, 0) for v in parts) + f" = {_fmt(sum(parts), 0)}")
            rows.append(row)
    return simple_table(rows)
