"""The benchmark's statistics and table (bench/stats.py): parsing pgbench, percentiles, medians, ratios."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # bench/ lives at the repository root

from bench.layouts import threads_for
from bench.stats import (
    Cell,
    PgbenchSummary,
    cpu_table,
    cpu_us_per_transaction,
    latencies_us,
    parse_summary,
    percentile,
    table,
)

REPORT_C = """\
transaction type: <builtin: select only>
number of clients: 8
number of transactions actually processed: 5123
number of failed transactions: 0 (0.000%)
latency average = 7.8 ms
average connection time = 1.234 ms
tps = 1024.5 (including reconnection times)
"""


def test_parse_summary_reads_tps_connection_time_and_failures() -> None:
    assert parse_summary(REPORT_C) == PgbenchSummary(
        tps=1024.5, connect_ms=1.234, failed=0, transactions=5123
    )
    assert parse_summary("tps = 10.0 (without initial connection time)\n").connect_ms is None
    with pytest.raises(ValueError, match="no 'tps = ' line"):
        parse_summary("pgbench: error: connection refused")


def test_latencies_come_from_the_third_field_of_log_lines() -> None:
    lines = ["0 1 250 0 1700000000 123456", "1 1 1250 0 1700000000 123999", "garbage", ""]
    assert latencies_us(lines) == [250, 1250]


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile([7], 99) == 7
    assert percentile([3, 1, 2], 50) == 2


def test_table_shows_medians_and_ratios() -> None:
    cells = {}
    for target, tps_values in {
        "direct": [100, 300, 200],
        "bare": [1000, 1000, 1000],
        "stack": [900, 950, 800],
    }.items():
        cell = Cell()
        for tps in tps_values:
            cell.add(PgbenchSummary(tps=tps, connect_ms=None, failed=0, transactions=1), [1000, 2000, 3000])
        cells[(target, "persistent", 8)] = cell
    out = table(cells, ["direct", "bare", "stack"], ["persistent"], [8])
    header, _, row = out.splitlines()
    assert "stack/PG" in header
    assert "stack/bare" in header
    cols = [c.strip() for c in row.strip("|").split("|")]
    assert cols[:5] == ["persistent", "8", "200", "1000", "900"]
    assert cols[5:7] == ["4.50x", "0.90x"]
    assert cols[7] == "2.000 / 2.000 / 2.000"


def test_cpu_is_charged_per_transaction_by_process_kind() -> None:
    per_tx = cpu_us_per_transaction({"pgbench": 0.5, "haproxy": 0.25, "pgbouncer": 0.75}, 5000)
    assert per_tx == {"pgbench": 100.0, "pgbouncer": 150.0, "haproxy": 50.0, "journald": 0.0}
    cells = {("stack", "-C", 8): Cell()}
    for value in (40.0, 50.0, 60.0):
        cpu = {"pgbench": 100.0, "pgbouncer": 2 * value, "haproxy": value, "journald": 10.0}
        cells["stack", "-C", 8].add(
            PgbenchSummary(tps=1.0, connect_ms=1.0, failed=0, transactions=1), [1000], cpu
        )
    row = cpu_table(cells, ["stack"], ["-C"], [8]).splitlines()[2]
    assert row == "| -C | 8 | 100 / 100 / 50 / 10 = 260 |"


def test_connect_runs_get_a_thread_per_client() -> None:
    assert threads_for(8, connect=True, threads=None) == 8
    assert threads_for(32, connect=False, threads=None) == 2
    assert threads_for(1, connect=False, threads=None) == 1
    assert threads_for(8, connect=True, threads=2) == 2
