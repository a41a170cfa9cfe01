# Front door of the workspace. CI (.ci/run) calls `lint` and `test`.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# CI-friendly cargo: no incremental artefacts, plain logs.
export CARGO_INCREMENTAL := 0
export CARGO_TERM_COLOR := never

CARGO ?= cargo
PYTHON ?= python3
# moto's server stands in for DynamoDB and S3 (and the other AWS services) in the tests.
MOTO_VERSION := 5.2.5

# $(call timed,LABEL,COMMAND): runs COMMAND, then prints how long it took and its exit status.
# (COMMAND must not contain a comma.)
define timed
	@echo "==> $(1): $(2)"; \
	start=$$(date +%s); status=0; \
	$(2) || status=$$?; \
	echo "==> $(1): $$(( $$(date +%s) - start ))s (exit $$status)"; \
	exit $$status
endef

.PHONY: help demo build test test-tools lint bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 14

demo: ## Run the built-in demo system end to end (local engine, embedded store)
	$(CARGO) run -q -p evolve -- demo

build: ## Debug build of every crate
	$(call timed,build,$(CARGO) build --workspace)

test-tools: ## Install what the tests need (cargo-nextest; moto's server in .venv)
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		echo "==> test-tools: $$($(CARGO) nextest --version | head -n 1)"; \
	else \
		echo "==> test-tools: installing cargo-nextest"; \
		start=$$(date +%s); \
		$(CARGO) install cargo-nextest --locked; \
		echo "==> test-tools: $$(( $$(date +%s) - start ))s"; \
	fi
	@if [ ! -x .venv/bin/python ]; then \
		echo "==> test-tools: creating .venv"; \
		$(PYTHON) -m venv .venv; \
	fi
	@if [ -x .venv/bin/moto_server ]; then \
		echo "==> test-tools: moto $$(.venv/bin/python -c 'import moto; print(moto.__version__)')"; \
	else \
		echo "==> test-tools: installing moto $(MOTO_VERSION) into .venv"; \
		start=$$(date +%s); \
		.venv/bin/pip install --quiet --disable-pip-version-check 'moto[server]==$(MOTO_VERSION)'; \
		echo "==> test-tools: $$(( $$(date +%s) - start ))s"; \
	fi

test: test-tools ## All tests: nextest for unit and integration tests, then doctests
	$(call timed,nextest,$(CARGO) nextest run --workspace --all-features)
	$(call timed,doctests,$(CARGO) test --workspace --doc --all-features)

lint: ## rustfmt check and clippy with warnings denied
	$(call timed,fmt,$(CARGO) fmt --all -- --check)
	$(call timed,clippy,$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings)

bench: ## Engine vs random search, stage throughput, LLM-layer overhead (release builds)
	$(call timed,bench-pipeline,$(CARGO) bench -p shared --bench pipeline)
	$(call timed,bench-llm,$(CARGO) bench -p tests --bench llm)

clean: ## Remove build artefacts
	$(CARGO) clean
