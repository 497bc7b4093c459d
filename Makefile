# MFS — make verbs (p4lang/tutorials style). Run as root for anything that builds a network.
#   make demo     emulated cluster on the embedded target, MFS vs baselines (the main job)
#   make test     the whole test suite (unit, component, data-plane, emulation)
#   make bench    benchmarks with printed figures
#   make p4       compile p4src/ with p4c (if installed) into p4src/build/
#   make run      start the default topology + controller and leave it running; make stop
#   make clean    stop everything and remove logs/outputs

PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
SHELL_VENV  ?= .venv-shell
TOPO        ?= topo/topologies/demo.yaml
PYTEST_ARGS ?=
DEMO_ARGS   ?=
BENCH_ARGS  ?=

.PHONY: all venv shell-venv sysdeps demo test test-unit bench p4 run stop stop-all clean proto tofino-config help

all: demo

help:
	@sed -n '2,8p' Makefile

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# p4runtime-shell pins protobuf<3.21, so it gets its own venv (used as an independent peer in tests).
$(SHELL_VENV)/.installed:
	$(PYTHON) -m venv $(SHELL_VENV)
	$(SHELL_VENV)/bin/pip install -q 'p4runtime-shell==0.0.6'
	touch $@

shell-venv: $(SHELL_VENV)/.installed

# System packages the emulation needs (Debian). Skipped when already present. (No ethtool or
# procps: offloads and sysctls are set with the SIOCETHTOOL ioctl and /proc/sys.) Afterwards
# the preflight (topo/preflight.py: the same checks conftest.py skips tests by) prints what is
# met and which tests will be skipped, with the reason.
SYSDEPS := iproute2 iputils-ping mininet bridge-utils

sysdeps:
	@missing=""; for p in $(SYSDEPS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
	  || echo "warning: could not install$$missing"; fi
	@$(if $(wildcard $(PY)),$(PY),$(PYTHON)) -m topo.preflight

demo: venv sysdeps
	$(PY) -m topo.demo $(DEMO_ARGS)

test: venv shell-venv sysdeps
	$(PY) -m pytest -ra $(PYTEST_ARGS)

test-unit: venv
	$(PY) -m pytest -ra -m 'not netns and not slow' $(PYTEST_ARGS)

bench: venv
	$(PY) -m bench $(BENCH_ARGS)

p4:
	bash p4src/compile.sh

proto: venv
	$(PY) -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. mfs/proto/report.proto

tofino-config: venv
	$(PY) -m controller.tofino --queues p4src/queues.yaml --out out/tofino

run: venv sysdeps
	$(PY) -m topo.cli run $(TOPO)

# stop: detached/crashed clusters and leftovers (a cluster whose owner still runs is left alone).
# stop-all: every cluster, plus Mininet's own cleanup (`mn -c` also removes unrelated *-ethN links).
stop:
	-$(PY) -m topo.cli stop

stop-all:
	-$(PY) -m topo.cli stop --all
	-mn -c >/dev/null 2>&1 || true

clean: stop
	rm -rf logs pcaps out .pytest_cache
