"""Tests for harness.verdict.htmlreport: report.html and the matrix pages.

The inputs are recorded runs (tests/data/README): the default kernel's
acpi-dimm, probe, virtio-mem and kselftest runs (clean), and acpi-dimm runs of
seeded regressions (0001 tables kept, 0003 stale vmemmap, the whole report
folder of 0002 with its splats). The browser test renders pages in Debian's
headless Chromium, screenshots them and checks pixels of the expected colours
and the DOM Chromium built.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import time
import zlib
from pathlib import Path

import pytest

from harness import cli
from harness.records import MethodRun
from harness.verdict import htmlreport, report, repro

DATA = Path(__file__).parent / "data"
CLEAN = [DATA / "recorded-4k-48-acpi-dimm" / "methodrun.json",
         DATA / "recorded-4k-48-probe" / "probe.json",
         DATA / "recorded-4k-48-virtio-mem" / "virtio-mem.json",
         DATA / "recorded-4k-48-kselftest.json"]
STALE_VMEMMAP = DATA / "recorded-repro" / "acpi-dimm-0003-stale-vmemmap.json"
TABLES_KEPT = DATA / "recorded-repro" / "acpi-dimm-0001-leak-linear-map-tables.json"
SPLAT_RUN = DATA / "recorded-run-0002-stale-linear-map"
KERNEL = {"release": "6.12.117", "source": "tarball:/usr/src/linux-source-6.12.tar.xz",
          "fragments": ["base", "4k-48"], "patches": [["0001-x.patch", "ab" * 32]],
          "config_digest": "cd" * 32, "cache_key": "ef" * 32}
HOSTILE = '<script>alert("pwned")</script><img src=x onerror=alert(1)>&amp;'


def runs_of(*paths: Path) -> list[MethodRun]:
    return [MethodRun.from_dict(json.loads(p.read_text())) for p in paths]


def report_of(*paths: Path) -> dict:
    return report.build_report(KERNEL, runs_of(*paths))


def figure(page: str, region: str, index: int = 1) -> str:
    """The SVG of ``region`` for the method numbered ``index`` (from 1)."""
    found = re.findall(r'<svg class="region" id="fig-(\d+)-\d+" data-region="([^"]+)".*?</svg>',
                       page, re.S)
    assert (str(index), region) in found, found
    return re.search(rf'<svg class="region" id="fig-{index}-\d+" data-region="{region}"'
                     r'.*?</svg>', page, re.S).group(0)


def lane(svg: str, phase: str) -> str:
    return re.search(rf'<g [^>]*data-phase="{phase}">.*?</g>', svg, re.S).group(0)


# ---------------------------------------------------------------- the pictures

def test_clean_run_pictured_and_back_to_before():
    page = htmlreport.render_report(report_of(CLEAN[0]))
    for region in ("Linear Mapping", "vmemmap"):
        svg = figure(page, region)
        assert 'data-alerts="0"' in svg
        assert [m for m in re.findall(r'data-phase="([^"]+)"', svg)] == \
            ["before", "added", "online", "removed-1", "removed-2"]
        # the hot-plugged DIMMs (PA 0x80000000-0xc0000000) outlined in every lane
        assert svg.count('class="hot"') == 5
        assert "= before" in lane(svg, "removed-2")
        assert not re.search(r'class="(stale|kept|unmapped)"', svg)
    lm = figure(page, "Linear Mapping")
    assert 'class="map PMD"' in lane(lm, "online")      # the DIMMs as PMD blocks
    assert "PA 0x80000000-0xc0000000" in lm              # hover names the PA range


def test_stale_vmemmap_is_red_with_its_address_in_the_phase_that_shows_it():
    page = htmlreport.render_report(report_of(STALE_VMEMMAP))
    vmemmap = figure(page, "vmemmap")
    for phase in ("removed-1", "removed-2"):
        assert 'class="stale"' in lane(vmemmap, phase)
    assert "stale 0xfffffdffc2000000" in lane(vmemmap, "removed-1")
    assert 'class="stale"' not in lane(vmemmap, "online")
    assert "✗ stale" in lane(vmemmap, "removed-2")
    assert 'data-alerts="0"' in figure(page, "Linear Mapping")


def test_a_stale_linear_map_is_red_in_the_linear_mapping_panel():
    """Derived from the clean run: removed-2 given online's dump (leaves never
    cleared); 0002, the seeded stale linear map, oopses inside the removal, so
    its run records no phase after it."""
    run = runs_of(CLEAN[0])[0]
    online = run.phase("online")
    phases = tuple(p if p.name != "removed-2" else
                   type(p)(**{**p.__dict__, "ptdump": online.ptdump, "walks": ()})
                   for p in run.phases)
    page = htmlreport.render_report(report.build_report(KERNEL, [type(run)(
        **{**run.__dict__, "phases": phases})]))
    lm = figure(page, "Linear Mapping")
    assert "stale 0xffff000080000000" in lane(lm, "removed-2")
    assert "still mapped after PA 0x80000000-0xc0000000 was removed" in lane(lm, "removed-2")
    assert 'class="stale"' not in lane(lm, "removed-1")
    assert "✗ stale" in lane(lm, "removed-2")


def test_cycles_plugging_the_range_back_is_not_stale():
    """Phases as --cycles 2 names them (checked on a real run: cycle-1, added@2,
    ..., removed-2@2, cycle-2), built from the recorded clean run: after the
    re-add the range is mapped again, which is no stale mapping."""
    run = runs_of(CLEAN[0])[0]
    again = tuple(type(p)(**{**p.__dict__, "name": f"{p.name}@2"})
                  for p in run.phases if p.name != "before")
    removals = run.removals + tuple(type(r)(**{**r.__dict__, "phase": f"{r.phase}@2"})
                                    for r in run.removals)
    run = type(run)(**{**run.__dict__, "phases": run.phases + again, "removals": removals})
    page = htmlreport.render_report(report.build_report(KERNEL, [run]))
    for region in ("Linear Mapping", "vmemmap"):
        svg = figure(page, region)
        assert 'data-alerts="0"' in svg
        assert "= before" in lane(svg, "removed-2@2")
        assert 'class="map PMD"' in lane(svg, "online@2")


def test_a_kept_table_is_marked_where_the_hole_went_one_level_deeper():
    page = htmlreport.render_report(report_of(TABLES_KEPT))
    lm = lane(figure(page, "Linear Mapping"), "removed-2")
    assert 'class="kept"' in lm
    assert "PMD table kept 0xffff000080000000" in lm
    assert "✗ table kept" in lm


def test_online_memory_left_unmapped_is_marked():
    run = runs_of(CLEAN[0])[0]
    online = run.phase("online")
    entries = tuple(e for e in online.ptdump.regions["Linear Mapping"].entries
                    if not (e.start <= run.geometry["linear_offset"] + 0x90000000 < e.end))
    regions = dict(online.ptdump.regions)
    regions["Linear Mapping"] = type(regions["Linear Mapping"])("Linear Mapping", entries)
    phases = tuple(p if p.name != "online" else
                   type(p)(**{**p.__dict__, "ptdump": type(p.ptdump)(regions), "walks": ()})
                   for p in run.phases)
    page = htmlreport.render_report(report.build_report(KERNEL, [type(run)(
        **{**run.__dict__, "phases": phases})]))
    assert 'class="unmapped"' in lane(figure(page, "Linear Mapping"), "online")


def test_order_violations_are_marked_on_the_removal_phase():
    run = runs_of(CLEAN[1])[0]          # probe: removed-1 after "remove 0x80000000"
    step = next(s.name for s in run.steps if s.name.startswith("remove "))
    va = run.geometry["linear_offset"] + 0x80000000
    link = {"table_pa": "0x4321000", "entry_pa": "0x4000000", "va": hex(va),
            "span": "0x200000", "level": "PMD"}
    events = [{"kind": "free", "seq": 1, "step": step, "fn": "free_pages", "arg": "0x0",
               "pa": "0x4321000", "order": 0, "page_size": 4096, "lr": "0x0",
               "caller": "free_empty_pte_table", "linked": [link]}]
    run = type(run)(**{**run.__dict__, "order": ({"step": step, "events": events},)})
    page = htmlreport.render_report(report.build_report(KERNEL, [run]))
    lm = figure(page, "Linear Mapping")
    phase = next(p.name for p in run.phases if p.name.startswith("removed"))
    assert 'class="mk"' in lane(lm, phase)
    assert "PA 0x4321000 freed while linked" in lane(lm, phase)
    assert f"order VA 0x{va:x}<title>" in lane(lm, phase)


RECORDED_ALERTS = {       # every recorded run: (Linear Mapping, vmemmap) marks
    "recorded-4k-48-acpi-dimm/methodrun.json": (0, 0),
    "recorded-4k-48-probe/probe.json": (0, 0),
    "recorded-4k-48-virtio-mem/virtio-mem.json": (0, 0),
    "recorded-4k-48-kselftest.json": (0, 0),
    "recorded-64k-42/acpi-dimm.json": (0, 0),
    "recorded-64k-42/probe.json": (0, 0),
    "recorded-64k-42/virtio-mem.json": (0, 0),
    "recorded-64k-42/kselftest.json": (0, 0),
    "recorded-repro/acpi-dimm-0001-leak-linear-map-tables.json": (1, 0),
    "recorded-repro/acpi-dimm-0002-stale-linear-map.json": (0, 0),     # oops in the remove
    "recorded-repro/acpi-dimm-0003-stale-vmemmap.json": (0, 2),
    "recorded-repro/acpi-dimm-0004-over-remove-linear-map.json": (0, 0),   # oops
    "recorded-run-0002-stale-linear-map/report.json": (0, 0),
    "recorded-run-0004-over-remove-linear-map/report.json": (1, 0),    # dimm2 unmapped
}


@pytest.mark.parametrize("name", sorted(RECORDED_ALERTS))
def test_every_recorded_run_is_pictured(name):
    data = json.loads((DATA / name).read_text())
    if "methods" not in data:
        data = report.build_report(KERNEL, [MethodRun.from_dict(data)])
    page = htmlreport.render_report(data)
    marks = tuple(int(n) for n in re.findall(r'data-alerts="(\d+)"', page))
    assert marks == RECORDED_ALERTS[name]
    if name.startswith("recorded-run-0004"):
        assert "✗ unmapped" in lane(figure(page, "Linear Mapping"), "removed-1")


@pytest.mark.parametrize("name", ["order-clean-rodata-full.jsonl",
                                  "order-free-before-clear-rodata-full.jsonl",
                                  "order-no-flush-rodata-full.jsonl"])
def test_recorded_order_events_are_marked_as_the_checks_count_them(name):
    """gdb's recorded events of a real removal (tests/data/README), placed on the
    recorded probe run of the same geometry: one mark per violation the
    ordering checks count, on removed-1."""
    from harness.inspect import order
    lines = (DATA / name).read_text().splitlines()
    events = order.events_from_lines(lines)
    step = "remove 0x80000000"
    linked = order.check_no_table_freed_while_linked(events, step).counts.get("linked", 0)
    unflushed = order.check_tlb_flushed_before_free(events, step).counts.get("violations", 0)
    run = runs_of(CLEAN[1])[0]
    rec = {"step": step, "flush_check": True, "events": [e.to_dict() for e in events]}
    page = htmlreport.render_report(report.build_report(
        KERNEL, [type(run)(**{**run.__dict__, "order": (rec,)})]))
    titles = re.findall(r'<path class="mk"[^>]*><title>([^<]*)</title>',
                        lane(figure(page, "Linear Mapping"), "removed-1"))
    assert sum("freed while linked" in x for x in titles) == sum(
        len(e.linked) for e in events if isinstance(e, order.Free))
    assert sum("not flushed:" in x for x in titles) == unflushed
    assert bool(titles) == bool(linked or unflushed)
    if name.startswith("order-clean"):
        assert 'class="mk"' not in page


def test_walker_chart_flags_counts_that_differ_from_before():
    page = htmlreport.render_report(report_of(TABLES_KEPT))
    chart = re.search(r'<svg class="chart".*?</svg>', page, re.S).group(0)
    assert 'class="bar differs"' in chart
    assert "Linear Mapping PMD tables in removed-2: 2" in chart
    assert "Linear Mapping empty tables in removed-2: 1" in chart    # the kept PMD table
    assert "vmemmap empty" not in chart


# ---------------------------------------------------------------- the rest of the page

def test_checks_steps_kernel_and_splats_from_a_recorded_report_folder():
    data = json.loads((SPLAT_RUN / "report.json").read_text())
    page = htmlreport.render_report(data)
    checks = re.search(r'<table class="checks".*?</table>', page, re.S).group(0)
    for c in data["methods"][0]["checks"]:
        assert c["name"] in checks
    assert '<span class="badge bad">FAIL</span>' in checks
    assert 'href="#s-1-remove_dimm1"' in checks and 'id="s-1-remove_dimm1"' in page
    assert "0002-stale-linear-map.patch" in page and "b813217a2e445e92" in page
    assert data["kernel"]["config_digest"] in page
    assert "WARNING: CPU: 0 PID: 33 at arch/arm64/mm/mmu.c:1066" in page
    assert "free_empty_tables+0x15c/0x400 ← __remove_pgd_mapping" in page
    assert "Unable to handle kernel paging request at virtual address fffffdffc2000000" in page
    assert "more kernel reports" not in page          # 2 splats: both shown in full


def test_console_lines_around_a_splat_come_from_the_log_and_stay_in_report_json(tmp_path):
    runs = runs_of(STALE_VMEMMAP)
    splat = json.loads((SPLAT_RUN / "report.json").read_text())["methods"][0]["run"]["crashes"]
    runs = [type(runs[0])(**{**runs[0].__dict__, "crashes": tuple(splat[:1])})]
    folder = tmp_path / "acpi-dimm"
    folder.mkdir()
    shutil.copy(SPLAT_RUN / "acpi-dimm" / "console.log", folder / "console.log")
    report.write_report(tmp_path, KERNEL, runs)
    saved = json.loads((tmp_path / "report.json").read_text())
    ctx = saved["console_context"]["acpi-dimm"][0]
    assert ctx["first_line_no"] == 202 and ctx["start"] == 194
    (folder / "console.log").unlink()           # the page needs report.json alone
    (tmp_path / "report.html").unlink()
    assert cli.main(["-q", "report", str(tmp_path)]) == 1
    page = (tmp_path / "report.html").read_text()
    assert '<tr class="splat-line"><td class="muted">202</td>' in page
    assert '<tr class=""><td class="muted">201</td>' in page


def test_report_command_adds_the_console_lines_to_an_older_report(tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(SPLAT_RUN, folder)
    assert "console_context" not in json.loads((folder / "report.json").read_text())
    assert cli.main(["-q", "report", str(folder)]) == 1
    saved = json.loads((folder / "report.json").read_text())
    assert [c["first_line_no"] for c in saved["console_context"]["acpi-dimm"]] == [202, 236]
    page = (folder / "report.html").read_text()
    assert '<td class="muted">195</td><td><pre># [    2.273514] harness: step add dimm1' \
        in page


def test_hostile_kernel_output_is_escaped(tmp_path):
    runs = runs_of(STALE_VMEMMAP)
    crash = {"kind": "oops", "title": HOSTILE, "first_line_no": 3, "pc_symbol": HOSTILE,
             "call_trace": [HOSTILE], "lines": [HOSTILE, "\x1b[31mred\x1b[0m"],
             "step": HOSTILE}
    run = type(runs[0])(**{**runs[0].__dict__, "crashes": (crash,),
                           "notes": (HOSTILE,), "error": {"message": HOSTILE, "step": HOSTILE,
                                                          "blame": "kernel",
                                                          "evidence": HOSTILE}})
    folder = tmp_path / "acpi-dimm"
    folder.mkdir()
    (folder / "console.log").write_text(f"a\n{HOSTILE}\n{HOSTILE}\n{HOSTILE}\nb\n")
    report.write_report(tmp_path, {**KERNEL, "source": HOSTILE}, [run])
    page = (tmp_path / "report.html").read_text()
    assert "<script" not in page and "<img" not in page and "onerror=alert(1)>" not in page
    assert "&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt;" in page
    assert "&amp;amp;" in page            # an entity in kernel text stays text
    assert "\x1b" not in page and "[31m" not in page and "red" in page
    assert htmlreport.clean_text("# \x1b[6n[    2.27] x\r") == "# [    2.27] x"


def test_the_page_is_self_contained_small_and_fast():
    data = report_of(*CLEAN)
    start = time.monotonic()
    page = htmlreport.render_report(data)
    seconds = time.monotonic() - start
    assert len(page.encode()) < 300 * 1024, len(page.encode())
    assert seconds < 1.0
    assert not re.search(r"<script|<link|<iframe|@import|url\(|src=|https?://", page)
    assert page.count('<svg class="region"') == 8        # 4 methods x 2 regions


def test_run_and_report_command_write_report_html(tmp_path):
    report.write_report(tmp_path, KERNEL, runs_of(STALE_VMEMMAP))
    first = (tmp_path / "report.html").read_text()
    assert 'class="stale"' in first
    (tmp_path / "report.html").unlink()
    report.rejudge(tmp_path)
    again = (tmp_path / "report.html").read_text()
    strip = lambda s: re.sub(r"generated [^<]* from", "", s)  # noqa: E731
    assert strip(again) == strip(first)


def test_a_report_html_failure_keeps_report_json(tmp_path, monkeypatch, capsys):
    def broken(*a, **k):
        raise RuntimeError("template exploded")
    monkeypatch.setattr(htmlreport, "write_report_html", broken)
    report.write_report(tmp_path, KERNEL, runs_of(STALE_VMEMMAP))
    assert (tmp_path / "report.json").exists()
    assert "report.html not written: RuntimeError: template exploded" in capsys.readouterr().err


def test_a_picture_that_cannot_be_drawn_leaves_the_rest_of_the_page(monkeypatch):
    def broken(run):
        raise ValueError("no axis")
    monkeypatch.setattr(htmlreport, "method_figures", broken)
    page = htmlreport.render_report(report_of(STALE_VMEMMAP))
    assert "picture not drawn (ValueError: no axis)" in page
    assert '<table class="checks"' in page


def test_a_run_that_stopped_before_the_add_says_why_instead_of_a_picture():
    run = runs_of(STALE_VMEMMAP)[0]
    run = type(run)(**{**run.__dict__, "phases": run.phases[:1], "removals": (),
                       "error": {"message": "boot failed", "step": "boot",
                                 "blame": "harness"}})
    page = htmlreport.render_report(report.build_report(KERNEL, [run]))
    assert "no hot-plugged range recorded" in page
    assert "run stopped" in page and "boot failed" in page


# ---------------------------------------------------------------- matrices

def test_render_matrix_draws_any_rows_by_columns():
    page = htmlreport.render_matrix({
        "title": "geometry x method", "row_header": "geometry",
        "info_columns": ["levels"], "columns": ["acpi-dimm", {"name": "probe",
                                                              "title": "probe (dt)"}],
        "rows": [{"name": "4k-48", "status": "PASS", "info": {"levels": "4"},
                  "cells": {"acpi-dimm": {"verdict": "PASS"},
                            "probe": {"verdict": "FAIL", "title": HOSTILE}}},
                 {"name": HOSTILE, "status": "ERROR", "cells": {}}]})
    assert '<td class="cell good" title="">PASS</td>' in page
    assert "probe (dt)" in page and '<td class="cell empty">-</td>' in page
    assert "<script" not in page and "<img" not in page
    assert '<span class="badge error">ERROR</span>' in page


def test_repro_matrix_page_from_matrix_json(tmp_path):
    rows = [repro.MatrixRow("clean 4k-48 acpi-dimm", "(clean kernel)", (), repro.CLEAN_PASS,
                            {"tables-freed": repro.Cell("PASS", "removed-2 vs before",
                                                        "acpi-dimm")}, ("acpi-dimm",)),
            repro.MatrixRow("0003-stale-vmemmap", "stale vmemmap", ("no-stale-vmemmap",),
                            repro.CAUGHT,
                            {"no-stale-vmemmap": repro.Cell("FAIL", "removed-1: struct "
                                                            "pages still mapped", "acpi-dimm")},
                            ("acpi-dimm",))]
    data = {"rows": [r.to_dict() for r in rows], "exit_code": repro.matrix_exit_code(rows)}
    (tmp_path / "m.json").write_text(json.dumps(data))
    (tmp_path / "0003-stale-vmemmap").mkdir()
    (tmp_path / "0003-stale-vmemmap" / "report.html").write_text("page")
    assert cli.main(["repro", "--html", str(tmp_path / "m.json")]) == 0
    page = htmlreport.render_matrix(htmlreport.repro_matrix(data, tmp_path))
    assert '<a href="0003-stale-vmemmap/report.html">0003-stale-vmemmap</a>' in page
    assert "clean 4k-48 acpi-dimm</td>" in page          # no folder: no link
    (tmp_path / "clean-default-acpi-dimm").mkdir()
    (tmp_path / "clean-default-acpi-dimm" / "report.html").write_text("page")
    page = htmlreport.render_matrix(htmlreport.repro_matrix(data, tmp_path))
    assert '<a href="clean-default-acpi-dimm/report.html">clean 4k-48 acpi-dimm</a>' in page
    assert '<span class="badge good">caught</span>' in page
    assert 'class="cell bad expected" title="acpi-dimm: removed-1: struct pages' in page
    assert "every expected regression caught" in page


# ---------------------------------------------------------------- a real browser

def _chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        pytest.skip("chromium not installed (make deps installs Debian's chromium)")
    return found


def _shoot(html: Path, png: Path, size=(1100, 1500)) -> str:
    """Screenshot ``html`` in headless Chromium; returns the DOM it built."""
    args = [_chromium(), "--headless", "--disable-gpu", "--hide-scrollbars",
            "--no-first-run", f"--user-data-dir={png.parent / 'profile'}",
            f"--window-size={size[0]},{size[1]}"]
    if os.geteuid() == 0:
        args.append("--no-sandbox")
    subprocess.run(args + [f"--screenshot={png}", html.as_uri()], check=True,
                   capture_output=True, timeout=120)
    dom = subprocess.run(args + ["--dump-dom", html.as_uri()], check=True,
                         capture_output=True, timeout=120, text=True).stdout
    return dom


def read_png(path: Path) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB bytes) of an 8-bit RGB/RGBA non-interlaced PNG."""
    blob = path.read_bytes()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, head = 8, b"", None
    while pos < len(blob):
        length, kind = struct.unpack(">I4s", blob[pos:pos + 8])
        body = blob[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            head = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, ctype, _, _, interlace = head
    assert depth == 8 and ctype in (2, 6) and interlace == 0, head
    bpp = 3 if ctype == 2 else 4
    raw, stride, rows, prev = zlib.decompress(idat), width * bpp, [], bytes(width * bpp)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:
                                                          (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            pred = {0: 0, 1: a, 2: b, 3: (a + b) // 2}.get(kind)
            if pred is None:           # Paeth
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            line[i] = (line[i] + pred) & 0xFF
        prev = bytes(line)
        rows.append(bytes(v for i in range(0, stride, bpp) for v in line[i:i + 3]))
    return width, height, rows


def count(rows: list[bytes], rgb: tuple) -> int:
    needle = bytes(rgb)
    return sum(1 for row in rows for i in range(0, len(row), 3) if row[i:i + 3] == needle)


PMD_BLUE, STALE_RED = (0x3F, 0x7F, 0xCE), (0xE0, 0x00, 0x00)
PASS_GREEN, FAIL_RED = (0x15, 0x80, 0x3D), (0xDC, 0x26, 0x26)


def test_headless_chromium_shows_the_pictures_and_the_checks_table(tmp_path):
    _chromium()
    shots = {}
    for name, path in (("clean", CLEAN[0]), ("stale", STALE_VMEMMAP)):
        html = tmp_path / f"{name}.html"
        html.write_text(htmlreport.render_report(report_of(path)))
        png = tmp_path / f"{name}.png"
        dom = _shoot(html, png)
        assert dom.count('<svg class="region"') == 2
        assert len(re.findall(r"<rect class=\"map P[MU]D\"", dom)) >= 10
        checks = re.search(r'<table class="checks".*?</table>', dom, re.S).group(0)
        assert checks.count("<tr>") >= 8
        width, height, rows = read_png(png)
        assert (width, height) == (1100, 1500)
        shots[name] = rows
    clean, stale = shots["clean"], shots["stale"]
    assert count(clean, PMD_BLUE) > 20000          # the mapped blocks
    assert count(clean, PASS_GREEN) > 300          # PASS badges in the checks table
    assert count(clean, STALE_RED) <= 14 * 10      # the legend's swatch only
    assert count(stale, STALE_RED) > 1500          # the stale vmemmap, two lanes
    assert count(stale, FAIL_RED) > 300            # FAIL badges
