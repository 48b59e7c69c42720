"""The geometry matrix (harness.verdict.geomatrix, 'hotplug-harness matrix'): cells from
real report folders, rows for geometries that could not run, exit codes, and
the README table from saved JSON. The run itself is exercised against real
kernels by 'make test-matrix' (see README, "Geometries")."""
import json
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import HarnessError
from harness.verdict import geomatrix

DATA = Path(__file__).resolve().parent / "data"
# recorded from a real guest (tests/data/README): 4k-48 + repro 0002, acpi-dimm fails
STALE = json.loads((DATA / "recorded-run-0002-stale-linear-map" / "report.json").read_text())


def test_geometries_are_the_geometry_fragments_in_page_size_order():
    geos = geomatrix.geometries()
    assert geos == ["4k-39", "4k-48", "4k-52", "16k-47", "64k-42", "64k-48"]


def test_cell_of_a_real_failing_run_names_the_check_and_the_tables():
    method = STALE["methods"][0]
    cell = geomatrix.cell_of("4k-48", method)
    assert cell.verdict == "FAIL" and cell.status == "FAIL"
    assert any(p.startswith("no-kernel-splat FAIL: ") for p in cell.problems)
    assert set(cell.tables) >= {"before", "online"}
    assert cell.tables["before"]["Linear Mapping"]["PGD"] == 1
    assert cell.geometry_seen["levels"] == 4 and cell.geometry_seen["granule"] == 4096
    assert cell.geometry_seen["block_size"] == 128 << 20


def test_expected_failures_are_xfail_and_a_pass_is_xpass(monkeypatch):
    method = STALE["methods"][0]
    monkeypatch.setitem(geomatrix.EXPECTED, ("4k-48", "*"), "known: reason")
    cell = geomatrix.cell_of("4k-48", method)
    assert cell.status == "XFAIL" and cell.expected == "known: reason"
    passing = dict(method, verdict="PASS", checks=[])
    assert geomatrix.cell_of("4k-48", passing).status == "XPASS"
    assert geomatrix.matrix_exit_code([cell]) == 0
    assert geomatrix.matrix_exit_code([geomatrix.cell_of("4k-48", passing)]) == 1


def test_a_geometry_that_cannot_build_is_a_row_with_its_reason(tmp_path):
    def run(configs, methods, folder):
        if configs == ("4k-52",):
            raise HarnessError("make failed: arch/arm64/mm/mmu.c:12: error: x", step="build")
        return {"methods": [dict(STALE["methods"][0], method=m) for m in methods]}
    cells = geomatrix.run_matrix(["4k-48", "4k-52"], ("acpi-dimm", "probe"), tmp_path, run)
    assert [(c.geometry, c.method, c.status) for c in cells] == [
        ("4k-48", "acpi-dimm", "FAIL"), ("4k-48", "probe", "FAIL"),
        ("4k-52", "acpi-dimm", "ERROR"), ("4k-52", "probe", "ERROR")]
    assert cells[2].problems == ("build: make failed: arch/arm64/mm/mmu.c:12: error: x",)
    text = geomatrix.matrix_text(cells)
    assert "4k-52" in text and "make failed" in text
    assert geomatrix.matrix_exit_code(cells[2:]) == 2


def test_a_method_missing_from_the_report_is_an_error_cell(tmp_path):
    cells = geomatrix.run_matrix(["4k-48"], ("acpi-dimm", "probe"), tmp_path,
                                 lambda c, m, f: {"methods": [STALE["methods"][0]]})
    assert cells[1].status == "ERROR" and cells[1].problems == ("the method did not run",)


def test_json_round_trip_and_markdown_from_saved_json(tmp_path, capsys):
    cells = [geomatrix.cell_of("4k-48", STALE["methods"][0])]
    saved = tmp_path / "g.json"
    saved.write_text(json.dumps(geomatrix.to_json(cells)))
    assert geomatrix.from_json(json.loads(saved.read_text())) == cells
    assert main(["matrix", "--markdown", str(saved)]) == 0
    table = capsys.readouterr().out
    assert table.startswith("| geometry | shape seen by the harness | acpi-dimm |")
    assert "| 4k-48 | 4 levels, 4K pages, block 128 MiB, struct page 64 B | FAIL (" in table
    assert "PGD1 PUD1 PMD1 PTE" in table


def test_unknown_geometry_is_refused_with_the_choices(capsys):
    assert main(["matrix", "--geometry", "8k-40"]) == 2
    err = capsys.readouterr().err
    assert "unknown geometry(s) 8k-40" in err and "64k-42" in err


@pytest.mark.parametrize("spec,want", [("all", 6), ("4k-48,64k-42", 2)])
def test_geometry_selection(spec, want):
    from harness.runner import select_names
    assert len(select_names(spec, geomatrix.geometries(), "geometry", "matrix")) == want


def test_html_page_from_saved_json_escapes_and_marks_xfail(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(geomatrix.EXPECTED, ("4k-48", "*"), "known <b>bad</b>")
    cells = [geomatrix.cell_of("4k-48", STALE["methods"][0])]
    saved = tmp_path / "matrix.json"
    saved.write_text(json.dumps(geomatrix.to_json(cells)))
    assert main(["matrix", "--html", str(saved)]) == 0
    page = capsys.readouterr().out
    assert page.startswith("<!DOCTYPE html>") or page.lstrip().startswith("<!")
    assert "XFAIL" in page and "4k-48" in page
    assert "known <b>bad</b>" not in page and "known &lt;b&gt;bad&lt;/b&gt;" in page


def test_split_leaf_is_expected_to_fail_everywhere_with_a_reason():
    assert "unfixed in 6.12" in geomatrix.expected_reason("4k-48", "split-leaf")
    assert "nothing to split" in geomatrix.expected_reason("64k-42", "split-leaf")
    assert geomatrix.expected_reason("4k-48", "probe") == ""
