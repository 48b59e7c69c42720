"""The pytest plugin (harness/pytest_plugin.py): registered through pytest11, its
options and fixtures visible to any pytest run, and the example user test in
examples/ passing on a real guest."""
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_run(*args, cwd, timeout=120):
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=timeout)


def test_registered_as_a_pytest11_entry_point():
    eps = entry_points()
    group = eps.select(group="pytest11") if hasattr(eps, "select") else eps["pytest11"]
    assert "harness.pytest_plugin" in {ep.value for ep in group}


def test_fixtures_and_options_in_any_project(tmp_path):
    """A project that knows nothing of the harness gets them (no conftest)."""
    (tmp_path / "test_x.py").write_text("def test_x(): pass\n")
    fixtures = pytest_run("--fixtures", cwd=tmp_path)
    assert fixtures.returncode == 0, fixtures.stderr
    assert "hh_kernel" in fixtures.stdout and "hh_guest" in fixtures.stdout
    helptext = pytest_run("--help", cwd=tmp_path).stdout
    for opt in ("--hh-kernel-src", "--hh-patch", "--hh-config"):
        assert opt in helptext
    markers = pytest_run("--markers", cwd=tmp_path).stdout
    assert "@pytest.mark.kernel" in markers and "@pytest.mark.qemu" in markers


