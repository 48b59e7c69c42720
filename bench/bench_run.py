"""Time a warm 'hotplug-harness run' of every method, from its report.json.

First 'build --json' makes sure the default kernel is in the cache; then

  hotplug-harness run --method all --json --report <tmp>

is timed as a whole (issue 13: target <= 15 s with the kernel cached) and its
report is broken down:

  per method      verdict, wall time (the harness's "[METHOD] done in Xs":
                  boot + steps + shutdown) and the sum of its step times
  per step        methods[].steps[] grouped by step name, and by kind (the
                  first word: inspect, add, online, offline, remove, ...):
                  min / median / max over the methods that ran it
  per transport   total step seconds over ssh, serial, qmp, host
  host walker     methods[].run.phases[].walks[].seconds: median and max of
                  every region walk (linear map, vmemmap)    target <= 0.2 s

With --kunit (the default) kunit.py's warm run from the same kernel tree is
timed next to it (bench/kunitlib.py: 'kunit.py run --arch=arm64
--cross_compile=aarch64-linux-gnu-' again with nothing to build; its build dir
under the harness cache is built first, untimed, when it is not there).

Then (with --method all, unless --no-make) issue 13's own command, timed as a
whole with nothing to build (target <= 15 s):

  make test-qemu

which checks the host set-up ('make deps') and runs every method into
reports/latest of the checkout; the extra says how long 'make deps' took.

Then patch -> verdict (unless --no-patch): the one-file patch of
bench_build.py (a comment line appended to arch/arm64/mm/mmu.c, unique, so
the kernel cache misses) and

  CCACHE_DISABLE=1 hotplug-harness run --patch P --method all --json --report <tmp>

timed as one command: the incremental build happens inside it (target <= 30 s).
The patched kernel's cache entry is removed afterwards (--keep keeps it).

A kernel that fails a check (run exit 1) is still timed: the verdict is
printed. A harness failure (exit 2) prints what was measured, the stderr tail,
and exits 2. '--from-report DIR|FILE' prints the breakdown of a saved run
without booting anything.

Exit: 0 whether or not targets are met; 2 if a command fails.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import benchlib as bl  # noqa: E402
import kunitlib as kl  # noqa: E402

RUN_TARGET, WALK_TARGET = 15.0, 0.2     # issue 13: warm run --method all <= 15 s
MAKE_TARGET = 15.0                      # issue 13: warm make test-qemu <= 15 s
MAKE_REPORT = bl.REPO / "reports" / "latest"   # the Makefile's --report
PATCH_VERDICT_TARGET = 30.0             # issue 13: one-file patch -> verdict <= 30 s
METHOD_DONE = re.compile(r"^\[(\S+)\] (done|error) in ([\d.]+)s")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="all", metavar="NAME[,NAME]|all",
                   help="passed to 'run --method' (default all; the 15 s target "
                        "is for all)")
    p.add_argument("--from-report", type=Path, metavar="DIR|FILE",
                   help="summarise a saved report.json instead of running")
    kunit = p.add_mutually_exclusive_group()
    kunit.add_argument("--kunit", dest="kunit", action="store_true", default=True,
                       help="also time kunit.py's warm run from the same kernel "
                            "tree and print it next to the warm run (the default); "
                            "costs ~20-30 s, ~5 min more the first time (its build "
                            "dir is built first)")
    kunit.add_argument("--no-kunit", dest="kunit", action="store_false",
                       help="no kunit.py")
    p.add_argument("--no-make", action="store_true",
                   help="skip the warm 'make test-qemu' figure")
    p.add_argument("--no-patch", action="store_true",
                   help="skip the patch -> verdict figure")
    p.add_argument("--allow-ccache", action="store_true",
                   help="let ccache serve the patch -> verdict build (default: "
                        "CCACHE_DISABLE=1, as bench_build.py)")
    bl.add_common(p)
    return p.parse_args(argv)


# ------------------------------------------------------------------ figures

def ms(seconds) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.1f} ms"


def table(rows: list, title: str) -> None:
    """rows: (name, [seconds...]) -> name, n, min, median, max."""
    if not rows:
        return
    width = max(len(name) for name, _ in rows)
    print(f"  {title}:")
    print(f"    {'':{width}s}   n      min   median      max")
    for name, values in rows:
        s = bl.spread(values)
        print(f"    {name:{width}s}  {s['n']:2d} {s['min']:7.2f}s {s['median']:7.2f}s "
              f"{s['max']:7.2f}s")


def grouped(methods: list, key) -> list:
    """[(group, [seconds...])] in order of first appearance."""
    groups: dict = {}
    for m in methods:
        for step in m.get("steps", []):
            groups.setdefault(key(step), []).append(step["seconds"])
    return list(groups.items())


def method_walls(stderr_lines) -> dict:
    walls = {}
    for _, line in stderr_lines or ():
        m = METHOD_DONE.match(line.strip())
        if m:
            walls[m.group(1)] = (float(m.group(3)), m.group(2))
    return walls


def summarise(data: dict, walls: dict) -> None:
    methods = data.get("methods", [])
    print("per method (wall = boot + steps + shutdown, from the harness's stderr):")
    for m in methods:
        steps = m.get("steps", [])
        total = sum(s["seconds"] for s in steps)
        wall = walls.get(m["method"])
        wall_text = bl.fmt_s(wall[0]) if wall else "n/a"
        error = (m.get("run") or {}).get("error")
        why = f"  error in step {error.get('step')}: {error.get('message')}" \
            if error else ""
        print(f"  {m['method']:12s} {m['verdict']:6s} wall {wall_text:>8s}  "
              f"steps {bl.fmt_s(total):>8s} ({len(steps)} steps){why}")
    print("per step (seconds over the methods that ran it):")
    table(grouped(methods, lambda s: s["name"]), "by step name")
    table(grouped(methods, lambda s: s["name"].split()[0] if s["name"] else "?"),
          "by kind (first word of the name)")
    totals: dict = {}
    for m in methods:
        for s in m.get("steps", []):
            totals[s.get("transport", "?")] = totals.get(s.get("transport", "?"), 0.0) \
                + s["seconds"]
    print("  by transport (total): " + ", ".join(
        f"{t} {bl.fmt_s(v)}" for t, v in sorted(totals.items(), key=lambda x: -x[1])))
    walker(methods)


def walker(methods: list) -> None:
    walks = [(m["method"], p["name"], w.get("region", "?"), w.get("seconds"))
             for m in methods for p in (m.get("run") or {}).get("phases", [])
             for w in p.get("walks", [])]
    times = [w[3] for w in walks if w[3] is not None]
    if not times:
        print("host walker: no walks recorded (run with --no-walker, or no phase "
              "was inspected)")
        return
    s = bl.spread(times)
    worst = max(walks, key=lambda w: w[3] or 0.0)
    verdict = "met" if s["max"] <= WALK_TARGET else "MISSED"
    print(f"host walker, max per region walk: {ms(s['max'])} "
          f"(target <= {WALK_TARGET * 1000:g} ms, {verdict})  [median {ms(s['median'])}, "
          f"n={s['n']}; slowest: {worst[0]} phase {worst[1]} {worst[2]}]")
    regions: dict = {}
    for _, _, region, t in walks:
        if t is not None:
            regions.setdefault(region, []).append(t)
    for region, values in regions.items():
        r = bl.spread(values)
        print(f"  {region}: median {ms(r['median'])}, max {ms(r['max'])}, n={r['n']}")


# --------------------------------------------------------------------- run

def load(path: Path) -> dict:
    path = path / "report.json" if path.is_dir() else path
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        bl.die(f"cannot read {path}: {e}")


def from_report(path: Path) -> int:
    bl.header(f"bench_run: breakdown of {path}")
    data = load(path)
    print(f"saved run: verdict {data.get('verdict')} (exit {data.get('exit_code')}), "
          f"harness seconds {bl.fmt_s(data.get('seconds'))}  (no wall time: not run "
          f"by this script)")
    summarise(data, {})
    return 0


def run(args) -> int:
    bl.header("bench_run: warm run of every method")
    prime = bl.run(bl.harness_argv("build", "--json"), verbose=args.verbose,
                   what="kernel (cache lookup or build)")
    art = prime.json()
    bl.figure("kernel ready", prime.wall, None, prime.command,
              f"rebuilt={str(art.get('rebuilt')).lower()}, {art.get('kernel_release')}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-run-"))
    try:
        warm_run(args, tmp / "report")
        if args.method == "all" and not args.no_make:
            make_test_qemu(args)
        if args.kunit:
            kunit_warm(args, art)
        if not args.no_patch:
            patch_verdict(args, tmp)
    finally:
        if args.keep:
            bl.note(f"kept the reports under {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def timed_run(args, argv: list, report_dir: Path, env=None):
    """Run 'run ... --report DIR'; (result, report.json) even when a check
    failed (exit 1); no report.json is a failure."""
    r = bl.run(argv, env=env, verbose=args.verbose, ok=(0, 1, 2), what="run")
    data = load(report_dir) if (report_dir / "report.json").exists() else None
    if data is None:
        bl.fail(r, f"exit {r.rc}, no report.json")
    return r, data


def run_extra(r, data: dict) -> str:
    return f"verdict {data.get('verdict')}, exit {r.rc}, harness seconds " \
           f"{bl.fmt_s(data.get('seconds'))}, kernel rebuilt=" \
           f"{str(data.get('rebuilt')).lower()}"


def warm_run(args, report_dir: Path) -> None:
    argv = bl.harness_argv("run", "--method", args.method, "--json", "--report", report_dir)
    r, data = timed_run(args, argv, report_dir)
    extra = run_extra(r, data)
    if data.get("rebuilt"):
        extra += " - the kernel was built during the run: not a warm figure"
    target = RUN_TARGET if args.method == "all" else None
    bl.figure(f"run --method {args.method}", r.wall, target, r.command, extra,
              key="warm_run" if args.method == "all" else "", readme=args.method == "all")
    summarise(data, method_walls(r.stderr_lines))
    if r.rc == 2:
        bl.fail(r, "exit 2: the harness or the machine failed; figures above "
                   "are not representative")


def make_test_qemu(args) -> None:
    """'make test-qemu' as a user types it, nothing to build: the deps check,
    then run --method all into reports/latest."""
    r = bl.run(["make", "test-qemu"], verbose=args.verbose, ok=(0, 1, 2),
               what="make test-qemu", merged=True)
    report = MAKE_REPORT / "report.json"
    data = load(MAKE_REPORT) if report.exists() else None
    if data is None or report.stat().st_mtime < time.time() - r.wall - 1:
        bl.fail(r, f"exit {r.rc}, no fresh {report}")
    extra = run_extra(r, data)
    t_run = r.first_time(r"harness\.cli run ")
    if t_run is not None:
        extra += f"; 'make deps' and make itself until the run started {bl.fmt_s(t_run)}"
    if data.get("rebuilt"):
        extra += " - the kernel was built during the run: not a warm figure"
    bl.figure("make test-qemu (warm)", r.wall, MAKE_TARGET, r.command, extra,
              key="make_test_qemu", readme=True)
    if r.rc == 2:
        bl.fail(r, "exit 2: the harness or the machine failed; the make test-qemu "
                   "figure is not representative")


def kunit_warm(args, art: dict) -> None:
    """kunit.py's warm run, printed next to the warm run (same figure in JSON)."""
    kr = kl.run_warm(kl.tree_of(art), args.verbose)
    kl.print_run(kr, "kunit.py warm run", "kunit_warm_run")
    ours = next((f for f in bl.RESULTS if f["key"] == "warm_run"), None)
    if ours is None:
        return
    print(f"warm run vs kunit.py's warm run: {bl.fmt_s(ours['value'])} vs "
          f"{bl.fmt_s(kr.wall)} = {ours['value'] / kr.wall:.2f}x (target: ours <= "
          f"{RUN_TARGET:g} s)", flush=True)
    bl.record("warm_run", ours["label"], ours["value"], "s", target=ours["target"],
              command=ours["command"], extra=ours["extra"], readme=True,
              kunit=kr.to_figure("kunit.py warm run"))


