"""``hotplug-harness repro``: run the seeded regressions and print the detection
matrix (regression × check, with the evidence line), clean kernels included;
``--update-readme FILE`` writes its Markdown table between FILE's markers."""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from harness import progress as ui
from harness.cli.run import add_matrix_outputs
from harness.kernel import versions
from harness.verdict import repro
from harness.verdict.geomatrix import source_folder

EPILOG = """\
Each patches/repro/*.patch names, in its header, the review point it plants,
the methods, config fragments and kernel parameters that can see it, and the
checks expected to FAIL (Repro-* trailers; see harness/verdict/repro.py). For every
shape used, the clean kernel runs too: its row must pass.

examples:
  hotplug-harness repro --all                   # every regression + clean rows
  hotplug-harness repro 0005 0007               # by number or name
  hotplug-harness repro --all --json > m.json   # machine-readable matrix
  hotplug-harness repro --markdown m.json       # README table from a saved matrix
  hotplug-harness repro --markdown m.json --update-readme patches/repro/README.md
                                                # ... written between its markers
  hotplug-harness repro --html m.json > m.html  # the matrix page (also written by a run)
  hotplug-harness repro --list                  # what each regression plants
  hotplug-harness repro --history               # every upstream fix undone (patches/history)
  hotplug-harness repro --upstream 8fac67ca236b # one fix's scenario on the project's revert
  hotplug-harness repro --upstream 8fac67ca236b --patch my-revert.patch
                                                # ... on a revert of your own

--history runs patches/history instead of patches/repro: each patch undoes
one upstream fix (Upstream-Fix: trailer) and names the scenario that shows
it; the matrix carries the fix's id and title, and each shape's clean row
runs the stock kernel (or the stock kernel with the fix's backport, for a
fix the stock kernel lacks: Repro-Clean-Patch). --upstream SHA runs the
scenario registered for that fix, once, on the project's revert or on
--patch FILE: exit 1 when the bug shows (every check the scenario names
FAILs; for a fix no scenario shows, any FAIL), 0 when it does not, 2 when
the run could not judge.

--update-readme FILE (repeatable) replaces what lies between the lines
<!-- repro-matrix:start --> and <!-- repro-matrix:end --> in FILE with the
matrix's Markdown table: the one this run makes, or with --markdown
MATRIX_JSON the saved one (no run, nothing printed). `make test-repro` runs
the regressions that need a config fragment of their own (Repro-Config) and
their clean kernels through this command (tests/test_repro_configs.py) and
leaves reports/repro/matrix.json, the table of patches/repro/README.md.

exit codes: 0 every expected regression caught and every clean kernel passed,
1 a regression missed or a clean kernel failed, 2 the harness or the machine
failed, 130/143 interrupted.
"""


def register(sub, add_kernel_options) -> None:
    p = sub.add_parser("repro", help="run seeded regressions; print the detection matrix",
                       description="Build each seeded regression of patches/repro, run "
                                   "the scenarios that can see it, and print which "
                                   "checks caught it.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", metavar="NAME",
                   help="regressions by number (0005) or name; default with --all: every one")
    p.add_argument("--all", action="store_true", help="every regression in patches/repro")
    p.add_argument("--no-clean", action="store_true",
                   help="skip the clean kernel's rows")
    p.add_argument("--list", action="store_true", help="list the regressions and exit")
    p.add_argument("--history", action="store_true",
                   help="the upstream fixes undone in patches/history instead of "
                        "patches/repro (NAME: by upstream id or file name)")
    p.add_argument("--upstream", metavar="SHA", default=None,
                   help="run the scenario registered for upstream fix SHA (7+ hex digits) "
                        "on its revert in patches/history, or on --patch FILE")
    p.add_argument("--patch", metavar="FILE", type=Path, default=None,
                   help="with --upstream: your own revert of that fix instead of the "
                        "project's")
    p.add_argument("--report", metavar="DIR", type=Path, default=None,
                   help="keep every run's report folder here (default: ./runs/repro-...)")
    p.add_argument("--update-readme", metavar="FILE", type=Path, action="append",
                   default=[],
                   help="write the matrix's Markdown table between FILE's "
                        "<!-- repro-matrix:start/end --> markers (repeatable; with "
                        "--markdown MATRIX_JSON: from the saved matrix, no run)")
    add_matrix_outputs(p)
    p.set_defaults(func=cmd_repro)


