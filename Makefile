# meshless — the commands other tools call (see ../shared/DESIGN.md, "Interfaces").
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
KUBECONFIG_LOCAL := $(CURDIR)/.cache/cluster/kubeconfig

.PHONY: install system-packages control-plane cluster cluster-down crds run test lint typecheck unit integration bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# Debian packages the tests need as real peers (openssl, nginx, ...): hack/system-packages.txt
system-packages:
	bash hack/install-system-packages.sh

# Builds (or reuses) kube-apiserver and etcd; several minutes on a fresh machine, so it runs
# before pytest rather than inside a test fixture's time limit.
control-plane:
	bash hack/build-control-plane.sh

cluster: install control-plane
	$(PY) hack/localcluster.py up

cluster-down:
	@if [ -x $(PY) ]; then $(PY) hack/localcluster.py down; else echo "nothing to stop"; fi

crds: cluster
	hack/sync-chart-crds.sh
	kubectl --kubeconfig $(KUBECONFIG_LOCAL) apply --server-side -f crds/
	kubectl --kubeconfig $(KUBECONFIG_LOCAL) wait --for=condition=Established --timeout=60s crd --all

# Foreground: Ctrl-C stops the operator, then the control plane.
OPERATOR_NAMESPACE ?= meshless-system

run: crds
	kubectl --kubeconfig $(KUBECONFIG_LOCAL) create namespace $(OPERATOR_NAMESPACE) \
	  --dry-run=client -o yaml | kubectl --kubeconfig $(KUBECONFIG_LOCAL) apply -f -
	@trap '$(PY) hack/localcluster.py down' EXIT; \
	KUBECONFIG=$(KUBECONFIG_LOCAL) MESHLESS_NAMESPACE=$(OPERATOR_NAMESPACE) \
	  MESHLESS_WEBHOOK_HOST=127.0.0.1 MESHLESS_WEBHOOK_URL=https://127.0.0.1:9443 \
	  $(VENV)/bin/meshless run

lint: install
	hack/sync-chart-crds.sh --check
	$(VENV)/bin/ruff check operator tests bench hack examples
	$(VENV)/bin/ruff format --check operator tests bench hack examples

typecheck: install
	$(VENV)/bin/mypy

unit: install
	$(VENV)/bin/pytest tests/unit -q

integration: install control-plane
	$(VENV)/bin/pytest tests/integration -q

# The whole suite: static checks, then unit and integration tests (the test session starts
# the local control plane itself and stops it at the end).
test: lint typecheck control-plane system-packages
	$(VENV)/bin/pytest tests -q -ra

bench: install control-plane
	$(PY) bench/run.py
	$(PY) bench/policy.py
	$(PY) bench/rotation.py

clean: cluster-down
	rm -rf .cache/cluster $(VENV) .mypy_cache .ruff_cache .pytest_cache
