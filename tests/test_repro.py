"""The detection matrix (harness/repro.py): trailers, statuses, exit code,
output; every shipped regression has a complete header. Runs are faked here;
the real regressions run in tests/test_qemu.py (make test), in
tests/test_repro_configs.py (make test-repro: those with a Repro-Config) and bench."""

import json

import pytest

from harness.errors import HarnessError
from harness.verdict import repro

HEADER = """\
From: Hotplug Harness <hotplug-harness@localhost>
Subject: [PATCH] REPRO: something

Repro-Point: a. free before clear, PTE level
Repro-Methods: probe
Repro-Append: rodata=full
Repro-Expect: no-table-freed-while-linked
---
 arch/arm64/mm/mmu.c | 3 ++-
Repro-Point: not a trailer: after the ---
"""


def reg(tmp_path, name="0005-x", **trailers):
    text = "Subject: x\n\n" + "".join(f"Repro-{k.title()}: {v}\n"
                                      for k, v in trailers.items()) + "---\n"
    path = tmp_path / f"{name}.patch"
    path.write_text(text)
    return repro.load(path)


def report(code, **checks):
    return {"exit_code": code, "methods": [{"method": "probe", "run": {}, "checks": [
        {"name": n, "verdict": v, "evidence": f"{n} evidence at VA 0xffff000080000000\nmore"}
        for n, v in checks.items()]}]}


def test_trailers_stop_at_the_diffstat(tmp_path):
    t = repro.parse_header(HEADER)
    assert t == {"point": "a. free before clear, PTE level", "methods": "probe",
                 "append": "rodata=full", "expect": "no-table-freed-while-linked"}
    (tmp_path / "0005-x.patch").write_text(HEADER)
    r = repro.load(tmp_path / "0005-x.patch")
    assert (r.methods, r.append, r.expect, r.configs) == (
        ("probe",), ("rodata=full",), ("no-table-freed-while-linked",), ())


def test_a_header_without_trailers_is_refused_by_name(tmp_path):
    (tmp_path / "0009-y.patch").write_text("Subject: y\n---\n")
    with pytest.raises(HarnessError, match="0009-y.patch: header lacks Repro-Point"):
        repro.load(tmp_path / "0009-y.patch")


def test_discover_by_number_or_name(tmp_path):
    reg(tmp_path, "0005-a", point="a", methods="probe", expect="tables-freed")
    reg(tmp_path, "0006-b", point="b", methods="probe", expect="-", why="a race")
    assert [r.name for r in repro.discover(["0006"], tmp_path)] == ["0006-b"]
    assert [r.name for r in repro.discover([], tmp_path)] == ["0005-a", "0006-b"]
    assert repro.discover(["0006"], tmp_path)[0].expect == ()
    with pytest.raises(HarnessError, match="no regression '0042'"):
        repro.discover(["0042"], tmp_path)


def test_statuses_and_exit_code(tmp_path):
    a = reg(tmp_path, "0005-a", point="a", methods="probe",
            expect="tables-freed, no-kernel-splat")
    assert repro.status_of(a, report(1, **{"tables-freed": "FAIL",
                                           "no-kernel-splat": "FAIL"})) == repro.CAUGHT
    assert repro.status_of(a, report(1, **{"tables-freed": "FAIL",
                                           "no-kernel-splat": "PASS"})) == repro.MISSED
    assert repro.status_of(None, report(0, **{"tables-freed": "PASS"})) == repro.CLEAN_PASS
    assert repro.status_of(None, report(1, **{"tables-freed": "FAIL"})) == repro.CLEAN_FAIL
    rows = [repro.MatrixRow("x", "p", (), repro.CAUGHT),
            repro.MatrixRow("c", "p", (), repro.CLEAN_PASS)]
    assert repro.matrix_exit_code(rows) == 0
    assert repro.matrix_exit_code(rows + [repro.MatrixRow("y", "p", (), repro.MISSED)]) == 1
    assert repro.matrix_exit_code(rows + [repro.MatrixRow("y", "p", (), repro.ERROR)]) == 2
    assert repro.matrix_exit_code(rows + [repro.MatrixRow("y", "p", (),
                                                          repro.NOT_EXPECTED)]) == 0


