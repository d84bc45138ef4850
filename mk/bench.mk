# Benchmarks (docs/benchmarks.md). The main Makefile includes this file; LAB_LOCK, LAB_INVENTORY and the venv
# come from there. Each target holds the lab lock for one run only and leaves the lab deployed with the example.
BENCH_ARGS ?=

.PHONY: bench bench-generate bench-converge bench-cold

bench: venv lab-image ## pgbench -S: PostgreSQL vs bare pgbouncer vs the deployed stack (~10 min, uses the lab)
	$(LAB_LOCK) $(BIN)/python -m bench pgbench $(BENCH_ARGS)

bench-generate: venv ## autopgpool generate: 10,000 users, 1,000 pools, MD5 and SCRAM (no lab)
	$(BIN)/python -m bench generate

bench-converge: venv lab-image ## Warm converge of the lab (postgres.yml + site.yml twice)
	$(LAB_LOCK) $(BIN)/python -m bench converge

# Cold includes the one pgbouncer build: the controller's cached artifacts are removed first (inside the lock,
# which every other lab user holds while it may read them).
BENCH_ARTIFACTS ?= $(HOME)/.cache/autopgpool/pgbouncer-artifacts

bench-cold: venv lab-image ## Cold converge: recreates the lab machines, builds pgbouncer once on pg1 (~1-2 min here)
	$(LAB_LOCK) bash -c 'rm -rf "$(BENCH_ARTIFACTS)" && $(BIN)/python -m bench converge --cold'
