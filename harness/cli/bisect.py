"""``hotplug-harness bisect-run``: one step of ``git bisect run`` in a kernel tree.

It builds the tree as it is checked out (``--kernel-src .``, the default) with
``patches/series`` (each of its patches already in the tree skipped;
``--no-series`` leaves the series out) and any ``--patch``/``--series``, runs
the chosen methods (``cli_run.run_to_report``: build, run, report folder) and
maps the result to what ``git bisect run`` understands. A bisect must never be
told a lie, so only what the kernel at this commit did decides good or bad:

* **0** good: none of the chosen checks FAILed;
* **1** bad: a chosen check FAILed (default: any check of any method), the
  kernel crashed or refused a hotplug operation, or a removal hung: a
  removal step (offline, remove, shrink) whose guest command or QMP event did
  not come back in time while QEMU kept running and the kernel reported
  nothing (``--hang-is skip`` makes that 125);
* **125** skip, this commit cannot be tested: the tree does not build, a patch
  of the series (or a ``--patch``) does not apply, the configuration cannot be
  made, the kernel crashes while booting;
* **128** abort: bisect-run was misused (an unknown or malformed option, not a
  git kernel tree, an unknown ``--check``/``--method``/``--config``, a
  ``--patch`` that is not there, a ``--log``/``--reports`` that cannot be
  written), or the machine or the harness failed (QEMU, the guest never
  ready, a check that could not look, a harness bug): git bisect stops
  with the reason instead of skipping through the whole range
  (``--infra-is skip`` makes those 125); 130/143 on SIGINT/SIGTERM abort it too.

Each call appends one tab-separated line to the log: time, commit
(``git rev-parse HEAD`` in the tree), verdict, exit code, failing checks
(``method:check``, comma-separated, or ``-``), reason (starting with its kind:
``checks failed``, ``hang``, ``untestable``, ``infra``...), report folder.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NoReturn, Optional

from harness import progress as ui
from harness.errors import KERNEL, BuildError, ConfigError, HarnessError, PatchError

GOOD, BAD, SKIP, ABORT = 0, 1, 125, 128
VERDICT_NAMES = {GOOD: "good", BAD: "bad", SKIP: "skip"}
BISECT_COMMAND = "bisect-run"
LOG_NAME = "hotplug-bisect.log"
REPORTS_NAME = "hotplug-bisect"

# What a step's record says when its guest command or QMP event did not come
# back in time (machine/ssh.py, machine/console.py, machine/qemu.py wait_event,
# drive/common.wait_for). Those errors are raised only once the harness has
# seen that QEMU still runs and the kernel reported nothing: a guest that is
# alive but does not finish what it was asked, i.e. a hang.
TIMEOUT_MARKERS = ("timed out after", "no QMP event", "no answer within")
# the steps of a removal, as the methods name them
REMOVAL_STEPS = ("offline", "remove", "shrink", "add/remove")

EPILOG = """\
for 'git bisect run' inside a kernel git tree: it builds the tree as it is
checked out (with patches/series, minus any of its patches already in the tree,
or --no-series without it; and --patch/--series), runs the methods and exits

  0    good: none of the chosen checks FAILed
  1    bad: a chosen --check FAILed (without --check: any check of any
       method), the kernel crashed or refused a hotplug operation, or a
       removal hung: a removal step (offline, remove, shrink) whose guest
       command or QMP event never came back while QEMU ran on and the kernel
       reported nothing (--hang-is skip: 125 instead)
  125  skip, this commit cannot be tested: the tree does not build, a patch of
       the series or a --patch does not apply, the configuration cannot be
       made, the kernel crashes while booting
  128  abort the bisect: bisect-run misused (an unknown or malformed option,
       not a git kernel tree, an unknown --check/--method/--config, a missing
       --patch, a --log or --reports that cannot be written); or the machine
       or the harness failed (QEMU, a guest that never got ready, a check that
       could not look, a harness bug), so that a broken set-up stops the
       bisect with its reason instead of skipping every commit
       (--infra-is skip: 125 instead); 130/143: interrupted, which aborts too

