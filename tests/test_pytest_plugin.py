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
    assert "1 passed" in proc.stdout


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
                          walk=True, step_lines=[])
    guest = SimpleNamespace(watcher=SimpleNamespace(reports=()))
    g = HotplugGuest(guest, rec, "my-test")
    checks = g.assert_pass("no-stale-linear-map", "no-stale-vmemmap", "tables-freed",
                           "online-memory-mapped", "no-kernel-splat")
    assert checks["tables-freed"].verdict == "PASS"
    # a removal the kernel did not really do: the removed range is still mapped
    rec.removals = [type(run.removals[0])(run.phases[-1].name, 0x40000000, 0x48000000)]
    with pytest.raises(AssertionError, match="no-stale-linear-map: FAIL"):
        g.assert_pass("no-stale-linear-map")