def patch_verdict(args, tmp: Path) -> None:
    """One-file patch to mmu.c -> full verdict, timed as one 'run --patch'."""
    import bench_build
    patch = bench_build.write_patch(tmp / "bench-mmu-comment.patch")
    report_dir = tmp / "patch-report"
    env = {} if args.allow_ccache else {"CCACHE_DISABLE": "1"}
    argv = bl.harness_argv("run", "--patch", patch, "--method", "all", "--json",
                           "--report", report_dir)
    r, data = timed_run(args, argv, report_dir, env=env)
    try:
        extra = run_extra(r, data)
        if not data.get("rebuilt"):
            extra += " - expected rebuilt=true: the patch is new"
        t_make = r.first_time(r"^\$ make ")
        if t_make is not None:
            first_boot = r.first_time(r"\] booting")
            make_s = (first_boot if first_boot is not None else r.wall) - t_make
            extra += f"; from '$ make' to the first boot {bl.fmt_s(make_s)}"
        if r.waited_for_lock:
            extra += "; includes waiting for another run's lock"
        bl.figure("patch -> verdict (one-file patch to mmu.c, run --method all)",
                  r.wall, PATCH_VERDICT_TARGET, r.command, extra, key="patch_verdict",
                  readme=True)
        if r.rc == 2:
            bl.fail(r, "exit 2: the harness or the machine failed; the patch -> "
                       "verdict figure is not representative")
    finally:
        if args.keep:
            bl.note(f"kept the patch {patch}")
        else:
            drop_patched(data.get("kernel") or {})


def drop_patched(kernel: dict) -> None:
    """Remove the patched kernel's artifacts (its cache key is unique)."""
    from harness.host import cache_root
    key = str(kernel.get("cache_key") or "")
    folder = cache_root() / "artifacts" / key[:24]
    if key and (folder / "meta.json").exists():
        shutil.rmtree(folder, ignore_errors=True)
        bl.note(f"removed the patched kernel's cache entry {folder}")


def main(argv=None) -> int:
    args = parse_args(argv)
    bl.start_results_for(args, __file__, argv)
    if args.from_report:
        return from_report(args.from_report)
    return run(args)


if __name__ == "__main__":
    bl.entry(main)
