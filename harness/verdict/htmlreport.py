"""``report.html``: the run pictured, one self-contained page made from ``report.json``.

:func:`render_report` turns a report dict (``report.json``, nothing else) into
HTML through the Jinja2 templates in ``harness/verdict/templates`` (autoescape on:
kernel output cannot inject markup). The page holds, per method:

* one inline SVG per region (``Linear Mapping``, ``vmemmap``) around the
  hot-plugged range, one lane per phase on the same address axis, so that
  "before" and "removed-N" line up: mappings by level, holes, the hot-plugged
  range (its struct pages in the vmemmap panel) outlined, and in colour with
  the address as label and hover: stale mappings of removed memory, online
  memory left unmapped, holes one level deeper than in the baseline (a table
  kept allocated) and ordering violations (a table freed while linked, or
  freed with no covering TLB invalidation after its entry was cleared);
* the walker's table pages per level per phase, a small bar chart;
* the checks table, the step timeline, the kernel splats with the console
  lines around them (``console_context``, saved into report.json when the run
  is written, see :func:`console_context`).

:func:`render_matrix` draws any rows x columns verdict matrix given as JSON
(:data:`MATRIX_SCHEMA`); :func:`repro_matrix` converts ``repro``'s
``matrix.json`` into it. Nothing here needs a network or a script at view time.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Optional

from harness.inspect import ptdump
from harness.inspect.walker import leaves_covering_va
from harness.records import ERROR, FAIL, MethodRun, Phase
from harness.verdict import checks as rules
from harness.verdict import repro

REPORT_HTML, MATRIX_HTML = "report.html", "matrix.html"
TEMPLATES = Path(__file__).with_name("templates")
PLOT_W, LABEL_W, RIGHT_W, LANE_H, LANE_GAP, AXIS_H = 760, 96, 104, 18, 7, 30
GIB = 1 << 30
_ALERT_WORDS = {"stale": "✗ stale", "unmapped": "✗ unmapped", "kept": "✗ table kept",
                "order": "✗ order"}
CONTEXT_LINES = 8          # console lines kept before and after a splat
MAX_SPLATS = 4             # splats shown in full per method (the rest listed)
MAX_DETAIL = 1500          # characters of a step's detail kept in the page
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]")

MATRIX_SCHEMA = """\
{"title": str, "subtitle": str?, "row_header": str?,      # "kernel", "geometry"
 "info_columns": [str]?,                                  # shown before the cells
 "columns": [str | {"name": str, "title": str?}],         # one per cell column
 "rows": [{"name": str, "status": str?, "tone": str?,     # tone: good bad error neutral
           "info": {column: str}?, "note": str?, "link": str?,   # link: a relative URL
           "cells": {column: {"verdict": str, "text": str?, "title": str?,
                              "expected": bool?, "tone": str?}}}],
 "legend": str?, "footer": str?}"""


# ---------------------------------------------------------------- jinja

def _env():
    import jinja2
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["hexa"] = lambda n: f"0x{n:x}"
    env.filters["clean"] = clean_text
    env.filters["tone"] = tone
    return env


def clean_text(text) -> str:
    """Console text for display: no control characters or colour escapes."""
    return _CONTROL.sub("", str(text if text is not None else "")).rstrip()


def tone(verdict: str) -> str:
    """CSS tone of a verdict or status word."""
    v = str(verdict or "").strip().lower()
    if v in ("pass", "clean", "caught", "ok"):
        return "good"
    if v in ("fail", "missed", "clean failed"):
        return "bad"
    if v in ("error", "err"):
        return "error"
    return "neutral"


# ---------------------------------------------------------------- geometry helpers

def _span(a: int, b: int) -> str:
    return f"0x{a:x}-0x{b:x}"


def _size(n: int) -> str:
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return f"{n}B" if n < 1024 else f"{n / 1024:.0f}K"


def _ticks(lo: int, hi: int) -> list[int]:
    """Round addresses between lo and hi, 3 to 9 of them."""
    step = 1 << max(12, (hi - lo).bit_length() - 3)
    while (hi - lo) // step > 8:
        step <<= 1
    first = -(-lo // step) * step
    return list(range(first, hi + 1, step))


def hot_ranges(run: MethodRun) -> list[tuple[int, int]]:
    """PA ranges hot-plugged in the run: blocks absent before, present later,
    and every removed range."""
    size = rules._block_size(run)
    before = run.phase("before")
    boot = set(before.blocks.indices) if before else set()
    found = [(r.pa_start, r.pa_end) for r in run.removals]
    if size:
        found += [(b.phys_start(size), b.phys_end(size)) for p in run.phases
                  for b in p.blocks.blocks if b.index not in boot]
    return rules.coalesce(found)


def _window(hot: list[tuple[int, int]], memstart: int) -> tuple[int, int]:
    """PA window: the hot range widened to whole GiBs and one more GiB each side."""
    lo = max(min(a for a, _ in hot) // GIB * GIB - GIB, memstart // GIB * GIB)
    hi = -(-max(b for _, b in hot) // GIB) * GIB + GIB
    return lo, hi


# ---------------------------------------------------------------- lanes

class _Axis:
    def __init__(self, lo: int, hi: int):
        self.lo, self.hi = lo, hi

    def x(self, addr: int) -> float:
        addr = min(max(addr, self.lo), self.hi)
        return round(LABEL_W + (addr - self.lo) * PLOT_W / (self.hi - self.lo), 2)

    def rect(self, start: int, end: int, cls: str, title: str, label: str = "") -> dict:
        x0, x1 = self.x(start), self.x(end)
        return {"x": x0, "w": round(max(x1 - x0, 1.0), 2), "cls": cls, "title": title,
                "label": label}


def _entries(phase: Phase, region: str, lo: int, hi: int) -> Optional[list]:
    """(start, end, level, state) in [lo, hi): ptdump, else the walker's leaves;
    None when the phase recorded neither for this region."""
    if phase.ptdump is not None and region in phase.ptdump.regions:
        return [(e.start, e.end, e.level, "map" if e.is_valid else
                 ("hole" if e.is_hole else "inval"))
                for e in phase.ptdump.regions[region].entries if e.overlaps(lo, hi)]
    walks = [w for w in phase.walks if w.region == region]
    if not walks:
        return None
    return [(x.va_start, x.va_end, x.level, "map") for w in walks
            for x in leaves_covering_va(w, lo, hi)]


def _removed_at(run: MethodRun, index: int, phase: Phase) -> list[tuple[int, int]]:
    """PA removed by this phase and not plugged back (cycles re-add it)."""
    names = [p.name for p in run.phases]
    size = rules._block_size(run) or 0
    back = [(b.phys_start(size), b.phys_end(size)) for b in phase.blocks.blocks] if size else []
    gone = [(r.pa_start, r.pa_end) for r in run.removals
            if r.phase in names and names.index(r.phase) <= index]
    return rules.subtract(gone, back)


def _deeper_holes(base: Phase, phase: Phase, region: str) -> list:
    """Holes now one level deeper than the baseline's hole at the same VA."""
    if base.ptdump is None or phase.ptdump is None or region not in phase.ptdump.regions \
            or region not in base.ptdump.regions:
        return []
    old = set(base.ptdump.regions[region].entries)
    out = []
    for hole in phase.ptdump.regions[region].entries:
        if not hole.is_hole or hole in old:
            continue
        was = ptdump.entry_at(base.ptdump, hole.start)
        if was is not None and was.is_hole and \
                ptdump.LEVELS.index(hole.level) > ptdump.LEVELS.index(was.level):
            out.append((hole, was))
    return out