def test_run_matrix_runs_clean_once_per_shape_and_prints_evidence(tmp_path):
    regs = [reg(tmp_path, "0005-a", point="a. free before clear", methods="probe",
                append="rodata=full", expect="no-table-freed-while-linked"),
            reg(tmp_path, "0006-b", point="b", methods="probe", append="rodata=full",
                expect="tables-freed"),
            reg(tmp_path, "0007-c", point="c", methods="probe", config="64k-42",
                expect="no-kernel-splat")]
    calls = []

    def fake(configs, patches, append, methods, cycles, folder):
        calls.append((configs, patches, append))
        if not patches:
            return report(0, **{"tables-freed": "PASS"})
        if "0005" in patches[0]:
            return report(1, **{"no-table-freed-while-linked": "FAIL"})
        if "0007" in patches[0]:
            raise HarnessError("kernel does not compile", step="build", blame="kernel")
        return report(0, **{"tables-freed": "PASS"})
    rows = repro.run_matrix(regs, tmp_path / "out", fake)
    assert [c for c in calls if not c[1]] == [((), (), ("rodata=full",)),
                                              (("64k-42",), (), ())]
    status = {r.name: r.status for r in rows}
    assert status["0005-a"] == repro.CAUGHT and status["0006-b"] == repro.MISSED
    assert status["0007-c"] == repro.MISSED and "does not compile" in rows[-1].error
    text = repro.matrix_text(rows)
    assert "FAIL  no-table-freed-while-linked [probe]: no-table-freed-while-linked " \
           "evidence at VA 0xffff000080000000" in text
    assert "exit 1" in text
    md = repro.matrix_markdown(rows)
    assert "| `0005-a` | a. free before clear | probe `rodata=full` | " \
           "`no-table-freed-while-linked` | caught |" in md


def test_matrix_json_round_trip(tmp_path):
    rows = [repro.MatrixRow("0005-a", "a", ("tables-freed",), repro.CAUGHT,
                            {"tables-freed": repro.Cell("FAIL", "ev", "probe")},
                            ("probe",), (), ("rodata=full",), 1)]
    data = {"rows": [r.to_dict() for r in rows]}
    assert repro.rows_from_json(data) == rows


def test_readme_block_replacement():
    text = "a\n<!-- repro-matrix:start -->\nold\n<!-- repro-matrix:end -->\nb\n"
    assert repro.replace_between(text, "new\n") == (
        "a\n<!-- repro-matrix:start -->\nnew\n<!-- repro-matrix:end -->\nb\n")


def test_every_shipped_regression_has_a_complete_header():
    regs = repro.discover()
    assert regs, "patches/repro is empty"
    for r in regs:
        assert r.point and r.methods, r.name
        assert r.expect or r.why, f"{r.name}: Repro-Expect: - needs a Repro-Why"


# ------------------------------------------------------------ --update-readme

def saved_matrix(tmp_path):
    """A matrix.json as `repro --json` (and `make test-repro`) leaves it."""
    rows = [repro.MatrixRow("clean 16k-47 probe", "(clean kernel)", (), repro.CLEAN_PASS,
                            {"no-kernel-splat": repro.Cell("PASS", "no report", "probe")},
                            ("probe",), ("16k-47",)),
            repro.MatrixRow("0009-partial-pmd-vmemmap-16k", "d. partial PMD, 16K",
                            ("no-kernel-splat",), repro.CAUGHT,
                            {"no-kernel-splat": repro.Cell(
                                "FAIL", "oops at virtual address ffffffbfc02e0000", "probe")},
                            ("probe",), ("16k-47",), exit_code=1)]
    data = {"rows": [r.to_dict() for r in rows], "exit_code": repro.matrix_exit_code(rows)}
    path = tmp_path / "matrix.json"
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path, rows


README_TEXT = ("# Seeded regressions\n\nprose before\n\n<!-- repro-matrix:start -->\n"
               "| old | table |\n<!-- repro-matrix:end -->\n\nprose after\n")


def test_update_readme_from_a_saved_matrix(tmp_path, capsys):
    from harness import cli
    matrix, rows = saved_matrix(tmp_path)
    one, two = tmp_path / "README.md", tmp_path / "other.md"
    one.write_text(README_TEXT)
    two.write_text("top\n" + README_TEXT)
    assert cli.main(["repro", "--markdown", str(matrix), "--update-readme", str(one),
                     "--update-readme", str(two)]) == 0
    out, err = capsys.readouterr()
    assert out == ""                                   # the table went into the files
    table = repro.matrix_markdown(rows)
    assert one.read_text() == README_TEXT.replace("| old | table |\n", table)
    assert two.read_text() == "top\n" + one.read_text()
    assert "| `0009-partial-pmd-vmemmap-16k` | d. partial PMD, 16K | probe " \
           "`--config 16k-47` | `no-kernel-splat` | caught | oops at virtual address " \
           "ffffffbfc02e0000 |" in one.read_text()
    assert "| `clean kernel` | (clean kernel) | probe `--config 16k-47` | - | clean |" \
        in one.read_text()
    assert f"{one}: matrix table updated (2 rows)" in err
    # the same matrix again: nothing to change
    assert cli.main(["repro", "--markdown", str(matrix), "--update-readme", str(one)]) == 0
    assert f"{one}: matrix table unchanged" in capsys.readouterr().err
    # without --update-readme, --markdown prints the same table
    assert cli.main(["repro", "--markdown", str(matrix)]) == 0
    assert capsys.readouterr().out == table


