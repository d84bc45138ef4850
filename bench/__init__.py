"""Benchmarks of autopg-pool on the lab: pooler layouts side by side, and the toolkit's own speed.

``python -m bench pgbench`` (pgbench -S against PostgreSQL, a bare pgbouncer, one stack instance and the
deployed stack), ``python -m bench generate`` (autopgpool generate on 10,000 users / 1,000 pools) and
``python -m bench converge`` (cold and warm lab converge). See docs/benchmarks.md.
"""
