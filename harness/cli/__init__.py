"""hotplug-harness: build, boot and drive an arm64 kernel through memory hot-remove.

Exit codes: 0 pass, 1 the kernel misbehaved, 2 the harness or the machine failed,
130/143 interrupted (SIGINT/SIGTERM).
"""
from __future__ import annotations

import argparse
import errno
import json
import re
import sys
import time
from pathlib import Path

from harness import progress, signals
from harness.errors import HarnessError
from harness.kernel import kconfig, series
from harness.kernel import kernel as build_mod

EPILOG = """\
the flow: build -> boot -> drive (add/online/offline/remove) -> inspect -> verdict

examples:
  hotplug-harness run                            # every method on the default kernel
  hotplug-harness run --method probe --patch my-fix.patch --report out/
  hotplug-harness report out/                    # re-print and re-judge a saved run
  hotplug-harness boot                           # a shell in the guest (SSH)
  hotplug-harness boot --check --json            # boot timings, both transports
  hotplug-harness build                          # Debian's 6.12 + patches/series, 4k-48
  hotplug-harness build --config 64k-42 --json   # 2-level tables (64K pages, 42-bit VA)
  hotplug-harness build --kernel-src ~/linux --patch my-fix.patch
  hotplug-harness run --method probe --series v2.mbx --mail   # a series from the list,
                                                 # a verdict to paste in the reply
  hotplug-harness cache list

'COMMAND --help' explains each command's options.

The kernel is cached by the content of its inputs (source, patches, merged
config fragments, toolchain): the same inputs again run no make at all, and a
changed patch rebuilds incrementally in a reused O= tree. The cache lives in
$HOTPLUG_HARNESS_CACHE (default ~/.cache/hotplug-harness).

output: -q prints only the verdict summary (and errors); -v adds every guest
command line and every console line on stderr.

exit codes: 0 pass, 1 the kernel misbehaved (including a kernel that does not
compile), 2 the harness, its input or the machine failed, 130 interrupted by
SIGINT (Ctrl-C), 143 by SIGTERM: make, QEMU and any other process the harness
started are stopped, and 'run' writes a partial report marked interrupted.
"""


def add_kernel_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("kernel")
    g.add_argument("--kernel-src", default=None, metavar="debian|debian-6.1|DIR|TARBALL",
                   help="kernel source: 'debian' (linux-source-6.12), 'debian-6.1' "
                        "(Debian 12's own kernel, linux-source-6.1, installed with apt "
                        "when missing; its own patch series, patches/6.1/series), a kernel tree "
                        "(never modified: built in a work copy kept in sync file by "
                        "file, so an edit rebuilds in seconds), or a tarball. "
                        "Default: the kernel tree in the current folder if there is "
                        "one (the output says so), else 'debian'")
    g.add_argument("--config", action="append", default=[], metavar="NAME|FILE",
                   help="add a config fragment (repeatable); names: "
                        + ", ".join(kconfig.available_fragments())
                        + ". A geometry fragment (e.g. 64k-42) replaces the "
                          "default 4k-48")
    g.add_argument("--patch", action="append", default=[], metavar="FILE",
                   help=series.PATCH_HELP)
    g.add_argument("--series", dest="patch", action="append", type=series.SeriesFile,
                   metavar="MBOX", help=series.SERIES_HELP)
    g.add_argument("--no-series", action="store_true",
                   help="do not apply patches/series (without this, each of its patches "
                        "the tree already carries is skipped, and said so)")
    g.add_argument("--llvm", action="store_true", help="build with LLVM=1 (clang)")
    g.add_argument("-j", "--jobs", type=int, default=0,
                   help="make -j (default: number of CPUs)")


def build_request(args) -> build_mod.BuildRequest:
    return build_mod.BuildRequest(kernel_src=args.kernel_src,
                                  configs=tuple(args.config),
                                  patches=tuple(args.patch), llvm=args.llvm,
                                  series=not args.no_series, jobs=args.jobs)