def _order_marks(run: MethodRun) -> dict:
    """step -> [(va, span, level, what)]: pages freed while linked, and what
    the flush rules count as violations (harness.inspect.order's own marks)."""
    from harness.inspect import order
    out: dict = {}
    for rec in run.order:
        events = [order.event_from_dict(dict(d)) for d in rec.events]
        events = [e for e in events if e is not None]
        marks = out.setdefault(rec.step, [])
        for e in events:
            if isinstance(e, order.Free):
                marks += [(l.va, l.span, l.level, f"PA 0x{e.pa:x} freed while linked from "
                           f"this {l.level} entry ({e.caller or hex(e.lr)})")
                          for l in e.linked]
        if rec.get("flush_check"):
            for rule in (order.check_tlb_flushed_before_free,
                         order.check_leaf_flushed_before_free):
                marks += list(rule(events, rec.step).marks)
    return out


def _phase_of_step(run: MethodRun, step: str) -> str:
    for p in run.phases:
        if rules.phase_step(run, p.name) == step:
            return p.name
    return run.phases[-1].name if run.phases else ""


class _Panel:
    """One region of one method: the axis and what each phase's lane shows."""

    def __init__(self, run: MethodRun, region: str, pa_lo: int, pa_hi: int,
                 to_va, hot: list, marks: dict):
        self.run, self.region, self.to_va = run, region, to_va
        self.lo, self.hi = to_va(pa_lo, pa_hi)
        self.axis = _Axis(self.lo, self.hi)
        self.hot = [to_va(a, b) for a, b in hot]
        self.marks = marks
        self.baselines = {r.phase: r.baseline for r in run.removals if r.baseline}

    @property
    def off(self) -> int:
        """The linear map's VA - PA (method_figures draws nothing without it)."""
        off = self.run.geometry.linear_offset
        assert off is not None
        return off

    def lanes(self) -> list[dict]:
        before = self.run.phase("before")
        base = _entries(before, self.region, self.lo, self.hi) if before else None
        return [self.lane(i, p, base) for i, p in enumerate(self.run.phases)]

    def lane(self, index: int, phase: Phase, base) -> dict:
        found = _entries(phase, self.region, self.lo, self.hi)
        lane = {"phase": phase.name, "rects": [], "alerts": [], "marks": [],
                "status": "", "status_tone": "neutral", "source": "ptdump"}
        if found is None:
            lane["status"] = "not recorded"
            return lane
        if phase.ptdump is None or self.region not in phase.ptdump.regions:
            lane["source"] = "walker"
        ax = self.axis
        for start, end, level, state in found:
            what = {"map": "mapped", "hole": "hole", "inval": "invalid (valid bit clear)"}
            lane["rects"].append(ax.rect(start, end, f"{state} {level}" if state == "map"
                                         else state,
                                         f"{level} {what[state]} VA {_span(start, end)} "
                                         f"({_size(end - start)})" + self._pa_text(start, end)))
        self._alerts(index, phase, found, lane)
        self._status(phase, found, base, lane)
        return lane

    def _pa_text(self, start: int, end: int) -> str:
        if self.region != rules.LINEAR:
            return ""
        off = self.off
        return f", PA {_span(start - off, end - off)}"

    def _alerts(self, index: int, phase: Phase, found: list, lane: dict) -> None:
        ax, alerts = self.axis, lane["alerts"]
        mapped = [(s, e) for s, e, _, st in found if st == "map"]
        for pa_a, pa_b in _removed_at(self.run, index, phase):
            va_a, va_b = self.to_va(pa_a, pa_b)
            for a, b in rules.clip(mapped, va_a, va_b):
                alerts.append(ax.rect(a, b, "stale", f"STALE: VA {_span(a, b)} still mapped "
                                      f"after PA {_span(pa_a, pa_b)} was removed",
                                      f"stale 0x{a:x}"))
        if self.region == rules.LINEAR:
            for a, b in self._unmapped_online(phase, mapped):
                alerts.append(ax.rect(a, b, "unmapped", f"UNMAPPED: online memory VA "
                                      f"{_span(a, b)} has no mapping",
                                      f"unmapped 0x{a:x}"))
        base = self.run.phase(self.baselines.get(phase.name, ""))
        for hole, was in (_deeper_holes(base, phase, self.region) if base else ()):
            alerts.append(ax.rect(hole.start, hole.end, "kept",
                                  f"TABLE KEPT: hole VA {_span(hole.start, hole.end)} at "
                                  f"{hole.level} level, {was.level} in {base.name}: a "
                                  f"{hole.level} table stayed allocated",
                                  f"{hole.level} table kept 0x{hole.start:x}"))
        for step, marks in self.marks.items():
            if _phase_of_step(self.run, step) != phase.name:
                continue
            for va, span, level, what in marks:
                if va < self.hi and self.lo < va + span:
                    lane["marks"].append({"x": ax.x(va), "title": f"ORDER: {level} entry "
                                          f"VA {_span(va, va + span)}: {what} (step {step})",
                                          "label": f"0x{va:x}"})

    def _unmapped_online(self, phase: Phase, mapped: list) -> list:
        size = rules._block_size(self.run)
        if not size:
            return []
        online = [(b.phys_start(size), b.phys_end(size))
                  for b in phase.blocks.with_state("online")]
        want = [self.to_va(a, b) for a, b in rules.clip_to(online, self.hot_pa())]
        return rules.subtract(want, mapped)

    def hot_pa(self) -> list:
        off = self.off
        return [(a - off, b - off) for a, b in self.hot]

    def _status(self, phase: Phase, found: list, base, lane: dict) -> None:
        same = base is not None and found == base
        baseline = self.baselines.get(phase.name)
        if phase.name == "before":
            lane["status"] = "baseline"
        elif baseline:
            lane["status"] = "= " + baseline if same else "≠ " + baseline
            lane["status_tone"] = "good" if same else "bad"
        else:
            lane["status"] = "= before" if same else "changed"
        kinds = [a["cls"] for a in lane["alerts"]] + ["order"] * bool(lane["marks"])
        if kinds:
            lane["status"] = ", ".join(dict.fromkeys(_ALERT_WORDS[k] for k in kinds))
            lane["status_tone"] = "bad"

    def figure(self) -> dict:
        lanes = self.lanes()
        height = AXIS_H + len(lanes) * (LANE_H + LANE_GAP) + 4
        for i, lane in enumerate(lanes):
            lane["y"] = AXIS_H + i * (LANE_H + LANE_GAP)
        hot = [self.axis.rect(a, b, "hot", f"hot-plugged: VA {_span(a, b)}"
                              + self._pa_text(a, b)) for a, b in self.hot]
        ticks = [{"x": self.axis.x(t), "label": self._tick_label(t)}
                 for t in _ticks(self.lo, self.hi)]
        alerts = sum(len(l["alerts"]) + len(l["marks"]) for l in lanes)
        return {"region": self.region, "lanes": lanes, "hot": hot, "ticks": ticks,
                "width": LABEL_W + PLOT_W + RIGHT_W, "height": height,
                "plot_x": LABEL_W, "plot_w": PLOT_W, "lane_h": LANE_H, "alerts": alerts,
                "range": f"VA {_span(self.lo, self.hi)}" + self._pa_text(self.lo, self.hi),
                "axis_note": "PA" if self.region == rules.LINEAR else "VA"}

    def _tick_label(self, va: int) -> str:
        if self.region == rules.LINEAR:
            return _size(va - self.off) if va != self.off else "0"
        return f"…{va & 0xffffffffff:x}"


