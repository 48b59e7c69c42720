"""``hotplug-harness bisect-run``: one step of ``git bisect run`` in a kernel tree.

It builds the tree as it is checked out (``--kernel-src .``, the default) with
``patches/series`` and any ``--patch``, runs the chosen methods
(``cli_run.run_to_report``: build, run, report folder) and maps the result to
what ``git bisect run`` understands:

* **0** good: none of the chosen checks FAILed;
* **1** bad: a chosen check FAILed (default: any check of any method);
* **125** skip: the tree does not build or the series does not apply, the guest
  does not boot, the harness or the machine failed, a chosen check could not
  look (an ERROR verdict, exit 2 of ``run``);
* **128** abort: bisect-run itself was misused (not a git tree, an unknown
  check, a bad option), so that ``git bisect`` stops instead of calling every
  commit bad; 130/143 on SIGINT/SIGTERM abort it too.

Each call appends one tab-separated line to the log: time, commit
(``git rev-parse HEAD`` in the tree), verdict, exit code, failing checks
(``method:check``, comma-separated, or ``-``), reason, report folder.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional

from harness import progress as ui
from harness.errors import HarnessError

GOOD, BAD, SKIP, ABORT = 0, 1, 125, 128
VERDICT_NAMES = {GOOD: "good", BAD: "bad", SKIP: "skip"}
LOG_NAME = "hotplug-bisect.log"
REPORTS_NAME = "hotplug-bisect"

EPILOG = """\
for 'git bisect run' inside a kernel git tree: it builds the tree as it is
checked out (with patches/series and --patch), runs the methods and exits

  0    good: none of the chosen checks FAILed
  1    bad: a chosen --check FAILed (without --check: any check of any method)
  125  skip: the tree does not build or the series does not apply, the guest
       does not boot, the harness or the machine failed, a chosen check
       could not look (what 'run' reports as ERROR, exit 2)
  128  abort the bisect: not a git tree, an unknown --check, a bad option
       (130/143: interrupted, which aborts it too)

