# The two commands of README.md: `make demo` and `make test`. Both install what they need on a
# fresh Debian 12 machine (run as root: the lab boots systemd-nspawn machines).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
LAB_INVENTORY := -i .lab/inventory.yml -i inventories/lab
# One user of a lab at a time (tests, drills, benchmarks, the demo): whole runs hold this lock. Labs in other
# slots (AUTOPGPOOL_LAB_SLOT=1..9, see lab/README.md) have their own machines, network and lock.
AUTOPGPOOL_LAB_SLOT ?= 0
LAB_LOCK := flock /run/lock/autopgpool-lab$(filter-out 0,$(AUTOPGPOOL_LAB_SLOT)).lock

# Controller packages: the lab (debootstrap, nspawn, bridge, ssh; dpkg-scanpackages and PyYAML for its package
# mirror, which reads the roles' package lists), the pinned pgbouncer build and a
# PostgreSQL server for the integration tests, HAProxy for the admin-socket module tests, Prometheus for
# promtool (the alert rules' checks and unit tests; its server is not run on the controller).
APT_PACKAGES := debootstrap systemd-container iproute2 openssh-client rsync curl ca-certificates dpkg-dev python3-yaml \
	build-essential pkg-config libevent-dev libssl-dev libc-ares-dev libsystemd-dev \
	postgresql postgresql-client postgresql-contrib python3-venv haproxy prometheus

# `make test` prints a UTC timestamp as each stage starts, so a CI log shows where its 90 minutes went.
stage = echo "=== $$(date -u +%FT%TZ) $(1)"

include lab/lab.mk
-include mk/*.mk

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

.PHONY: deps
deps: ## Install the controller's Debian packages (only those missing)
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "Installing: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
		case " $$missing " in *" prometheus "*) systemctl disable --now prometheus.service 2>/dev/null || true;; esac; \
	fi

# Every package of the controller's environment is pinned by version and sha256 (requirements/*.txt; the process
# that holds the Vault secrets installs nothing the index happens to serve that day). `make lock` regenerates them.
LOCKS := requirements/build.txt requirements/controller.txt requirements/dev.txt
$(VENV)/.installed: pyproject.toml $(LOCKS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes -r requirements/build.txt -r requirements/dev.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $@

PIP_COMPILE := .cache/pip-tools/bin/pip-compile -q --generate-hashes --allow-unsafe --no-emit-index-url \
	--no-emit-find-links --strip-extras
.PHONY: lock
lock: ## Regenerate the hash-pinned requirements/*.txt from pyproject.toml and requirements/build.in
	$(PYTHON) -m venv .cache/pip-tools
	.cache/pip-tools/bin/pip install -q pip-tools==7.6.2
	$(PIP_COMPILE) -o requirements/build.txt requirements/build.in
	$(PIP_COMPILE) -o requirements/controller.txt pyproject.toml
	$(PIP_COMPILE) --extra dev -o requirements/dev.txt pyproject.toml

# The checkout is the collection autopgpool.pool (galaxy.yml): ansible.cfg and molecule find it by FQCN through
# this link, the way an operator's ansible finds the installed tarball.
COLLECTION_LINK := .cache/collections/ansible_collections/autopgpool/pool
$(COLLECTION_LINK):
	mkdir -p $(dir $@)
	ln -sfn ../../../.. $@

.PHONY: venv
venv: $(VENV)/.installed $(COLLECTION_LINK) ## Create the virtualenv with the package and its tools (and link the collection)

.PHONY: lint
lint: venv ## ruff, mypy, yamllint, ansible-lint (production profile), promtool, role READMEs in step with their specs
	promtool check rules monitoring/rules/*.yml
	promtool test rules monitoring/tests/*.yml
	ruff check .
	ruff format --check .
	mypy
	yamllint -s .
	ansible-lint
	python tools/role_docs.py --check

.PHONY: unit
unit: deps venv ## Unit tests and the real-pgbouncer integration tests (loopback only)
	AUTOPGPOOL_LAB_SLOT=0 pytest -m "not e2e and not lab"

.PHONY: lab-smoke
lab-smoke: deps venv lab-image ## Boot the lab twice (idempotent up), check every machine, tear it down, check nothing is left
	$(LAB_LOCK) pytest -m lab tests/lab

# Both platforms, one after the other in the same lab slot: Debian 12 (scenario default), then Debian 13.
.PHONY: molecule
molecule: deps venv lab-image ## The molecule scenarios on the lab (Debian 12, 13): create, converge, idempotence, verify, destroy
	@$(call stage,molecule default (Debian 12) starts)
	$(LAB_LOCK) molecule test -s default
	@$(call stage,molecule trixie (Debian 13) starts)
	$(LAB_LOCK) molecule test -s trixie
	@$(call stage,molecule done)

# The released artifacts as an operator gets them (README.md, "Use it from your own repository").
.PHONY: role-docs
role-docs: venv ## Regenerate the variable tables of roles/*/README.md from meta/argument_specs.yml
	python tools/role_docs.py

.PHONY: dist
dist: venv ## Build the release files into dist/: the collection tarball and the autopgpool wheel
	rm -rf dist && mkdir -p dist
	ansible-galaxy collection build --output-path dist
	$(BIN)/python -m pip wheel -q --no-deps --no-build-isolation -w dist .

