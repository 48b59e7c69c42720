"""Run pytest with a JUnit file, then print which tests ran and how long they took.

    .venv/bin/python scripts/run_tests.py JUNIT [PYTEST ARGS...]
    .venv/bin/python scripts/run_tests.py --summary JUNIT     # summarise a saved file

``make test`` and ``make test-unit`` (hence ``.ci/run``) run through this. After
pytest's own output it prints, from the JUnit file pytest wrote: one line per
test file (passed, failed, errors, skipped, seconds), the slowest tests, the
wall time (and, under ``.ci/run``, the time since it started: ``HH_CI_START``,
epoch seconds), and last a plain closing line
``total: N passed, N failed, N skipped`` (failed counts errors too; skipped
counts xfails too). The exit code is pytest's.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

OUTCOMES = ("passed", "failed", "error", "skipped")
SLOWEST = 10


def outcome(case: ET.Element) -> str:
    for child in case:
        if child.tag == "failure":
            return "failed"
        if child.tag == "error":
            return "error"
        if child.tag == "skipped":
            return "skipped"
    return "passed"


def test_file(case: ET.Element) -> str:
    """tests/test_x.py from a testcase (its ``file`` attribute when pytest
    wrote one, else the classname ``tests.test_x[.Class]``)."""
    if case.get("file"):
        return str(case.get("file"))
    classname = case.get("classname") or "?"
    parts = classname.split(".")
    for i in range(len(parts) - 1, -1, -1):   # the module: the last test_* part
        if parts[i].startswith("test_") or parts[i].endswith("_test"):
            return "/".join(parts[: i + 1]) + ".py"
    return classname


def summarise(junit: Path, wall: float | None = None, since_start: float | None = None) -> str:
    root = ET.parse(junit).getroot()
    cases = list(root.iter("testcase"))
    per_file: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    totals: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
    timed = []
    for case in cases:
        name = test_file(case)
        what = outcome(case)
        seconds = float(case.get("time") or 0.0)
        per_file[name][what] += 1
        per_file[name]["seconds"] += seconds
        totals[what] += 1
        timed.append((seconds, f"{name}::{case.get('name')}", what))
    width = max([len(n) for n in per_file] + [4])
    lines = [f"===== tests run ({junit}): {len(cases)} in {len(per_file)} files =====",
             f"{'file':<{width}}  passed  failed  errors  skipped  seconds"]
    for name in sorted(per_file):
        f = per_file[name]
        lines.append(f"{name:<{width}}  {int(f['passed']):6d}  {int(f['failed']):6d}  "
                     f"{int(f['error']):6d}  {int(f['skipped']):7d}  {f['seconds']:7.1f}")
    lines.append(f"slowest {min(SLOWEST, len(timed))} tests:")
    for seconds, name, what in sorted(timed, reverse=True)[:SLOWEST]:
        lines.append(f"  {seconds:7.1f} s  {name}" + ("" if what == "passed" else f" ({what})"))
    sum_time = sum(s for s, _, _ in timed)
    timing = f"time: {sum_time:.0f} s in tests"
    if wall is not None:
        timing += f", pytest {wall:.0f} s wall"
    if since_start is not None:
        timing += f", {since_start:.0f} s since .ci/run started (make deps included)"
    lines.append(timing)
    failed = totals["failed"] + totals["error"]
    if totals["error"]:
        lines.append(f"({totals['error']} of the failed are errors)")
    lines.append(f"total: {totals['passed']} passed, {failed} failed, {totals['skipped']} skipped")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--summary":
        print(summarise(Path(argv[1])))
        return 0
    if not argv or argv[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    junit = Path(argv[0])
    start = time.monotonic()
    rc = subprocess.call([sys.executable, "-m", "pytest", f"--junitxml={junit}", *argv[1:]])
    wall = time.monotonic() - start
    ci_start = os.environ.get("HH_CI_START", "")
    since = time.time() - float(ci_start) if ci_start.isdigit() else None
    sys.stdout.flush()
    if junit.is_file():
        try:
            print(summarise(junit, wall, since), flush=True)
        except ET.ParseError as e:
            print(f"run_tests: {junit}: not a JUnit file ({e})", file=sys.stderr)
    else:
        print(f"run_tests: pytest wrote no {junit} (exit {rc})", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
