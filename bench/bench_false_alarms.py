#!/usr/bin/env python3
"""False alarms: the clean default kernel, run again and again.

Runs ``run -q --method all --cycles 2 --report <tmp>`` ``--runs`` times (the
kernel is cached: with --cycles 2 the harness builds base+4k-48+leak once) and
prints:

  passes/N           runs whose verdict was PASS (target: N/N)
  infra ERRORs       runs a method of which stopped with an error blamed on the
                     machine (target: 0), and the transient faults retried on
                     the way (SSH channels that would not open: the report's notes)
  per check          how many runs each check did not pass, with the first
                     evidence line of each failure, so a flake can be traced to
                     its cause (and fixed there, not retried away)
  wall per run       median and max

``--max-minutes`` stops starting new runs after that long; the figure then
says how many runs were made (never extrapolated).

  .venv/bin/python bench/bench_false_alarms.py --runs 20

Exit: 0 whatever the figures; 2 if the build or the machine fails.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import benchlib as bl

TARGET = 1.0


def one(folder: Path, args) -> tuple:
    argv = bl.harness_argv("run", "-q", "--method", args.method, "--cycles",
                           str(args.cycles), "--report", folder,
                           *(["--guests", str(args.guests)] if args.guests else []))
    res = bl.run(argv, ok=(0, 1, 2), verbose=args.verbose, what="clean run")
    path = folder / "report.json"
    if not path.exists():
        bl.fail(res, "no report.json")
    return res, json.loads(path.read_text())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--cycles", type=int, default=2)
    p.add_argument("--method", default="all")
    p.add_argument("--max-minutes", type=float, default=0.0)
    p.add_argument("--guests", type=int, default=0,
                   help="guests side by side per run (run --guests; default: run's own)")
    p.add_argument("--keep", metavar="DIR", type=Path,
                   help="keep the report folder of every run that did not PASS under DIR "
                        "(console log, gdb-*.events.jsonl with the agent's traceback)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args()
    bl.header(f"false alarms: clean kernel, run --method {args.method} --cycles {args.cycles}")
    start = time.monotonic()
    verdicts, walls, failed = [], [], Counter()
    infra = 0                        # runs with a method stopped by an infra error
    retried: Counter = Counter()     # retries (harness.machine.ssh) per run
    retry_notes: list = []
    evidence: dict = {}
    command = ""
    with tempfile.TemporaryDirectory(prefix="bench-false-alarms-") as tmp:
        for i in range(args.runs):
            if args.max_minutes and time.monotonic() - start > args.max_minutes * 60:
                bl.note(f"--max-minutes {args.max_minutes:g} reached after {i} run(s)")
                break
            res, report = one(Path(tmp) / f"run-{i}", args)
            command = res.command
            verdicts.append(report["verdict"])
            if args.keep and report["verdict"] != "PASS":
                args.keep.mkdir(parents=True, exist_ok=True)
                kept = args.keep / f"run-{i + 1}"
                shutil.rmtree(kept, ignore_errors=True)
                shutil.copytree(Path(tmp) / f"run-{i}", kept, symlinks=True)
                bl.note(f"run {i + 1}: {report['verdict']}, folder kept in {kept}")
            walls.append(res.wall)
            errors = [(m.get("run") or {}).get("error") or {} for m in report["methods"]]
            infra += any(e.get("blame") == "infra" for e in errors)
            for m in report["methods"]:
                notes = [x for x in (m.get("run") or {}).get("notes", ())
                         if str(x).startswith("ssh retried")]
                retried[i] += len(notes)
                retry_notes.extend(f"run {i + 1} {m['method']}: {x}" for x in notes)
                for c in m["checks"]:
                    if c["verdict"] in ("FAIL", "ERROR"):
                        key = f"{m['method']} {c['name']} {c['verdict']}"
                        failed[key] += 1
                        first = (c.get("evidence") or "").strip().split("\n", 1)[0]
                        evidence.setdefault(key, []).append(f"run {i + 1}: {first[:240]}")
                error = (m.get("run") or {}).get("error")
                if error:
                    key = f"{m['method']} run error ({error.get('blame')})"
                    failed[key] += 1
                    evidence.setdefault(key, []).append(
                        f"run {i + 1}: step {error.get('step')!r}: {error.get('message')}")
            bl.note(f"run {i + 1}/{args.runs}: {report['verdict']} in {res.wall:.0f} s")
    n = len(verdicts)
    passes = verdicts.count("PASS")
    met = "met" if n and passes / n >= TARGET else "MISSED"
    print(f"passes: {passes}/{n} (target {n}/{n}, {met})  {command}")
    print(f"infra ERRORs: {infra} in {n} run(s) (target 0, {'met' if not infra else 'MISSED'}); "
          f"transient faults retried: {sum(retried.values())} in "
          f"{sum(1 for c in retried.values() if c)} run(s)")
    for line in retry_notes[:5]:
        print(f"      {line}")
    for key, count in failed.most_common():
        print(f"  {key}: {count} run(s)")
        for line in evidence[key][:5]:
            print(f"      {line}")
    if walls:
        print(f"wall per run: median {statistics.median(walls):.0f} s, max {max(walls):.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
