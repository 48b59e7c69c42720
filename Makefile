# make deps       install host packages and the Python package (root or sudo)
# make test       the whole test suite (unit tests + real kernel + real QEMU)
# make test-qemu  deps, build the default kernel, run every scenario, verdict
# make bench      benchmarks: build, boot, walker (prints figures)
PYTHON ?= python3
HARNESS ?= $(PYTHON) -m harness.cli
RUN_ARGS ?=

.PHONY: deps test test-unit test-qemu bench build clean-cache

deps:
	PYTHON=$(PYTHON) ./scripts/install-deps

test: deps
	$(PYTHON) -m pytest -ra tests

test-unit:
	$(PYTHON) -m pytest -ra -m "not kernel and not qemu" tests

build: deps
	$(HARNESS) build

test-qemu: deps
	$(HARNESS) run --method all --report reports/latest $(RUN_ARGS)

bench: deps
	$(PYTHON) bench/run_all.py

clean-cache:
	$(HARNESS) cache clean --all
