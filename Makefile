# Overwatch — developer entry points. `make dev` and `make test` provision
# everything they need (cached in $(OVERWATCH_CACHE), outside the repository).

OVERWATCH_CACHE ?= $(HOME)/.cache/overwatch
export OVERWATCH_CACHE
PYTHON ?= python3
STACK := $(PYTHON) deploy/local/stack.py

VENV_PY := $(OVERWATCH_CACHE)/venv/bin/python

.PHONY: help provision build dev test lint lint-deploy fmt ch-query clean-data fuzz bench soak chaos release verify-data

help:
	@echo "make dev         run the whole local stack in the foreground (Ctrl-C stops it)"
	@echo "make test        provision, lint and run every test against real services"
	@echo "make ch-query Q='SELECT ...'   query the dev ClickHouse"
	@echo "make clean-data  wipe the dev stack's data (.data/)"
	@echo "make lint-deploy check Dockerfile, compose, Helm chart, Prometheus rules, dashboard"
	@echo "make bench       load scenarios + criterion floor -> docs/benchmarks.md"
	@echo "make soak        10 minutes at 20k events/s, RSS drift"
	@echo "make chaos       kill broker, gateway, ClickHouse under load; check nothing acknowledged is lost"
	@echo "make verify-data the reference-model test over many seeds (late data, concurrent and killed jobs)"

provision:
	@deploy/local/provision.sh

build:
	cargo build --workspace --bins

dev: provision build
	@$(STACK) dev

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

release:
	cargo build --release -p gateway -p workerd -p loadtest

# Performance and resilience (see docs/benchmarks.md).
bench: provision release
	$(PYTHON) loadtest/harness.py bench

soak: provision release
	$(PYTHON) loadtest/harness.py soak

chaos: provision release
	$(PYTHON) loadtest/harness.py chaos

# What can be checked here without Docker, helm or a cluster (see deploy/lint.py).
lint-deploy: provision build
	$(VENV_PY) deploy/lint.py --bin-dir target/debug

test: provision lint
	cargo build --workspace --bins --tests
	$(VENV_PY) deploy/lint.py --bin-dir target/debug
	$(STACK) run -- cargo test --workspace --no-fail-fast

# The reference-model test (gateway/tests/reference_model.rs) over more seeds
# and rounds than make test runs: every acknowledged event once across raw and
# archives, aggregates equal to an independent model.
MODEL_SEEDS ?= 1,2,3,4,5,6,7,8,9,10
MODEL_ROUNDS ?= 6
verify-data: provision
	cargo build --workspace --bins --tests
	OVERWATCH_MODEL_SEEDS=$(MODEL_SEEDS) OVERWATCH_MODEL_ROUNDS=$(MODEL_ROUNDS) \
	  $(STACK) run -- cargo test -p gateway --test reference_model -- --nocapture

fmt:
	cargo fmt --all

ch-query:
	@$(STACK) query "$(Q)"

clean-data:
	rm -rf .data

# Fuzz request-body handling (decode, parse, validate, enrich) for FUZZ_SECONDS.
# No sanitizer: ASan flags break the bundled librdkafka build (its configure
# links against an instrumented libzstd); coverage guidance and panics still apply.
FUZZ_SECONDS ?= 300
fuzz:
	cd gateway && RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none ingest_body -- -max_total_time=$(FUZZ_SECONDS)
