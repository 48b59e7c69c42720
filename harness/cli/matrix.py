"""``hotplug-harness matrix``: every page-table geometry × the hotplug methods."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness import progress as ui
from harness.cli.run import add_matrix_outputs
from harness.kernel import series, versions
from harness.verdict import geomatrix

EPILOG = """\
Each geometry fragment (kernel-configs/*.config starting with '# kind:
geometry') is built once (its own O= tree and cache entry: a second matrix run
builds nothing) and every method runs on it. The table shows each cell's
verdict; below it, the shape the harness saw (levels, page size, memory block
size, sizeof(struct page)) and the host walker's table pages per level before
the add, at online and after the last removal.

A geometry that does not build or boot is a row with the reason, not dropped;
one the kernel version cannot have (4k-52 on 6.1) is a row of N/A with why
(harness/kernel/versions.py NOT_APPLICABLE), which does not fail the matrix.
--kernel-src takes several sources, comma-separated: each geometry runs on
each (rows "GEOMETRY @SOURCE", folders SOURCE/GEOMETRY).
Results known to fail on the stock kernel are XFAIL with the reason
(harness/geomatrix.py EXPECTED); XPASS means one passed and the list is stale.

examples:
  hotplug-harness matrix                               # 6 geometries x 4 methods
  hotplug-harness matrix --geometry 64k-42,16k-47 --method probe
  hotplug-harness matrix --patch my-fix.patch          # your patch on every geometry
  hotplug-harness matrix --kernel-src debian,debian-6.1 --geometry 4k-48,64k-42
                                                       # 6.12 and Debian 12's own 6.1
  hotplug-harness matrix --series v2.mbx --method probe  # a series from the list
  hotplug-harness matrix --json > g.json               # machine-readable
  hotplug-harness matrix --markdown g.json             # the README table; no run
  hotplug-harness matrix --kcidb kcidb.json            # also every run as KCIDB JSON

exit codes: 0 every cell PASS or XFAIL, 1 a kernel failed a check (or an XFAIL
passed), 2 a cell could not be judged (build, boot, harness), 130/143
interrupted.
"""


def register(sub, add_kernel_options) -> None:
    p = sub.add_parser("matrix", help="run the methods on every page-table geometry",
                       description="Build the kernel for each page-table geometry "
                                   "fragment, run the hotplug methods on it and print "
                                   "geometry x method with verdicts and table counts.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--geometry", default="all", metavar="NAME[,NAME]|all",
                   help="geometry fragments (default all: "
                        + ", ".join(geomatrix.geometries()) + ")")
    p.add_argument("--method", default=",".join(geomatrix.DEFAULT_METHODS),
                   metavar="NAME[,NAME]",
                   help="methods per geometry (default: "
                        + ", ".join(geomatrix.DEFAULT_METHODS) + ")")
    p.add_argument("--patch", action="append", default=[], metavar="FILE",
                   help="apply this patch after patches/series on every geometry")
    p.add_argument("--series", dest="patch", action="append", type=series.SeriesFile,
                   metavar="MBOX", help="a patch series from the list (git format-patch "
                                        "--stdout, b4 am .mbx) on every geometry; see "
                                        "'build --help'")
    p.add_argument("--append", action="append", default=[], metavar="PARAM",
                   help="extra kernel parameter (repeatable)")
    p.add_argument("--order-check", choices=["on", "full", "sampled", "off"], default="on",
                   help="gdb around every removal (see 'run --help')")
    p.add_argument("--report", metavar="DIR", type=Path, default=None,
                   help="keep each geometry's report folder here "
                        "(default: ./runs/matrix-...)")
    add_matrix_outputs(p)
    p.set_defaults(func=cmd_matrix)


def cmd_matrix(args) -> int:
    if args.html:
        from harness.verdict import htmlreport
        print(htmlreport.render_matrix(geomatrix.html_matrix(geomatrix.from_json(
            json.loads(args.html.read_text())), args.html.parent)), end="")
        return 0
    if args.markdown:
        print(geomatrix.matrix_markdown(geomatrix.from_json(
            json.loads(args.markdown.read_text()))), end="")
        return 0
    from harness import runner
    from harness.cli.run import (
        default_dir,
        make_private_dirs,
        run_to_report,
        write_kcidb,
        write_matrix,
    )
    geos = runner.select_names(args.geometry, geomatrix.geometries(), "geometry", "matrix")
    methods = runner.select_names(args.method, list(runner.METHODS), "method", "matrix")
    out = args.report or default_dir("matrix")
    make_private_dirs(out)

    sources = versions.parse_sources(args.kernel_src)
    cells = []
    for src in sources:
        def run(configs, methods, folder: Path, src=src) -> dict:
            return run_to_report(src, configs, args.patch, args.append, methods,
                                 1, folder, order_check=args.order_check,
                                 series=not args.no_series)
        # one source: the rows are its geometries (folders out/GEOMETRY);
        # a source axis: each row names its source (out/SOURCE/GEOMETRY)
        cells += geomatrix.run_matrix(geos, methods, out, run, progress=ui.info,
                                      source=src if len(sources) > 1 else "")
    code = write_matrix(out, geomatrix.to_json(cells), geomatrix.matrix_text(cells),
                        geomatrix.html_matrix(cells, out), args.json)
    write_kcidb(args, out)
    return code