@pytest.mark.kernel
@pytest.mark.qemu
def test_example_user_test_passes():
    proc = pytest_run("-q", "examples/", cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "2 passed" in proc.stdout


def guest_intervals(junit: Path) -> dict:
    """{test id: [(boot start, stopped)]} from the hh_guest properties."""
    import xml.etree.ElementTree as ET
    out: dict = {}
    for case in ET.parse(junit).iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        for prop in case.iter("property"):
            if prop.get("name") == "hh_guest":
                _, start, _, stopped = prop.get("value").split()
                out.setdefault(name, []).append((float(start), float(stopped)))
    return out


@pytest.mark.kernel
@pytest.mark.qemu
def test_example_user_tests_in_two_workers(tmp_path):
    """pytest -n 2 (pytest-xdist): the two example tests run in two workers, each
    with its own guest, at the same time (their QEMU lifetimes overlap), and both
    pass: no port, run folder or cache collision."""
    pytest.importorskip("xdist")
    junit = tmp_path / "junit.xml"
    proc = pytest_run("-n", "2", "-v", "examples/", f"--junitxml={junit}",
                      f"--basetemp={tmp_path / 'base'}", cwd=ROOT, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "2 passed" in proc.stdout
    workers = {line.split()[0] for line in proc.stdout.splitlines()
               if " PASSED " in line and line.startswith("[gw")}
    assert workers == {"[gw0]", "[gw1]"}, proc.stdout[-4000:]
    guests = guest_intervals(junit)
    assert len(guests) == 2 and all(len(v) == 1 for v in guests.values()), guests
    (a_start, a_end), (b_start, b_end) = (v[0] for v in guests.values())
    assert max(a_start, b_start) < min(a_end, b_end), f"the guests did not overlap: {guests}"


FAKE_BUILD_CONFTEST = """\
# synthetic: build.build() with fixed inputs and a fake 'make Image' that takes
# 4 s and logs its PID, so two xdist workers asking for the same kernel race
import os
import time
from pathlib import Path

from harness.build import kconfig
from harness.build import kernel as build
from harness.build import source as src
from harness.build.source import PreparedTree

HERE = Path(__file__).parent
(HERE / "x.patch").write_text("a")
_frags = tuple(kconfig.resolve_fragments([]))
_inputs = build.Inputs(src.Source("dir", HERE, "0" * 64),
                       tuple(src.load_patches([HERE / "x.patch"])), _frags,
                       kconfig.merge(_frags), "gcc 12", False)
build.gather_inputs = lambda req: _inputs
build.src.prepare = lambda source, patches: PreparedTree(source, HERE, ())
build.configure = lambda maker, inputs, stamp="": None


def _build_image(maker):
    with open(HERE / "makes.log", "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(4)
    boot = maker.outdir / "arch" / "arm64" / "boot"
    boot.mkdir(parents=True, exist_ok=True)
    (boot / "Image").write_bytes(b"image")
    (maker.outdir / "vmlinux").write_bytes(b"\\x7fELF")
    (maker.outdir / "System.map").write_text("ffff800080000000 T _text\\n")
    (maker.outdir / ".config").write_text("CONFIG_ARM64=y\\n")


build.Make.build_image = _build_image
"""

FAKE_BUILD_TESTS = """\
import os
from pathlib import Path


def _record(kernel, tag):
    Path(__file__).with_name(f"{tag}-{os.getpid()}").write_text(
        f"{kernel.image} {kernel.rebuilt}")


def test_a(hh_kernel):
    _record(hh_kernel, "a")


def test_b(hh_kernel):
    _record(hh_kernel, "b")
"""


def test_two_workers_build_the_same_kernel_once(tmp_path):
    """pytest -n 2: both workers' session-scoped hh_kernel ask for one kernel at
    once; the cache's per-source lock makes the second wait, and it then takes
    the kernel the first built (one make, the same Image for both tests)."""
    import os
    pytest.importorskip("xdist")
    project = tmp_path / "project"
    project.mkdir()
    (project / "conftest.py").write_text(FAKE_BUILD_CONFTEST)
    (project / "test_k.py").write_text(FAKE_BUILD_TESTS)
    env = dict(os.environ, HOTPLUG_HARNESS_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                           "-n", "2", "-rA", "test_k.py"], capture_output=True,
                          text=True, cwd=project, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "2 passed" in proc.stdout
    assert len((project / "makes.log").read_text().split()) == 1     # one build
    seen = {p.name.split("-")[0]: p.read_text().split()
            for p in project.iterdir() if p.name[:2] in ("a-", "b-")}
    assert set(seen) == {"a", "b"}
    assert seen["a"][0] == seen["b"][0]                  # the same cached Image
    assert sorted(s[1] for s in seen.values()) == ["False", "True"]
    pids = {p.name.split("-")[1] for p in project.iterdir() if p.name[:2] in ("a-", "b-")}
    assert len(pids) == 2                                # two worker processes
    assert "waiting for another run holding" in proc.stdout   # -rA: setup stderr


def test_hotplug_guest_judges_what_it_recorded():
    """HotplugGuest.judge/assert_pass on a recorded probe run (no guest): the
    harness's checks see the phases and removals the test recorded."""
    import json
    from types import SimpleNamespace

    from harness.pytest_plugin import HotplugGuest
    from harness.records import MethodRun

    run = MethodRun.from_dict(json.loads(
        (ROOT / "tests" / "data" / "recorded-4k-48-probe" / "probe.json").read_text()))
    rec = SimpleNamespace(geometry=run.geometry, steps=list(run.steps),
                          phases=list(run.phases), removals=list(run.removals), notes=[],
                          walk=True, step_lines=[], bootmem=None, kselftest=None,
                          order=[])   # a Recorder's attributes, as a fresh one has them
    guest = SimpleNamespace(watcher=SimpleNamespace(reports=()))
    g = HotplugGuest(guest, rec, "my-test")
    checks = g.assert_pass("no-stale-linear-map", "no-stale-vmemmap", "tables-freed",
                           "online-memory-mapped", "no-kernel-splat")
    assert checks["tables-freed"].verdict == "PASS"
    # a removal the kernel did not really do: the removed range is still mapped
    rec.removals = [type(run.removals[0])(run.phases[-1].name, 0x40000000, 0x48000000)]
    with pytest.raises(AssertionError, match="no-stale-linear-map: FAIL"):
        g.assert_pass("no-stale-linear-map")
