"""scripts/run_tests.py (make test, make test-unit, .ci/run): pytest with a JUnit
file, then which tests ran, per file, how long they took, and a plain closing line."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "run_tests.py"

# synthetic: a tiny project with one test of each outcome, in two files
TESTS_A = """\
import pytest

def test_ok():
    pass

def test_bad():
    assert 1 == 2

@pytest.mark.skip(reason="not here")
def test_skipped():
    pass
"""
TESTS_B = """\
import pytest

class TestGroup:
    def test_in_class(self):
        pass

@pytest.mark.xfail(reason="known")
def test_xfail():
    assert False

@pytest.fixture
def broken():
    raise RuntimeError("setup")

def test_error(broken):
    pass
"""


def run_tests(tmp_path, *args, env=None):
    project = tmp_path / "project"
    (project / "tests").mkdir(parents=True)
    (project / "tests" / "test_a.py").write_text(TESTS_A)
    (project / "tests" / "test_b.py").write_text(TESTS_B)
    junit = tmp_path / "out" / "junit.xml"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(junit), "-p", "no:cacheprovider",
                           "-q", *args, "tests"], capture_output=True, text=True,
                          cwd=project, env=env, timeout=120)
    return proc, junit


def test_summary_after_pytest_and_its_exit_code(tmp_path):
    env = dict(os.environ, HH_CI_START="1")
    proc, junit = run_tests(tmp_path, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr         # pytest's: a test failed
    assert junit.is_file()
    out = proc.stdout
    summary = out[out.index("===== tests run"):]
    assert "6 in 2 files" in summary
    rows = {line.split()[0]: line.split()[1:] for line in summary.splitlines()
            if line.startswith("tests/")}
    assert rows["tests/test_a.py"][:4] == ["1", "1", "0", "1"]      # passed failed errors skipped
    assert rows["tests/test_b.py"][:4] == ["1", "0", "1", "1"]      # the class test counted here
    assert "slowest 6 tests:" in summary
    assert "tests/test_a.py::test_bad (failed)" in summary
    assert re.search(r"time: \d+ s in tests, pytest \d+ s wall, \d+ s since .ci/run started",
                     summary)
    # the last line: the plain closing line (failed counts errors, skipped xfails)
    assert out.rstrip().splitlines()[-1] == "total: 2 passed, 2 failed, 2 skipped"


def test_summarise_a_saved_file_and_a_clean_run(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HH_CI_START"}
    proc, junit = run_tests(tmp_path, "-k", "ok or in_class", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "since .ci/run" not in proc.stdout           # not under .ci/run
    again = subprocess.run([sys.executable, str(SCRIPT), "--summary", str(junit)],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0
    assert again.stdout.rstrip().splitlines()[-1] == "total: 2 passed, 0 failed, 0 skipped"


def test_make_targets_run_through_it():
    text = (ROOT / "Makefile").read_text()
    assert '$(PY) scripts/run_tests.py $(TEST_JUNIT) -v -ra -m "not repro" tests' in text
    assert ('$(PY) scripts/run_tests.py $(REPRO_JUNIT) -v -ra -m "repro and not history" '
            'tests') in text
    assert "$(PY) scripts/run_tests.py $(HISTORY_JUNIT) -v -ra -m history tests" in text
    assert "TEST_JUNIT ?= reports/suite/junit.xml" in text
    assert "UNIT_JUNIT ?= reports/unit/junit.xml" in text
    assert "REPRO_JUNIT ?= reports/repro/junit.xml" in text
    assert "HISTORY_JUNIT ?= reports/history/junit.xml" in text
    # the workflow uploads those folders
    ci = (ROOT / ".github" / "workflows" / "ci.yml").read_text()
    for folder in ("suite", "unit", "repro", "history"):
        assert f"path: reports/{folder}" in ci, folder
