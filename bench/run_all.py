"""Run every benchmark in turn and print all their figures ('make bench').

Order: bench_walker.py (pure Python, a second), bench_build.py (no-op and
one-file rebuilds; the cold build only with --cold), bench_boot.py (5 boots,
QEMU memory), bench_run.py (every method, warm). Each script's figures are
printed as they come; at the end a summary lists every missed target and
every script that failed.

The build, boot and run benchmarks build kernels and boot QEMU guests: run
them on an otherwise idle machine, or the figures measure the contention.

Exit: 0 even when targets are missed (benchmarks report, tests judge); 2 if any
benchmark script failed (a command it ran failed); 130 on Ctrl-C.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ("walker", "build", "boot", "run")
WALK_TARGET_MS = 200.0   # bench_walker.py prints no verdict: judged here
WALKER_WORST = re.compile(r"worst ([\d.]+) ms")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cold", action="store_true",
                   help="bench_build.py: also time a cold build in a fresh "
                        "temporary cache (~5-15 min more)")
    p.add_argument("--dt", action="store_true",
                   help="bench_boot.py: also time DT boots")
    p.add_argument("--runs", type=int, default=None, metavar="N",
                   help="bench_boot.py: boots per mode (its default: 5)")
    p.add_argument("--only", default="", metavar="NAME[,NAME]",
                   help="run only these: " + ", ".join(SCRIPTS))
    p.add_argument("--skip", default="", metavar="NAME[,NAME]",
                   help="skip these: " + ", ".join(SCRIPTS))
    p.add_argument("-v", "--verbose", action="store_true",
                   help="passed to the build, boot and run benchmarks")
    args = p.parse_args(argv)
    for opt in ("only", "skip"):
        names = [n.strip() for n in getattr(args, opt).split(",") if n.strip()]
        unknown = [n for n in names if n not in SCRIPTS]
        if unknown:
            p.error(f"--{opt}: unknown {', '.join(unknown)} (choose from "
                    f"{', '.join(SCRIPTS)})")
        setattr(args, opt, names)
    return args


def script_argv(name: str, args) -> list:
    argv = [sys.executable, str(HERE / f"bench_{name}.py")]
    if name != "walker" and args.verbose:
        argv.append("-v")
    if name == "build" and args.cold:
        argv.append("--cold")
    if name == "boot":
        if args.dt:
            argv.append("--dt")
        if args.runs is not None:
            argv += ["--runs", str(args.runs)]
    return argv


def notable_line(line: str) -> bool:
    """A missed target, a failure, or a figure that is not what it claims."""
    if "MISSED" in line or line.startswith("FAILED") or "NOT a" in line \
            or "not representative" in line:
        return True
    m = WALKER_WORST.search(line)
    return bool(m) and float(m.group(1)) > WALK_TARGET_MS


def run_script(argv: list) -> tuple:
    """Run one benchmark, echoing its stdout; returns (rc, seconds, notable lines)."""
    print(f"\n$ {' '.join(argv)}", flush=True)
    start = time.monotonic()
    notable = []
    proc = subprocess.Popen(argv, cwd=HERE.parent, stdout=subprocess.PIPE,
                            text=True, errors="replace", bufsize=1)
    try:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if notable_line(line):
                flag = "" if "MISSED" in line or line.startswith("FAILED") else \
                    f"(over {WALK_TARGET_MS:g} ms) " if WALKER_WORST.search(line) else ""
                notable.append(flag + line.rstrip())
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return rc, time.monotonic() - start, notable


def main(argv=None) -> int:
    args = parse_args(argv)
    chosen = [n for n in SCRIPTS
              if (not args.only or n in args.only) and n not in args.skip]
    outcomes = []
    for name in chosen:
        rc, seconds, notable = run_script(script_argv(name, args))
        outcomes.append((name, rc, seconds, notable))
    print("\n== summary ==")
    failed = False
    for name, rc, seconds, notable in outcomes:
        state = "ok" if rc == 0 else f"FAILED (exit {rc})"
        failed |= rc != 0
        print(f"bench_{name}.py: {state} in {seconds:.1f} s")
        for line in notable:
            print(f"    {line}")
    if not any(notable for *_, notable in outcomes):
        print("no missed target among the figures that state one "
              f"(walker: worst walk <= {WALK_TARGET_MS:g} ms)")
    return 2 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
