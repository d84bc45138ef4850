# Operations drills on the lab (tests/drills, docs/operations.md): each operation runs under pgbench load
# through HAProxy on every pooler host and prints its figures. Included by the Makefile; the callers take
# the lab lock around whole runs. About 10 minutes for all of them (the first upgrade drill builds 1.24.1).
#   make drills                       every drill (deploys the example config first: DRILLS_DEPLOY=0 skips that)
#   make drill-rolling-restart        one drill: drill-upgrade, drill-reload, drill-crash, drill-postgres-restart,
#                                     drill-bad-toml, drill-tls-rotation, drill-vip
DRILLS_PYTEST ?= pytest -m drill -s -p no:cacheprovider tests/drills
DRILLS_DEPLOY ?= 1
DRILLS_INVENTORY ?= -i .lab/inventory.yml -i inventories/lab
# drill name -> pytest -k expression (the test file)
DRILLS := rolling-restart upgrade reload crash postgres-restart bad-toml tls-rotation vip

.PHONY: drills drills-lab $(addprefix drill-,$(DRILLS))

drills-lab: ## Boot the lab (idempotent) and converge it to the example config, as the drills expect
	python3 lab/labctl.py up
	ansible-playbook $(DRILLS_INVENTORY) lab/playbooks/postgres.yml
	ansible-playbook $(DRILLS_INVENTORY) playbooks/site.yml

drills: $(if $(filter 1,$(DRILLS_DEPLOY)),drills-lab) ## Every operations drill on the lab, under load, with figures
	$(DRILLS_PYTEST)

$(addprefix drill-,$(DRILLS)): drill-%:
	$(DRILLS_PYTEST) -k "test_$(subst -,_,$*)"