def method_figures(run: MethodRun) -> tuple[list, str]:
    """(figures, note): one figure per region, or a note saying why none."""
    geo = run.geometry
    hot = hot_ranges(run)
    if not run.phases:
        return [], "no phase recorded"
    if not hot:
        return [], "no hot-plugged range recorded (the run stopped before the add?)"
    if geo.linear_offset is None:
        return [], "geometry lacks linear_offset: nothing to place on an axis"
    off = geo.linear_offset
    pa_lo, pa_hi = _window(hot, geo.memstart or 0)
    marks = _order_marks(run)
    figures = [_Panel(run, rules.LINEAR, pa_lo, pa_hi,
                      lambda a, b: (a + off, b + off), hot, marks).figure()]
    try:
        rules.struct_page_range(run, pa_lo, pa_hi)
    except rules._Skip as why:
        return figures, f"no vmemmap picture: {why}"
    figures.append(_Panel(run, rules.VMEMMAP, pa_lo, pa_hi,
                          lambda a, b: rules.struct_page_range(run, a, b), hot,
                          marks).figure())
    return figures, ""


# ---------------------------------------------------------------- walker chart

EMPTY = "empty"


def walker_chart(run: MethodRun) -> Optional[dict]:
    """Table pages per level per phase, per region (and the empty ones, when a
    phase has any); bars that differ from 'before' are flagged."""
    walked = [p for p in run.phases if p.walks]
    if not walked:
        return None
    groups, bar_w, gap = [], 12, 14
    x = 0
    for region in rules.REGIONS:
        levels = [lv for lv in ptdump.LEVELS
                  if any(lv in w.tables for p in walked for w in p.walks if w.region == region)]
        if any(w.empty_tables for p in walked for w in p.walks if w.region == region):
            levels.append(EMPTY)     # all-zero tables: ones the kernel should have freed
        for level in levels:
            values = []
            for p in walked:
                w = next((w for w in p.walks if w.region == region), None)
                count = None if w is None else (
                    w.empty_tables if level == EMPTY else w.tables.get(level))
                values.append((p.name, count))
            base = values[0][1] if walked[0].name == "before" else None
            groups.append({"region": region, "level": level, "x": x, "values": [
                {"phase": n, "value": v, "differs": base is not None and v is not None
                 and v != base} for n, v in values]})
            x += max(len(values) * bar_w, 44) + gap     # room for the labels
    top = max([v["value"] or 0 for g in groups for v in g["values"]] + [1])
    for g in groups:
        for i, v in enumerate(g["values"]):
            v["x"] = g["x"] + i * bar_w
            v["h"] = round(40 * (v["value"] or 0) / top, 1) if v["value"] else 0
    return {"groups": groups, "width": max(x, 100), "bar_w": bar_w - 2,
            "phases": [p.name for p in walked],
            "empty": any(g["level"] == EMPTY for g in groups)}


