# Overwatch — developer entry points. `make dev` and `make test` provision
# everything they need (cached in $(OVERWATCH_CACHE), outside the repository).

OVERWATCH_CACHE ?= $(HOME)/.cache/overwatch
export OVERWATCH_CACHE
PYTHON ?= python3
STACK := $(PYTHON) deploy/local/stack.py

VENV_PY := $(OVERWATCH_CACHE)/venv/bin/python

.PHONY: help provision build dev test lint lint-deploy fmt ch-query clean-data fuzz bench profile soak chaos release verify-data

help:
	@echo "make dev         run the whole local stack in the foreground (Ctrl-C stops it)"
	@echo "make test        provision, lint and run every test against real services"
	@echo "make ch-query Q='SELECT ...'   query the dev ClickHouse"
	@echo "make clean-data  wipe the dev stack's data (.data/)"
	@echo "make lint-deploy check Dockerfile, compose, Helm chart, Prometheus rules, dashboard"
	@echo "make bench       ratios to same-run baselines (floor, trivial handler, liveness) -> docs/benchmarks.md"
	@echo "make profile     callgrind: instructions per request/event by stage"
	@echo "make soak        an hour at half the maximum rate: RSS within ±10% (plot in docs/)"
	@echo "make chaos       50 seeded random fault schedules under retrying load (CHAOS_SEED, CHAOS_SCHEDULES)"
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
	$(PYTHON) loadtest/bench.py $(BENCH_ARGS)

# Where the gateway's CPU goes: callgrind, by stage, per request and per event.
profile: provision
	cargo build --profile profiling -p gateway && cargo build --release -p loadtest
	$(PYTHON) loadtest/profile.py

# An hour at half the maximum (measured first); SOAK_RATE=20000 for a fixed rate.
SOAK_SECONDS ?= 3600
SOAK_RATE ?= 0
soak: provision release
	$(PYTHON) loadtest/harness.py soak --seconds $(SOAK_SECONDS) --rate $(SOAK_RATE)

# Randomized fault schedules (gateway/tests/chaos.rs; make test runs 2 of seed 1):
# broker SIGKILL and SIGSTOP, gateway SIGKILL, ClickHouse SIGKILL, under load from
# clients that retry. A new seed each run unless CHAOS_SEED is given; the seed is
# printed first and reproduces the schedules.
CHAOS_SCHEDULES ?= 50
CHAOS_SEED ?= $(shell date +%s)
chaos: provision
	cargo build -p gateway --tests
	OVERWATCH_CHAOS_SEED=$(CHAOS_SEED) OVERWATCH_CHAOS_SCHEDULES=$(CHAOS_SCHEDULES) \
	  $(STACK) run -- cargo test -p gateway --test chaos -- --nocapture

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

# Fuzz every target in gateway/fuzz for FUZZ_SECONDS each, one after another:
# ingest_body (decode, structure scan, parse, validate, enrich) and request_head
# (keys, signature headers, content type, X-Forwarded-For/Forwarded). Corpora
# grow in $(OVERWATCH_CACHE)/fuzz/<target>, seeded from gateway/fuzz/corpus.
# No sanitizer: ASan flags break the bundled librdkafka build (its configure
# links against an instrumented libzstd); coverage guidance and panics still apply.
FUZZ_SECONDS ?= 300
FUZZ_TARGETS ?= ingest_body request_head
fuzz:
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(OVERWATCH_CACHE)/fuzz/$$t; \
	  seeds=gateway/fuzz/corpus/$$t; [ -d $$seeds ] || seeds=; \
	  echo "fuzz: $$t for $(FUZZ_SECONDS) s"; \
	  (cd gateway && RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none $$t \
	    $(OVERWATCH_CACHE)/fuzz/$$t $${seeds:+../$$seeds} -- -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1) || exit 1; \
	done
