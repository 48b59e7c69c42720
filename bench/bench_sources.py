"""Kernel sources side by side: cold build and warm run per --kernel-src.

For each source of ``--kernel-src`` (default ``debian,debian-6.1``: Debian's
6.12 and Debian 12's own 6.1, README "Building"):

  cold build     --cold only: ``build --kernel-src SRC --json`` in a fresh
                 temporary cache (HOTPLUG_HARNESS_CACHE=<tmp>,
                 CCACHE_DISABLE=1), as bench_build.py's cold build: tarball
                 hash, unpack, work tree, series, make; the objects built
                 (*.o in its O= tree) and the kernel release.
  warm run       ``run --kernel-src SRC --method all --json --report <tmp>``
                 with the kernel cached (one untimed ``build`` and one
                 untimed run first, which saves the guests' snapshots):
                 median of --runs; each method's verdict.
  --cycles 2     (--cycles) the same with ``--cycles 2`` (the leak kernel:
                 its build is untimed).

Then a table: one row per source, each figure beside the first source's
(the ratio). Figures are recorded as ``KIND_SOURCE`` (cold_build_debian_6_1,
warm_run_debian ...) for --json-out.

Exit: 0 whether or not the runs pass (the verdicts are printed); 2 if a
command fails to run (a run that exits 1, a kernel failing a check, is timed
and said).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import benchlib as bl  # noqa: E402
import kunitlib as kl  # noqa: E402
from bench_build import default_cold_parent  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernel-src", default="debian,debian-6.1", metavar="SRC[,SRC]",
                   help="the sources to compare (default debian,debian-6.1)")
    p.add_argument("--cold", action="store_true",
                   help="also a cold build of each in a fresh temporary cache "
                        "(~5-10 min each on 2 CPUs; ~2-3 GiB of disk each)")
    p.add_argument("--runs", type=int, default=3, metavar="N",
                   help="warm runs per source (median; default 3; 0: none, the cold "
                        "builds only)")
    p.add_argument("--guests", type=int, default=None, metavar="N",
                   help="passed to run --guests (default: the harness's, two side by side)")
    p.add_argument("--cycles", action="store_true",
                   help="also time run --method all --cycles 2 per source")
    p.add_argument("--cold-dir", type=Path, default=None, metavar="DIR",
                   help="where the temporary cold caches go (default: next to "
                        "your normal cache)")
    bl.add_common(p)
    return p.parse_args(argv)


def key(kind: str, source: str) -> str:
    return bl.slug(f"{kind} {source}")


def cold_build(args, source: str) -> dict:
    parent = args.cold_dir or default_cold_parent()
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="hotplug-harness-bench-sources-", dir=parent))
    env = {"HOTPLUG_HARNESS_CACHE": str(tmp), "CCACHE_DISABLE": "1"}
    try:
        bl.note(f"cold build of {source}: ~5-10 min")
        r = bl.run(bl.harness_argv("build", "--kernel-src", source, "--json"), env=env,
                   verbose=args.verbose, what=f"cold build {source}")
        art = r.json()
        objects = kl.count_objects(tmp / "trees")
    finally:
        if args.keep:
            bl.note(f"kept the cold cache {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    extra = (f"{art.get('kernel_release')}, {objects} objects, rebuilt="
             f"{str(art.get('rebuilt')).lower()}")
    if r.waited_for_lock:
        extra += ", includes waiting for another run's lock"
    bl.figure(f"cold build ({source})", r.wall, None, r.command, extra,
              key=key("cold build", source))
    bl.record(key("cold build objects", source), f"cold build objects ({source})",
              objects, "objects", command=r.command)
    return {"wall": r.wall, "objects": objects, "release": art.get("kernel_release")}


def warm_runs(args, source: str, cycles: int = 1) -> dict:
    extra_args = (["--cycles", "2"] if cycles > 1 else []) + \
        (["--guests", str(args.guests)] if args.guests else [])
    label = f"warm run --method all{' --cycles 2' if cycles > 1 else ''} ({source})"
    bl.run(bl.harness_argv("build", "--kernel-src", source, "--json",
                           *(["--config", "leak"] if cycles > 1 else [])),
           verbose=args.verbose, what=f"prime {source}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-sources-run-"))
    walls, verdicts, command = [], [], ""
    try:
        for i in range(args.runs + 1):      # the first one saves snapshots
            r = bl.run(bl.harness_argv("run", "--kernel-src", source, "--method", "all",
                                       *extra_args, "--json", "--report", tmp / f"r{i}"),
                       ok=(0, 1), verbose=args.verbose, what=f"{label} {i}")
            report = r.json()
            if i == 0:
                continue
            walls.append(r.wall)
            command = r.command
            verdicts = [f"{m['method']} {m['verdict']}" for m in report.get("methods", ())]
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    s = bl.spread(walls)
    bl.figure(label, s["median"], None, command,
              f"{bl.spread_text(s)}; {', '.join(verdicts)}",
              key=key("warm run cycles 2" if cycles > 1 else "warm run", source))
    return {"wall": s["median"], "verdicts": verdicts}


def table(rows: dict) -> None:
    sources = list(rows)
    first = rows[sources[0]]
    print(f"\n{'source':14} {'release':14} {'cold build':>16} {'objects':>12} "
          f"{'warm run':>14} {'--cycles 2':>14}")

    def cell(src: str, name: str, fmt) -> str:
        v = rows[src].get(name)
        if v is None:
            return "-"
        base = first.get(name)
        ratio = f" {v / base:.2f}x" if src != sources[0] and base else ""
        return fmt(v) + ratio
    for src in sources:
        print(f"{src:14} {rows[src].get('release') or '-':14} "
              f"{cell(src, 'cold', bl.fmt_s):>16} {cell(src, 'objects', str):>12} "
              f"{cell(src, 'warm', bl.fmt_s):>14} {cell(src, 'cycles', bl.fmt_s):>14}")


def main(argv=None) -> int:
    args = parse_args(argv)
    bl.start_results_for(args, __file__, argv)
    from harness.kernel import versions
    sources = versions.parse_sources(args.kernel_src)
    bl.header("bench_sources: kernel sources side by side (cold build, warm run)")
    rows: dict = {}
    for source in sources:
        row = rows.setdefault(source, {})
        if args.cold:
            got = cold_build(args, source)
            row.update(cold=got["wall"], objects=got["objects"], release=got["release"])
        if args.runs > 0:
            row["warm"] = warm_runs(args, source)["wall"]
        if args.cycles and args.runs > 0:
            row["cycles"] = warm_runs(args, source, cycles=2)["wall"]
    table(rows)
    return 0


if __name__ == "__main__":
    bl.entry(main)
