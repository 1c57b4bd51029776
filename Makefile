# Registro: build, run, test and ship.
#
# Every cargo command that should cover the whole workspace (server, client,
# bench) passes --workspace, so no crate is silently skipped. Nothing here
# installs anything: a missing tool is reported with the command that adds it.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
# Extra flags for every cargo command, e.g. CARGOFLAGS=--locked.
CARGOFLAGS ?=
# Listening address for `make run`: `:PORT` (every interface), `HOST:PORT`, `[::1]:PORT`.
ADDR ?= :8080
# More server flags for `make run`, e.g. ARGS="--down-after 5 --evict-after 20".
ARGS ?=
# Cases for `make fuzz` (per parser property; the TCP fuzz runs a hundredth),
# and its seed (empty: from the clock; every run prints the seed it used).
FUZZ_CASES ?= 5000000
FUZZ_SEED ?=
# `make chaos`: seconds of faults, how many faults (at least 6 s apart), and
# the seed of the nemesis's choices (empty: from the clock; every run prints
# the seed it used, to run it again).
CHAOS_SECONDS ?= 300
CHAOS_FAULTS ?= 25
SEED ?=
# Flags for `make bench`, e.g. BENCH_ARGS=--quick.
BENCH_ARGS ?=
IMAGE ?= registro:latest
# Where `make install` puts the server: $(DESTDIR)$(PREFIX)/bin/registro.
PREFIX ?= /usr/local
DESTDIR ?=
MUSL_TARGET := x86_64-unknown-linux-musl
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)
STATIC_BIN := $(TARGET_DIR)/$(MUSL_TARGET)/release/registro
DOCKER_CONTEXT := $(TARGET_DIR)/docker-context

.PHONY: help build run install test fuzz chaos static docker bench clean

help: ## Show the targets and what each does (the default)
	@echo "usage: make TARGET [ADDR=:8080] [ARGS='--down-after 5']"
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z-]*:.*## / {printf "  %-8s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## Build every crate of the workspace in release mode
	$(CARGO) build $(CARGOFLAGS) --workspace --release

run: ## Build (release) and start the server on ADDR (default :8080)
	$(CARGO) run $(CARGOFLAGS) --release -p registro --bin registro -- --addr '$(ADDR)' $(ARGS)

install: ## Build the server (release) and copy it to PREFIX/bin (PREFIX=/usr/local by default)
	$(CARGO) build $(CARGOFLAGS) --release -p registro --bin registro
	install -d '$(DESTDIR)$(PREFIX)/bin'
	install -m 0755 '$(TARGET_DIR)/release/registro' '$(DESTDIR)$(PREFIX)/bin/registro'
	@echo "installed $(DESTDIR)$(PREFIX)/bin/registro"

test: ## Check formatting, run clippy with -D warnings, run every test of the workspace (Prometheus, Chromium, etcd and DNS ones where installed), check the docs' examples
	@command -v $(CARGO) >/dev/null 2>&1 || { echo "make test: cargo not found; install the Rust toolchain (rustup)" >&2; exit 1; }
	@$(CARGO) fmt --version >/dev/null 2>&1 || { echo "make test: rustfmt not found; add it with: rustup component add rustfmt" >&2; exit 1; }
	@$(CARGO) clippy --version >/dev/null 2>&1 || { echo "make test: clippy not found; add it with: rustup component add clippy" >&2; exit 1; }
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy $(CARGOFLAGS) --workspace --all-targets -- -D warnings
	@missing=""; for p in prometheus promtool chromium chromedriver etcd dig dnsmasq dnsperf; do command -v $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then echo "SKIP the Prometheus, Chromium, etcd and DNS tests (missing:$$missing): install them with: apt-get install prometheus chromium chromium-driver etcd-server etcd-client bind9-dnsutils dnsmasq-base dnsperf"; fi
	@python3 -c 'import openapi_spec_validator' 2>/dev/null || echo "SKIP the OpenAPI validator's check of docs/openapi.json: install it with: python3 -m pip install openapi-spec-validator"
	$(CARGO) test $(CARGOFLAGS) --workspace
	@if command -v python3 >/dev/null 2>&1 && command -v curl >/dev/null 2>&1; then \
	  python3 .ci/smoke.py readme '$(TARGET_DIR)/debug/registro' README.md docs/*.md; \
	else echo "SKIP the examples of README.md and docs/ (missing python3 or curl)"; fi

fuzz: ## Fuzz the request parser, the DNS responder and both over sockets, in release mode, for minutes
	REGISTRO_FUZZ_CASES='$(FUZZ_CASES)' REGISTRO_FUZZ_SEED='$(FUZZ_SEED)' \
	  $(CARGO) test $(CARGOFLAGS) --release -p registro --lib fuzz -- --nocapture
	REGISTRO_FUZZ_CASES='$(FUZZ_CASES)' REGISTRO_FUZZ_SEED='$(FUZZ_SEED)' \
	  $(CARGO) test $(CARGOFLAGS) --release -p registro --test it fuzz:: -- --nocapture

chaos: ## Kill and pause etcd members and servers under load for CHAOS_SECONDS (SEED=...), then check the history
	@command -v etcd >/dev/null 2>&1 || { echo "make chaos: etcd not found; install it with: apt-get install etcd-server etcd-client" >&2; exit 1; }
	REGISTRO_CHAOS_SECONDS='$(CHAOS_SECONDS)' REGISTRO_CHAOS_FAULTS='$(CHAOS_FAULTS)' REGISTRO_CHAOS_SEED='$(SEED)' \
	  $(CARGO) test $(CARGOFLAGS) --release -p registro --test it etcd::chaos:: -- --nocapture

static: ## Build the fully static, stripped musl server binary
	@if command -v rustup >/dev/null 2>&1; then \
	  rustup target list --installed | grep -qx '$(MUSL_TARGET)' || { \
	    echo "make static: the Rust target $(MUSL_TARGET) is not installed; add it with: rustup target add $(MUSL_TARGET)" >&2; exit 1; }; \
	fi
	$(CARGO) build $(CARGOFLAGS) --release --target $(MUSL_TARGET) -p registro --bin registro
	@echo "static binary: $(STATIC_BIN) ($$(wc -c < '$(STATIC_BIN)') bytes)"

docker: static ## Build the image registro:latest (IMAGE=...) from Dockerfile.scratch on the static binary
	@command -v docker >/dev/null 2>&1 || { echo "make docker: docker not found" >&2; exit 1; }
	@docker info >/dev/null 2>&1 || { echo "make docker: no Docker engine answers (is dockerd running?)" >&2; exit 1; }
	rm -rf '$(DOCKER_CONTEXT)'
	mkdir -p '$(DOCKER_CONTEXT)/data'
	cp '$(STATIC_BIN)' '$(DOCKER_CONTEXT)/registro'
	cp Dockerfile.scratch '$(DOCKER_CONTEXT)/Dockerfile'
	docker build -t '$(IMAGE)' '$(DOCKER_CONTEXT)'
	@echo "image $(IMAGE): $$(docker image inspect -f '{{.Size}}' '$(IMAGE)') bytes"

bench: ## Build the release server and load generator, run the benchmark, print its table
	$(CARGO) build $(CARGOFLAGS) --release -p registro --bin registro
	$(CARGO) run $(CARGOFLAGS) --release -p registro-bench -- $(BENCH_ARGS)

clean: ## Remove build outputs (target/, the Docker build context)
	$(CARGO) clean
	rm -rf '$(DOCKER_CONTEXT)'