One line per commit is appended to --log (default: hotplug-bisect.log in the
tree's git directory, so it survives checkouts and never dirties the tree):
time, commit, verdict, exit code, failing checks, reason (it starts with its
kind: checks failed, hang, untestable, infra, harness), report folder.
Report folders go to hotplug-bisect/COMMIT-TIME in the git directory (--reports).

example (in the kernel tree; paths to the harness must be absolute, git bisect
runs the command from the tree's top folder):

  git bisect start BAD GOOD
  git bisect run ~/hotplug-harness/.venv/bin/python -m harness.cli \\
      bisect-run --method acpi-dimm --check tables-freed
  git bisect log; cat .git/hotplug-bisect.log
"""


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more: {value}")
    return value


def register(sub: Any) -> None:
    from harness.kernel import kconfig, series
    p = sub.add_parser(BISECT_COMMAND, help="one 'git bisect run' step: build this tree, "
                                          "run, exit 0 good / 1 bad / 125 skip / 128 abort",
                       description="Build the kernel tree as checked out, run the chosen "
                                   "methods and exit as 'git bisect run' expects.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernel-src", default=".", metavar="DIR",
                   help="the kernel git tree (default: the current folder)")
    p.add_argument("--config", action="append", default=[], metavar="NAME|FILE",
                   help="add a config fragment (repeatable): "
                        + ", ".join(kconfig.available_fragments()))
    p.add_argument("--patch", action="append", default=[], metavar="FILE",
                   help="apply this patch after patches/series (repeatable; use an "
                        "absolute path: git bisect runs in the tree)")
    p.add_argument("--series", dest="patch", action="append", type=series.SeriesFile,
                   metavar="MBOX", help="a patch series from the list (git format-patch "
                                        "--stdout, b4 am .mbx), applied mail by mail at "
                                        "every commit; absolute path, as --patch")
    p.add_argument("--no-series", action="store_true",
                   help="do not apply patches/series (without this, each of its patches "
                        "the tree already carries is skipped, and said so)")
    p.add_argument("--method", default="acpi-dimm", metavar="NAME[,NAME]|all",
                   help="methods to run (default acpi-dimm)")
    p.add_argument("--check", action="append", default=[], metavar="NAME",
                   help="the check(s) whose FAIL means bad (repeatable; default: any)")
    p.add_argument("--cycles", type=_positive, default=1,
                   help="add->remove cycles (default 1)")
    p.add_argument("--append", action="append", default=[], metavar="PARAM",
                   help="extra kernel parameter (repeatable)")
    p.add_argument("--order-check", choices=["on", "full", "sampled", "off"], default="on",
                   help="gdb around every removal (see 'run --help')")
    p.add_argument("--hang-is", choices=["bad", "skip"], default="bad",
                   help="a removal that hangs (its command or QMP event never comes "
                        "back, QEMU still running, nothing reported by the kernel): "
                        "bad (exit 1, the default) or skip (125)")
    p.add_argument("--infra-is", choices=["abort", "skip"], default="abort",
                   help="the machine or the harness failed (QEMU, a guest never ready, "
                        "a check that could not look): abort the bisect (exit 128, "
                        "the default) or skip the commit (125)")
    p.add_argument("--log", type=Path, default=None, metavar="FILE",
                   help=f"append one line per commit here (default: GIT_DIR/{LOG_NAME})")
    p.add_argument("--reports", type=Path, default=None, metavar="DIR",
                   help=f"report folders go here (default: GIT_DIR/{REPORTS_NAME})")
    p.set_defaults(func=cmd_bisect_run)

    def usage_error(message: str) -> NoReturn:    # argparse's exit 2 would mean "bad"
        p.print_usage(sys.stderr)
        print(f"hotplug-harness bisect-run: error: {message} (exit {ABORT}: aborts "
              f"git bisect)", file=sys.stderr)
        sys.exit(ABORT)
    p.error = usage_error     # argparse's own error() exits 2

    # An option the subcommand does not know ('--bogus') is left over by its
    # parse_known_args and refused by the top-level parser, whose error() exits
    # 2: refuse it here, as a usage error.
    known = p.parse_known_args

    def parse_known_args(args: Any = None, namespace: Any = None) -> Any:
        ns, extras = known(args, namespace)
        if extras:
            usage_error(f"unrecognized arguments: {' '.join(extras)}")
        return ns, extras
    p.parse_known_args = parse_known_args


def git(tree: Path, *args: str) -> Optional[str]:
    try:
        proc = subprocess.run(["git", "-C", str(tree), *args], capture_output=True,
                              text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def hang_of(method: Mapping[str, Any]) -> Optional[str]:
    """What hung, when a method's run stopped in a removal step whose guest
    command or QMP event did not come back in time (the last failed step of
    ``run.steps``, TIMEOUT_MARKERS in its detail); None otherwise. A crash or
    a refusal the kernel is blamed for is not a hang (it is bad already)."""
    run = method.get("run") or {}
    error = run.get("error") or {}
    if not error or error.get("blame") == KERNEL:
        return None
    failed = next((s for s in reversed(run.get("steps") or []) if not s.get("ok", True)),
                  None)
    if failed is None:
        return None
    name, detail = str(failed.get("name", "")), str(failed.get("detail", ""))
    if not name.startswith(REMOVAL_STEPS) or not any(m in detail for m in TIMEOUT_MARKERS):
        return None
    return f"{method.get('method', '?')}: step '{name}' never finished: {detail}"[:300]


def infra(reason: str, infra_is: str) -> tuple[int, str]:
    """The machine or the harness failed: abort (128) or, with --infra-is
    skip, skip (125); the reason says which and why."""
    if infra_is == "skip":
        return SKIP, f"{reason} (--infra-is skip)"
    return ABORT, f"{reason} (aborts the bisect; --infra-is skip goes on)"


def classify(report: Mapping[str, Any], chosen: Iterable[str] = (), hang_is: str = "bad",
             infra_is: str = "abort") -> tuple[int, list[str], str]:
    """report.json -> (exit code, failing ``method:check`` names, reason)."""
    from harness.records import ERROR, FAIL, PASS
    if report.get("interrupted"):
        return int(report.get("exit_code", 130)), [], "interrupted"
    chosen = tuple(chosen)
    failing: list[str] = []
    unbooted: list[str] = []
    crashed_at_boot: list[str] = []
    errors: list[str] = []
    hangs: list[str] = []
    looked: set[str] = set()
    for m in report.get("methods", []):
        name = m["method"]
        run = m.get("run") or {}
        booted = bool(m.get("steps") or run.get("steps"))
        error = run.get("error") or {}
        if not booted:
            text = f"{name}: {error.get('message', 'no step ran')}"[:200]
            (crashed_at_boot if error.get("blame") == KERNEL else unbooted).append(text)
            continue
        for c in m.get("checks", []):
            if chosen and c["name"] not in chosen:
                continue
            if c["verdict"] == FAIL:
                failing.append(f"{name}:{c['name']}")
            elif c["verdict"] == ERROR:
                errors.append(f"{name}:{c['name']}")
            if c["verdict"] in (PASS, FAIL):
                looked.add(c["name"])
        hang = hang_of(m)
        if hang:
            hangs.append(hang)
        elif not chosen and m.get("verdict") == FAIL and not any(
                f.startswith(name + ":") for f in failing):
            failing.append(f"{name}:{error.get('step') or 'run'} "
                           f"({error.get('message', 'kernel blamed')})"[:200])
        elif error and not failing:
            errors.append(f"{name}: {error.get('message', '')}"[:200])
    if failing:
        return BAD, failing, "checks failed: the chosen ones" if chosen else "checks failed"
    if hangs:
        return ((BAD, [], f"hang, counted bad (--hang-is bad): {'; '.join(hangs)}")
                if hang_is == "bad" else
                (SKIP, [], f"hang, skipped (--hang-is skip): {'; '.join(hangs)}"))
    if crashed_at_boot:
        return SKIP, [], ("untestable: the kernel did not boot: "
                          + "; ".join(crashed_at_boot))
    if unbooted:
        code, reason = infra("infra: the guest did not boot: " + "; ".join(unbooted),
                             infra_is)
        return code, [], reason
    if errors:
        code, reason = infra("infra: could not judge: " + ", ".join(errors), infra_is)
        return code, [], reason
    if chosen and not set(chosen) <= looked:
        missing = ", ".join(sorted(set(chosen) - looked))
        code, reason = infra(f"could not judge: the chosen check(s) {missing} did not "
                             f"look (SKIP or absent)", infra_is)
        return code, [], reason
    if report.get("exit_code") == 2 or report.get("verdict") not in (PASS, FAIL):
        code, reason = infra(f"could not judge: run verdict {report.get('verdict')}",
                             infra_is)
        return code, [], reason
    others = [f"{m['method']}:{c['name']}" for m in report.get("methods", [])
              for c in m.get("checks", []) if c["verdict"] == FAIL]
    return GOOD, [], ("checks passed: the chosen ones" if chosen else "checks passed") + (
        f" (other checks failed: {', '.join(others)})" if others else "")


def _first_evidence(e: HarnessError) -> str:
    first = next((line.strip() for line in e.evidence.splitlines() if line.strip()), "")
    return f": {first[:300]}" if first else ""


def error_outcome(e: BaseException, infra_is: str = "abort") -> tuple[int, str]:
    """An error out of the build or the run -> (exit code, reason). What the
    tree at this commit cannot do is 125; the machine or the harness failing
    is ``infra()``."""
    if not isinstance(e, HarnessError):      # a harness bug: not the commit's fault
        return infra(f"harness: internal error: {type(e).__name__}: {e}", infra_is)
    where = f" in {e.step}" if e.step else ""
    text = f"{e.message}{_first_evidence(e)}"
    if isinstance(e, BuildError):
        return SKIP, f"untestable: the tree does not build{where}: {text}"
    if isinstance(e, PatchError):
        return SKIP, f"untestable: a patch does not apply{where}: {text}"
    if isinstance(e, ConfigError) or e.step == "config":
        return SKIP, f"untestable: the configuration cannot be made{where}: {text}"
    if e.blame == KERNEL:
        return SKIP, f"untestable: kernel error{where}: {text}"
    return infra(f"{e.blame}: error{where}: {text}", infra_is)


def log_line(commit: str, code: int, failing: Iterable[str], reason: str,
             folder: Optional[Path]) -> str:
    verdict = VERDICT_NAMES.get(code, "abort")
    fields = [time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), commit, verdict,
              str(code), ",".join(failing) or "-",
              " ".join(reason.split()) or "-", str(folder) if folder else "-"]
    return "\t".join(fields) + "\n"


def _abort(message: str) -> int:
    print(f"hotplug-harness bisect-run: {message} (exit {ABORT}: aborts git bisect)",
          file=sys.stderr)
    return ABORT


def usage_problem(args: argparse.Namespace, tree: Path) -> Optional[str]:
    """What is wrong with how bisect-run was called (None: nothing); checked
    before anything is built, so a misuse aborts the bisect at once."""
    from harness import runner
    from harness.kernel import kconfig
    from harness.kernel import source as src
    from harness.verdict import checks
    if not tree.is_dir():
        return f"--kernel-src {tree}: no such folder"
    if not (tree / "Makefile").is_file() or not (tree / "arch" / "arm64").is_dir():
        return f"{tree} is not a kernel tree (no Makefile or arch/arm64)"
    known = [name for name, _ in checks.RULES]
    unknown = [c for c in args.check if c not in known]
    if unknown:
        return f"unknown check(s) {', '.join(unknown)}; choose from {', '.join(known)}"
    try:
        runner.resolve_methods(args.method)
        kconfig.resolve_fragments(args.config)
        if not args.no_series:
            src.read_series()
    except HarnessError as e:
        return e.message
    missing = [str(p) for p in args.patch if not Path(p).expanduser().is_file()]
    if missing:
        return (f"no such patch file: {', '.join(missing)} (paths are read from the "
                f"tree's top folder, where git bisect runs the command)")
    return None


def _writable(log: Path, reports: Path) -> Optional[str]:
    """Make sure the log can be appended to and the report folder created."""
    try:
        reports.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"--reports {reports}: {e.strerror or e}"
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a"):
            pass
    except OSError as e:
        return f"--log {log}: {e.strerror or e}"
    return None


def cmd_bisect_run(args: argparse.Namespace) -> int:
    from harness import signals
    from harness.cli import run as cli_run
    interrupted: Callable[[], object] = signals.received
    tree = Path(args.kernel_src).expanduser().resolve()
    commit = git(tree, "rev-parse", "HEAD")
    git_dir = git(tree, "rev-parse", "--absolute-git-dir")
    if not commit or not git_dir:
        return _abort(f"{tree} is not a git tree (git rev-parse HEAD failed)")
    problem = usage_problem(args, tree)
    if problem:
        return _abort(problem)
    log = args.log or Path(git_dir) / LOG_NAME
    reports = args.reports or Path(git_dir) / REPORTS_NAME
    problem = _writable(log, reports)
    if problem:
        return _abort(problem)
    folder = reports / f"{commit[:12]}-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while folder.exists():         # the same commit twice in a second
        n += 1
        folder = folder.with_name(f"{folder.name.rsplit('.', 1)[0]}.{n}")
    from harness import runner
    methods = runner.resolve_methods(args.method)
    ui.info(f"bisect-run: {commit[:12]} in {tree}: {', '.join(methods)}")
    failing: list[str] = []
    try:
        report = cli_run.run_to_report(str(tree), args.config, args.patch,
                                       tuple(args.append), methods, args.cycles, folder,
                                       order_check=args.order_check,
                                       series=not args.no_series)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:
        if isinstance(e, HarnessError) and interrupted():
            raise                   # e.g. make died of the same Ctrl-C: main says so
        code, reason = error_outcome(e, args.infra_is)
    else:
        code, failing, reason = classify(report, args.check, args.hang_is, args.infra_is)
    line = log_line(commit, code, failing, reason, folder if folder.exists() else None)
    try:
        with open(log, "a") as f:
            f.write(line)
    except OSError as e:
        print(f"bisect-run: {commit[:12]} {VERDICT_NAMES.get(code, 'abort')} "
              f"(exit {code}): {reason}", file=sys.stderr)
        return _abort(f"--log {log}: {e.strerror or e}: the verdict could not be recorded")
    print(f"bisect-run: {commit[:12]} {VERDICT_NAMES.get(code, 'abort')} "
          f"(exit {code}): {reason}" + (f": {', '.join(failing)}" if failing else ""))
    print(f"bisect-run: log {log}")
    return code
