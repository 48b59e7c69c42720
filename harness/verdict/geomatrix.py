"""The geometry matrix: every page-table geometry fragment × the hotplug methods.

``hotplug-harness matrix`` builds the kernel once per geometry fragment
(``kernel-configs/*.config`` whose first line is ``# kind: geometry``: 4k-39,
4k-48, 4k-52, 16k-47, 64k-42, 64k-48; each its own ``O=`` tree, reused by
later runs), runs the methods on it and keeps one cell per (geometry, method):
the verdict, the checks that did not pass with their first evidence line, and
what the kernel itself said about its geometry: levels, memory block size,
``sizeof(struct page)`` as the harness derived it, and the walker's table
pages per level before the add, at ``online`` and after the last removal.

A geometry that does not build, or that QEMU or the kernel cannot boot, is a
row with the reason (status ``ERROR``), never dropped. Results known to be bad
on the stock kernel are listed in :data:`EXPECTED` with the reason; they show
as ``XFAIL`` (and ``XPASS`` when they unexpectedly pass), so the table stays
honest without failing every run on a known limitation.

Pure parts (``cell_of``, ``matrix_exit_code``, ``matrix_text``,
``matrix_markdown``) work on report dicts and round-trip through JSON, so the
README table is generated from a saved ``--json`` without booting.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

from harness.drive.method import default_order
from harness.errors import HarnessError
from harness.kernel import kconfig
from harness.kernel.versions import NotApplicable
from harness.records import ERROR, FAIL, PASS, SKIP
from harness.verdict.checks import NOT_APPLICABLE

XFAIL, XPASS = "XFAIL", "XPASS"
NA = "N/A"       # cannot work on this kernel version (kernel/versions.py), with the reason
DEFAULT_METHODS = default_order()    # the methods of `run --method all` (the registry)
# (geometry, method) -> why this is known to fail on the stock 6.12 kernel.
# "*" matches every geometry or every method. Each entry names what would make
# it pass. split-leaf is not a default column: ask for it with --method.
_SPLIT = ("the upstream leaf-split bug, unfixed in 6.12 (\"arm64/mm: Reject memory "
          "removal that splits a kernel leaf mapping\", 2026): removing one block of a "
          "larger linear-map leaf unmaps online memory; passes with "
          "patches/fixes/0001-arm64-mm-reject-memory-removal-that-splits-a-leaf.patch")
EXPECTED: dict = {
    ("*", "split-leaf"): _SPLIT,
    ("64k-42", "split-leaf"): "nothing to split: with 64K pages no linear-map leaf is "
                              "larger than a 512 MiB block (the method stops with an error)",
    ("64k-48", "split-leaf"): "nothing to split: with 64K pages no linear-map leaf is "
                              "larger than a 512 MiB block (the method stops with an error)",
}
LEVEL_ORDER = ("PGD", "P4D", "PUD", "PMD", "PTE")


def geometries(config_dir: Path = kconfig.CONFIG_DIR) -> list[str]:
    """The geometry fragments, 4k first, then by VA bits."""
    names = [n for n in kconfig.available_fragments(config_dir)
             if kconfig.load_fragment(n, config_dir).geometry]

    def key(name: str) -> tuple:
        page, _, bits = name.partition("-")
        return (int(page.rstrip("k") or 0), int(bits or 0))
    return sorted(names, key=key)


@dataclass(frozen=True)
class Cell:
    geometry: str
    method: str
    verdict: str                     # PASS FAIL SKIP ERROR (the method's verdict)
    status: str                      # verdict, or XFAIL / XPASS against EXPECTED
    problems: tuple = ()             # ("check: first evidence line", ...)
    tables: dict = field(default_factory=dict)   # phase -> region -> level -> pages
    geometry_seen: dict = field(default_factory=dict)   # levels, block size, ...
    expected: str = ""               # the EXPECTED reason, when listed
    seconds: float = 0.0
    source: str = ""                 # the --kernel-src of the row, on a source axis

    @property
    def row(self) -> str:
        """The row it belongs to: its geometry, on a source axis with the source."""
        return f"{self.geometry} @{self.source}" if self.source else self.geometry

    @property
    def folder(self) -> str:
        """Its run folder, relative to the matrix's."""
        return f"{source_folder(self.source)}/{self.geometry}" if self.source \
            else self.geometry

    def to_dict(self) -> dict:
        d = asdict(self)
        d["problems"] = list(self.problems)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Cell:
        d = dict(d)
        d["problems"] = tuple(d.get("problems", ()))
        return cls(**d)


