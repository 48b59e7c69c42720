"""Debian 12's own kernel, 6.1, as a second source, for real: ``--kernel-src
debian-6.1`` (``linux-source-6.1``, installed with apt when missing) builds with
its own series (``patches/6.1/series``) and passes ``run --method all`` and
``run --method all --cycles 2``.

Marked ``history`` (and ``repro``, ``kernel``, ``qemu``): the first run is two
cold 6.1 builds (the default configuration and the ``leak`` one ``--cycles 2``
adds: 25 and 14 min on a 2-core machine busy with other builds, 2026-12-07),
which neither ``make test`` nor ``make test-repro`` pays; ``make test-history``
runs it (CI's history job).
Cached, the two runs take a few minutes (3.7 min for both, measured with two
guests side by side; the test runs one at a time). The report folders stay in
``reports/debian-6.1/``.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kernel, pytest.mark.qemu, pytest.mark.repro,
              pytest.mark.history]
ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / "reports" / "debian-6.1"
LIMIT_S = 45 * 60


def run_harness(*args: str) -> tuple:
    """(exit code, report.json, output) of ``hotplug-harness run ... --report DIR``."""
    folder = REPORTS / "-".join(a.strip("-") for a in args if a != "--method")
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    # one guest at a time: make test-repro may share the machine with other builds
    cmd = [sys.executable, "-m", "harness.cli", "run", "--kernel-src", "debian-6.1",
           "--guests", "1", *args, "--report", str(folder)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=LIMIT_S)
    said = f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr[-6000:]}"
    report = folder / "report.json"
    assert report.is_file(), f"exit {proc.returncode}, no {report}\n{said}"
    return proc.returncode, json.loads(report.read_text()), said


def assert_all_pass(code: int, report: dict, said: str, methods: set) -> None:
    kernel = report["kernel"]
    assert kernel["release"].startswith("6.1."), kernel
    assert "linux-source-6.1.tar.xz" in kernel["source"], kernel
    # the 6.1 series: 0001 as it is, 0002 rebased on 6.1
    assert [name for name, _ in kernel["patches"]][:2] == [
        "0001-arm64-Kconfig-allow-the-memory-probe-sysfs-interface.patch",
        "0002-mm-memory_hotplug-add-memory-hotremove-probe-device.patch"], kernel
    got = {m["method"]: m["verdict"] for m in report["methods"]}
    assert set(got) == methods, got
    failing = {m["method"]: [f"{c['name']} {c['verdict']}: {c.get('evidence', '')[:300]}"
                             for c in m["checks"] if c["verdict"] not in ("PASS", "SKIP")]
               for m in report["methods"] if m["verdict"] != "PASS"}
    assert code == 0 and not failing, f"exit {code}: {failing}\n{said}"


def test_61_runs_every_method():
    from harness import runner
    code, report, said = run_harness("--method", "all")
    assert_all_pass(code, report, said, set(runner.ORDER))


def test_61_runs_two_cycles_without_a_leak():
    from harness import runner
    code, report, said = run_harness("--method", "all", "--cycles", "2")
    assert_all_pass(code, report, said, set(runner.ORDER))
    assert "leak" in report["kernel"]["fragments"]
    checks = {c["name"]: c["verdict"] for m in report["methods"] for c in m["checks"]}
    assert checks.get("no-leak-across-cycles") == "PASS", checks
