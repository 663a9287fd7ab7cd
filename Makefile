# meshless — the commands other tools call (docs/architecture.md, "The contract in short").
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
KUBECONFIG_LOCAL := $(CURDIR)/.cache/cluster/kubeconfig

.PHONY: install system-packages kubectl go control-plane node-binaries helm gospiffe image chart-lint cluster cluster-down crds run test lint typecheck unit integration bench clean

# A stock Debian Python has no ensurepip without the python3-venv package: installed here (apt,
# root or sudo) when missing, so `make install` needs only python3 itself.
# The versions come from hack/image-requirements.txt and hack/dev-requirements.txt (constraints:
# what the suite last passed with; dev-requirements.txt says how to move them).
$(VENV)/.installed: pyproject.toml hack/image-requirements.txt hack/dev-requirements.txt
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || bash hack/install-system-packages.sh python3-venv
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -c hack/image-requirements.txt -c hack/dev-requirements.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# Debian packages the tests need as real peers (openssl, nginx, ...): hack/system-packages.txt
system-packages:
	bash hack/install-system-packages.sh

# kubectl built from the pinned kubernetes module (the API server's version), cached machine-wide
# like the binaries below; every target and test runs it, never a kubectl from PATH.
KUBERNETES_VERSION := $(shell sed -n 's/^KUBERNETES_VERSION=//p' hack/versions.env)
KUBECTL := $(CURDIR)/.cache/bin/kubectl-$(KUBERNETES_VERSION)/kubectl

kubectl:
	bash hack/build-kubectl.sh

# The go the build scripts use: the machine's when at least GO_MIN_VERSION, else the pinned
# toolchain fetched from the Go module proxy and verified (hack/go.sh; ~/.cache/meshless/go).
go:
	@bash hack/go.sh

# Builds (or reuses) kube-apiserver and etcd; several minutes on a fresh machine, so it runs
# before pytest rather than inside a test fixture's time limit.
control-plane:
	bash hack/build-control-plane.sh

# The node's binaries (kubelet, kube-controller-manager, kube-scheduler, kube-proxy,
# kube-network-policies, CoreDNS, pause) for `make cluster NODE=1`; built once per machine.
node-binaries:
	bash hack/build-node.sh

# NODE=1 also runs a node: containerd, kubelet, controllers, NetworkPolicies, kube-proxy and
# CoreDNS, and pods get API tokens (docs/node.md).
NODE ?=
NODE_FLAG := $(if $(filter 1 yes true,$(NODE)),--node,)

cluster: install control-plane kubectl $(if $(NODE_FLAG),node-binaries system-packages,)
	$(PY) hack/localcluster.py up $(NODE_FLAG)

# Builds (or reuses) helm from its Go module, pinned in hack/versions.env (HELM_VERSION); the
# chart tests and `make chart-lint` use it, so they never skip for want of a helm on PATH.
HELM_VERSION := $(shell sed -n 's/^HELM_VERSION=//p' hack/versions.env)
HELM := $(CURDIR)/.cache/bin/helm-$(HELM_VERSION)/helm

helm:
	bash hack/build-helm.sh

# The operator's image without a registry or a container engine (hack/operatorimage.py): the
# Dockerfile's wheel and pinned dependencies on Debian's python3.11, imported into the running
# node as meshless.local/meshless:<the chart's appVersion> (the node imports it at start too).
image: install
	$(PY) hack/operatorimage.py load

# The go-spiffe peer of the name-constraint tests (tests/gospiffe); the tests build it too.
gospiffe:
	bash hack/build-gospiffe.sh

# The chart as Helm sees it: lint (strict, schema included) and a render with defaults and with
# every optional object on.
chart-lint: helm
	$(HELM) lint --strict charts/meshless
	$(HELM) lint --strict charts/meshless --set metrics.serviceMonitor.enabled=true \
	  --set metrics.prometheusRule.enabled=true
	$(HELM) template meshless charts/meshless -n meshless-system >/dev/null
	$(HELM) template meshless charts/meshless -n meshless-system \
	  --set metrics.serviceMonitor.enabled=true --set metrics.prometheusRule.enabled=true >/dev/null


cluster-down:
	@if [ -x $(PY) ]; then $(PY) hack/localcluster.py down; else echo "nothing to stop"; fi

crds: kubectl cluster
	hack/sync-chart-crds.sh
	$(KUBECTL) --kubeconfig $(KUBECONFIG_LOCAL) apply --server-side -f crds/
	$(KUBECTL) --kubeconfig $(KUBECONFIG_LOCAL) wait --for=condition=Established --timeout=60s crd --all

# Foreground: Ctrl-C stops the operator, then the control plane.
OPERATOR_NAMESPACE ?= meshless-system

run: crds
	$(KUBECTL) --kubeconfig $(KUBECONFIG_LOCAL) create namespace $(OPERATOR_NAMESPACE) \
	  --dry-run=client -o yaml | $(KUBECTL) --kubeconfig $(KUBECONFIG_LOCAL) apply -f -
	@trap '$(PY) hack/localcluster.py down' EXIT; \
	KUBECONFIG=$(KUBECONFIG_LOCAL) MESHLESS_NAMESPACE=$(OPERATOR_NAMESPACE) \
	  MESHLESS_WEBHOOK_HOST=127.0.0.1 MESHLESS_WEBHOOK_URL=https://127.0.0.1:9443 \
	  $(VENV)/bin/meshless run

lint: install chart-lint
	hack/sync-chart-crds.sh --check
	$(VENV)/bin/ruff check operator tests bench hack examples
	$(VENV)/bin/ruff format --check operator tests bench hack examples

typecheck: install
	$(VENV)/bin/mypy

unit: install helm gospiffe
	MESHLESS_HELM=$(HELM) $(VENV)/bin/pytest tests/unit -q

integration: install control-plane helm kubectl
	MESHLESS_HELM=$(HELM) $(VENV)/bin/pytest tests/integration -q

# The whole suite: static checks, then unit and integration tests (the test session starts
# the local control plane itself and stops it at the end).
test: system-packages lint typecheck control-plane node-binaries helm gospiffe kubectl
	MESHLESS_HELM=$(HELM) $(VENV)/bin/pytest tests -q -ra

bench: install control-plane kubectl
	$(PY) bench/run.py
	$(PY) bench/policy.py
	$(PY) bench/admission.py
	$(PY) bench/admission_floor.py
	$(PY) bench/probes.py
	$(PY) bench/rotation.py
	$(PY) bench/scale.py
	$(PY) bench/podcert.py

clean: cluster-down
	rm -rf .cache/cluster $(VENV) .mypy_cache .ruff_cache .pytest_cache