# ---------------------------------------------------------------- splats

def console_context(folder: Path, run: MethodRun,
                    lines: int = CONTEXT_LINES) -> list[dict]:
    """The console lines around each crash of ``run``, read from
    ``folder/console.log`` (line numbers as ``first_line_no``); [] without one."""
    log = Path(folder) / "console.log"
    if not run.crashes or not log.is_file():
        return []
    text = log.read_bytes().decode("utf-8", "replace").splitlines()
    out = []
    for crash in run.crashes[:MAX_SPLATS]:
        first = crash.first_line_no
        if not first:
            continue
        last = first + len(crash.lines) - 1
        lo, hi = max(1, first - lines), min(len(text), last + lines)
        out.append({"first_line_no": first, "start": lo,
                    "lines": [clean_text(t) for t in text[lo - 1:hi]]})
    return out


def _splats(run: MethodRun, context: list) -> list[dict]:
    ctx = {c["first_line_no"]: c for c in context}
    out = []
    for crash in run.crashes[:MAX_SPLATS]:
        c = ctx.get(crash.first_line_no)
        first = crash.first_line_no or 0
        span = range(first, first + len(crash.lines))
        around = [{"no": c["start"] + i, "text": t, "in": c["start"] + i in span}
                  for i, t in enumerate(c["lines"])] if c else []
        out.append({**crash.to_dict(), "line": rules.crash_line(crash), "around": around})
    return out


