"""The bench scripts' machine-readable figures (benchlib.record / --json-out)
and run_all.py's collection of them. No kernel, no QEMU: the figures here are
made up in the tests."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import benchlib as bl  # noqa: E402
import run_all  # noqa: E402


@pytest.fixture(autouse=True)
def fresh_results():
    bl.RESULTS.clear()
    saved = dict(bl.JSON_OUT)
    yield
    bl.RESULTS.clear()
    bl.JSON_OUT.clear()
    bl.JSON_OUT.update(saved)


def test_figure_prints_as_before_and_records(capsys):
    bl.figure("no-op rebuild (median wall)", 0.84, 2.0, "$ python -m harness.cli build",
              "n=3", key="noop_rebuild", readme=True)
    assert capsys.readouterr().out == ("no-op rebuild (median wall): 0.840 s (target <= 2 s, "
                                       "met)  [n=3]  $ python -m harness.cli build\n")
    (fig,) = bl.RESULTS
    assert fig["key"] == "noop_rebuild" and fig["value"] == 0.84 and fig["unit"] == "s"
    assert fig["met"] is True and fig["readme"] is True and fig["kunit"] is None
    assert fig["command"] == "$ python -m harness.cli build"


def test_figure_without_key_is_recorded_under_its_label():
    bl.figure("  acpi total_s median", 3.0)
    assert bl.RESULTS[0]["key"] == "acpi_total_s_median"
    assert bl.RESULTS[0]["met"] is None and bl.RESULTS[0]["readme"] is False


def test_record_replaces_a_key_and_judges_ratios():
    k = bl.kunit_figure("kunit.py cold build", 300.0, "$ kunit.py run")
    bl.record("cold_build", "cold build", 330.0, "s", target=1.0,
              target_kind="ratio_to_kunit", kunit=k)
    fig = bl.record("cold_build", "cold build", 270.0, "s", target=1.0,
                    target_kind="ratio_to_kunit", kunit=k)
    assert bl.RESULTS == [fig]
    assert fig["ratio"] == pytest.approx(0.9) and fig["met"] is True
    missed = bl.record("x", "x", 20.0, "s", target=15.0)
    assert missed["met"] is False
    unmeasured = bl.record("y", "y", None, "s", target=15.0)
    assert unmeasured["met"] is None


def test_save_results_writes_the_document(tmp_path):
    out = tmp_path / "sub" / "build.json"
    bl.start_results("bench_build.py", out, ["/usr/bin/python3", "bench/bench_build.py"])
    bl.record("cold_build", "cold build", 1.5, "s", target=2.0)
    bl.save_results()
    doc = json.loads(out.read_text())
    assert doc["schema"] == bl.SCHEMA and doc["script"] == "bench_build.py"
    assert doc["command"] == "$ /usr/bin/python3 bench/bench_build.py"
    assert set(doc) >= {"date", "commit", "dirty", "machine", "figures"}
    assert "CPUs" in doc["machine"]
    assert [f["key"] for f in doc["figures"]] == ["cold_build"]
    assert "failed" not in doc


def test_a_failed_command_still_writes_what_was_measured(tmp_path, capsys):
    out = tmp_path / "run.json"
    bl.start_results("bench_run.py", out, ["bench/bench_run.py"])
    bl.record("warm_run", "run --method all", 12.0, "s")
    result = bl.Result(["kunit.py", "run"], {}, 1, 3.0, "", [(0.1, "boom\n")])
    with pytest.raises(SystemExit) as e:
        bl.fail(result, "kunit.py exit 1")
    assert e.value.code == 2
    printed = capsys.readouterr().out
    assert "FAILED (kunit.py exit 1) after 3.0 s: $ kunit.py run" in printed
    assert "    boom" in printed
    doc = json.loads(out.read_text())
    assert doc["failed"] == "kunit.py exit 1: $ kunit.py run"
    assert doc["figures"][0]["key"] == "warm_run"


def test_no_json_out_writes_nothing(tmp_path):
    bl.start_results("bench_boot.py", None, [])
    bl.record("a", "a", 1.0, "s")
    bl.save_results()
    assert list(tmp_path.iterdir()) == []


def test_run_merged_keeps_stdout_lines_timed():
    r = bl.run([sys.executable, "-c", "import sys; print('out'); "
                "print('err', file=sys.stderr)"], merged=True)
    assert r.stdout == ""
    assert sorted(line for _, line in r.stderr_lines) == ["err\n", "out\n"]


def test_run_all_passes_json_out_kunit_and_dt(tmp_path):
    args = run_all.parse_args([])
    assert args.kunit is True and args.results == Path("bench-results.json")
    out = tmp_path / "build.json"
    argv = run_all.script_argv("build", args, out)
    assert argv[1:] == [str(run_all.HERE / "bench_build.py"), "--json-out", str(out)]
    assert "--dt" in run_all.script_argv("boot", args, out)
    no_kunit = run_all.parse_args(["--no-kunit", "--cold"])
    argv = run_all.script_argv("build", no_kunit, out)
    assert "--no-kunit" in argv and "--cold" in argv
    assert "--no-kunit" in run_all.script_argv("run", no_kunit, out)
    assert "--no-kunit" not in run_all.script_argv("boot", no_kunit, out)
    assert run_all.parse_args(["--update-readme"]).results == run_all.LATEST


def test_run_all_collects_the_scripts_files(tmp_path):
    good = tmp_path / "walker.json"
    bl.start_results("bench_walker.py", good, ["bench/bench_walker.py"])
    bl.record("walker_blocks", "walk", 0.005, "s", target=0.2)
    bl.save_results()
    outcomes = [("walker", 0, 1.2, [], good),
                ("run", 2, 5.0, ["FAILED ..."], tmp_path / "never-written.json")]
    doc = run_all.collect(outcomes, ["python3", "bench/run_all.py"], "host, 2 CPUs",
                          "2001-01-01 00:00:00 UTC")
    assert doc["machine"] == "host, 2 CPUs" and doc["date"] == "2001-01-01 00:00:00 UTC"
    assert doc["command"] == "$ python3 bench/run_all.py"
    walker, run = doc["scripts"]
    assert walker["script"] == "bench_walker.py" and walker["rc"] == 0
    assert walker["figures"][0]["key"] == "walker_blocks"
    assert walker["command"] == "$ bench/bench_walker.py"
    assert {"date", "commit", "dirty"} <= set(walker)     # when the script started
    assert run["rc"] == 2 and run["figures"] == []
    assert run["failed"].startswith("no figures written")


def test_cold_build_next_to_kunit(capsys):
    """bench_build's cold figures from a made-up harness build and kunit.py run."""
    import bench_build
    import kunitlib as kl
    r = bl.Result(["python", "-m", "harness.cli", "build", "--json"],
                  {"CCACHE_DISABLE": "1"}, 0, 360.0, "{}",
                  [(1.0, "[source] unpacking x\n"), (15.0, "$ cp -al a b\n"),
                   (16.0, "$ make -C tree\n")])
    kunit = bl.Result(["kunit.py", "run"], {}, 0, 250.0, "", [])
    kr = kl.KunitRun("cold", kunit, kl.Elapsed(249.0, 6.0, 234.0, 9.0),
                     {"tests": 493}, 900)
    bench_build.cold_figures(r, "rebuilt=true", 1125, kr)
    out = capsys.readouterr().out
    assert out.startswith("cold build: 360.0 s (target <= 1.0x kunit.py's cold build "
                          "240.0 s: 1.50x, MISSED)")
    assert "make part vs kunit.py's building part: 344.0 s vs 234.0 s = 1.47x" in out
    assert "cold build objects: 1125 (*.o in the O= tree) vs kunit.py's 900: 1.25x" in out
    figs = {f["key"]: f for f in bl.RESULTS}
    cold = figs["cold_build"]
    assert cold["target_kind"] == "ratio_to_kunit" and cold["met"] is False
    assert cold["ratio"] == pytest.approx(1.5) and cold["kunit"]["value"] == 240.0
    assert cold["kunit"]["command"] == "$ kunit.py run" and cold["readme"]
    assert figs["cold_build_objects"]["kunit"]["value"] == 900
    bl.RESULTS.clear()
    bench_build.cold_figures(r, "rebuilt=true", 1125, None)   # --no-kunit
    figs = {f["key"]: f for f in bl.RESULTS}
    assert figs["cold_build"]["target"] == bench_build.COLD_TARGET
    assert figs["cold_build"]["kunit"] is None