# tests/consumer: builds both files, installs them with the README's two commands into a fresh virtualenv outside
# the repository and deploys the lab from an operator project of its own by FQCN. Boots the lab and gives pg1 its
# backends first, tears it down after.
.PHONY: consumer
consumer: deps venv lab-image ## The built collection + wheel, installed as README.md says, deploy the lab from outside the repository
	$(LAB_LOCK) bash -c 'python3 lab/labctl.py up && ansible-playbook $(LAB_INVENTORY) lab/playbooks/postgres.yml \
		&& pytest -m consumer -s -p no:cacheprovider tests/consumer; rc=$$?; python3 lab/labctl.py down; exit $$rc'

# CI gives make test 90 minutes on two cores. The static checks (lint, unit) need no lab, and the lab's own checks
# before molecule (lab-smoke, then the consumer test from the built release files, outside the repository) write
# nothing the static checks read; neither is timing-sensitive, so the two run side by side (the static checks'
# output is printed when both are done). The molecule scenarios, whose drills time failovers, then run alone.
.PHONY: test
test: deps venv ## Everything CI runs
	@mkdir -p .cache
	@$(call stage,make test: lint + unit beside lab-smoke + consumer start)
	@( set +e; $(MAKE) -f $(firstword $(MAKEFILE_LIST)) --no-print-directory lint unit > .cache/test-static.log 2>&1; echo $$? > .cache/test-static.rc ) & \
	lab=0; $(MAKE) -f $(firstword $(MAKEFILE_LIST)) --no-print-directory lab-smoke consumer || lab=$$?; wait; \
	echo "=== make lint unit (ran beside make lab-smoke consumer) ==="; cat .cache/test-static.log; \
	static=$$(cat .cache/test-static.rc); \
	if [ "$$static" != 0 ] || [ "$$lab" != 0 ]; then \
		echo "make test: lint + unit exit $$static, lab-smoke + consumer exit $$lab" >&2; exit 1; fi
	@$(call stage,make test: static checks and lab-smoke + consumer done)
	$(MAKE) -f $(firstword $(MAKEFILE_LIST)) --no-print-directory molecule
	@$(call stage,make test: done)

# A warm re-run skips the three deploying playbooks when `labctl deployed check` finds the checkout's inputs and
# every machine as the last full run left them (lab/README.md, "A warm make demo"); the smoke test always runs,
# and a full run is recorded only once its smoke test passed. DEMO_FORCE=1 deploys in full regardless.
.PHONY: demo
demo: deps venv lab-image lab-up ## Boot the lab and deploy examples/autopgpool.toml to it
	@$(LAB_LOCK) bash -euo pipefail -c ' \
	if [ "$${DEMO_FORCE:-0}" != 1 ] && python3 lab/labctl.py deployed check; then \
		echo "Deployment unchanged since the last full make demo: postgres.yml, site.yml and monitoring.yml skipped (DEMO_FORCE=1 runs them)."; \
		ansible-playbook $(LAB_INVENTORY) playbooks/smoke_test.yml; \
	else \
		echo "Deploying in full: lab/playbooks/postgres.yml, playbooks/site.yml, lab/playbooks/monitoring.yml, smoke test."; \
		python3 lab/labctl.py deployed forget; \
		ansible-playbook $(LAB_INVENTORY) lab/playbooks/postgres.yml; \
		ansible-playbook $(LAB_INVENTORY) playbooks/site.yml; \
		ansible-playbook $(LAB_INVENTORY) lab/playbooks/monitoring.yml; \
		ansible-playbook $(LAB_INVENTORY) playbooks/smoke_test.yml; \
		python3 lab/labctl.py deployed record; \
	fi'
	@echo
	@echo "The lab is up. Connect through HAProxy on either pooler host, TLS verified against the lab CA"
	@echo "(password: examples/demo.env; TLS is required, pgbouncer verifies pg1 the same way):"
	@echo "  PGPASSWORD=demo-app-user-pw psql \"host=10.231.0.11 port=6432 user=app_user dbname=app sslmode=verify-full sslrootcert=$(CURDIR)/.lab/tls/ca.crt\""
	@echo "  PGPASSWORD=demo-app-user-pw psql \"host=pool2 hostaddr=10.231.0.12 port=6432 user=app_user dbname=app sslmode=verify-full sslrootcert=$(CURDIR)/.lab/tls/ca.crt\""
	@echo "Or through the poolers' virtual IP, held by one pooler at a time (roles/keepalived moves it when that one fails):"
	@echo "  PGPASSWORD=demo-app-user-pw psql \"host=10.231.$(AUTOPGPOOL_LAB_SLOT).100 port=6432 user=app_user dbname=app sslmode=verify-full sslrootcert=$(CURDIR)/.lab/tls/ca.crt\""
	@echo "Prometheus (pool metrics, alerts): http://10.231.0.10:9090   |   Fleet view: ansible-playbook $(LAB_INVENTORY) playbooks/fleet.yml"
	@echo "Machines: ssh -F .lab/ssh_config pool1   |   Tear down: make lab-down"
