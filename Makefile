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
# Deployment tools, all from PyPI: cfn-lint and cargo-lambda (which brings zig) go into .venv; the
# SAM CLI gets its own .venv-sam because it pins libraries that clash with moto's.
CFN_LINT_VERSION := 1.58.0
CARGO_LAMBDA_VERSION := 1.9.2
SAM_CLI_VERSION := 1.170.0
SAM := .venv-sam/bin/sam
# The SAM CLI sends no telemetry from here.
SAM_ENV := env SAM_CLI_TELEMETRY=0
# The browser the report test renders the HTML report in (Debian's package).
CHROMIUM := /usr/bin/chromium
# The Lambda functions (their packages and binaries share the name).
FUNCTIONS := analyze strategize decide snapshot cost-guard notify

# $(call timed,LABEL,COMMAND): runs COMMAND, then prints how long it took and its exit status.
# (COMMAND must not contain a comma.)
define timed
	@echo "==> $(1): $(2)"; \
	start=$$(date +%s); status=0; \
	$(2) || status=$$?; \
	echo "==> $(1): $$(( $$(date +%s) - start ))s (exit $$status)"; \
	exit $$status
endef

.PHONY: help demo build deploy test test-tools lint lint-tools bench chaos lambda-sizes clippy-per-function clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 14

demo: ## Run the built-in demo system end to end (local engine, embedded store)
	$(CARGO) run -q -p evolve -- demo

# $(call pip_pin,VENV,PACKAGE,VERSION,EXTRAS): installs PACKAGE==VERSION into VENV unless it is there.
define pip_pin
	@if [ "$$($(1)/bin/python -m pip show $(2) 2>/dev/null | sed -n 's/^Version: //p')" = "$(3)" ]; then \
		echo "==> tools: $(2) $(3) in $(1)"; \
	else \
		echo "==> tools: installing $(2) $(3) into $(1)"; \
		start=$$(date +%s); \
		$(1)/bin/pip install --quiet --disable-pip-version-check '$(2)$(4)==$(3)'; \
		echo "==> tools: $$(( $$(date +%s) - start ))s"; \
	fi
endef