def expected_reason(geometry: str, method: str) -> str:
    return (EXPECTED.get((geometry, method)) or EXPECTED.get((geometry, "*"))
            or EXPECTED.get(("*", method)) or "")


def _status(verdict: str, reason: str) -> str:
    if not reason:
        return verdict
    return XPASS if verdict == PASS else XFAIL


def _tables(run: dict) -> dict:
    """phase -> region -> {level: table pages}, for before / online / the last
    removal (what a reader compares: back to where it started?)."""
    phases = run.get("phases") or []
    wanted = []
    names = [p["name"] for p in phases]
    for name in ("before", "online"):
        if name in names:
            wanted.append(name)
    removed = [n for n in names if n.startswith("removed-") and "@" not in n]
    if removed:
        wanted.append(removed[-1])
    out = {}
    for p in phases:
        if p["name"] in wanted and p.get("walks"):
            out[p["name"]] = {w["region"]: dict(w["tables"]) for w in p["walks"]}
    return out


def _geometry_seen(run: dict) -> dict:
    geo = run.get("geometry") or {}
    block = None
    for p in run.get("phases") or []:
        block = (p.get("blocks") or {}).get("block_size") or block
        if block:
            break
    seen = {k: geo.get(k) for k in ("granule", "va_bits", "levels", "struct_page_size",
                                      "struct_page_size_from") if geo.get(k) is not None}
    if block:
        seen["block_size"] = block
    return seen


def cell_of(geometry: str, method: dict) -> Cell:
    """One cell from a report.json method entry."""
    verdict = method.get("verdict", ERROR)
    required = set((method.get("run") or {}).get("required") or ())
    problems = []
    for c in method.get("checks", ()):
        # a SKIP matters only for a check the method needed (it then cost the PASS)
        if c["verdict"] in (FAIL, ERROR) or (c["verdict"] == SKIP and verdict != PASS
                                              and c["name"] in required
                                              and not c.get("evidence", "").startswith(
                                                  NOT_APPLICABLE)):
            first = (c.get("evidence") or "").strip().split("\n", 1)[0]
            problems.append(f"{c['name']} {c['verdict']}: {first[:160]}")
    run = method.get("run") or {}
    error = run.get("error")
    if error:
        problems.insert(0, f"run {error.get('blame', '')} error at step "
                           f"{error.get('step', '?')!r}: {error.get('message', '')[:160]}")
    reason = expected_reason(geometry, method["method"])
    seconds = round(sum(s.get("seconds", 0.0) for s in method.get("steps", ())), 1)
    return Cell(geometry, method["method"], verdict, _status(verdict, reason),
                tuple(problems), _tables(run), _geometry_seen(run), reason, seconds)


def error_cells(geometry: str, methods: Iterable[str], why: str) -> list[Cell]:
    """A geometry that could not be built or run: every cell says why."""
    return [Cell(geometry, m, ERROR, _status(ERROR, expected_reason(geometry, m)),
                 (why,), expected=expected_reason(geometry, m)) for m in methods]


def na_cells(geometry: str, methods: Iterable[str], why: str) -> list[Cell]:
    """A geometry (or method) that cannot work on the source's kernel version:
    every cell is N/A with the reason (not a failure)."""
    return [Cell(geometry, m, SKIP, NA, (why,)) for m in methods]


def source_folder(source: str) -> str:
    """A --kernel-src as a folder name: debian-6.1, a tree's or tarball's own name."""
    name = source if source.startswith("debian") else Path(source).name
    return "".join(ch if ch.isalnum() or ch in ".+-_" else "_" for ch in name) or "source"


RunFn = Callable[[tuple, tuple, Path], dict]     # (configs, methods, folder) -> report


