#!/usr/bin/env python3
"""report.html: page size, render time, and the time headless Chromium takes
to open it (issue 12's targets: < 300 KiB for `run --method all`, opens in
under a second).

    python3 bench/bench_htmlreport.py DIR [DIR ...]     # folders of 'run --report DIR'

Render: ``htmlreport.render_report`` of DIR/report.json, median of 5 (the
JSON already parsed). Open: measured inside headless Chromium, median of 3: a
wrapper page (of this bench only; report.html has no script) loads the report
in a 1100x1500 iframe and notes, in its title, the time from its own start to
the iframe's load event plus a forced layout of the report; ``--dump-dom``
prints it. Chromium's start-up is not counted.
"""
from __future__ import annotations

import argparse
import json
import os
import re
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

from harness.verdict import htmlreport  # noqa: E402

RUNS, SHOTS = 5, 3


WRAPPER = """<!DOCTYPE html><html><head><title>wait</title></head><body><script>
const t0 = performance.now();
function done(f) {
  const h = f.contentDocument.body.offsetHeight;
  document.title = "LOADED " + (performance.now() - t0).toFixed(1) + " " + h;
}
</script><iframe src="report.html" width="1100" height="1500" onload="done(this)">
</iframe></body></html>"""


def open_ms(chromium: str, folder: Path) -> float:
    """Milliseconds from the wrapper's start to report.html loaded and laid out."""
    (folder / "wrapper.html").write_text(WRAPPER)
    argv = [chromium, "--headless", "--disable-gpu", "--no-first-run",
            "--allow-file-access-from-files", f"--user-data-dir={folder / 'profile'}",
            "--dump-dom", (folder / "wrapper.html").as_uri()]
    if os.geteuid() == 0:
        argv.insert(1, "--no-sandbox")
    dom = subprocess.run(argv, check=True, capture_output=True, text=True,
                         timeout=120).stdout
    found = re.search(r"<title>LOADED ([0-9.]+) (\d+)", dom)
    if found is None or int(found[2]) <= 0:
        raise SystemExit(f"the wrapper page did not see report.html load: {dom[:200]}")
    return float(found[1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+", type=Path, help="report folders (run --report DIR)")
    args = p.parse_args()
    header("report.html")
    chromium = shutil.which("chromium")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
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
            (tmp / "report.html").write_text(page)
            opened = [open_ms(chromium, tmp) / 1000 for _ in range(SHOTS)]
            figure(f"{folder}: load + layout in headless chromium (median)",
                   statistics.median(opened), 1.0, "",
                   f"min {min(opened):.3f} s, max {max(opened):.3f} s, n={SHOTS}")
    return 0


if __name__ == "__main__":
    entry(main)
