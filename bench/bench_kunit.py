"""Time kunit.py from the default kernel's own tree: cold and warm.

The yardstick of issue 13 ("a verdict in seconds"): the kernel's own test
runner, from the same source tree the harness builds its default kernel from,

  python3 TREE/tools/testing/kunit/kunit.py run --arch=arm64 \\
      --cross_compile=aarch64-linux-gnu- --build_dir=BUILD

with BUILD under the harness cache ($HOTPLUG_HARNESS_CACHE/kunit/SHORT/build,
SHORT = the source identity), never in the checkout or the source tree.
bench_build.py --cold and bench_run.py print the same kunit.py figures next to
their own (bench/kunitlib.py); this script prints only kunit.py's:

  kunit.py cold run       a fresh, empty BUILD: kunit.py's whole 'run' (configure,
                          build, boot QEMU, run the tests); its own split
                          (configuring / building / running, from its
                          "Elapsed time" line) and the objects built (*.o)
  kunit.py cold build     the configuring + building part of that run
  kunit.py warm run       'run' again with nothing to build; the same split

First 'build --json' names the tree (the artifacts' source; a cache lookup
when the default kernel is built). kunit.py is a QEMU guest and the cold run
builds ~900 objects on every CPU (~5-6 min on 2 CPUs): run it on an otherwise
idle machine.

Exit: 0 (no targets here); 2 if a command fails (a kunit.py failure included).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import benchlib as bl  # noqa: E402
import kunitlib as kl  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--no-cold", action="store_true",
                   help="only the warm run (BUILD is built first, untimed, when "
                        "it is not there)")
    p.add_argument("--print-command", action="store_true",
                   help="print the kunit.py command line and exit")
    bl.add_common(p)
    return p.parse_args(argv)


def kunit_tree(verbose: bool) -> kl.KunitTree:
    r = bl.run(bl.harness_argv("build", "--json"), verbose=verbose,
               what="kernel (names the source tree)")
    return kl.tree_of(r.json())


def cold_figures(kr: kl.KunitRun) -> None:
    kl.print_run(kr, "kunit.py cold run", "kunit_cold_run")
    if kr.elapsed is not None:
        bl.figure("kunit.py cold build (configuring + building)", kr.elapsed.build,
                  None, kr.command, f"of the cold run above; {kr.objects} objects",
                  key="kunit_cold_build")
    bl.record("kunit_cold_objects", "kunit.py cold build objects (*.o)",
              kr.objects, "objects", command=kr.command)


def warm_figures(kr: kl.KunitRun) -> None:
    kl.print_run(kr, "kunit.py warm run", "kunit_warm_run")


def main(argv=None) -> int:
    args = parse_args(argv)
    bl.start_results_for(args, __file__, argv)
    from harness.errors import HarnessError
    try:
        return bench(args)
    except HarnessError as e:  # raised in-process (finding the source tree)
        bl.die(f"{e}\n{e.evidence}".rstrip())
        return 2


def bench(args) -> int:
    if args.print_command:
        print(kl.command(kl.tree_of(bl.run(bl.harness_argv("build", "--json")).json())))
        return 0
    bl.header("bench_kunit: kunit.py from the default kernel's tree")
    kt = kunit_tree(args.verbose)
    print(f"   kunit.py {kt.tree / kl.KUNIT_PY}  build dir {kt.build_dir}")
    if not args.no_cold:
        cold_figures(kl.run_cold(kt, args.verbose))
    warm_figures(kl.run_warm(kt, args.verbose))
    return 0


if __name__ == "__main__":
    bl.entry(main)