# ---------------------------------------------------------------- the page

def _method_view(method: dict, context: dict) -> dict:
    run = MethodRun.from_dict(method["run"])
    try:
        figures, note = method_figures(run)
    except Exception as exc:     # a picture must not take the checks table with it
        figures, note = [], f"picture not drawn ({type(exc).__name__}: {exc}): a harness bug"
    total = sum(s["seconds"] for s in method["steps"]) or 1.0
    steps = []
    for s in run.steps:
        detail = s.detail if len(s.detail) <= MAX_DETAIL else (
            s.detail[:MAX_DETAIL] + f"\n... ({len(s.detail) - MAX_DETAIL} more characters "
            "in report.json)")
        steps.append({"name": s.name, "seconds": s.seconds, "transport": s.transport,
                      "ok": s.ok, "detail": clean_text(detail),
                      "w": round(100 * s.seconds / total, 2)})
    checks = []
    for c in method["checks"]:
        head, _, rest = (c.get("evidence") or "").partition("\n")
        checks.append({**c, "head": head, "rest": rest})
    geo = run.geometry
    return {"name": method["method"], "verdict": method["verdict"], "figures": figures,
            "note": note, "chart": walker_chart(run), "checks": checks, "steps": steps,
            "seconds": sum(s["seconds"] for s in method["steps"]),
            "error": run.error.to_dict() if run.error else None,
            "notes": list(run.notes),
            "splats": _splats(run, context.get(method["method"], [])),
            "more_splats": max(0, len(run.crashes) - MAX_SPLATS),
            "geometry": {"granule": geo.granule, "va_bits": geo.va_bits,
                         "levels": geo.levels},
            "removals": [{"phase": r.phase, "range": _span(r.pa_start, r.pa_end),
                          "baseline": r.baseline} for r in run.removals],
            "options": {k: ("on" if v is True else "off" if v is False else v)
                        for k, v in run.options.to_dict().items()}}


def render_report(report: dict, title: str = "") -> str:
    """The whole page for one report dict (report.json)."""
    kernel = report.get("kernel") or {}
    patches = [p if isinstance(p, (list, tuple)) else [str(p), ""]
               for p in kernel.get("patches") or ()]
    methods = [_method_view(m, report.get("console_context") or {})
               for m in report.get("methods", ())]
    return _env().get_template("report.html.j2").render(
        title=title or f"hotplug-harness: {report.get('verdict', '?')}",
        report=report, kernel=kernel, patches=patches, methods=methods,
        generated=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))


