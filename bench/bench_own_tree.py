"""A reviewer's own tree: first run, an edit to mmu.c, the disk each state costs.

The loop of issue 22, as a reviewer meets it: a kernel tree of their own (here a
plain copy of Debian's 6.12 source, the way the issue tried it), given with
--kernel-src, edited, run again.

  cold run on Debian's source   'run --method probe' on an empty cache
                                (a fresh HOTPLUG_HARNESS_CACHE; its guest image
                                and .debs are copied from your cache when there,
                                so no download is timed): unpack, build, boot,
                                verdict. The yardstick of the next figure.
  first run on a new tree       'run --kernel-src TREE --method probe' on a copy
                                of that source, same cache: one work copy made,
                                built with the ccache the cold run filled.
                                                   target <= 1.1x the cold run
  edit -> verdict               one line added to arch_remove_memory() in
                                arch/arm64/mm/mmu.c (an 'asm volatile("nop")':
                                the object changes), 'run' again: sync, make,
                                boot, verdict.                  target <= 20 s
                                Twice (two tree states); the figure is the
                                slower one.
  disk per tree state           what the cache grew by over an edit run
                                (blocks, each inode once).    target <= 100 MB
  kunit.py, same edit           kunit.py's 'run' in the same tree (its own
                                build dir, primed untimed first) after the same
                                edit: its incremental rebuild and tests.

--edits-only skips the cold run and times the edits in your usual cache (the
tree's first run untimed; the disk figure then counts whatever else wrote to
the cache meanwhile). Each figure carries its command and ccache's hit count
over that step. The
cache and the tree are temporary (removed at the end; --keep keeps them).
--ccache-compare instead times two cold builds of the default kernel, each in
an empty cache: ccache on (its folder empty) and CCACHE_DISABLE=1, the figure
ccache's cost on a cold build is judged by.

Exit: 0 whether or not targets are met; 2 if a command fails.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import benchlib as bl  # noqa: E402
import kunitlib as kl  # noqa: E402

MMU_C = "arch/arm64/mm/mmu.c"
ANCHOR = "\t__remove_pages(start_pfn, nr_pages, altmap, pgmap);\n"
FIRST_RATIO_TARGET, EDIT_TARGET, DISK_TARGET_MB = 1.1, 20.0, 100.0
MAKE_LINE = r"^\$ make .* Image$"


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="probe", help="method of every run (default probe)")
    p.add_argument("--no-kunit", action="store_true",
                   help="skip kunit.py's run of the same edit (saves ~6 min)")
    p.add_argument("--edits-only", action="store_true",
                   help="only the edit figures and kunit.py's, in your usual cache: the "
                        "tree's first run is untimed (a quiet machine's loop without "
                        "the ~10 min cold run)")
    p.add_argument("--ccache-files", action="store_true",
                   help="instead: CPU time to compile four kernel files in the default "
                        "kernel's O= folder without ccache, as a ccache miss (plain and "
                        "CCACHE_DEPEND=1) and as a hit; 3 interleaved rounds (~2 min; the "
                        "default kernel must have been built)")
    p.add_argument("--ccache-compare", action="store_true",
                   help="instead: two cold builds of the default kernel in empty "
                        "caches, ccache on and CCACHE_DISABLE=1 (~10 min)")
    bl.add_common(p)
    return p.parse_args(argv)


def edit(tree: Path, nops: int) -> str:
    """Put ``nops`` nops at the top of arch_remove_memory(); the line added."""
    path = tree / MMU_C
    text = path.read_text()
    text = re.sub(r'\tasm volatile\("nop[^"]*"\); /\* bench \*/\n', "", text)
    if ANCHOR not in text:
        bl.die(f"{MMU_C}: no '{ANCHOR.strip()}' line to edit beside")
    line = f'\tasm volatile("{"; ".join(["nop"] * nops)}"); /* bench */\n'
    path.write_text(text.replace(ANCHOR, line + ANCHOR, 1))
    return line.strip()


def cache_bytes() -> int:
    from harness.kernel import cache
    return sum(e.size for e in cache.entries())


def ccache_stats() -> dict:
    from harness.kernel.kernel import ccache_env
    env = dict(os.environ, **ccache_env())
    try:
        out = subprocess.run(["ccache", "--print-stats"], capture_output=True, text=True,
                             env=env).stdout
    except OSError:
        return {}
    stats = dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)
    return {k: int(v) for k, v in stats.items() if v.strip().isdigit()}


def hits_text(before: dict, after: dict) -> str:
    keys = ("direct_cache_hit", "preprocessed_cache_hit", "cache_miss")
    d = {k: after.get(k, 0) - before.get(k, 0) for k in keys}
    hits = d["direct_cache_hit"] + d["preprocessed_cache_hit"]
    return f"ccache {hits} hits / {d['cache_miss']} misses"


def timed_run(args, src: str, report: Path, what: str) -> tuple:
    before = ccache_stats()
    r = bl.run(bl.harness_argv("run", "--kernel-src", src, "--method", args.method,
                               "--report", report),
               verbose=args.verbose, ok=(0,), what=what)
    extra = hits_text(before, ccache_stats())
    t_make = r.first_time(MAKE_LINE)
    if t_make is not None:
        extra += f"; make started at {bl.fmt_s(t_make)}"
    return r, extra


def seed_cache(cache: Path) -> None:
    """The guest image and downloaded .debs from the usual cache (not timed
    work of a kernel build, and a download would time the network)."""
    from harness.host import cache_root
    home = cache_root()
    for name in ("debs", "guest-image"):
        if (home / name).is_dir():
            shutil.copytree(home / name, cache / name, symlinks=True)
            bl.note(f"copied {name} from the usual cache into the bench's")


def main(argv=None) -> int:
    args = parse_args(argv)
    bl.start_results_for(args, __file__, argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-own-tree-"))
    cache = tmp / "cache"
    cache.mkdir()
    try:
        if not (args.ccache_files or args.edits_only):   # else: the usual cache
            seed_cache(cache)
            os.environ["HOTPLUG_HARNESS_CACHE"] = str(cache)   # the runs, cache_bytes
        bl.header("bench_own_tree: a reviewer's own tree, edited")
        if args.ccache_files:
            ccache_files(args)
        elif args.ccache_compare:
            ccache_compare(args, tmp)
        else:
            bench(args, tmp)
    finally:
        if args.keep:
            bl.note(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def bench(args, tmp: Path) -> None:
    from harness.kernel import source
    if not args.edits_only:
        r0, extra0 = timed_run(args, "debian", tmp / "r0", "cold run on Debian's source")
        bl.figure("cold run on Debian's source", r0.wall, None, r0.command, extra0,
                  key="own_tree_debian_cold")
    pristine = source.pristine_tree(source.resolve_source("debian"))
    tree = tmp / "my-linux"
    bl.note(f"copying {pristine.name} as the reviewer's own tree (untimed)")
    subprocess.run(["cp", "-a", str(pristine), str(tree)], check=True)

    r1, extra1 = timed_run(args, str(tree), tmp / "r1", "first run on a new tree")
    if args.edits_only:
        bl.note(f"first run on the tree (untimed here): {r1.wall:.1f} s; {extra1}")
    else:
        ratio = r1.wall / r0.wall
        bl.figure("first run on a new tree", r1.wall, None, r1.command,
                  f"{ratio:.2f}x the cold run (target <= {FIRST_RATIO_TARGET}x, "
                  f"{'met' if ratio <= FIRST_RATIO_TARGET else 'MISSED'}); {extra1}",
                  key="own_tree_first_run", readme=True)
        bl.record("own_tree_first_ratio", "first run on a new tree / cold run on Debian's",
                  ratio, "x", target=FIRST_RATIO_TARGET, command=r1.command)

    kt = None
    if not args.no_kunit:
        kt = kl.KunitTree(tree, "bench-own-tree", f"dir:{tree}")
        bl.note("kunit.py: priming its build dir in the same tree (untimed, ~5-6 min)")
        kl.run_warm(kt, args.verbose)

    walls, grown, kunit = [], [], None
    for state, nops in ((1, 1), (2, 2)):
        line = edit(tree, nops)
        size0 = cache_bytes()
        r, extra = timed_run(args, str(tree), tmp / f"r-edit{state}",
                             f"edit {state} -> verdict")
        grown.append((cache_bytes() - size0) / 1e6)
        walls.append(r.wall)
        bl.figure(f"edit {state} -> verdict", r.wall, EDIT_TARGET, r.command,
                  f"'{line}' in arch_remove_memory(); {extra}; cache grew "
                  f"{grown[-1]:.1f} MB", key=f"own_tree_edit{state}")
        if kt is not None and state == 1:
            kr = kl.run_warm(kt, args.verbose)
            bl.figure("kunit.py after the same edit", kr.wall, None, kr.command,
                      kr.extra(), key="own_tree_kunit_edit")
            kunit = kr.to_figure("kunit.py run after the same edit")
    bl.figure("edit -> verdict (own tree, slower of two)", max(walls), EDIT_TARGET,
              f"$ edit {MMU_C}; " + bl.command_text(bl.harness_argv(
                  "run", "--kernel-src", tree, "--method", args.method)),
              f"{', '.join(bl.fmt_s(w) for w in walls)}", key="own_tree_edit_verdict",
              readme=True, kunit=kunit)
    worst = max(grown)
    print(f"disk per tree state: {worst:.1f} MB (target <= {DISK_TARGET_MB:g} MB, "
          f"{'met' if worst <= DISK_TARGET_MB else 'MISSED'})  "
          f"[{', '.join(f'{g:.1f} MB' for g in grown)}]", flush=True)
    bl.record("own_tree_disk_per_state", "disk per tree state", round(worst, 1), "MB",
              target=DISK_TARGET_MB, readme=True)
    if args.edits_only and not args.keep:   # the temporary tree's work copy (1.7 GB)
        shutil.rmtree(source.tree_base(source.resolve_source(str(tree))), ignore_errors=True)
        if kt is not None:
            shutil.rmtree(kt.home, ignore_errors=True)


def ccache_compare(args, tmp: Path) -> None:
    """Cold builds of the default kernel in two empty caches: ccache on (its
    folder empty too) and CCACHE_DISABLE=1."""
    walls, cpus = {}, {}
    for label, env in (("ccache on, empty", {}), ("CCACHE_DISABLE=1", {"CCACHE_DISABLE": "1"})):
        cache = tmp / f"cache-{len(walls)}"
        cache.mkdir()
        seed_cache(cache)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        r = bl.run(bl.harness_argv("build", "--json"),
                   env=dict(env, HOTPLUG_HARNESS_CACHE=str(cache)),
                   verbose=args.verbose, what=f"cold build, {label}")
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        t = r.first_time(MAKE_LINE)
        walls[label], cpus[label] = r.wall, cpu
        bl.figure(f"cold build, {label}", r.wall, None, r.command,
                  f"CPU {cpu:.0f} s (user+sys of every process it ran); load "
                  f"{os.getloadavg()[0]:.1f}"
                  + (f"; make started at {bl.fmt_s(t)}" if t is not None else ""),
                  key=bl.slug(f"own tree cold build {label}"))
        shutil.rmtree(cache, ignore_errors=True)
    on, off = walls.values()
    cpu_on, cpu_off = cpus.values()
    print(f"ccache's cost on a cold build: {on / off:.2f}x wall, {cpu_on / cpu_off:.2f}x CPU "
          f"(CPU time is the figure to trust on a busy machine)", flush=True)
    bl.record("own_tree_ccache_cold_ratio", "cold build with ccache / without (CPU)",
              cpu_on / cpu_off, "x", extra=f"wall {on / off:.2f}x")


CCACHE_FILES = ("mm/memory", "arch/arm64/mm/mmu", "kernel/sched/core", "fs/namei")
CCACHE_MODES = {"no ccache": {"CCACHE_DISABLE": "1"},
                "ccache miss": {"CCACHE_RECACHE": "1", "CCACHE_NODEPEND": "1"},
                "ccache miss, depend mode": {"CCACHE_RECACHE": "1", "CCACHE_DEPEND": "1"},
                "ccache hit": {"CCACHE_NODEPEND": "1"},
                "ccache hit, depend mode": {"CCACHE_DEPEND": "1"}}


def ccache_files(args, rounds: int = 3) -> None:
    """The price of a ccache miss and the gain of a hit, file by file: CPU
    time (user+sys), which a busy machine disturbs far less than wall time.
    Each file's source is touched in the work copy so make compiles it."""
    from harness.kernel import kernel, source
    from harness.kernel.kernel import FIXED_ENV, ccache_env
    inputs = kernel.gather_inputs(kernel.BuildRequest())
    tree = source.work_tree(inputs.source)
    out = kernel.outdir_path(tree, inputs)
    if not (out / "vmlinux").is_file():
        bl.die(f"{out} holds no built kernel: run 'hotplug-harness build' first")
    maker = kernel.Make(tree, out, kernel.BuildRequest(), progress=False)
    base = dict(FIXED_ENV, **ccache_env())
    cpu = {mode: [] for mode in CCACHE_MODES}
    with kernel.locked(f"source-{inputs.source.tree_key}"):
        for _ in range(rounds):
            for mode, extra in CCACHE_MODES.items():
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                for f in CCACHE_FILES:
                    os.utime(tree / f"{f}.c")
                    env = {**os.environ, **base}
                    env.pop("CCACHE_DEPEND" if "CCACHE_NODEPEND" in extra
                            else "CCACHE_NODEPEND", None)
                    env.update(extra)
                    subprocess.run(maker.argv([f"{f}.o"]), env=env, check=True,
                                   stdout=subprocess.DEVNULL)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu[mode].append(after.ru_utime - before.ru_utime
                                 + after.ru_stime - before.ru_stime)
    plain = sorted(cpu["no ccache"])[rounds // 2]
    command = bl.command_text(maker.argv(["FILE.o"]))
    for mode, values in cpu.items():
        median = sorted(values)[rounds // 2]
        bl.figure(f"{', '.join(CCACHE_FILES)}: {mode} (CPU)", median, None, command,
                  f"{median / plain:.2f}x no ccache; rounds "
                  + ", ".join(f"{v:.1f}" for v in values),
                  key=bl.slug(f"ccache files {mode}"))


if __name__ == "__main__":
    bl.entry(main)