def cmd_repro(args) -> int:
    if args.markdown:
        rows = repro.rows_from_json(json.loads(args.markdown.read_text()))
        if args.update_readme:
            update_readmes(args.update_readme, rows)
        else:
            print(repro.matrix_markdown(rows), end="")
        return 0
    if args.html:
        from harness.verdict import htmlreport
        print(htmlreport.render_matrix(htmlreport.repro_matrix(
            json.loads(args.html.read_text()), args.html.parent)), end="")
        return 0
    from harness.errors import HarnessError
    if args.patch is not None and not args.upstream:
        raise HarnessError("--patch goes with --upstream SHA", step="repro")
    if args.upstream:
        return cmd_upstream(args)
    if not args.names and not args.all and not args.list and not args.history:
        raise HarnessError("name regressions (e.g. 0005) or say --all or --history"
                           + (" (--update-readme from a saved matrix: --markdown MATRIX_JSON)"
                              if args.update_readme else ""), step="repro")
    regs = (repro.discover(args.names, repro.HISTORY_DIR) if args.history
            else repro.discover(args.names))
    if args.list:
        for r in regs:
            expect = ", ".join(r.expect) or f"- ({r.why})"
            print(f"{r.name}\n" + (f"    upstream {r.upstream}\n" if r.upstream else "")
                  + f"    {r.point}\n    run: {', '.join(r.methods)}"
                  f"{' --config ' + '+'.join(r.configs) if r.configs else ''}"
                  f"{' --cpu ' + r.cpu if r.cpu else ''}"
                  f"{' ' + ' '.join(r.append) if r.append else ''}\n    expect: {expect}")
        return 0
    _readmes(args.update_readme)        # a file without the markers: refused now, not after
    from harness.cli.run import default_dir, make_private_dirs, write_kcidb, write_matrix
    out = args.report or default_dir("repro")
    make_private_dirs(out)
    sources = versions.parse_sources(args.kernel_src)
    rows = []
    for src in sources:     # a source axis: each source's rows in out/SOURCE/, named
        axis = len(sources) > 1
        if axis:
            ui.info(f"[repro] --kernel-src {src}: {len(regs)} regression(s)")
        found = repro.run_matrix(regs, out / source_folder(src) if axis else out,
                                 _runner(src, not args.no_series),
                                 progress=ui.info, clean=not args.no_clean)
        rows += [replace(r, source=src) for r in found] if axis else found
    data = {"rows": [r.to_dict() for r in rows], "exit_code": repro.matrix_exit_code(rows)}
    from harness.verdict import htmlreport
    code = write_matrix(out, data, repro.matrix_text(rows), htmlreport.repro_matrix(data, out),
                        args.json)
    update_readmes(args.update_readme, rows)
    write_kcidb(args, out)
    return code


def cmd_upstream(args) -> int:
    """``--upstream SHA [--patch FILE]``: one fix's scenario, one kernel, no clean row."""
    from dataclasses import replace

    from harness.cli.run import default_dir, make_private_dirs
    from harness.errors import HarnessError
    reg = repro.find_upstream(args.upstream)
    if args.patch is not None:
        if not args.patch.is_file():
            raise HarnessError(f"--patch {args.patch}: no such file", step="repro")
        reg = replace(reg, name=args.patch.stem, path=str(args.patch.resolve()), stock=False)
    out = args.report or default_dir("repro")
    make_private_dirs(out)
    ui.info(f"[repro] upstream {reg.upstream}: {reg.point}; "
            f"{'the stock kernel' if reg.stock else Path(reg.path).name}")
    rows = repro.run_matrix([reg], out, _runner(args.kernel_src, not args.no_series),
                            progress=ui.info, clean=False)
    row = rows[0]
    shows = row.status == repro.CAUGHT or (
        not reg.expect and any(c.verdict == "FAIL" for c in row.cells.values()))
    code = 1 if shows else 2 if row.status in (repro.ERROR, repro.NOT_APPLICABLE) else 0
    data = {"rows": [row.to_dict()], "exit_code": code, "upstream": reg.upstream}
    (out / "matrix.json").write_text(json.dumps(data, indent=1) + "\n")
    from harness.cli.run import write_kcidb
    write_kcidb(args, out)
    print(json.dumps(data, indent=1) if args.json else
          repro.matrix_text(rows).rsplit("exit ", 1)[0]
          + f"upstream {reg.upstream}: "
          + {1: "the bug shows", 0: "the bug does not show", 2: "could not judge"}[code]
          + f" (exit {code})" + ("" if reg.expect else
                                 f"; no scenario is expected to show it: {reg.why}")
          + f"\nreport: {out / reg.name}")
    return code


def _readmes(files) -> list:
    """(path, text) of each --update-readme file; refused (exit 2) when one
    cannot be read or lacks the markers, before anything runs or is written."""
    from harness.errors import HarnessError
    found = []
    for f in files:
        path = Path(f)
        try:
            text = path.read_text()
            repro.replace_between(text, "")
        except OSError as e:
            raise HarnessError(f"--update-readme {path}: {e.strerror}", step="repro") from e
        except HarnessError as e:
            raise HarnessError(f"--update-readme {path}: {e.message}", step="repro") from e
        found.append((path, text))
    return found


def update_readmes(files, rows) -> None:
    """Each file's ``repro-matrix`` block replaced by the rows' Markdown table;
    every file is read and checked for its markers before any is written."""
    table = repro.matrix_markdown(rows)
    for path, old in _readmes(files):
        text = repro.replace_between(old, table)
        if text != old:
            path.write_text(text)
        ui.info(f"[repro] {path}: matrix table {'updated' if text != old else 'unchanged'}"
                f" ({len(rows)} rows)")


def _runner(kernel_src: str, series: bool = True):
    from harness.cli.run import run_to_report
    from harness.errors import HarnessError
    from harness.kernel import source as src

    def run(configs, patches, append, methods, cycles, folder: Path, cpu: str = "max") -> dict:
        try:
            return run_to_report(kernel_src, configs, patches, append, methods, cycles,
                                 folder, series=series, cpu=cpu)
        except HarnessError as e:   # a 6.12 patch that another version cannot take: n/a
            na = versions.foreign_patch(
                versions.tree_version(src.resolve_source(kernel_src)), e, patches) \
                if e.step == "patch" else None
            if na is None:
                raise
            raise na from e
    return run
