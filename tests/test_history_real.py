"""The upstream fixes undone (patches/history) on real kernels under QEMU:
``make test-repro`` (marker ``repro``; ``make test`` and ``make test-unit``
leave it out).

One ``hotplug-harness repro --history`` run takes every history patch the way
its header says, with the clean kernel once per shape (the stock kernel, or
with the fix's backport where the stock kernel lacks the fix), one guest at a
time, into ``reports/history/`` (emptied first), and leaves the matrix there;
``patches/history/README.md``'s table is generated from it::

    .venv/bin/python -m harness.cli repro --markdown reports/history/matrix.json \\
        --update-readme patches/history/README.md

Then one test per fix a scenario is expected to show: caught (every check its
``Repro-Expect`` names FAILs), one per shape: the clean kernel passes, and the
command's own exit code: 0.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.verdict import repro

pytestmark = [pytest.mark.kernel, pytest.mark.qemu, pytest.mark.repro,
              pytest.mark.history]
ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "reports" / "history"
LIMIT_S = 3 * 3600       # KASAN and KASLR kernels of their own, one build per fix
HISTORY = {r.name: r for r in repro.discover((), repro.HISTORY_DIR)}


@pytest.fixture(scope="module")
def matrix():
    if REPORT.exists():
        shutil.rmtree(REPORT)
    REPORT.mkdir(parents=True)
    cmd = [sys.executable, "-m", "harness.cli", "repro", "--history", "--report",
           str(REPORT)]
    with open(REPORT / "repro.log", "w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                              text=True, timeout=LIMIT_S)
    saved = REPORT / "matrix.json"
    if not saved.is_file():
        pytest.fail(f"repro --history exited {proc.returncode} and left no {saved}: "
                    f"{(REPORT / 'repro.log').read_text()[-5000:]}", pytrace=False)
    return proc.returncode, repro.rows_from_json(json.loads(saved.read_text()))


@pytest.mark.parametrize("name", sorted(n for n, r in HISTORY.items() if r.expect))
def test_the_fix_undone_is_caught(matrix, name):
    _code, rows = matrix
    [row] = [r for r in rows if r.name == name]
    assert row.status == repro.CAUGHT, repro.matrix_text([row])


def test_every_clean_row_passes_and_the_command_exits_0(matrix):
    code, rows = matrix
    clean = [r for r in rows if r.point == "(clean kernel)"]
    assert clean and all(r.status == repro.CLEAN_PASS for r in clean), \
        repro.matrix_text(clean)
    assert code == 0, repro.matrix_text(rows)