def write_report_html(folder: Path, report: Optional[dict] = None) -> Path:
    """Write ``folder/report.html`` from ``report`` (default: folder/report.json)."""
    folder = Path(folder)
    if report is None:
        report = json.loads((folder / "report.json").read_text())
    path = folder / REPORT_HTML
    path.write_text(render_report(report, f"hotplug-harness: {folder.name}: "
                                          f"{report.get('verdict', '?')}"))
    return path


# ---------------------------------------------------------------- matrices

def _column(c) -> dict:
    return {"name": c, "title": c} if isinstance(c, str) else \
        {"name": c["name"], "title": c.get("title", c["name"])}


def render_matrix(matrix: dict) -> str:
    """A rows x columns verdict matrix (any source: repro, a geometry matrix)
    as a self-contained HTML page. ``matrix`` follows :data:`MATRIX_SCHEMA`."""
    columns = [_column(c) for c in matrix.get("columns", ())]
    rows = []
    for r in matrix.get("rows", ()):
        cells = []
        for c in columns:
            cell = (r.get("cells") or {}).get(c["name"])
            cells.append(None if cell is None else {
                "verdict": cell.get("verdict", ""), "text": cell.get("text", ""),
                "title": cell.get("title", ""), "expected": bool(cell.get("expected")),
                "tone": cell.get("tone") or tone(cell.get("verdict", ""))})
        rows.append({"name": r.get("name", ""), "status": r.get("status", ""),
                     "link": r.get("link", ""), "tone": r.get("tone") or tone(r.get("status", "")),
                     "info": r.get("info") or {}, "note": r.get("note", ""),
                     "cells": cells})
    return _env().get_template("matrix.html.j2").render(
        title=matrix.get("title", "matrix"), subtitle=matrix.get("subtitle", ""),
        row_header=matrix.get("row_header", ""), info_columns=matrix.get("info_columns", []),
        columns=columns, rows=rows, legend=matrix.get("legend", ""),
        footer=matrix.get("footer", ""))


def repro_matrix(data: dict, folder: Optional[Path] = None) -> dict:
    """``repro``'s matrix.json as a :func:`render_matrix` input: one row per
    kernel, one column per check expected or seen failing. With ``folder``
    (where the matrix was written), a row whose run folder holds a report.html
    links to it."""
    rows_in = data.get("rows", ())
    wanted = [n for r in rows_in for n in r.get("expect", ())]
    failed = [n for r in rows_in for n, c in (r.get("cells") or {}).items()
              if c.get("verdict") in (FAIL, ERROR)]
    columns = list(dict.fromkeys(wanted + failed))
    rows = []
    for r in rows_in:
        run = ", ".join(r.get("methods", ()))
        run += "".join(f" --config {c}" for c in r.get("configs", ()))
        run += "".join(f" {a}" for a in r.get("append", ()))
        cells = {}
        for n in columns:
            c = (r.get("cells") or {}).get(n)
            if c is not None:
                cells[n] = {"verdict": c.get("verdict", ""), "expected": n in r.get("expect", ()),
                            "title": f"{c.get('method', '')}: {c.get('evidence', '')}"}
        note = r.get("error") or (f"not expected to be caught: {r['why']}" if r.get("why")
                                  else "")
        sub = repro.run_folder(r)
        page = Path(folder) / sub / REPORT_HTML if folder else None
        rows.append({"name": r.get("name", ""), "status": r.get("status", ""),
                     "link": f"{sub}/{REPORT_HTML}" if page and page.is_file() else "",
                     "info": {"review point": r.get("point", ""), "run with": run,
                              "seconds": str(r.get("seconds", ""))},
                     "note": note, "cells": cells})
    code = data.get("exit_code")
    return {"title": "Detection matrix: seeded regressions x checks",
            "subtitle": f"exit {code}: " + ("every expected regression caught, every clean "
                                            "kernel passed" if code == 0 else
                                            "see MISSED / CLEAN FAILED / ERROR"),
            "row_header": "kernel", "info_columns": ["review point", "run with", "seconds"],
            "columns": columns, "rows": rows,
            "legend": "a ringed cell is a check the regression is expected to FAIL; "
                      "hover a cell for its evidence"}


def write_matrix_html(path: Path, matrix: dict) -> Path:
    path = Path(path)
    path.write_text(render_matrix(matrix))
    return path