def cmd_build(args) -> int:
    art = build_mod.build(build_request(args),
                          progress=False if progress.quiet() else None)
    if args.json:
        print(json.dumps(art.to_dict(), indent=1))
        return 0
    verb = "built" if art.rebuilt else "cached"
    print(f"{verb} {art.kernel_release} in {art.seconds:.1f}s  (key {art.cache_key[:16]})")
    for name in ("image", "vmlinux", "system_map", "config", "build_log"):
        print(f"  {name:10s} {getattr(art, name)}")
    return 0


def cmd_cache(args) -> int:
    from harness.kernel import cache as cache_mod
    if args.action == "clean":
        removed = build_mod.clean_cache(everything=args.all)
        for path in removed:
            print(f"removed {path}")
        if not removed:
            print("nothing to remove")
        return 0
    if args.action == "prune":
        limit = cache_mod.parse_size(args.max_size) if args.max_size is not None \
            else cache_mod.max_bytes()
        found = cache_mod.entries()
        gone = cache_mod.prune(limit, dry_run=args.dry_run, found=found)
        verb = "would remove" if args.dry_run else "removed"
        for e in gone:
            print(f"{verb} {e.kind:8s} {e.key:24s} {cache_mod.human(e.size):>10s}  {e.holds}")
        left = sum(e.size for e in found) - sum(e.size for e in gone)
        print(f"{len(gone)} entr{'y' if len(gone) == 1 else 'ies'} {verb}; the cache "
              f"holds {cache_mod.human(left)} (cap {cache_mod.human(limit)})")
        return 0
    found = cache_mod.entries()
    arts = {a.cache_key[:24]: a for a in build_mod.list_cache()}
    if args.json:
        out = []
        for e in found:
            d = e.to_dict()
            if e.kind == "kernel" and e.key in arts:
                d.update(arts[e.key].to_dict())
            out.append(d)
        print(json.dumps(out, indent=1))
        return 0
    if not found:
        print(f"the cache ({cache_mod.cache_root()}) is empty")
        return 0
    now = time.time()
    print(f"{'kind':8s} {'key':24s} {'size':>10s} {'used':>9s}  holds")
    for e in found:
        print(f"{e.kind:8s} {e.key:24s} {cache_mod.human(e.size):>10s} "
              f"{_ago(now - e.last_used):>9s}  {e.holds}")
    total = sum(e.size for e in found)
    print(f"total {cache_mod.human(total)}; cap {cache_mod.human(cache_mod.max_bytes())} "
          f"({cache_mod.ENV_MAX}); 'cache prune' removes the least recently used")
    return 0


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return "just now"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hotplug-harness", description=__doc__,
                                epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version",
                   version=f"%(prog)s {version()}")
    add_verbosity(p, None)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    b = sub.add_parser("build", help="build (or fetch from cache) the patched kernel",
                       description="Build the patched arm64 kernel; print its artifacts.")
    add_kernel_options(b)
    b.add_argument("--json", action="store_true", help="one JSON object on stdout")
    b.set_defaults(func=cmd_build)
    c = sub.add_parser("cache", help="list, prune or clean the cache",
                       description="What the harness cache holds: built kernels, work "
                                   "copies of sources (with their O= folders), "
                                   "snapshots of booted guests, ccache.",
                       epilog="examples:\n"
                              "  hotplug-harness cache list        # each entry, its size, "
                              "when last used, what it holds\n"
                              "  hotplug-harness cache prune --max-size 10G --dry-run\n"
                              "  hotplug-harness cache clean --all # everything\n\n"
                              "A build that stores a new kernel prunes the cache to "
                              "HOTPLUG_HARNESS_CACHE_MAX\n(default 20G; 0: never), least "
                              "recently used first. ccache has its own cap (3G).",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("action", choices=["list", "prune", "clean"])
    c.add_argument("--all", action="store_true",
                   help="with clean: everything the cache holds (unpacked sources, work "
                        "trees, O= trees, ccache, guest images, downloaded .debs)")
    c.add_argument("--max-size", metavar="SIZE", default=None,
                   help="with prune: the size to prune to (e.g. 10G; default "
                        "HOTPLUG_HARNESS_CACHE_MAX or 20G)")
    c.add_argument("--dry-run", action="store_true",
                   help="with prune: say what would be removed")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_cache)
    _add_later_commands(sub)
    for command in sub.choices.values():
        add_verbosity(command, argparse.SUPPRESS)
    return p