One line per commit is appended to --log (default: hotplug-bisect.log in the
tree's git directory, so it survives checkouts and never dirties the tree):
time, commit, verdict, exit code, failing checks, reason, report folder.
Report folders go to hotplug-bisect/COMMIT-TIME in the git directory (--reports).

example (in the kernel tree; paths to the harness must be absolute, git bisect
runs the command from the tree's top folder):

  git bisect start BAD GOOD
  git bisect run ~/hotplug-harness/.venv/bin/python -m harness.cli \\
      bisect-run --method acpi-dimm --check tables-freed
  git bisect log; cat .git/hotplug-bisect.log
"""


def register(sub: Any) -> None:
    from harness.build import kconfig, series
    p = sub.add_parser("bisect-run", help="one 'git bisect run' step: build this tree, "
                                          "run, exit 0 good / 1 bad / 125 skip",
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
    p.add_argument("--method", default="acpi-dimm", metavar="NAME[,NAME]|all",
                   help="methods to run (default acpi-dimm)")
    p.add_argument("--check", action="append", default=[], metavar="NAME",
                   help="the check(s) whose FAIL means bad (repeatable; default: any)")
    p.add_argument("--cycles", type=int, default=1, help="add->remove cycles (default 1)")
    p.add_argument("--append", action="append", default=[], metavar="PARAM",
                   help="extra kernel parameter (repeatable)")
    p.add_argument("--order-check", choices=["on", "full", "sampled", "off"], default="on",
                   help="gdb around every removal (see 'run --help')")
    p.add_argument("--log", type=Path, default=None, metavar="FILE",
                   help=f"append one line per commit here (default: GIT_DIR/{LOG_NAME})")
    p.add_argument("--reports", type=Path, default=None, metavar="DIR",
                   help=f"report folders go here (default: GIT_DIR/{REPORTS_NAME})")
    p.set_defaults(func=cmd_bisect_run)

    def usage_error(message: str) -> None:    # argparse's exit 2 would mean "bad"
        p.print_usage(sys.stderr)
        print(f"hotplug-harness bisect-run: error: {message} (exit {ABORT}: aborts "
              f"git bisect)", file=sys.stderr)
        sys.exit(ABORT)
    p.error = usage_error     # argparse's own error() exits 2


def git(tree: Path, *args: str) -> Optional[str]:
    try:
        proc = subprocess.run(["git", "-C", str(tree), *args], capture_output=True,
                              text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def classify(report: dict[str, Any], chosen: Iterable[str] = ()
             ) -> tuple[int, list[str], str]:
    """report.json -> (exit code, failing ``method:check`` names, reason)."""
    from harness.records import ERROR, FAIL, PASS
    if report.get("interrupted"):
        return int(report.get("exit_code", 130)), [], "interrupted"
    chosen = tuple(chosen)
    failing, unbooted, errors, looked = [], [], [], set()
    for m in report.get("methods", []):
        name = m["method"]
        run = m.get("run") or {}
        booted = bool(m.get("steps") or run.get("steps"))
        error = run.get("error") or {}
        if not booted:
            unbooted.append(f"{name}: {error.get('message', 'no step ran')}"[:200])
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
        if not chosen and m.get("verdict") == FAIL and not any(
                f.startswith(name + ":") for f in failing):
            failing.append(f"{name}:{error.get('step') or 'run'} "
                           f"({error.get('message', 'kernel blamed')})"[:200])
        elif error and not failing:
            errors.append(f"{name}: {error.get('message', '')}"[:200])
    if failing:
        return BAD, failing, "chosen checks failed" if chosen else "checks failed"
    if unbooted:
        return SKIP, [], "did not boot: " + "; ".join(unbooted)
    if errors:
        return SKIP, [], "could not judge: " + ", ".join(errors)
    if chosen and not set(chosen) <= looked:
        missing = ", ".join(sorted(set(chosen) - looked))
        return SKIP, [], f"the chosen check(s) {missing} did not look (SKIP or absent)"
    if report.get("exit_code") == 2 or report.get("verdict") not in (PASS, FAIL):
        return SKIP, [], f"run verdict {report.get('verdict')}"
    others = [f"{m['method']}:{c['name']}" for m in report.get("methods", [])
              for c in m.get("checks", []) if c["verdict"] == FAIL]
    return GOOD, [], ("chosen checks passed" + (f" (other checks failed: "
                                                  f"{', '.join(others)})" if others else ""))


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


def cmd_bisect_run(args: argparse.Namespace) -> int:
    from harness import runner
    from harness.cli.run import run_to_report
    from harness.verdict import checks
    tree = Path(args.kernel_src).expanduser().resolve()
    commit = git(tree, "rev-parse", "HEAD")
    git_dir = git(tree, "rev-parse", "--absolute-git-dir")
    if not commit or not git_dir:
        return _abort(f"{tree} is not a git tree (git rev-parse HEAD failed)")
    known = [name for name, _ in checks.RULES]
    unknown = [c for c in args.check if c not in known]
    if unknown:
        return _abort(f"unknown check(s) {', '.join(unknown)}; choose from "
                      f"{', '.join(known)}")
    try:
        methods = runner.resolve_methods(args.method)
    except HarnessError as e:
        return _abort(str(e))
    log = args.log or Path(git_dir) / LOG_NAME
    reports = args.reports or Path(git_dir) / REPORTS_NAME
    folder = reports / f"{commit[:12]}-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while folder.exists():         # the same commit twice in a second
        n += 1
        folder = folder.with_name(f"{folder.name.rsplit('.', 1)[0]}.{n}")
    ui.info(f"bisect-run: {commit[:12]} in {tree}: {', '.join(methods)}")
    failing: list[str] = []
    try:
        report = run_to_report(str(tree), args.config, args.patch, tuple(args.append),
                               methods, args.cycles, folder, order_check=args.order_check)
    except HarnessError as e:       # does not build, series does not apply, machine
        code, reason = SKIP, f"{e.blame} error{f' in {e.step}' if e.step else ''}: {e.message}"
        first = next((line.strip() for line in e.evidence.splitlines() if line.strip()), "")
        if first:                   # e.g. the compiler's first error line
            reason += f": {first[:300]}"
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:          # a harness bug: untestable, not the commit's fault
        code, reason = SKIP, f"internal error: {type(e).__name__}: {e}"
    else:
        code, failing, reason = classify(report, args.check)
    line = log_line(commit, code, failing, reason, folder if folder.exists() else None)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(line)
    print(f"bisect-run: {commit[:12]} {VERDICT_NAMES.get(code, 'abort')} "
          f"(exit {code}): {reason}" + (f": {', '.join(failing)}" if failing else ""))
    print(f"bisect-run: log {log}")
    return code