def test_update_readme_refuses_a_file_without_markers_and_writes_none(tmp_path, capsys):
    from harness import cli
    matrix, _ = saved_matrix(tmp_path)
    good, bad = tmp_path / "README.md", tmp_path / "plain.md"
    good.write_text(README_TEXT)
    bad.write_text("no markers here\n")
    assert cli.main(["repro", "--markdown", str(matrix), "--update-readme", str(good),
                     "--update-readme", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"--update-readme {bad}: markers <!-- repro-matrix:start -->" in err
    assert good.read_text() == README_TEXT and bad.read_text() == "no markers here\n"
    assert cli.main(["repro", "--update-readme", str(good)]) == 2
    assert "--markdown MATRIX_JSON" in capsys.readouterr().err


def test_update_readme_after_a_run(tmp_path, monkeypatch, capsys):
    """A run (faked) writes matrix.json and the same table into the file; a file
    without markers is refused before anything runs."""
    from harness import cli
    from harness.cli import repro as cli_repro
    regs = tmp_path / "regs"
    regs.mkdir()
    reg(regs, "0009-a", point="a", methods="probe", config="16k-47",
        expect="no-kernel-splat")
    shipped = repro.discover
    monkeypatch.setattr(repro, "discover", lambda names=(): shipped(names, regs))
    ran = []

    def fake_runner(kernel_src, series=True):
        def run(configs, patches, append, methods, cycles, folder):
            ran.append((configs, patches))
            return report(1 if patches else 0,
                          **{"no-kernel-splat": "FAIL" if patches else "PASS"})
        return run
    monkeypatch.setattr(cli_repro, "_runner", fake_runner)
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")
    out = tmp_path / "out"
    assert cli.main(["repro", "--all", "--report", str(out), "--update-readme",
                     str(plain)]) == 2
    assert ran == [] and not out.exists()
    capsys.readouterr()
    readme = tmp_path / "README.md"
    readme.write_text(README_TEXT)
    assert cli.main(["repro", "--all", "--json", "--report", str(out),
                     "--update-readme", str(readme)]) == 0
    assert ran == [(("16k-47",), ()), (("16k-47",), (str(regs / "0009-a.patch"),))]
    data = json.loads((out / "matrix.json").read_text())
    assert json.loads(capsys.readouterr().out) == data
    assert readme.read_text() == README_TEXT.replace(
        "| old | table |\n", repro.matrix_markdown(repro.rows_from_json(data)))
    assert "| `0009-a` | a | probe `--config 16k-47` | `no-kernel-splat` | caught |" \
        in readme.read_text()


# ------------------------------------------------------------ make test-repro

def make_marker_expression(target: str) -> str:
    """The -m expression of a Makefile target's pytest line ('' when none)."""
    import re
    from pathlib import Path
    text = (Path(__file__).resolve().parent.parent / "Makefile").read_text()
    recipe = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", text, re.M)
    assert recipe, target
    found = re.search(r'-m ("[^"]*"|\S+)', recipe.group(1))
    return found.group(1).strip('"') if found else ""


def collected(marker: str) -> list:
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                           "-p", "no:cacheprovider", "--strict-markers", "-m", marker,
                           "tests/test_repro_configs.py", "tests/test_qemu.py"],
                          capture_output=True, text=True, cwd=root, timeout=120)
    assert proc.returncode in (0, 5), proc.stdout + proc.stderr      # 5: none selected
    return [line for line in proc.stdout.splitlines() if "::" in line]


def test_make_test_repro_runs_each_configured_regression_and_make_test_none():
    """make test-repro: one test per regression with a Repro-Config and one per
    clean shape; make test and make test-unit: none of them. Between
    make test (test_qemu's SUITE) and make test-repro every regression whose
    header expects a FAIL runs."""
    configured = [r for r in repro.discover() if r.configs]
    assert configured
    ids = collected(make_marker_expression("test-repro"))
    assert sorted(i.split("[", 1)[1].rstrip("]") for i in ids
                  if "::test_configured_regression_fails_the_named_checks[" in i) == \
        sorted(r.name for r in configured)
    shapes = {r.shape for r in configured}
    assert len([i for i in ids if "::test_clean_kernel_passes_in_the_same_shape[" in i]) == \
        len(shapes)
    assert all(i.startswith("tests/test_repro_configs.py::") for i in ids)
    for target in ("test", "test-unit"):
        expression = make_marker_expression(target)
        assert expression, target
        assert not [i for i in collected(expression) if "test_repro_configs" in i], target
    from test_qemu import SUITE
    assert {r.name for r in repro.discover() if r.expect} <= set(SUITE) | {
        r.name for r in configured}