def _add_later_commands(sub) -> None:
    """Subcommands of the later stages register themselves here."""
    try:
        from harness.cli import run as cli_run
    except ImportError:
        return
    cli_run.register(sub, add_kernel_options, build_request)
    from harness.cli import repro as cli_repro
    cli_repro.register(sub, add_kernel_options)
    from harness.cli import matrix as cli_matrix
    cli_matrix.register(sub, add_kernel_options)
    from harness.cli import bisect as cli_bisect
    cli_bisect.register(sub)


def version() -> str:
    try:
        from harness import __version__
        return __version__
    except ImportError:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as dist_version
        try:
            return dist_version("hotplug-harness")
        except PackageNotFoundError:
            return "unknown"


def add_verbosity(p: argparse.ArgumentParser, default) -> None:
    """-q/-v, accepted before or after COMMAND."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("-q", "--quiet", dest="verbosity", action="store_const",
                   const=progress.QUIET, default=default,
                   help="print only the verdict summary (and errors)")
    g.add_argument("-v", "--verbose", dest="verbosity", action="store_const",
                   const=progress.VERBOSE, default=default,
                   help="also print every guest command line and console line")


def default_kernel_src(cwd: Path | None = None) -> str:
    """``--kernel-src`` when not given: the kernel tree in the current folder
    (said on stderr), else Debian's source."""
    cwd = Path.cwd() if cwd is None else cwd
    makefile = cwd / "Makefile"
    try:
        head = makefile.read_text(errors="replace")[:2000] if makefile.is_file() else ""
    except OSError:
        head = ""
    if (cwd / "arch" / "arm64").is_dir() and re.search(
            r"^VERSION = \d+\s*\nPATCHLEVEL = \d+", head, re.M):
        progress.info(f"building the kernel tree in the current folder ({cwd}); "
                      f"--kernel-src debian builds Debian's linux-source-6.12", "source")
        return str(cwd)
    return "debian"


def main(argv=None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as e:   # argparse's usage error exits 2, which git bisect takes
        from harness.cli import bisect as cli_bisect  # for "bad": bisect-run aborts
        if e.code == 2 and cli_bisect.BISECT_COMMAND in (sys.argv[1:] if argv is None
                                                          else argv):
            return cli_bisect.ABORT
        raise
    level = getattr(args, "verbosity", None)
    progress.attach()      # the CLI's handler: [stage] text on stderr (logging "harness.*")
    progress.set_level(progress.NORMAL if level is None else level)
    if hasattr(args, "kernel_src") and args.kernel_src is None:
        args.kernel_src = default_kernel_src()
    signals.install()
    try:
        return args.func(args)
    except HarnessError as e:
        if signals.received():   # e.g. make died of the same Ctrl-C first
            return _interrupted(None)
        print(f"hotplug-harness: error ({e.blame}): {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        return _interrupted(e)
    except OSError as e:
        if e.errno not in DISK_ERRNOS:
            return _bug()
        # the machine's disk, not the harness: the folder is named
        print(f"hotplug-harness: error (infra): {e.strerror} writing "
              f"{e.filename or 'a file'}", file=sys.stderr)
        return 2
    except Exception:  # a bug in the harness: say so, exit 2
        return _bug()


# a write that failed for want of room or a writable disk: the machine's fault
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)


def _bug() -> int:
    """A bug in the harness: its traceback, exit 2."""
    import traceback
    traceback.print_exc()
    print("hotplug-harness: internal error (harness): the traceback above is "
          "a harness bug", file=sys.stderr)
    return 2


def _interrupted(exc) -> int:
    """Stop whatever the harness started that is still running; 130 or 143."""
    stopped = signals.stop_children()
    name = signals.signame(exc)
    extra = f"; stopped PIDs {', '.join(map(str, stopped))}" if stopped else ""
    print(f"hotplug-harness: interrupted by {name}{extra}", file=sys.stderr)
    return signals.exit_code(exc)


if __name__ == "__main__":
    sys.exit(main())
