"""The seeded regressions that need a kernel config of their own (``Repro-Config``:
another page-table geometry, KASAN...), on real kernels under QEMU: ``make
test-repro`` (marker ``repro``; ``make test`` and ``make test-unit`` leave it out).

Each such regression needs a cold kernel build of its own configuration (7-12
min on 2 cores; later runs of the same configuration rebuild incrementally, and
a cached kernel not at all), which is why ``tests/test_qemu.py`` runs only the
others. Here one ``hotplug-harness repro`` run takes every selected regression
the way its header says (``--config``, ``--append``, ``--cycles``, its methods)
together with the clean kernel once per shape, one guest at a time, into
``reports/repro/`` (this test's folder: emptied first). It leaves the matrix
there (``matrix.json``, ``matrix.txt``, ``matrix.html``; ``repro.log`` is the
command's output, also shown as it runs) and each run's report folder;
``patches/repro/README.md``'s table is generated from it::

    .venv/bin/python -m harness.cli repro --markdown reports/repro/matrix.json \\
        --update-readme patches/repro/README.md

Then one test per regression: the run exits 1 and every check its
``Repro-Expect`` names FAILs with evidence naming an address (``Repro-Expect:
-``: run and shown, skipped, not asserted); and one per shape: the clean kernel
passes.
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_recorded import assert_named_checks_fail

from harness.records import Check
from harness.verdict import repro

pytestmark = [pytest.mark.kernel, pytest.mark.qemu, pytest.mark.repro]
ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "reports" / "repro"
LIMIT_S = 2 * 3600         # three cold builds and seven runs: 33 min on 2 cores (2026-12-07)

CONFIGURED = {r.name: r for r in repro.discover() if r.configs}


def shape_id(shape: tuple) -> str:
    configs, append, methods, cycles, cpu = shape
    return "-".join(["+".join(configs), *append, ",".join(methods)]
                    + ([f"x{cycles}"] if cycles > 1 else []) + ([cpu] if cpu else []))


SHAPES = {shape_id(r.shape): r.shape for r in CONFIGURED.values()}


@dataclass(repr=False)
class Matrix:
    """What one ``hotplug-harness repro`` run left in REPORT."""
    exit_code: int
    rows: list
    log: str

    def __repr__(self) -> str:          # pytest shows it beside a failure
        return f"<repro exit {self.exit_code}, {len(self.rows)} rows in {REPORT}>"

    def row(self, name: str) -> repro.MatrixRow:
        found = [r for r in self.rows if r.name == name]
        assert found, f"no row for {name} in {REPORT / 'matrix.json'}\n{self.log[-3000:]}"
        return found[0]

    def clean(self, shape: tuple) -> repro.MatrixRow:
        found = [r for r in self.rows if r.point == "(clean kernel)"
                 and (r.configs, r.append, r.methods, r.cycles, r.cpu) == shape]
        assert found, f"no clean row for {shape_id(shape)}\n{self.log[-3000:]}"
        return found[0]


def shown(row: repro.MatrixRow) -> str:
    """The row as the matrix prints it (status, each expected or failing check
    with its evidence, why a run stopped) and where its report is."""
    return (f"{repro.matrix_text([row]).rsplit('exit ', 1)[0].rstrip()}\n"
            f"report: {REPORT / repro.run_folder(row.to_dict())} "
            f"(the matrix: {REPORT / 'matrix.txt'})")


def selected(request) -> list:
    """The regressions behind the tests of this module that are to run (``-k``
    picks fewer): a clean test needs the regressions of its shape."""
    names: set = set()
    for item in request.session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if getattr(item, "module", None) is not request.module:
            continue
        if "patch" in params:
            names.add(params["patch"])
        if "shape" in params:
            names |= {r.name for r in CONFIGURED.values() if r.shape == SHAPES[params["shape"]]}
    return sorted(names)


@pytest.fixture(scope="module")
def matrix(request) -> Matrix:
    names = selected(request)
    if REPORT.exists():
        shutil.rmtree(REPORT)
    REPORT.mkdir(parents=True)
    capman = request.config.pluginmanager.getplugin("capturemanager")
    cmd = [sys.executable, "-m", "harness.cli", "repro", "--report", str(REPORT), *names]
    lines = []
    with open(REPORT / "repro.log", "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)
        watchdog = threading.Timer(LIMIT_S, proc.send_signal, (signal.SIGTERM,))
        watchdog.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:           # shown as it runs: the builds take minutes
                lines.append(line)
                log.write(line)
                log.flush()
                if capman is not None:
                    with capman.global_and_fixture_disabled():
                        sys.stderr.write(line)
                        sys.stderr.flush()
            code = proc.wait()
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
    said = "".join(lines)
    saved = REPORT / "matrix.json"
    if not saved.is_file():
        pytest.fail(f"hotplug-harness repro exited {code} and left no {saved}:\n"
                    f"{said[-5000:]}", pytrace=False)
    return Matrix(code, repro.rows_from_json(json.loads(saved.read_text())), said)


@pytest.mark.parametrize("patch", sorted(CONFIGURED))
def test_configured_regression_fails_the_named_checks(matrix, patch):
    """Each regression with a Repro-Config, run as its header says: exit 1, and
    every check its Repro-Expect names FAILs with evidence naming an address."""
    reg = CONFIGURED[patch]
    row = matrix.row(patch)
    if not reg.expect:
        pytest.skip(f"{patch}: run, not asserted (Repro-Expect: -; {reg.why}): "
                    f"{row.status}, exit {row.exit_code}; see {REPORT / 'matrix.txt'}")
    code = row.exit_code               # (a local: pytest shows it, not the whole row)
    assert code == 1, (f"{patch}: the run must fail the kernel (exit 1), it exited {code}"
                       f"\n{shown(row)}")
    report = REPORT / patch / "report.json"
    assert report.is_file(), f"{patch}: no report.json\n{shown(row)}"
    found = [Check.from_dict(c) for m in json.loads(report.read_text())["methods"]
             for c in m["checks"]]
    assert_named_checks_fail(found, patch)
    assert row.status == repro.CAUGHT, shown(row)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_clean_kernel_passes_in_the_same_shape(matrix, shape):
    """The clean kernel, built and run the way the regressions of this shape
    are: every method passes (else the regressions' FAILs would prove nothing)."""
    row = matrix.clean(SHAPES[shape])
    got = (row.status, row.exit_code)
    assert got == (repro.CLEAN_PASS, 0), (
        f"the clean kernel fails in the shape {shape}\n{shown(row)}")