def run_matrix(geos: Iterable[str], methods: tuple, out: Path, run_fn: RunFn,
               progress: Optional[Callable] = None, source: str = "") -> list[Cell]:
    """Build and run every geometry; a HarnessError of one geometry (build,
    boot) becomes that row's reason and the next geometry runs; a geometry the
    kernel version cannot have (NotApplicable) is a row of N/A with the reason.
    ``source``: the rows' --kernel-src on a source axis (folders
    ``out/SOURCE/GEOMETRY``; else ``out/GEOMETRY``)."""
    cells: list[Cell] = []
    say = progress or (lambda _text: None)
    tag = f" @{source}" if source else ""
    for geo in geos:
        say(f"[matrix] {geo}{tag}: build and run {', '.join(methods)}")
        folder = Cell(geo, "", "", "", source=source).folder
        try:
            report = run_fn((geo,), methods, out / folder)
        except NotApplicable as e:
            say(f"[matrix] {geo}{tag}: N/A: {e.message}")
            cells += [replace(c, source=source) for c in na_cells(geo, methods, e.message)]
            continue
        except HarnessError as e:
            why = f"{e.step or 'build'}: {e.message.splitlines()[0][:200]}"
            say(f"[matrix] {geo}{tag}: {why}")
            cells += [replace(c, source=source) for c in error_cells(geo, methods, why)]
            continue
        got = {m["method"]: m for m in report.get("methods", ())}
        row = []
        for name in methods:
            if name in got:
                row.append(cell_of(geo, got[name]))
            else:
                row += error_cells(geo, [name], "the method did not run")
        cells += [replace(c, source=source) for c in row]
        say(f"[matrix] {geo}{tag}: " + ", ".join(f"{c.method} {c.status}" for c in row))
    return cells


def matrix_exit_code(cells: Iterable[Cell]) -> int:
    """0: every cell PASS or XFAIL; 1: a kernel failed a check (unexpectedly) or
    an expected failure passed (the table must be updated); 2: a cell could not
    be judged (harness, machine)."""
    statuses = [c.status for c in cells]     # N/A: cannot work there, said why
    if any(s in (FAIL, XPASS) for s in statuses):
        return 1
    if any(s in (ERROR, SKIP) for s in statuses):
        return 2
    return 0


def _levels(tables: dict) -> str:
    """'PGD1 PUD1 PMD2 PTE4' in walk order."""
    return " ".join(f"{lv}{tables[lv]}" for lv in LEVEL_ORDER if lv in tables)


def _grid(cells: list[Cell]) -> tuple[list[str], list[str], dict]:
    """Rows (a geometry, on a source axis with its source), methods, cells."""
    geos = list(dict.fromkeys(c.row for c in cells))
    methods = list(dict.fromkeys(c.method for c in cells))
    return geos, methods, {(c.row, c.method): c for c in cells}


def _shape(cells: list[Cell], geo: str) -> str:
    na = next((c for c in cells if c.row == geo and c.status == NA), None)
    if na is not None:
        return "not applicable: " + (na.problems[0] if na.problems else "")
    seen = next((c.geometry_seen for c in cells if c.row == geo and c.geometry_seen), {})
    if not seen:
        return "not observed"
    parts = [f"{seen.get('levels', '?')} levels",
             f"{int(seen.get('granule', 0)) // 1024}K pages" if seen.get("granule") else "",
             f"block {int(seen['block_size']) >> 20} MiB" if seen.get("block_size") else "",
             f"struct page {seen['struct_page_size']} B" if seen.get("struct_page_size")
             else ""]
    return ", ".join(p for p in parts if p)


def matrix_text(cells: list[Cell]) -> str:
    geos, methods, at = _grid(cells)
    width = max([len(g) for g in geos] + [8])
    colw = max([len(m) for m in methods] + [7])
    lines = ["geometry × method", "",
             f"{'':{width}}  " + "  ".join(f"{m:{colw}}" for m in methods) + "  shape"]
    for g in geos:
        row = "  ".join(f"{at[(g, m)].status if (g, m) in at else '-':{colw}}"
                        for m in methods)
        lines.append(f"{g:{width}}  {row}  {_shape(cells, g)}")
    lines += ["", "table pages per level (host walker; Linear Mapping | vmemmap):"]
    for c in cells:
        if not c.tables:
            continue
        seq = [f"{phase}: {_levels(regions.get('Linear Mapping', {}))} | "
               f"{_levels(regions.get('vmemmap', {}))}" for phase, regions in c.tables.items()]
        lines.append(f"  {c.row} {c.method}: " + "; ".join(seq))
    notes = [c for c in cells if c.status not in (PASS, NA)]
    if notes:
        lines += ["", "not passing:"]
        for c in notes:
            lines.append(f"  {c.row} {c.method} {c.status}"
                         + (f" (expected: {c.expected})" if c.expected else ""))
            lines += [f"      {p}" for p in c.problems[:4]]
    return "\n".join(lines) + "\n"


