# monolith-serving: `make run` (demo cluster + one Predict) and `make test` (everything CI runs).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BUILD := build
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends

.PHONY: help venv system-deps protos lint typecheck unit test run clean chart-rules

help:
	@echo "make run   - install, export the demo model, start a standalone cluster, send one Predict"
	@echo "make test  - install (incl. ZooKeeper via apt-get), lint, type-check and run every test"

venv: $(VENV)/.installed

# Debian and Ubuntu ship venv's ensurepip in a separate package (python3.X-venv, pulled in by python3-venv).
$(VENV)/.installed: pyproject.toml setup.py
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || { \
	  pkg="python$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv"; \
	  echo "installing from Debian packages: $$pkg (for $(PYTHON) -m venv)"; \
	  $(SUDO) apt-get update -q && $(APT_INSTALL) "$$pkg"; \
	}
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,onnx,remote]'
	touch $@

# System packages the tests need: ZooKeeper (brings Java) for discovery tests, promtool for the Prometheus
# checks, debootstrap + docker-compose to build registry-free images for the compose e2e test.
system-deps:
	@missing=""; \
	[ -f /usr/share/java/zookeeper.jar ] && command -v java >/dev/null || missing="$$missing zookeeper default-jre-headless"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v debootstrap >/dev/null || missing="$$missing debootstrap"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	if [ -n "$$missing" ]; then \
	  echo "installing from Debian packages:$$missing"; \
	  $(SUDO) apt-get update -q && $(APT_INSTALL) $$missing; \
	fi

# h2load (Debian package nghttp2-client) drives the Predict benchmarks (bench/predict.py, bench/proxy.py)
# without a Python client on the same cores as the servers.
.PHONY: bench-deps
bench-deps:
	@command -v h2load >/dev/null || { \
	  echo "installing from Debian packages: nghttp2-client"; \
	  $(SUDO) apt-get update -q && $(APT_INSTALL) nghttp2-client; \
	}

protos: venv
	$(PY) protos/generate.py

lint: venv
	$(VENV)/bin/ruff check services tests bench protos
	$(VENV)/bin/ruff format --check services tests bench protos

# mypy resolves the import package through a symlink, since monolith_serving is services/ renamed.
typecheck: venv
	@mkdir -p $(BUILD)/typecheck && ln -sfn ../../services $(BUILD)/typecheck/monolith_serving
	MYPYPATH=$(BUILD)/typecheck $(VENV)/bin/mypy -p monolith_serving

unit: venv
	$(PY) -m pytest -q tests/unit

# --durations: every CI log names the slowest tests, so a run that grows slow says where.
test: venv system-deps lint typecheck
	$(PY) -m pytest -q -ra --durations=20

# The standalone cluster runs in the background until the Predict has printed its scores.
DEMO_PORT ?= 8500
run: venv
	@mkdir -p $(BUILD)
	rm -rf $(BUILD)/demo-model
	$(PY) -m monolith_serving export-demo --out $(BUILD)/demo-model --num-ps 2
	@$(PY) -m monolith_serving demo --model $(BUILD)/demo-model --port $(DEMO_PORT) > $(BUILD)/demo.log 2>&1 & pid=$$!; \
	  trap 'kill -TERM $$pid 2>/dev/null; wait $$pid' EXIT; \
	  for i in $$(seq 1 240); do \
	    $(PY) -m monolith_serving health --addr 127.0.0.1:$(DEMO_PORT) >/dev/null 2>&1 && break; \
	    kill -0 $$pid 2>/dev/null || { cat $(BUILD)/demo.log; echo "demo cluster exited"; exit 1; }; \
	    sleep 0.5; \
	  done; \
	  cat $(BUILD)/demo.log; \
	  $(PY) -m monolith_serving client predict --target 127.0.0.1:$(DEMO_PORT) --model entry \
	    --spec $(BUILD)/demo-model --batch_size 4

# Container images of the compose cluster, built from Debian packages (no registry). Existing base, zookeeper and
# prometheus images are reused (FORCE=1 rebuilds them); the app image is rebuilt every time.
.PHONY: images
images: venv
	PYTHON=$(abspath $(PY)) deploy/images/build-images.sh all

# The Helm chart's PrometheusRule reads copies of the rule files (Helm reads files inside the chart only);
# tests/deploy/test_helm.py fails while they differ from deploy/.
chart-rules:
	cp deploy/recording_rules.yml deploy/alerts.yml helm/monolith-serving/rules/

clean:
	rm -rf $(BUILD) .pytest_cache .mypy_cache .ruff_cache
