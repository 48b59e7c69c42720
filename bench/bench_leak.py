"""False alarms and detection of the page_owner leak check (harness.inspect.leakcheck).

Boots the kernel built with '--config leak' (plus any --patch) through the
harness's own session API (harness.session.boot) with 'page_owner=on', drives
the acpi-dimm flow by hand (harness.drive.acpi_dimm plug / online / fill /
unplug, no ptdump, no walker) and reads page_owner's show_stacks before the
first add and after the removal of each cycle. Each run is judged by
harness.inspect.leakcheck.check_cycles; the old MemFree heuristic (1024 kB per cycle,
first cycle to last) is printed next to it as context.

  passes/N        runs the check passed (clean kernel: the false-alarm count)
  caught/N        with --expect-leak: runs the check failed (a leaking kernel)
  collect         size of show_stacks and the time of one read over SSH
  boot            boot_to_ssh_s, MemTotal / MemFree at 'before'

Run with the QEMU slot lock held, e.g.

  .venv/bin/python bench/bench_leak.py --runs 10 --cycles 2
  .venv/bin/python bench/bench_leak.py --runs 3 --cycles 2 \\
      --patch patches/repro/0021-vmemmap-leak-per-cycle.patch --expect-leak

'--record DIR' writes the first run's show_stacks texts (before, cycle-N) to DIR.
'--no-page-owner' boots without page_owner=on, '--default-kernel' boots the
default kernel (no leak fragment): both for the cost comparison (the check then
SKIPs). Exit: 0 whatever the figures; 2 if the build or the machine fails.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import benchlib as bl  # noqa: E402

from harness.drive import acpi_dimm  # noqa: E402
from harness.drive.common import Recorder, blocks_in, set_state  # noqa: E402
from harness.errors import HarnessError  # noqa: E402
from harness.inspect import leakcheck, page_owner, sysfs  # noqa: E402
from harness.kernel import kernel as build  # noqa: E402
from harness.records import FAIL, PASS, SKIP  # noqa: E402
from harness.session import BootOptions, boot  # noqa: E402

MEMFREE_DRIFT_KB = 1024    # harness.checks' tolerance, for the context column


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--cycles", type=int, default=2)
    p.add_argument("--dimms", type=int, default=2)
    p.add_argument("--dimm-mb", type=int, default=512)
    p.add_argument("--fill-mb", type=int, default=128)
    p.add_argument("--patch", action="append", default=[], metavar="FILE")
    p.add_argument("--expect-leak", action="store_true",
                   help="the kernel leaks: count runs caught instead of passes")
    p.add_argument("--no-page-owner", action="store_true",
                   help="boot without page_owner=on (cost comparison)")
    p.add_argument("--default-kernel", action="store_true",
                   help="the default kernel, without the leak fragment (cost comparison)")
    p.add_argument("--record", type=Path, metavar="DIR",
                   help="write the first run's show_stacks texts here")
    p.add_argument("--max-minutes", type=float, default=0, metavar="M",
                   help="start no new run after M minutes (0: no limit); the "
                        "figures then say how many of --runs ran")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="boot output folders (console.log per run); default a temp dir")
    return p.parse_args(argv)


def one_run(art, args, out: Path, record: Path | None) -> dict:
    base = BootOptions(mode="acpi",
                       cmdline=() if args.no_page_owner else (leakcheck.CMDLINE,))
    bopts = acpi_dimm.boot_options(base)
    opts = acpi_dimm.Options(dimms=args.dimms, dimm_mb=args.dimm_mb, cycles=args.cycles,
                             fill_mb=args.fill_mb)
    res = {"cycles": [], "collect_s": [], "collect_bytes": []}
    with boot(art, bopts, out, progress=False) as guest:
        res["boot_to_ssh_s"] = guest.times.get("boot_to_ssh_s")
        rec = Recorder(guest, art, walk=False)

        def take(name: str):
            text, seconds = leakcheck.collect_timed(rec)
            meminfo = sysfs.parse_meminfo(rec.sh("cat /proc/meminfo"))
            if text is not None:
                res["collect_s"].append(seconds)
                res["collect_bytes"].append(len(text.encode()))
                if record is not None:
                    (record / f"page-owner-{name}.txt").write_text(text)
            return name, leakcheck.snapshot(text), meminfo, text

        before = take("before")
        res["memtotal_kb"] = before[2].get("MemTotal")
        res["memfree_before_kb"] = before[2].get("MemFree")
        res["stacks_before"] = (len(page_owner.parse(before[3]).stacks)
                                if before[3] is not None else 0)
        cycles = []
        for cycle in range(1, args.cycles + 1):
            suffix = "" if cycle == 1 else f"@{cycle}"
            dimms = [acpi_dimm.plug(rec, i, opts, suffix) for i in range(1, opts.dimms + 1)]
            if record is not None and cycle == 1:   # the positive control: pages held
                text = leakcheck.collect(rec)
                if text is not None:
                    (record / "page-owner-added.txt").write_text(text)
            for dimm in dimms:
                blocks = blocks_in(rec, dimm.addr, dimm.end)
                rec.step(f"online {dimm.name}",
                         lambda b=blocks: set_state(rec, b, opts.online_type))
            rec.step("use memory", lambda: acpi_dimm.fill(rec, opts.fill_mb))
            for n, dimm in enumerate(dimms, 1):
                acpi_dimm.unplug(rec, dimm, f"removed-{n}{suffix}")
            rec.step("free memory", lambda: rec.sh("rm -f /tmp/harness-fill"))
            cycles.append(take(f"cycle-{cycle}"))
        res["crashes"] = len(guest.watcher.reports)
    verdict, evidence, step = leakcheck.check_cycles(
        before[1], [(n, s) for n, s, _, _ in cycles])
    res.update(verdict=verdict, evidence=evidence, step=step)
    free = [m.get("MemFree", 0) for _, _, m, _ in cycles]
    res["memfree_kb"] = free
    if len(free) >= 2:
        loss = (free[0] - free[-1]) / (len(free) - 1)
        res["memfree_loss_per_cycle_kb"] = loss
        res["memfree_verdict"] = FAIL if loss > MEMFREE_DRIFT_KB else PASS
    return res


def main(argv=None) -> int:
    args = parse_args(argv)
    command = bl.command_text([sys.executable, "bench/bench_leak.py"] + sys.argv[1:])
    configs = () if args.default_kernel else (leakcheck.CONFIG,)
    try:
        art = build.build(build.BuildRequest(configs=configs, patches=tuple(args.patch)))
    except HarnessError as e:
        print(f"build failed: {e.message}", file=sys.stderr)
        return 2
    print(f"kernel: {art.image} (configs {configs or 'default'}, patches "
          f"{[Path(p).name for p in args.patch] or 'none'})", flush=True)
    if args.record:
        args.record.mkdir(parents=True, exist_ok=True)
    out_root = args.out or Path(tempfile.mkdtemp(prefix="bench-leak-"))
    results, errors = [], []
    started = time.monotonic()
    for n in range(1, args.runs + 1):
        start = time.monotonic()
        if args.max_minutes and start - started > args.max_minutes * 60:
            print(f"--max-minutes {args.max_minutes:g} reached: {n - 1} of {args.runs} "
                  f"runs done", flush=True)
            args.runs = n - 1
            break
        try:
            res = one_run(art, args, out_root / f"run-{n}",
                          args.record if n == 1 else None)
        except HarnessError as e:
            errors.append((n, e))
            print(f"run {n}/{args.runs}: ERROR ({e.blame}) {e.message}"
                  f"{chr(10) + str(e.evidence)[-1500:] if getattr(e, 'evidence', None) else ''}",
                  flush=True)
            continue
        res["wall_s"] = time.monotonic() - start
        results.append(res)
        mf = res.get("memfree_loss_per_cycle_kb")
        collect_ms = (statistics.median(res["collect_s"]) * 1000
                      if res["collect_s"] else 0)
        print(f"run {n}/{args.runs}: {res['verdict']} in {res['wall_s']:.0f}s; "
              f"collect {collect_ms:.0f} ms, "
              f"{max(res['collect_bytes'], default=0) // 1024} KiB; "
              f"MemFree {'n/a' if mf is None else f'{mf:+.0f} kB/cycle'} "
              f"({res.get('memfree_verdict', '-')} by the old heuristic)", flush=True)
        if res["verdict"] != PASS or args.expect_leak:
            print("    " + res["evidence"].replace("\n", "\n    "), flush=True)
    done = len(results)
    passes = sum(r["verdict"] == PASS for r in results)
    caught = sum(r["verdict"] == FAIL for r in results)
    old_fail = sum(r.get("memfree_verdict") == FAIL for r in results)
    print()
    if args.expect_leak:
        at = sorted({r["step"] for r in results if r["verdict"] == FAIL})
        print(f"leaking kernel caught: {caught}/{args.runs} (at {', '.join(at) or '-'}; "
              f"{len(errors)} error(s); MemFree heuristic caught {old_fail}/{done})  {command}")
    else:
        skipped = sum(r["verdict"] == SKIP for r in results)
        print(f"clean kernel, leak check passes: {passes}/{args.runs} "
              f"({caught} failed, {skipped} skipped (no page_owner), {len(errors)} "
              f"error(s); MemFree heuristic failed {old_fail}/{done})  {command}")
    secs = [s for r in results for s in r["collect_s"]]
    sizes = [b for r in results for b in r["collect_bytes"]]
    if secs:
        print(f"collect (cat show_stacks over SSH): "
              f"median {statistics.median(secs) * 1000:.0f} ms, "
              f"max {max(secs) * 1000:.0f} ms; "
              f"size median {statistics.median(sizes) / 1024:.0f} KiB, "
              f"max {max(sizes) / 1024:.0f} KiB; n={len(secs)}")
    boots = [r["boot_to_ssh_s"] for r in results if r.get("boot_to_ssh_s")]
    if boots:
        print(f"boot_to_ssh_s: median {statistics.median(boots):.2f} s "
              f"[{min(boots):.2f}..{max(boots):.2f}]; MemTotal "
              f"{sorted({r['memtotal_kb'] for r in results})} kB; MemFree at before median "
              f"{statistics.median(r['memfree_before_kb'] for r in results)} kB; "
              f"stacks at before median "
              f"{statistics.median(r['stacks_before'] for r in results)}")
    losses = [r["memfree_loss_per_cycle_kb"] for r in results
              if "memfree_loss_per_cycle_kb" in r]
    if losses:
        print(f"MemFree lost per cycle (context): {min(losses):+.0f}..{max(losses):+.0f} kB")
    walls = [r["wall_s"] for r in results]
    if walls:
        print(f"wall per run: median {statistics.median(walls):.0f} s")
    if args.out is None:
        print(f"boot output: {out_root}")
    return 2 if errors and not results else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