def matrix_markdown(cells: list[Cell]) -> str:
    """The README's geometry table, from a saved --json."""
    geos, methods, at = _grid(cells)
    out = ["| geometry | shape seen by the harness | " + " | ".join(methods)
           + " | tables before → online → removed (linear map) |",
           "|---|---|" + "---|" * len(methods) + "---|"]
    for g in geos:
        marks = []
        for m in methods:
            c = at.get((g, m))
            mark = c.status if c else "-"
            if c and c.status in (FAIL, ERROR, XFAIL, XPASS, SKIP) and c.problems:
                named = [p for p in c.problems if " FAIL: " in p] or list(c.problems)
                mark += f" ({named[0].split(':', 1)[0].split(' at step ')[0]})"
            marks.append(mark)
        first = next((c for c in cells if c.row == g and c.tables), None)
        tables = " → ".join(_levels(r.get("Linear Mapping", {}))
                            for r in first.tables.values()) if first else "-"
        if first:
            tables += f" ({first.method})"
        out.append(f"| {g} | {_shape(cells, g)} | " + " | ".join(marks) + f" | {tables} |")
    reasons = sorted({(c.geometry, c.method, c.expected) for c in cells if c.expected})
    if reasons:
        out.append("")
        out += [f"- XFAIL {g} {m}: {why}" for g, m, why in reasons]
    na = dict.fromkeys((c.row, c.problems[0]) for c in cells if c.status == NA and c.problems)
    if na:
        out += ([""] if not reasons else []) + [f"- N/A {row}: {why}" for row, why in na]
    return "\n".join(out) + "\n"


def html_matrix(cells: list[Cell], folder: Optional[Path] = None) -> dict:
    """The matrix as harness.verdict.htmlreport.render_matrix's input (MATRIX_SCHEMA):
    one row per geometry, one column per method; a row links to the geometry's
    report.html when ``folder`` (where the matrix was written) holds one."""
    geos, methods, at = _grid(cells)
    rows = []
    for g in geos:
        statuses = [at[(g, m)].status for m in methods if (g, m) in at]
        worst = next((s for s in (FAIL, XPASS, ERROR, SKIP, XFAIL) if s in statuses), PASS)
        rel = next(c.folder for c in cells if c.row == g)
        link = f"{rel}/report.html" if folder and (Path(folder) / rel / "report.html").exists() \
            else ""
        cells_out = {}
        for m in methods:
            c = at.get((g, m))
            if c is None:
                continue
            first = c.problems[0] if c.problems else ""
            cells_out[m] = {"verdict": c.status, "text": first[:120],
                            "title": "\n".join(c.problems[:6]) or c.status,
                            "expected": bool(c.expected)}
        rows.append({"name": g, "status": worst, "link": link,
                     "info": {"shape": _shape(cells, g)},
                     "note": "; ".join(sorted({c.expected for c in cells
                                               if c.row == g and c.expected})),
                     "cells": cells_out})
    return {"title": "geometry × method", "row_header": "geometry",
            "subtitle": "hotplug-harness matrix: every page-table geometry fragment",
            "info_columns": ["shape"], "columns": list(methods), "rows": rows,
            "legend": "XFAIL: known to fail on the stock kernel, with the reason; "
                      "XPASS: a listed failure passed (the list is stale)"}


def to_json(cells: list[Cell]) -> dict:
    return {"cells": [c.to_dict() for c in cells], "exit_code": matrix_exit_code(cells)}


def from_json(data: dict) -> list[Cell]:
    return [Cell.from_dict(c) for c in data.get("cells", ())]
