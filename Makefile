# make deps       host packages (root or sudo) + the project's .venv (system python3)
# make test       the whole test suite (unit tests + real kernel + real QEMU),
#                 except the tests marked repro
# make test-unit  the tests that need no kernel and no QEMU
#                 (both write JUnit, TEST_JUNIT / UNIT_JUNIT, and end with a
#                 per-file summary of it: scripts/run_tests.py)
# make test-repro the seeded regressions with a Repro-Config (a kernel config
#                 of their own: today 16k-47, 64k-42, kasan+debug-vm), each
#                 run as its header says, and the clean kernel of each shape
#                 (tests/test_repro_configs.py, marker repro): three cold
#                 kernel builds, ~25-35 min on 2 cores, a few minutes once
#                 built. Leaves reports/repro/ (matrix.json, each run's report,
#                 JUnit: REPRO_JUNIT); `hotplug-harness repro --markdown
#                 reports/repro/matrix.json --update-readme patches/repro/README.md`
#                 writes its table into that README; and the real git bisect
#                 run (tests/test_bisect_real.py)
# make test-history  the kernel's own hot-plug fix history reverted on 6.12
#                 (repro --history) and Debian 12's 6.1 as a second kernel
#                 (tests marked history): more cold builds than CI's 90
#                 minutes hold beside make test and make test-repro, so a
#                 target (and a CI job) of their own
# make test-qemu  deps, build the default kernel, run every scenario, verdict
# make test-matrix  every page-table geometry x every method (6 kernel builds)
# make bench      benchmarks: build, boot, walker, run, each beside kunit.py
#                 (prints figures; kunit.py's first cold build adds ~4 min)
# make lint       ruff over the whole tree, mypy --strict on the typed modules
#                 (both configured in pyproject.toml)
#
# Every Python step runs with $(VENV)/bin/python, made by scripts/install-deps
# from /usr/bin/python3 (Debian 12's own python3 refuses pip: PEP 668).
VENV ?= .venv
PY := $(VENV)/bin/python
HARNESS ?= $(PY) -m harness.cli
RUN_ARGS ?=
MATRIX_ARGS ?=
TEST_JUNIT ?= reports/suite/junit.xml
UNIT_JUNIT ?= reports/unit/junit.xml
REPRO_JUNIT ?= reports/repro/junit.xml
HISTORY_JUNIT ?= reports/history/junit.xml

.PHONY: deps venv test test-unit test-repro test-history test-qemu test-matrix bench build clean-cache lint

deps:
	VENV=$(VENV) sh ./scripts/install-deps

# The Python side only (no apt, no root): enough for test-unit.
venv:
	VENV=$(VENV) sh ./scripts/install-deps --venv

# -v: each test's name and result as it finishes (a CI log shows where a run is)
test: deps
	$(PY) scripts/run_tests.py $(TEST_JUNIT) -v -ra -m "not repro" tests

# (the repro tests are marked kernel and qemu too: -m "not kernel..." leaves them out)
test-unit: venv
	$(PY) scripts/run_tests.py $(UNIT_JUNIT) -q -ra -m "not kernel and not qemu" tests

test-repro: deps
	$(PY) scripts/run_tests.py $(REPRO_JUNIT) -v -ra -m "repro and not history" tests

test-history: deps
	$(PY) scripts/run_tests.py $(HISTORY_JUNIT) -v -ra -m history tests

lint: venv
	$(PY) -m ruff check .
	$(PY) -m mypy

build: deps
	$(HARNESS) build

test-qemu: deps
	$(HARNESS) run --method all --report reports/latest $(RUN_ARGS)

test-matrix: deps
	$(HARNESS) matrix --report reports/matrix $(MATRIX_ARGS)

bench: deps
	$(PY) bench/run_all.py

clean-cache: venv
	$(HARNESS) cache clean --all
