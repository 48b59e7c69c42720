"""bench/perf_readme.py: docs/performance.md's generated section from a results file.

Most tests use tests/data/synthetic-bench-results.json, a SYNTHETIC results
file (hand-written, not a measurement). The last ones check that docs/performance.md's
section is exactly what the generator makes of the committed measurement
bench/results/latest.json (the file the section names).
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import perf_readme as pr  # noqa: E402

SYNTHETIC = ROOT / "tests" / "data" / "synthetic-bench-results.json"


@pytest.fixture
def synthetic() -> dict:
    return json.loads(SYNTHETIC.read_text())


def table_rows(text: str) -> list:
    return [line for line in text.splitlines() if line.startswith("| ")][1:]


def cells(line: str) -> list:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]


def test_synthetic_table(synthetic):
    text = pr.render(synthetic, "tests/data/synthetic-bench-results.json")
    assert text.startswith("## Performance\n")
    assert "2001-02-03 04:05:06 UTC" in text and "`0000000`" in text
    assert "synthetic-host, 2 CPUs (made up)" in text
    assert "**Note:** synthetic figures" in text
    assert "python3 bench/perf_readme.py tests/data/synthetic-bench-results.json" in text
    rows = [cells(r) for r in table_rows(text)]
    by_title = {r[0]: r for r in rows}
    cold = by_title["cold kernel build (fresh cache, no ccache)"]
    assert cold[1:5] == ["330.0 s", "300.0 s", "≤ 1.0× kunit.py's", "**missed** (1.10×)"]
    # commands read from the checkout: the machine's temporary folder is $TMPDIR
    assert cold[5].startswith("`HOTPLUG_HARNESS_CACHE=$TMPDIR/x CCACHE_DISABLE=1 ")
    assert "/" + "tmp/" not in cold[5]
    assert "<br>kunit.py: `CCACHE_DISABLE=1 PYTHONDONTWRITEBYTECODE=1 " in cold[5]
    objects = by_title["objects built cold (`*.o`)"]
    assert objects[1:5] == ["1000", "800", "—", "—"]
    warm = by_title["warm `run --method all` (kernel cached)"]
    assert warm[1:5] == ["12.5 s", "25.0 s", "≤ 15 s", "met"]
    noop = by_title["no-op rebuild (median)"]
    assert noop[1:5] == ["0.400 s", "—", "≤ 2 s", "met"]
    # issue 13's targets the results lack are rows saying where they are measured
    missing = by_title["one-file patch to `mmu.c` → verdict (`run --patch P --method all`)"]
    assert missing[1] == "not measured in this invocation"
    assert missing[5] == "`bench/bench_run.py`"
    # figures not marked for the README stay out
    assert not any("prime" in r[0] for r in rows)
    # issue 13's order: cold build first, then objects, warm run, patch, boots
    titles = [r[0] for r in rows]
    assert titles.index("cold kernel build (fresh cache, no ccache)") < \
        titles.index("warm `run --method all` (kernel cached)") < \
        titles.index("boot → SSH, DT (median)") < titles.index("no-op rebuild (median)")
    # a failed script is named, its reason's pipe escaped
    assert "- `bench_run.py`: exit 2: exit 2: made up \\| with a pipe" in text


def test_a_script_started_at_another_commit_is_named(synthetic):
    synthetic["scripts"][1].update(commit="2222222", dirty=True, date="2001-02-03 05:00:00")
    text = pr.render(synthetic, "x.json")
    assert ("The checkout moved during the invocation: `bench_run.py` started "
            "2001-02-03 05:00:00 at `2222222` (with uncommitted changes).") in text
    assert "moved" not in pr.render(json.loads(SYNTHETIC.read_text()), "x.json")


def test_every_row_has_six_cells(synthetic):
    for line in table_rows(pr.render(synthetic, "x.json")):
        assert len(cells(line)) == 6, line


def test_section_inserted_before_troubleshooting_then_replaced(synthetic, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# T\n\nintro\n\n## Troubleshooting\n\nhelp\n")
    results = tmp_path / "r.json"
    results.write_text(json.dumps(synthetic))
    pr.update_readme(results, readme)
    text = readme.read_text()
    assert text.startswith("# T\n\nintro\n\n" + pr.BEGIN + "\n## Performance\n")
    assert text.endswith(pr.END + "\n\n## Troubleshooting\n\nhelp\n")
    assert pr.current_section(text) == pr.render(synthetic, str(results))
    # again with other figures: replaced in place, nothing else moves
    synthetic["commit"] = "1111111"
    results.write_text(json.dumps(synthetic))
    pr.update_readme(results, readme)
    again = readme.read_text()
    assert again.count(pr.BEGIN) == 1 and again.count(pr.END) == 1
    assert "`1111111`" in again and "`0000000`" not in again
    assert again.startswith("# T\n\nintro\n\n" + pr.BEGIN)
    assert again.endswith(pr.END + "\n\n## Troubleshooting\n\nhelp\n")


def test_check_mode(synthetic, tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("x\n## Troubleshooting\n")
    results = tmp_path / "r.json"
    results.write_text(json.dumps(synthetic))
    assert pr.main([str(results), "--readme", str(readme), "--check"]) == 1
    assert pr.main([str(results), "--readme", str(readme)]) == 0
    assert pr.main([str(results), "--readme", str(readme), "--check"]) == 0
    assert pr.main([str(tmp_path / "missing.json"), "--readme", str(readme)]) == 2


def test_a_single_scripts_json_out_renders(synthetic):
    one = dict(synthetic["scripts"][0], schema=1, date="d", commit="c", machine="m")
    del one["rc"]
    text = pr.render(one, "one.json")
    assert "330.0 s" in text and "Scripts that failed" not in text


def test_performance_page_is_generated_from_the_committed_results():
    latest = ROOT / "bench" / "results" / "latest.json"
    assert pr.README == ROOT / "docs" / "performance.md"      # the default target
    text = pr.README.read_text()
    current = pr.current_section(text)
    assert current is not None, "docs/performance.md has no generated section"
    assert current == pr.render(pr.load(latest), "bench/results/latest.json"), \
        "docs/performance.md's section is stale: python3 bench/perf_readme.py " \
        "bench/results/latest.json"
    assert text.count(pr.BEGIN) == 1
    # the README itself carries no figures any more, only the link
    assert pr.BEGIN not in (ROOT / "README.md").read_text()


def test_a_page_without_markers_gets_the_section_at_its_end():
    assert pr.replace_section("# Performance\n\nintro\n", "S\n") == \
        "# Performance\n\nintro\n\nS\n"


def test_the_cold_builds_excess_is_tied_to_the_scenario_rows():
    """SYNTHETIC figures: the paragraph names the net excess and each scenario's."""
    def fig(key, label, value, kunit):
        return {"key": key, "label": label, "value": value, "unit": "objects",
                "readme": True, "kunit": {"value": kunit}}
    rows = [fig("cold_build_objects", "objects built cold", 1093, 923),
            fig("objects_for_acpi_boot", "objects needed by acpi boot", 277, 79),
            fig("objects_for_ssh", "objects needed by ssh", 115, 1)]
    (blank, text) = pr.excess(rows)
    assert blank == "" and "170 objects more than kunit.py's" in text
    assert "acpi boot 198; ssh 114;" in text
    assert pr.excess(rows[:1]) == [] and pr.excess(rows[1:]) == []
