# Prism — make demo · make test · make lint · make bench
# uv installs the locked environment (uv.lock) into .venv with this machine's Python 3.11.
# Where uv is missing it is bootstrapped with pip into .tools/.

SHELL := /bin/bash
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON ?= python3.11
# Under `uv run`, Ray would start every worker of a local Ray with `uv run` inside a copy of the working folder
# (without .tools/ or .venv/, so with a relative uv it cannot start at all); its workers use this .venv instead.
export RAY_ENABLE_UV_RUN_RUNTIME_ENV ?= 0
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
RUN := $(UV) run --frozen

.PHONY: install postgres haproxy demo demo-sketches test test-fast lint bench clean

# Every benchmark, in this order (serving twice: the tiny demo model, where HTTP dominates, and ViT-S/14),
# then docs/benchmarks.md from bench/results/. `make bench QUICK=1`: about a minute each.
BENCHES := train_throughput data_throughput shard_throughput serve_throughput serve_faults model_flops pca_throughput features_extract deformable_attention detection_train segment_decoder segment_train

.tools/bin/uv:
	python3 -m venv .tools
	.tools/bin/pip install --quiet uv

install: $(if $(filter .tools/bin/uv,$(UV)),.tools/bin/uv)
	$(UV) sync --frozen

demo: install
	$(RUN) prism demo

demo-sketches: install
	$(RUN) prism demo sketches

# The registry tests start a throwaway PostgreSQL server of their own (tests/helpers/postgres.py) with
# Debian's binaries: installed here where they are missing (as root, else with sudo). This rule starts no
# server; the tests never use the `main` cluster the package may set up.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends postgresql; }

# The ingress test serves through HAProxy (prism serve --ingress haproxy): Debian's binary, installed the same way.
haproxy:
	@command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || \
	  { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends haproxy; }

test: install postgres haproxy
	$(RUN) pytest

test-fast: install
	$(RUN) pytest -m "not slow and not e2e"

lint: install
	$(RUN) ruff check platform tests bench

bench: install
	@for b in $(BENCHES); do echo "== bench/$$b.py"; $(RUN) python bench/$$b.py $(if $(QUICK),--quick) || exit 1; done
	$(RUN) python bench/serve_throughput.py --backbone dinov2_vits14 --img-size 112 --requests $(if $(QUICK),48,128)
	$(RUN) python bench/report.py

clean:
	rm -rf prism_runs prism_data prism_eval prism_features .pytest_cache