build: ## Release arm64 build of the Lambda functions (sam build if the SAM CLI is there, else cargo lambda)
	@export PATH="$(CURDIR)/.venv/bin:$$PATH"; \
	missing=(); \
	$(CARGO) lambda --version >/dev/null 2>&1 \
		|| missing+=("cargo-lambda: run 'make test-tools' (PyPI cargo-lambda==$(CARGO_LAMBDA_VERSION) into .venv)"); \
	command -v zig >/dev/null 2>&1 || python3 -m ziglang version >/dev/null 2>&1 \
		|| missing+=("zig, the cross linker: comes with cargo-lambda from PyPI ('make test-tools')"); \
	rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu \
		|| missing+=("the Rust standard library for arm64: rustup target add aarch64-unknown-linux-gnu"); \
	if [ $${#missing[@]} -gt 0 ]; then \
		echo "==> build: cannot build the arm64 Lambda binaries; missing:"; \
		printf '    - %s\n' "$${missing[@]}"; \
		exit 1; \
	fi; \
	start=$$(date +%s); \
	if [ -x $(SAM) ]; then \
		echo "==> build: sam build (cargo lambda, release, arm64)"; \
		$(SAM_ENV) $(SAM) build --template-file infra/template.yaml --beta-features; \
	else \
		echo "==> build: no SAM CLI ('make lint-tools' installs it); cargo lambda build --release --arm64 (zips, one function at a time: each links only its features)"; \
		for p in $(FUNCTIONS); do \
			$(CARGO) lambda build --release --arm64 --output-format zip -p $$p || exit 1; \
		done; \
		ls -l target/lambda/*/bootstrap.zip; \
	fi; \
	echo "==> build: $$(( $$(date +%s) - start ))s"

deploy: ## Deploy the stack with SAM after `make build` (guided the first time)
	@if [ ! -x $(SAM) ]; then echo "==> deploy: no SAM CLI: run 'make lint-tools'"; exit 1; fi
	@if [ ! -f target/sam/build/template.yaml ]; then \
		echo "==> deploy: nothing built: run 'make build' first (with the SAM CLI installed)"; exit 1; \
	fi
	@if awk '/^\[/ { s = ($$0 == "[default.deploy.parameters]") } s && /^region *=/ { f = 1 } END { exit !f }' \
		infra/samconfig.toml; then \
		echo "==> deploy: sam deploy (settings from infra/samconfig.toml)"; \
		$(SAM_ENV) $(SAM) deploy --config-file $(CURDIR)/infra/samconfig.toml \
			--template-file target/sam/build/template.yaml; \
	else \
		echo "==> deploy: first deployment: sam deploy --guided saves your answers to infra/samconfig.toml"; \
		$(SAM_ENV) $(SAM) deploy --guided --config-file $(CURDIR)/infra/samconfig.toml \
			--template-file target/sam/build/template.yaml; \
	fi

test-tools: ## Install what the tests need (cargo-nextest; moto, cfn-lint and cargo-lambda in .venv; chromium)
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		echo "==> test-tools: $$($(CARGO) nextest --version | sed -n 1p)"; \
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
	$(call pip_pin,.venv,cfn-lint,$(CFN_LINT_VERSION))
	$(call pip_pin,.venv,cargo-lambda,$(CARGO_LAMBDA_VERSION))
	@if [ -x $(CHROMIUM) ]; then \
		echo "==> test-tools: $$($(CHROMIUM) --version 2>/dev/null | sed -n 1p)"; \
	else \
		sudo=; [ "$$(id -u)" -eq 0 ] || sudo=sudo; \
		echo "==> test-tools: installing Debian's chromium (headless, for the report test): $${sudo:+sudo }apt-get install chromium"; \
		start=$$(date +%s); \
		$$sudo apt-get update -qq && \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; \
		echo "==> test-tools: $$(( $$(date +%s) - start ))s"; \
	fi

# The binaries come first (debug): the smoke tests run the Lambda binaries and the CLI and worker
# tests run `evolve`, and their own build of them is then a no-op inside nextest's per-test time
# limit.
test: test-tools ## All tests: nextest for unit and integration tests, then doctests
	$(call timed,bins,$(CARGO) build --bins -p tests -p evolve $(addprefix -p ,$(FUNCTIONS)))
	$(call timed,nextest,$(CARGO) nextest run --workspace --all-features)
	$(call timed,doctests,$(CARGO) test --workspace --doc --all-features)

lint-tools: ## Install cfn-lint (.venv) and the SAM CLI (.venv-sam)
	@if [ ! -x .venv/bin/python ]; then echo "==> lint-tools: creating .venv"; $(PYTHON) -m venv .venv; fi
	$(call pip_pin,.venv,cfn-lint,$(CFN_LINT_VERSION))
	@if [ ! -x .venv-sam/bin/python ]; then echo "==> lint-tools: creating .venv-sam"; $(PYTHON) -m venv .venv-sam; fi
	$(call pip_pin,.venv-sam,aws-sam-cli,$(SAM_CLI_VERSION))

lint: lint-tools ## rustfmt check, clippy with warnings denied, cfn-lint and sam validate on the template
	$(call timed,fmt,$(CARGO) fmt --all -- --check)
	$(call timed,clippy,$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings)
	$(call timed,clippy-per-function,$(MAKE) --no-print-directory clippy-per-function)
	$(call timed,cfn-lint,.venv/bin/cfn-lint infra/template.yaml)
	$(call timed,sam-validate,$(SAM_ENV) AWS_REGION=$${AWS_REGION:-us-east-1} AWS_DEFAULT_REGION=$${AWS_DEFAULT_REGION:-us-east-1} $(SAM) validate --lint --template-file infra/template.yaml)

bench: ## Wrong keeps and rollbacks of the mean rule and the significance judge, engine vs random search, stage throughput, LLM-layer overhead, the tick with a fleet, two workers' cycles/minute, Lambda init and RSS
	$(call timed,bench-judge,$(CARGO) bench -p shared --bench judge)
	$(call timed,bench-pipeline,$(CARGO) bench -p shared --bench pipeline)
	$(call timed,bench-llm,$(CARGO) bench -p tests --bench llm)
	$(call timed,bench-fleet,$(CARGO) bench -p tests --bench fleet)
	$(CARGO) build --bins -p evolve $(addprefix -p ,$(FUNCTIONS))
	$(call timed,bench-workers,$(CARGO) bench -p tests --bench workers)
	$(call timed,bench-lambda-size,$(MAKE) --no-print-directory lambda-sizes)
	$(call timed,bench-lambda-init,$(CARGO) bench -p tests --bench lambda_init)

# Each function with only the features it enables (the workspace run above unifies them all).
clippy-per-function:
	@for p in $(FUNCTIONS) bare-lambda; do \
		$(CARGO) clippy -q -p $$p -- -D warnings || exit 1; \
	done

# Each function built on its own (one build would unify shared's features across all of them),
# x86_64 release zips as `cargo lambda` makes them, next to the bare runtime-and-clients binary.
lambda-sizes:
	@export PATH="$(CURDIR)/.venv/bin:$$PATH"; \
	for p in $(FUNCTIONS) bare-lambda; do \
		$(CARGO) lambda build --release --output-format zip -p $$p >/dev/null 2>&1 \
			|| { echo "==> lambda-sizes: cargo lambda build -p $$p failed"; exit 1; }; \
	done; \
	printf '%-12s %12s %12s\n' function zip_bytes binary_bytes; \
	for p in $(FUNCTIONS) bare-lambda; do \
		printf '%-12s %12d %12d\n' $$p $$(stat -c%s target/lambda/$$p/bootstrap.zip) \
			$$(stat -c%s target/x86_64-unknown-linux-gnu/release/$$p); \
	done

# The chaos suite's size (override on the command line or in the environment). The CI run of
# `make test` uses the test's own defaults (20 systems, 3 generations, 3 workers, 4 kills).
CHAOS_SYSTEMS ?= 60
CHAOS_GENERATIONS ?= 4
CHAOS_WORKERS ?= 3
CHAOS_KILLS ?= 8
CHAOS_SEED ?= 7
CHAOS_SECONDS ?= 240

chaos: test-tools ## Chaos suite at a larger size (CHAOS_SYSTEMS, CHAOS_GENERATIONS, CHAOS_WORKERS, CHAOS_KILLS, CHAOS_SEED, CHAOS_SECONDS); prints its figures
	$(call timed,bins,$(CARGO) build --bins -p tests -p evolve)
	$(call timed,chaos,env CHAOS_SYSTEMS=$(CHAOS_SYSTEMS) CHAOS_GENERATIONS=$(CHAOS_GENERATIONS) CHAOS_WORKERS=$(CHAOS_WORKERS) CHAOS_KILLS=$(CHAOS_KILLS) CHAOS_SEED=$(CHAOS_SEED) CHAOS_SECONDS=$(CHAOS_SECONDS) $(CARGO) test -p tests --test chaos -- --nocapture)

clean: ## Remove build artefacts
	$(CARGO) clean
