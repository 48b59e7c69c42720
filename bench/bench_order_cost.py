#!/usr/bin/env python3
"""What the free-time ordering checks cost a warm ``run --method all``.

Runs ``run -q --method all --report <tmp>`` with ``--order-check=on`` (the
default), ``--order-check=off`` and optionally ``sampled``, alternating, ``--runs``
times each (kernel cached), and prints the median wall time of each, the
overhead of ``on`` over ``off`` next to its target (under 20% more wall time),
and per method the removal steps' seconds with and without gdb.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import benchlib as bl

TARGET_OVERHEAD = 0.20


def one(mode: str, folder: Path, verbose: bool) -> tuple[float, dict]:
    report = folder / f"run-{mode}"
    argv = bl.harness_argv("run", "-q", "--method", "all", f"--order-check={mode}",
                           "--report", report)
    res = bl.run(argv, verbose=verbose, ok=(0, 1), what=f"order-check={mode}")
    return res.wall, json.loads((report / "report.json").read_text())


def removal_seconds(report: dict) -> dict:
    out = {}
    for m in report["methods"]:
        steps = m["run"]["steps"]
        out[m["method"]] = sum(s["seconds"] for s in steps
                               if s["name"].startswith(("remove ", "shrink ")))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--sampled", action="store_true",
                   help="also time --order-check=sampled (the first removal of each "
                        "method in full; 'full' is the same as the default 'on')")
    bl.add_common(p)
    args = p.parse_args()
    bl.start_results_for(args, __file__, None)
    bl.header("ordering checks: cost on a warm run --method all")
    modes = ["on", "off"] + (["sampled"] if args.sampled else [])
    walls: dict = {m: [] for m in modes}
    removals: dict = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="bench-order-cost-") as tmp:
        for i in range(args.runs):
            for mode in modes:
                wall, report = one(mode, Path(tmp) / str(i), args.verbose)
                walls[mode].append(wall)
                removals[mode].append(removal_seconds(report))
    med = {m: statistics.median(v) for m, v in walls.items()}
    for mode in modes:
        cmd = bl.command_text(bl.harness_argv("run", "-q", "--method", "all",
                                              f"--order-check={mode}", "--report", "DIR"))
        bl.figure(f"warm run --method all, --order-check={mode} (median wall)", med[mode],
                  extra=bl.spread_text(bl.spread(walls[mode])), command=cmd)
    over = med["on"] / med["off"] - 1
    verdict = "met" if over <= TARGET_OVERHEAD else "MISSED"
    print(f"overhead of the ordering checks: {over * 100:+.0f}% "
          f"(target < {TARGET_OVERHEAD * 100:.0f}%, {verdict})", flush=True)
    for mode in modes:
        per = {k: statistics.median(r[k] for r in removals[mode]) for k in removals[mode][0]}
        print(f"removal steps, --order-check={mode}: "
              + ", ".join(f"{k} {v:.2f} s" for k, v in per.items()), flush=True)
    return 0


if __name__ == "__main__":
    bl.entry(main)
