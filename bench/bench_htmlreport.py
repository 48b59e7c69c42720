#!/usr/bin/env python3
"""report.html: page size, render time, and the time headless Chromium takes
to open it (issue 12's targets: < 300 KiB for `run --method all`, opens in
under a second).

    python3 bench/bench_htmlreport.py DIR [DIR ...]     # folders of 'run --report DIR'

Render: ``htmlreport.render_report`` of DIR/report.json, median of 5 (the
JSON already parsed). Open: ``chromium --headless --screenshot`` of the page
minus the same of an empty page (Chromium's own start-up), median of 3 each;
the screenshot is taken once the page has loaded and painted.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchlib import entry, figure, header  # noqa: E402

from harness import htmlreport  # noqa: E402

RUNS, SHOTS = 5, 3


def shoot(chromium: str, page: Path, out: Path) -> float:
    argv = [chromium, "--headless", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
            f"--user-data-dir={out / 'profile'}", "--window-size=1100,1500",
            f"--screenshot={out / 'shot.png'}", page.as_uri()]
    if os.geteuid() == 0:
        argv.insert(1, "--no-sandbox")
    start = time.monotonic()
    subprocess.run(argv, check=True, capture_output=True, timeout=120)
    return time.monotonic() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+", type=Path, help="report folders (run --report DIR)")
    args = p.parse_args()
    header("report.html")
    chromium = shutil.which("chromium")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        blank = tmp / "blank.html"
        blank.write_text("<!DOCTYPE html><title>blank</title>")
        base = statistics.median(shoot(chromium, blank, tmp) for _ in range(SHOTS)) \
            if chromium else None
        for folder in args.dirs:
            data = json.loads((folder / "report.json").read_text())
            times = []
            for _ in range(RUNS):
                start = time.monotonic()
                page = htmlreport.render_report(data)
                times.append(time.monotonic() - start)
            methods = ",".join(m["method"] for m in data["methods"])
            size = len(page.encode())
            print(f"{folder}: page size: {size / 1024:.1f} KiB (target <= 300 KiB, "
                  f"{'met' if size <= 300 * 1024 else 'MISSED'})  [methods {methods}; "
                  f"report.json {(folder / 'report.json').stat().st_size / 1024:.0f} KiB]")
            figure(f"{folder}: render (median)", statistics.median(times), None,
                   f"$ {sys.executable} bench/bench_htmlreport.py {folder}",
                   f"min {min(times):.3f} s, max {max(times):.3f} s, n={RUNS}")
            if chromium is None:
                print(f"{folder}: open in chromium: not measured (no chromium)")
                continue
            html = tmp / "report.html"
            html.write_text(page)
            opened = statistics.median(shoot(chromium, html, tmp) for _ in range(SHOTS))
            figure(f"{folder}: open in headless chromium (screenshot, minus an empty "
                   f"page)", opened - base, 1.0, "",
                   f"page {opened:.2f} s, empty page {base:.2f} s, medians of {SHOTS}")
    return 0


if __name__ == "__main__":
    entry(main)
