# Lab targets; the main Makefile does `include lab/lab.mk`. Needs root (debootstrap, mounts, bridge, nspawn).
LAB_PYTHON ?= python3
LAB_SUITE ?= $(or $(AUTOPGPOOL_LAB_SUITE),bookworm)
LAB_POOLERS ?= 2

.PHONY: lab-image lab-up lab-down lab-status

lab-image: ## Build (or reuse) the cached base image for LAB_SUITE
	$(LAB_PYTHON) lab/labctl.py image --suite $(LAB_SUITE)

lab-up: ## Boot pg1 and LAB_POOLERS pooler machines (idempotent)
	$(LAB_PYTHON) lab/labctl.py up --suite $(LAB_SUITE) --machines $(LAB_POOLERS)

lab-down: ## Stop every lab machine and remove overlays, bridge and veths
	$(LAB_PYTHON) lab/labctl.py down

lab-status: ## Show each lab machine and its systemd state
	$(LAB_PYTHON) lab/labctl.py status
