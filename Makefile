# Neuraxis: every target sets itself up. `make test` and `make demo` are the two front doors.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
UV_VERSION := 0.13.8
# The stamp records which lock (and way of installing) the venv was synced from, so a change
# refreshes it.
STAMP := $(VENV)/.synced-$(shell (sha256sum requirements.lock; echo compile-bytecode) | sha256sum | cut -c1-16)

.PHONY: help venv lock test test-lane-cluster test-lane-rest lint typecheck unit crds demo tools tool-binaries tools-all jars image cluster cluster-down infra-up infra-down clean

help:
	@echo "make demo        set up and run the main example"
	@echo "make test        set up, then lint, type-check and run every test (builds the tools on first use)"
	@echo "make crds        regenerate crds/ from the pydantic models"
	@echo "make tools       build the pinned control-plane binaries into the tool cache"
	@echo "make image       build the workload image offline; import it into the real node if it runs"
	@echo "make cluster     start the local control plane (KWOK pools + a real node); make cluster-down stops it"
	@echo "make lock        re-resolve requirements.in into requirements.lock"

venv: $(STAMP)

# Bytecode is compiled once here: with PYTHONDONTWRITEBYTECODE set (as on our CI machines)
# Python never caches it, and every workload process recompiled torch and Ray (~9 s each).
$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@test -x $(UV) || $(PY) -m pip install -q "uv==$(UV_VERSION)"
	VIRTUAL_ENV=$(VENV) $(UV) pip sync -q --compile-bytecode requirements.lock
	VIRTUAL_ENV=$(VENV) $(UV) pip install -q --no-deps -e .
	@rm -f $(VENV)/.synced-*
	@touch $@

lock: venv
	$(UV) pip compile -q requirements.in -o requirements.lock --python-version 3.11 --python-platform x86_64-manylinux_2_28

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy neuraxis tests bench

crds: venv
	$(VENV)/bin/neuraxis crds generate

# What the tests run: the control plane, the real node (kubelet and kube-proxy are in the
# kubernetes set; containerd, CoreDNS), MinIO, and the real Pulumi engine (the CLI, the
# Kubernetes provider and the Python language host of sdk v3.68.0, with its exec script), and
# glua (the Lua 5.1 of Argo CD) for the health checks in gitops/argocd, and Prometheus with promtool.
# `dev node deps` apt-installs the node's Debian packages (runc, CNI plugins, iptables,
# conntrack, busybox-static) only when one of their binaries is missing.
# Longest builds first: two run at once (`--jobs`), so the short ones fill in at the end.
TEST_TOOLS := pulumi-resource-kubernetes kubernetes pulumi coredns containerd prometheus minio kwok etcd pulumi-language-python glua

tools: tool-binaries venv
	$(VENV)/bin/neuraxis dev node deps

# The builds need only the standard library: they start before (and beside) the venv.
tool-binaries:
	PYTHONPATH=. $(PYTHON) -m neuraxis.dev.toolchain $(TEST_TOOLS)

tools-all: venv
	$(VENV)/bin/neuraxis dev tools build

cluster: tools
	$(VENV)/bin/neuraxis dev cluster up

cluster-down: venv
	$(VENV)/bin/neuraxis dev cluster down

jars: venv
	$(PY) -m neuraxis.dev.jars delta s3

# The workload image, assembled offline (neuraxis/dev/image.py; layers cached by key in
# ~/.cache/neuraxis/images), then imported into the real node's containerd when a node runs.
image: venv jars
	$(VENV)/bin/neuraxis dev image build
	$(VENV)/bin/neuraxis dev image import --if-node-running

# The local Pulumi stack provisions a bare control plane (CRDs, nodes, operator, monitoring).
infra-up: tools-all
	$(VENV)/bin/neuraxis dev cluster up --bare
	$(VENV)/bin/neuraxis dev infra up

infra-down: venv
	$(VENV)/bin/neuraxis dev infra down

unit: venv
	$(VENV)/bin/pytest -m "not cluster and not engine"

# The set-up steps run side by side: on a cold machine the tool builds keep the CPUs busy for
# most of an hour while the jar and image steps mostly download.
# The tests run in two lanes at once: the cluster tests (one control plane with the real node,
# mostly waiting on pods, controllers and Flower's polling) and all the others, which fill that
# idle CPU. Each lane's lines carry its name and arrive as they are written (unbuffered); each
# prints its slowest tests (where CI time goes).
test:
	$(MAKE) --no-print-directory -j3 lint typecheck tools jars image
	$(PY) -m compileall -q -j 0 neuraxis workloads  # the project's own bytecode (see venv)
	$(MAKE) --no-print-directory -j2 test-lane-cluster test-lane-rest

test-lane-cluster:
	PYTHONUNBUFFERED=1 $(VENV)/bin/pytest -m cluster --durations=15 2>&1 | sed -u 's/^/[cluster] /'

test-lane-rest:
	PYTHONUNBUFFERED=1 $(VENV)/bin/pytest -m "not cluster" --durations=15 2>&1 | sed -u 's/^/[rest] /'

# The example's hash salt and serving API key come from Secrets in a cluster; locally from
# these variables (NEURAXIS_SECRET_<SECRET>_<KEY>).
DEMO_SALT ?= neuraxis-demo-salt-change-me
DEMO_API_KEY ?= neuraxis-demo-api-key-change-me

demo: venv
	$(PY) -m compileall -q -j 0 neuraxis workloads  # the project's own bytecode (see venv)
	$(PY) -m neuraxis.dev.jars delta
	NEURAXIS_SECRET_LAKE_SALT_SALT=$${NEURAXIS_SECRET_LAKE_SALT_SALT:-$(DEMO_SALT)} \
	NEURAXIS_SECRET_ANOMALY_DETECTOR_API_KEYS_DEMO=$${NEURAXIS_SECRET_ANOMALY_DETECTOR_API_KEYS_DEMO:-$(DEMO_API_KEY)} \
		$(VENV)/bin/neuraxis run examples/smart-manufacturing

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