def test_run_all_runs_bench_objects_without_verbose(tmp_path):
    args = run_all.parse_args(["-v"])
    out = tmp_path / "objects.json"
    assert "objects" in run_all.SCRIPTS
    assert run_all.script_argv("objects", args, out)[1:] == [
        str(run_all.HERE / "bench_objects.py"), "--json-out", str(out)]


def test_make_test_qemu_figure_reads_the_fresh_report(tmp_path, monkeypatch, capsys):
    """bench_run.make_test_qemu with a faked 'make test-qemu' (SYNTHETIC report)."""
    import bench_run
    report = tmp_path / "latest"
    monkeypatch.setattr(bench_run, "MAKE_REPORT", report)

    def fake_run(argv, **kw):
        assert argv == ["make", "test-qemu"] and kw["merged"]
        report.mkdir()
        (report / "report.json").write_text(json.dumps(
            {"verdict": "PASS", "seconds": 9.5, "rebuilt": False}))
        return bl.Result(argv, {}, 0, 11.0, "", [
            (0.2, "VENV=.venv sh ./scripts/install-deps\n"),
            (0.6, ".venv/bin/python -m harness.cli run --method all --report r\n")])
    monkeypatch.setattr(bl, "run", fake_run)
    bench_run.make_test_qemu(bench_run.parse_args([]))
    (fig,) = bl.RESULTS
    assert fig["key"] == "make_test_qemu" and fig["value"] == 11.0
    assert fig["target"] == 15.0 and fig["met"] is True and fig["readme"]
    assert "verdict PASS" in fig["extra"] and "until the run started 0.600 s" in fig["extra"]
