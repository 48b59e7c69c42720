"""Run every benchmark in turn and print all their figures ('make bench').

Order: bench_walker.py (pure Python, a second), bench_build.py (no-op and
one-file rebuilds; the cold build only with --cold), bench_objects.py (the
default kernel's objects by the scenario that needs them, next to kunit.py's
build dir: reads the build trees, a second), bench_boot.py (5 boots,
QEMU memory), bench_run.py (every method, warm). Each script's figures are
printed as they come; at the end a summary lists every missed target and
every script that failed.

kunit.py (issue 13's yardstick) is measured in the same invocation by
default (--no-kunit to skip): bench_build.py --cold puts kunit.py's cold run
next to the cold build, bench_run.py kunit.py's warm run next to the warm
run (bench/kunitlib.py). Cost: ~5-6 min of both CPUs for kunit.py's cold
build (with --cold), ~20-30 s for its warm run (+~5 min the first time, to
build its build dir under the harness cache).

Every script writes its figures as JSON (--json-out); this script collects
them into one results file (--results FILE; default ./bench-results.json)
with the date, the commit and the machine line. --update-readme writes them
to bench/results/latest.json (unless --results names another file) and
regenerates docs/performance.md's figures from it (bench/perf_readme.py).

The build, boot and run benchmarks build kernels and boot QEMU guests: run
them on an otherwise idle machine, or the figures measure the contention.

Exit: 0 even when targets are missed (benchmarks report, tests judge); 2 if any
benchmark script failed (a command it ran failed); 130 on Ctrl-C.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import benchlib as bl  # noqa: E402

SCRIPTS = ("walker", "build", "objects", "boot", "run")
LATEST = HERE / "results" / "latest.json"
WALK_TARGET_MS = 200.0   # bench_walker.py prints no verdict: judged here
WALKER_WORST = re.compile(r"worst ([\d.]+) ms")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cold", action="store_true",
                   help="bench_build.py: also time a cold build in a fresh "
                        "temporary cache (~5-15 min more)")
    p.add_argument("--dt", action="store_true",
                   help="(kept for old command lines: DT boots are always timed, "
                        "issue 13 sets a target for each mode)")
    kunit = p.add_mutually_exclusive_group()
    kunit.add_argument("--kunit", dest="kunit", action="store_true", default=True,
                       help="time kunit.py from the same kernel tree next to the "
                            "build (with --cold: its cold run, ~5-6 min of both "
                            "CPUs) and run figures (its warm run, ~20-30 s; ~5 min "
                            "more the first time). The default")
    kunit.add_argument("--no-kunit", dest="kunit", action="store_false",
                       help="no kunit.py figures")
    p.add_argument("--results", type=Path, default=None, metavar="FILE",
                   help="where the collected figures go (default "
                        "./bench-results.json; with --update-readme "
                        "bench/results/latest.json)")
    p.add_argument("--note", default="", metavar="TEXT",
                   help="a remark stored with the results and shown in docs/performance.md's "
                        "section (e.g. what else ran on the machine)")
    p.add_argument("--update-readme", action="store_true",
                   help="write the results to bench/results/latest.json (or "
                        "--results) and regenerate docs/performance.md's "
                        "section from them (bench/perf_readme.py)")
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
    if args.results is None:
        args.results = LATEST if args.update_readme else Path("bench-results.json")
    return args


def script_argv(name: str, args, json_out: Path) -> list:
    argv = [sys.executable, str(HERE / f"bench_{name}.py"), "--json-out", str(json_out)]
    if name not in ("walker", "objects") and args.verbose:
        argv.append("-v")
    if name == "build" and args.cold:
        argv.append("--cold")
    if name in ("build", "run") and not args.kunit:
        argv.append("--no-kunit")
    if name == "boot":
        argv.append("--dt")
        if args.runs is not None:
            argv += ["--runs", str(args.runs)]
    return argv


def collect(outcomes: list, argv: list, machine: str, started: str,
            commit: tuple = ("", False)) -> dict:
    """One results document from the scripts' --json-out files; ``commit`` is
    (short HEAD, dirty) when the invocation started."""
    head, dirty = commit
    scripts = []
    for name, rc, seconds, _notable, json_out in outcomes:
        entry = {"script": f"bench_{name}.py", "rc": rc, "seconds": round(seconds, 3)}
        try:
            doc = json.loads(Path(json_out).read_text())
        except (OSError, ValueError) as e:
            doc = {"figures": [], "failed": f"no figures written ({e})"}
        entry["command"] = doc.get("command", "")
        for k in ("date", "commit", "dirty"):     # when the script itself started
            if k in doc:
                entry[k] = doc[k]
        entry["figures"] = doc.get("figures", [])
        if doc.get("failed"):
            entry["failed"] = doc["failed"]
        scripts.append(entry)
    return {"schema": bl.SCHEMA, "date": started, "commit": head, "dirty": dirty,
            "machine": machine, "command": bl.command_text(argv), "scripts": scripts}


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
    machine = bl.machine_line()
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    commit = bl.git_commit()
    own_argv = [sys.executable, "bench/run_all.py"] + \
        (sys.argv[1:] if argv is None else list(argv))
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="bench-results-") as tmp:
        for name in chosen:
            json_out = Path(tmp) / f"{name}.json"
            rc, seconds, notable = run_script(script_argv(name, args, json_out))
            outcomes.append((name, rc, seconds, notable, json_out))
        results = collect(outcomes, own_argv, machine, started, commit)
    if args.note:
        results["note"] = args.note
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=1) + "\n")
    print("\n== summary ==")
    failed = False
    for name, rc, seconds, notable, _ in outcomes:
        state = "ok" if rc == 0 else f"FAILED (exit {rc})"
        failed |= rc != 0
        print(f"bench_{name}.py: {state} in {seconds:.1f} s")
        for line in notable:
            print(f"    {line}")
    if not any(notable for *_, notable, _ in outcomes):
        print("no missed target among the figures that state one "
              f"(walker: worst walk <= {WALK_TARGET_MS:g} ms)")
    print(f"figures written to {args.results}")
    if args.update_readme:
        import perf_readme
        readme = perf_readme.update_readme(args.results)
        print(f"docs/performance.md regenerated from {args.results}: {readme}")
    return 2 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
