"""bench/kunitlib.py: kunit.py's command, build dir and output parsing.

tests/data/kunit-run-cold.log and kunit-run-warm.log are
RECORDED: captured from a real kunit.py run on this machine (2-core Debian 12
VM), 2026-11-27 22:59-23:03, by '.venv/bin/python
bench/bench_kunit.py' (kunit.py from Debian's linux-source-6.12, the
harness's default kernel tree: a cold run in a fresh build dir, then a warm
one). Each is kunitlib's log file as written (its first two lines, the
command and '# exit 0, wall ...', are kunitlib's; the rest is kunit.py's
stdout and stderr as they came).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
sys.path.insert(0, str(ROOT / "bench"))

import benchlib as bl  # noqa: E402
import kunitlib as kl  # noqa: E402

COLD = DATA / "kunit-run-cold.log"
WARM = DATA / "kunit-run-warm.log"


def test_elapsed_line_of_a_real_cold_run():
    e = kl.parse_elapsed(COLD.read_text())
    assert e == kl.Elapsed(total=244.839, configuring=4.588, building=227.092,
                           running=13.111)
    assert e.build == pytest.approx(231.68)


def test_elapsed_line_of_a_real_warm_run():
    e = kl.parse_elapsed(WARM.read_text())
    assert e == kl.Elapsed(total=16.721, configuring=0.002, building=5.422, running=11.285)


def test_tests_line_of_a_real_run():
    assert kl.parse_tests(COLD.read_text()) == {"tests": 493, "passed": 455, "skipped": 38}
    assert kl.parse_tests(WARM.read_text()) == {"tests": 493, "passed": 455, "skipped": 38}


def test_the_recorded_runs_are_what_kunitlib_runs():
    first = COLD.read_text().splitlines()[0]
    assert first.startswith("$ CCACHE_DISABLE=1 PYTHONDONTWRITEBYTECODE=1 ")
    assert " tools/testing/kunit/kunit.py " not in first   # an absolute path
    assert "/tools/testing/kunit/kunit.py run --arch=arm64 " \
           "--cross_compile=aarch64-linux-gnu- --build_dir=" in first
    assert "/hotplug-harness/kunit/" in first


def test_elapsed_without_the_line_or_with_several():
    assert kl.parse_elapsed("[10:00:00] Configuring KUnit Kernel ...\n") is None
    assert kl.parse_tests("nothing\n") is None
    two = ("[1] Elapsed time: 1.000s total, 0.100s configuring, 0.200s building, "
           "0.700s running\n[2] Elapsed time: 2.000s total, 0.000s configuring, "
           "1.000s building, 1.000s running\n")
    assert kl.parse_elapsed(two).total == 2.0      # the last one
    # a failing run's summary line
    assert kl.parse_tests("[x] Testing complete. Ran 10 tests: passed: 8, failed: 1, "
                          "skipped: 1") == {"tests": 10, "passed": 8, "failed": 1,
                                            "skipped": 1}
    assert kl.parse_tests("Testing complete. Ran 1 test: passed: 1") == \
        {"tests": 1, "passed": 1}


def test_count_objects(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/x.o", "a/b/y.o", "a/b/.y.o.cmd", "a/b/z.c", "top.o"):
        (tmp_path / name).write_text("")
    assert kl.count_objects(tmp_path) == 3


def test_build_dir_under_the_harness_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOTPLUG_HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KUNIT_PYTHON", "/usr/bin/python3")
    kt = kl.KunitTree(tmp_path / "src" / "linux", "585a4a074597aefa",
                      "tarball:/usr/src/linux-source-6.12.tar.xz@585a4a074597aefa")
    assert kt.build_dir == tmp_path / "cache" / "kunit" / "585a4a074597aefa" / "build"
    assert kl.argv(kt) == [
        "/usr/bin/python3", str(tmp_path / "src/linux/tools/testing/kunit/kunit.py"),
        "run", "--arch=arm64", "--cross_compile=aarch64-linux-gnu-",
        f"--build_dir={kt.build_dir}"]
    assert kl.command(kt).startswith("$ CCACHE_DISABLE=1 PYTHONDONTWRITEBYTECODE=1 "
                                     "/usr/bin/python3 ")


def test_tree_of_refuses_artifacts_without_an_identity():
    with pytest.raises(SystemExit) as e:
        kl.tree_of({"source": "tarball:/usr/src/linux-source-6.12.tar.xz"})
    assert e.value.code == 2


def fake_tree(tmp_path, monkeypatch, script: str) -> kl.KunitTree:
    """A kunit.py stand-in (synthetic: prints what kunit.py prints) in a tree."""
    monkeypatch.setenv("HOTPLUG_HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KUNIT_PYTHON", sys.executable)
    tree = tmp_path / "linux"
    (tree / kl.KUNIT_PY).parent.mkdir(parents=True)
    (tree / kl.KUNIT_PY).write_text(script)
    return kl.KunitTree(tree, "0123456789abcdef", "tarball:/x.tar.xz@0123456789abcdef")


FAKE_KUNIT = """\
import os, sys
build = [a for a in sys.argv if a.startswith("--build_dir=")][0].split("=", 1)[1]
os.makedirs(os.path.join(build, "arch/arm64/boot"), exist_ok=True)
open(os.path.join(build, ".config"), "w").close()
open(os.path.join(build, "arch/arm64/boot/Image.gz"), "w").close()
open(os.path.join(build, "a.o"), "w").close()
print("[10:00:00] Testing complete. Ran 2 tests: passed: 2")
print("[10:00:00] Elapsed time: 3.000s total, 1.000s configuring, 1.500s building, "
      "0.500s running")
"""


def test_cold_then_warm_with_a_stand_in(tmp_path, monkeypatch, capsys):
    kt = fake_tree(tmp_path, monkeypatch, FAKE_KUNIT)
    (kt.build_dir).mkdir(parents=True)
    (kt.build_dir / "stale.o").write_text("")          # cold starts from empty
    cold = kl.run_cold(kt)
    assert cold.objects == 1 and cold.tests == {"tests": 2, "passed": 2}
    assert cold.elapsed.build == 2.5
    assert (kt.home / "last-cold.log").read_text().startswith("$ CCACHE_DISABLE=1 ")
    warm = kl.run_warm(kt)
    assert not warm.primed and warm.objects is None
    assert "2 tests (passed 2)" in warm.extra()
    bl.RESULTS.clear()
    kl.print_run(warm, "kunit.py warm run", "kunit_warm_run")
    assert capsys.readouterr().out.startswith("kunit.py warm run: ")
    assert bl.RESULTS[0]["key"] == "kunit_warm_run"
    bl.RESULTS.clear()


def test_warm_builds_first_when_there_is_no_build_dir(tmp_path, monkeypatch):
    kt = fake_tree(tmp_path, monkeypatch, FAKE_KUNIT)
    warm = kl.run_warm(kt)
    assert warm.primed and "built first, untimed" in warm.extra()
    assert (kt.home / "last-prime.log").exists()


def test_a_kunit_failure_is_a_failed_command(tmp_path, monkeypatch, capsys):
    kt = fake_tree(tmp_path, monkeypatch, "import sys\nprint('[x] build failed: "
                                          "mmu.c:1: error')\nsys.exit(1)\n")
    with pytest.raises(SystemExit) as e:
        kl.run_cold(kt)
    assert e.value.code == 2
    out = capsys.readouterr().out
    assert out.startswith("FAILED (kunit.py exit 1) after ")
    assert "    [x] build failed: mmu.c:1: error" in out
