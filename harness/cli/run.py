"""Subcommands that boot a guest: boot (and later run/report)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import termios
import time
import tty
from contextlib import contextmanager
from pathlib import Path

from harness import faults, signals
from harness import progress as ui
from harness.drive import method as method_mod
from harness.errors import HarnessError
from harness.inspect import leakcheck
from harness.kernel import kernel as build_mod
from harness.machine.qemu import CPU_MODELS
from harness.session import BootOptions, boot
from harness.verdict import mail

BOOT_EPILOG = """\
examples:
  hotplug-harness boot                       # ACPI boot, interactive shell over SSH
  hotplug-harness boot --mode dt --transport serial
  hotplug-harness boot --check --json        # boot, one command per transport, timings
  hotplug-harness boot --exec 'uname -r'     # one command in a fresh guest, then off

--exec runs one command (over --transport) in a freshly booted guest, prints
its stdout and stderr (merged into stdout over the serial transport), shuts
the guest down and exits with the command's status (a harness or machine
failure prints 'hotplug-harness: error' and exits 2, a kernel crash 1).

--check prints boot_to_ready_s (QEMU start to the guest's HARNESS-READY line),
boot_to_ssh_s (to the first SSH answer) and shutdown_s.
"""


def add_boot_options(p) -> None:
    g = p.add_argument_group("machine")
    g.add_argument("--mode", choices=["acpi", "dt"], default="acpi",
                   help="acpi: edk2 firmware + ACPI (pc-dimm hotplug works); "
                        "dt: direct kernel boot with a device tree (probe flow)")
    g.add_argument("--transport", choices=["ssh", "serial"], default="ssh",
                   help="how commands reach the guest (the console is watched "
                        "for crashes either way)")
    g.add_argument("--mem", type=int, default=1024, metavar="MIB",
                   help="boot memory in MiB (default 1024)")
    g.add_argument("--slots", type=int, default=4, help="DIMM slots (default 4)")
    g.add_argument("--maxmem", type=int, default=8192, metavar="MIB",
                   help="maximum memory in MiB (default 8192)")
    g.add_argument("--cpu", choices=list(CPU_MODELS), default="max", metavar="MODEL",
                   help="QEMU's CPU model: " + ", ".join(CPU_MODELS) + " (default max; "
                        "cortex-a57/a72 address 44 bits of PA and cortex-a53 40, so a "
                        "KASLR kernel randomises its linear region there, never on max)")
    g.add_argument("--tcg-thread", choices=["single", "multi"], default=None,
                   help="how QEMU's TCG runs the guest's vCPUs: single = all on one "
                        "host thread, in turns (the default; two guests side by side "
                        "then fit on two cores: 'run --method all' took 9.3 s instead "
                        "of 16 s); multi = one host thread per vCPU (MTTCG; the race "
                        "method's default, so that its readers really run alongside)")
    g.add_argument("--append", action="append", default=[], metavar="PARAM",
                   help="extra kernel parameter (repeatable)")
    g.add_argument("--boot-timeout", type=float, default=60.0, metavar="S")
    g.add_argument("--no-snapshot", dest="snapshot", action="store_false",
                   help="boot every guest; by default a guest of the same kernel and "
                        "QEMU command line booted before is restored from a snapshot "
                        "saved once it was ready (~0.3 s instead of 1-2.5 s; kept in "
                        "the cache, removed by 'cache clean'; or "
                        "HOTPLUG_HARNESS_SNAPSHOTS=0)")
    g.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="where console.log, qemu.cmdline and qemu.stderr go "
                        "(default: a new folder under ./runs)")


def boot_options(args, **overrides) -> BootOptions:
    opts = dict(mode=args.mode, transport=args.transport, mem_mb=args.mem,
                slots=args.slots, maxmem_mb=args.maxmem, cmdline=tuple(args.append),
                boot_timeout=args.boot_timeout, snapshot=getattr(args, "snapshot", True),
                tcg_thread=getattr(args, "tcg_thread", None), cpu=getattr(args, "cpu", "max"))
    opts.update(overrides)
    return BootOptions(**opts)


def out_dir(args, name: str) -> Path:
    if args.out:
        path = Path(args.out)
    else:
        path = default_dir(name)
    make_private_dirs(path)
    os.chmod(path, 0o700)
    return path


def default_dir(name: str) -> Path:
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


def make_private_dirs(path: Path) -> Path:
    """Create ``path`` and every missing parent with mode 0700 (existing
    folders are left as they are)."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists() and not p.is_symlink() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            continue
        os.chmod(d, 0o700)   # whatever the umask
    return path


# what makes an existing folder the harness's own (safe to replace)
HARNESS_FILES = ("report.json", "qemu.cmdline", "console.log")


def _ours(folder: Path) -> bool:
    entries = list(folder.iterdir())
    if not entries:
        return True
    for entry in entries:
        if entry.name in HARNESS_FILES:
            return True
        if entry.is_dir() and not entry.is_symlink() and any(
                (entry / f).exists() for f in HARNESS_FILES):
            return True
    return False


def check_replaceable(target: Path) -> None:
    """Refuse to replace anything but a folder the harness wrote (or an empty one)."""
    if not target.exists() and not target.is_symlink():
        return
    if not target.is_dir():
        raise HarnessError(f"--report {target}: exists and is not a folder", step="report")
    if not _ours(target):
        raise HarnessError(
            f"--report {target}: the folder exists and holds no harness report "
            f"(no report.json); a report folder is replaced by each run, so "
            f"choose a new or empty folder", step="report")


@contextmanager
def report_folder(target):
    """Yield (work, final): the run writes into ``work``, a new private folder.
    With ``target`` (--report DIR), ``work`` is a sibling DIR.partial-XXXX that
    replaces DIR when the block ends (normally, on error or on interrupt), so
    DIR only ever holds one run; if the harness is killed outright, the partial
    report stays visible as DIR.partial-XXXX and DIR is untouched."""
    if target is None:
        final = default_dir("run")
        make_private_dirs(final)
        yield final, final
        return
    final = Path(target)
    check_replaceable(final)
    make_private_dirs(final.parent)
    work = Path(tempfile.mkdtemp(prefix=f"{final.name}.partial-", dir=final.parent))
    try:
        yield work, final
    finally:
        swap_in(work, final)


def swap_in(work: Path, final: Path) -> None:
    old = None
    try:
        if final.exists() or final.is_symlink():
            old = final.with_name(f"{final.name}.old-{os.getpid()}")
            os.rename(final, old)
        os.rename(work, final)
    except OSError as e:
        print(f"hotplug-harness: could not move the report to {final} ({e}); "
              f"it is in {work}", file=sys.stderr)
        return
    if old is not None:
        if old.is_symlink() or not old.is_dir():
            old.unlink()
        else:
            shutil.rmtree(old, ignore_errors=True)


def cmd_boot(args, build_request) -> int:
    art = build_mod.build(build_request(args), progress=build_progress())
    out = out_dir(args, "boot")
    opts = boot_options(args)
    if args.exec_cmd is not None:
        return _exec(art, opts, out, args.exec_cmd, args.exec_timeout)
    start = time.monotonic()
    with boot(art, opts, out, progress=not ui.quiet()) as guest:
        if not args.check:
            return _interactive(guest)
        results = {"kernel_release": art.kernel_release, "mode": opts.mode}
        results.update({k: round(v, 3) for k, v in guest.times.items()})
        serial = guest.console.run("uname -r", 20).check("boot-check")
        results["serial_uname"] = serial.stdout.strip()
        if guest.ssh:
            ssh = guest.ssh.run("uname -r", 20).check("boot-check")
            results["ssh_uname"] = ssh.stdout.strip()
    results["shutdown_s"] = round(guest.machine.times.shutdown_s, 3)
    results["total_s"] = round(time.monotonic() - start, 3)
    results["console_log"] = str(out / "console.log")
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for k, v in results.items():
            print(f"{k:16s} {v}")
    return 0


def build_progress():
    """The build's progress bar: off with -q, else the default (a terminal)."""
    return False if ui.quiet() else None


def _exec(art, opts: BootOptions, out: Path, command: str, timeout: float) -> int:
    """Boot, run one command, print its output, exit with its status."""
    with boot(art, opts, out, progress=ui.verbose()) as guest:
        guest.step = "exec"
        result = guest.run(command, timeout)
        sys.stdout.write(result.stdout)
        sys.stdout.flush()
        sys.stderr.write(result.stderr)
        sys.stderr.flush()
    ui.detail(f"exit status {result.exit_code}; console log {out / 'console.log'}")
    return result.exit_code if 0 <= result.exit_code <= 255 else 255


def _interactive(guest) -> int:
    if guest.ssh and guest.transport is guest.ssh and shutil.which("ssh"):
        port = guest.machine.spec.ssh_port
        key = Path(guest.machine.spec.run_dir) / "id_ed25519"
        argv = ["ssh", "-i", str(key), "-p", str(port), "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                "root@127.0.0.1"]
        print("$ " + " ".join(argv) + "   (exit the shell to stop the guest)",
              file=sys.stderr)
        subprocess.call(argv)
        return 0
    print("serial console: Ctrl-] stops the guest", file=sys.stderr)
    _serial_shell(guest.reader)
    return 0


def _serial_shell(reader) -> None:
    """Raw terminal <-> console until Ctrl-]."""
    fd = sys.stdin.fileno()
    old = termios.tcgetattr(fd) if os.isatty(fd) else None
    reader.discard()
    reader.send(b"\n")
    try:
        if old:
            tty.setraw(fd)
        while not reader.eof:
            data = reader.read(65536, 0.05)
            if data:
                os.write(sys.stdout.fileno(), data)
            if select.select([fd], [], [], 0)[0]:
                key = os.read(fd, 1024)
                if b"\x1d" in key or not key:
                    break
                reader.send(key)
    except EOFError:
        pass
    finally:
        if old:
            termios.tcsetattr(fd, termios.TCSADRAIN, old)


def register(sub, add_kernel_options, build_request) -> None:
    b = sub.add_parser("boot", help="boot the kernel under QEMU; shell or --check",
                       description="Boot the (built or cached) kernel with "
                                   "hotpluggable memory and open a shell.",
                       epilog=BOOT_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_kernel_options(b)
    add_boot_options(b)
    what = b.add_mutually_exclusive_group()
    what.add_argument("--check", action="store_true",
                      help="boot, run a command over each transport, shut down, "
                           "print timings")
    b.add_argument("--json", action="store_true", help="with --check: JSON output")
    what.add_argument("--exec", dest="exec_cmd", metavar="CMD", default=None,
                   help="run CMD in the fresh guest (over --transport), print its "
                        "stdout/stderr, shut down, exit with its status")
    b.add_argument("--exec-timeout", type=float, default=600.0, metavar="S",
                   help="with --exec: give up after S seconds (default 600)")
    b.set_defaults(func=lambda a: cmd_boot(a, build_request))
    register_run(sub, add_kernel_options, build_request)


RUN_EPILOG = """\
methods (generated from the registry, harness/drive/method.py: [boot mode;
the options each takes]):
{methods}

options a method cannot honour are refused, never replaced: an explicit --mode
other than the method's boot, --mem for a method that sets its own boot memory
(no --mem), --order-check on|full for one that runs without gdb, or a scenario
option it does not take stops the run (exit 2) when no selected method can
honour it; when only some can (e.g. --dimms with --method all), the others run
without it and the run says so on stderr. Defaults are never refused.

checks (each PASS/FAIL/SKIP/ERROR with evidence; a check a method needs that
could not look is an ERROR, never a PASS):
  blocks-lifecycle no-stale-linear-map no-stale-vmemmap tables-freed
  online-memory-mapped contiguous-groups-whole bootmem-not-removable
  no-kernel-splat
  no-leak-across-cycles (page_owner; --cycles >= 2 adds --config leak)
  walker-agrees-with-ptdump walker-no-bad-entries
  no-table-freed-while-linked tlb-flushed-before-free kselftest
  The last two attach gdb-multiarch to QEMU's gdbstub around each removal
  (--no-order-check turns them off, and the summary says so).

examples:
  hotplug-harness run                               # every method, default kernel
  hotplug-harness run --method probe --cycles 3
  hotplug-harness run --patch patches/repro/0001-....patch --report out/
  hotplug-harness run --method probe --series v2.mbx --mail   # a series from the
                                      # list; prints a reply (Tested-by only on PASS)
  hotplug-harness report out/                       # re-print and re-judge

--report DIR is replaced by each run (a folder the harness did not write is
refused): the run writes DIR.partial-XXXX and moves it to DIR at the end, also
when it fails or is interrupted. Without --report: a new folder under ./runs.
Report folders and the parents the harness creates are private (mode 0700).

exit codes: 0 all pass, 1 the kernel failed a check or crashed, 2 the harness
or the machine failed (the summary says which), 130/143 interrupted by
SIGINT (Ctrl-C) / SIGTERM: make and QEMU are stopped and a partial report
marked "interrupted": true (verdict ERROR) is written.
"""


def cmd_run(args, build_request) -> int:
    from harness import runner
    from harness.verdict import checks, report
    methods = runner.resolve_methods(args.method)
    given, args = given_options(args)
    for line in method_mod.check_given([runner.METHODS[m] for m in methods], given):
        ui.warn(line, "run")
    configs, cmdline, note = leakcheck.for_cycles(args.cycles, args.config, args.append)
    if note:
        ui.info(note)
    with report_folder(args.report) as (out, final):
        art, runs, stopped = None, [], None
        start = time.monotonic()
        try:
            req = dataclasses.replace(build_request(args), configs=configs)
            faults.point("build", path=out)
            art = build_mod.build(req, progress=build_progress())
            ropts = runner.RunOptions(
                methods=methods,
                boot=boot_options(args, slots=max(args.slots, args.dimms), cmdline=cmdline),
                cycles=args.cycles, online_type=args.online_type, dimms=args.dimms,
                dimm_mb=args.dimm_size, walk=not args.no_walker, order_check=args.order_check,
                race_seconds=args.race_seconds, race_iterations=args.race_iterations,
                jobs=args.guests or runner.default_jobs(methods))
            start = time.monotonic()
            runs = runner.run_all(art, ropts, out)
        except (KeyboardInterrupt, HarnessError) as e:
            # a HarnessError right after a signal (make died of the same Ctrl-C
            # first) is the interruption too
            if isinstance(e, HarnessError) and not signals.received():
                raise
            stopped = e
            runs = list(getattr(e, "runs", ()))
            signals.stop_children()
        judged = {r.method: checks.judge(r) for r in runs}
        kernel = {}
        extra = {"seconds": round(time.monotonic() - start, 2)}
        if art is not None:
            kernel = kernel_identity(art)
            try:
                keep_build_log(art, out)
            except OSError as e:
                raise disk_error(e, out, "copying the build log into it") from e
            extra.update(build_seconds=art.seconds, rebuilt=art.rebuilt)
        if stopped is not None:
            extra.update(interrupted=True, signal=signals.signame(stopped),
                         stopped_in="run" if art is not None else "build",
                         not_run=list(getattr(stopped, "not_run", methods)))
            print(f"hotplug-harness: interrupted by {extra['signal']} during the "
                  f"{extra['stopped_in']}; writing a partial report", file=sys.stderr)
        try:
            faults.point("report", path=out)
            report.write_report(out, kernel, runs, judged, extra)
        except KeyboardInterrupt as e:   # Ctrl-C while writing: write it whole, then stop
            extra.update(interrupted=True, signal=signals.signame(e), stopped_in="report",
                         not_run=[])
            report.write_report(out, kernel, runs, judged, extra)
            raise
        except OSError as e:
            raise disk_error(e, out, "writing the report") from e
    data = json.loads((final / "report.json").read_text())
    if args.mail:
        print(mail.render(data, args.tested_by or mail.tested_by()), end="")
    elif args.json:
        print(json.dumps(data, indent=1))
    else:
        print(report.summary(data, final))
    return data["exit_code"]


def disk_error(e: OSError, folder: Path, doing: str) -> OSError | HarnessError:
    """A full (or read-only) disk as the machine's error naming the folder;
    any other OSError as it is."""
    from harness.cli import DISK_ERRNOS
    if e.errno not in DISK_ERRNOS:
        return e
    return HarnessError(f"{e.strerror} in the report folder {folder} while {doing}",
                        step="report", blame="infra")


def run_to_report(kernel_src: str, configs, patches, append, methods, cycles: int,
                  folder: Path, order_check: str = "on", series: bool = True,
                  cpu: str = "max") -> dict:
    """Build, run ``methods`` and write a report folder; returns report.json.
    For the commands that run many kernels (repro, matrix): no signal handling
    or folder swap of their own, the caller's folder is used as it is.
    ``series=False``: without patches/series (--no-series); ``cpu``: QEMU's
    -cpu."""
    from harness import runner
    from harness.verdict import checks, report
    configs, append, note = leakcheck.for_cycles(cycles, configs, append)
    if note:
        ui.info(note)
    art = build_mod.build(build_mod.BuildRequest(kernel_src=kernel_src, configs=configs,
                                                 patches=tuple(patches), series=series),
                          progress=False if ui.quiet() else None)
    ropts = runner.RunOptions(methods=runner.resolve_methods(",".join(methods)),
                              boot=BootOptions(cmdline=append, cpu=cpu), cycles=cycles,
                              order_check=order_check)
    folder.mkdir(parents=True, exist_ok=True)
    keep_build_log(art, folder)
    runs = runner.run_all(art, ropts, folder)
    report.write_report(folder, kernel_identity(art), runs,
                        {r.method: checks.judge(r) for r in runs})
    return json.loads((folder / "report.json").read_text())


def add_matrix_outputs(p) -> None:
    """The options repro and matrix share: output forms and the kernel source."""
    p.add_argument("--json", action="store_true", help="print the matrix as JSON")
    p.add_argument("--markdown", metavar="MATRIX_JSON", type=Path, default=None,
                   help="print the README table for a matrix saved with --json; no run")
    p.add_argument("--html", metavar="MATRIX_JSON", type=Path, default=None,
                   help="print the HTML page (matrix.html) for a saved matrix; no run")
    p.add_argument("--kernel-src", default="debian", metavar="SRC[,SRC]",
                   help="the kernel source(s), comma-separated: each is debian (6.12), "
                        "debian-6.1, a tree or a tarball; several make a source axis "
                        "(default debian)")
    p.add_argument("--no-series", action="store_true",
                   help="do not apply patches/series (a tree that carries it already; "
                        "without this, each of its patches found in the tree is skipped)")
    kcidb_arguments(p)


def write_matrix(out: Path, data: dict, text: str, page: dict, as_json: bool) -> int:
    """What repro and matrix leave in their folder (matrix.json, matrix.txt,
    matrix.html from ``page``, htmlreport's MATRIX_SCHEMA) and print; returns
    the matrix's exit code."""
    from harness.verdict import htmlreport
    (out / "matrix.json").write_text(json.dumps(data, indent=1) + "\n")
    (out / "matrix.txt").write_text(text)
    htmlreport.write_matrix_html(out / htmlreport.MATRIX_HTML, page)
    print(json.dumps(data, indent=1) if as_json else text + f"matrix: {out / 'matrix.json'}")
    return data["exit_code"]


def kernel_identity(art) -> dict:
    """What report.json's "kernel" says of the artifacts a run booted."""
    return {"source": art.source, "patches": [list(p) for p in art.patches],
            **({"series": [{"name": n, "part": part, "subject": subject, "from": mbox}
                           for n, part, subject, mbox in mails]}
               if (mails := getattr(art, "series", ())) else {}),
            **({"commit": commit} if (commit := mail.git_commit(art.source)) else {}),
            "config_digest": art.config_digest, "cache_key": art.cache_key,
            "release": art.kernel_release, "fragments": list(art.fragments),
            **({"toolchain": tc} if (tc := getattr(art, "toolchain", "")) else {})}


def keep_build_log(art, folder: Path) -> None:
    """The build log beside the report (``build.log``: the build's excerpt in
    ``--kcidb``); an artifact without one (or a fake) leaves nothing."""
    from harness.verdict import kcidb
    log = getattr(art, "build_log", None)
    if log and Path(log).is_file():
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, folder / kcidb.BUILD_LOG)


def kcidb_arguments(p) -> None:
    """--kcidb FILE and --kcidb-origin NAME (report, matrix, repro)."""
    p.add_argument("--kcidb", metavar="FILE", type=Path, default=None,
                   help="also write the results as KCIDB JSON (KernelCI's results "
                        "database; submit with kcidb-submit, see docs/kcidb.md)")
    p.add_argument("--kcidb-origin", metavar="NAME", default="hotplug_harness",
                   type=_kcidb_origin,
                   help="the KCIDB origin (the CI system's name, given by KernelCI; "
                        "default hotplug_harness)")


def _kcidb_origin(text: str) -> str:
    from harness.verdict import kcidb
    try:
        return kcidb.check_origin(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def write_kcidb(args, folder: Path) -> None:
    """With --kcidb FILE: the report(s) under ``folder`` as KCIDB JSON."""
    if getattr(args, "kcidb", None) is None:
        return
    from harness.verdict import kcidb
    doc = kcidb.from_folder(folder, args.kcidb_origin)
    kcidb.write(args.kcidb, doc)
    ui.info(f"{args.kcidb}: {kcidb.counts(doc)}", "kcidb")


def cmd_report(args) -> int:
    from harness.verdict import report
    data, code = report.rejudge(Path(args.dir))
    write_kcidb(args, Path(args.dir))
    if args.mail:
        print(mail.render(data, args.tested_by or mail.tested_by()), end="")
    elif args.json:
        print(json.dumps(data, indent=1))
    else:
        print(report.summary(data, Path(args.dir)))
    return code


# run's options judged against each method when given (argparse dest -> the
# key of harness.drive.method.OPTION_FLAGS)
GIVEN = {"mode": "mode", "mem": "mem_mb", "order_check": "order_check",
         "cycles": "cycles", "online_type": "online_type", "dimms": "dimms",
         "dimm_size": "dimm_mb", "race_seconds": "seconds",
         "race_iterations": "iterations"}


def _takers(key: str) -> str:
    return "taken by " + ", ".join(method_mod.takers(key, None))


def track_given(parser) -> None:
    """Make the options of GIVEN default to None, so that the run can tell an
    option the user gave from its default; the defaults are kept in
    ``run_defaults`` (given_options puts them back)."""
    defaults = {dest: parser.get_default(dest) for dest in GIVEN}
    parser.set_defaults(run_defaults=defaults, **{dest: None for dest in GIVEN})


def given_options(args):
    """({key: value} of the GIVEN options the user gave, args with every
    default filled in)."""
    defaults = getattr(args, "run_defaults", {})
    given = {GIVEN[d]: getattr(args, d) for d in defaults if getattr(args, d) is not None}
    filled = argparse.Namespace(**vars(args))
    for dest, default in defaults.items():
        if getattr(filled, dest) is None:
            setattr(filled, dest, default)
    return given, filled


def register_run(sub, add_kernel_options, build_request) -> None:
    r = sub.add_parser("run", help="run hotplug scenarios and judge them",
                       description="Boot the kernel once per method, drive memory "
                                   "hot-add and hot-remove, inspect page tables, "
                                   "print the verdict.",
                       epilog=RUN_EPILOG.replace("{methods}", method_mod.help_table()),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_kernel_options(r)
    add_boot_options(r)
    g = r.add_argument_group("scenario")
    g.add_argument("--method", default="all", metavar="NAME[,NAME]|all",
                   help=method_mod.method_choices())
    g.add_argument("--cycles", type=int, default=1,
                   help=f"add->remove cycles (default 1; {_takers('cycles')})")
    g.add_argument("--race-iterations", type=int, default=30, metavar="N",
                   help=f"add/remove rounds the loop makes (default 30; "
                        f"{_takers('iterations')})")
    g.add_argument("--race-seconds", type=int, default=240, metavar="S",
                   help=f"the add/remove loop's time bound: it stops there even short "
                        f"of --race-iterations (default 240; {_takers('seconds')})")
    g.add_argument("--online-type", default="online_movable",
                   choices=["online", "online_movable", "online_kernel"],
                   help=_takers("online_type"))
    g.add_argument("--dimms", type=int, default=2,
                   help=f"DIMMs to plug (default 2; {_takers('dimms')})")
    g.add_argument("--dimm-size", type=int, default=0, metavar="MIB",
                   help="DIMM size (default: the method's own; a multiple of the "
                        f"block size; {_takers('dimm_mb')})")
    g.add_argument("--order-check", choices=["on", "full", "sampled", "off"], default="on",
                   help="gdb around every removal: 'on' (default; 'full' is the same) "
                        "follows every removal of every cycle in full: every free, "
                        "every cleared table entry and vmemmap leaf, every tlbi and "
                        "the dsb that completes it, arch_remove_memory()'s linear map; "
                        "'sampled' follows the first removal of each method in full and "
                        "only the frees of the others (the flush checks then SKIP with "
                        "'not followed: N of M removals', and the summary says so); "
                        "'off' attaches no gdb (the ordering checks are then not run)")
    g.add_argument("--no-order-check", dest="order_check", action="store_const",
                   const="off", help="the same as --order-check=off")
    g.add_argument("--no-walker", action="store_true",
                   help="skip the host-side page-table walk (ptdump only)")
    g.add_argument("--guests", type=int, default=0, metavar="N",
                   help="guests side by side, one method each (default 2, fewer "
                        "with fewer CPUs or methods; 1: one after the other). "
                        "Progress lines then start with [method]; the report is the "
                        "same")
    g.add_argument("--report", metavar="DIR", help="write the report here")
    g.add_argument("--json", action="store_true", help="print report.json")
    g.add_argument("--mail", action="store_true", help=mail.MAIL_HELP)
    g.add_argument("--tested-by", type=mail.tested_by_arg, metavar='"NAME <EMAIL>"',
                   help=mail.TESTED_BY_HELP)
    track_given(r)
    r.set_defaults(func=lambda a: cmd_run(a, build_request))
    p = sub.add_parser("report", help="re-print and re-judge a saved run",
                       description="Re-judge a saved run (report.json) without booting.",
                       epilog="examples:\n"
                              "  hotplug-harness report out/         # the summary again\n"
                              "  hotplug-harness report out/ --mail  # a reply to paste; "
                              "Tested-by: only on PASS\n"
                              "  hotplug-harness report out/ --mail --tested-by "
                              "\"Ann Author <ann@example.org>\"",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", help="a folder written by 'run --report DIR'")
    p.add_argument("--json", action="store_true")
    p.add_argument("--mail", action="store_true", help=mail.MAIL_HELP)
    p.add_argument("--tested-by", type=mail.tested_by_arg, metavar='"NAME <EMAIL>"',
                   help=mail.TESTED_BY_HELP)
    kcidb_arguments(p)
    p.set_defaults(func=cmd_report)
