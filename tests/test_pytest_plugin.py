"""The pytest plugin (harness/pytest_plugin.py): registered through pytest11, its
options and fixtures visible to any pytest run, and the example user test in
examples/ passing on a real guest."""
import re
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
    for opt in ("--hh-kernel-src", "--hh-patch", "--hh-config", "--hh-order-check",
                "--hh-reports", "hh_kernel_src", "hh_patch", "hh_config", "hh_order_check",
                "hh_reports"):
        assert opt in helptext
    markers = pytest_run("--markers", cwd=tmp_path).stdout
    assert "@pytest.mark.kernel" in markers and "@pytest.mark.qemu" in markers


@pytest.mark.kernel
@pytest.mark.qemu
def test_example_user_tests_pass(tmp_path):
    """examples/ (a probe test and an acpi-dimm test, loaded through the
    pytest11 entry point as any user's run loads them) pass on the default
    kernel, the ordering checks on by default, and keep a report folder each."""
    import json
    reports = tmp_path / "reports"
    proc = pytest_run("-v", "examples/", f"--hh-reports={reports}", cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "2 passed" in proc.stdout
    folders = {f.name: f for f in reports.iterdir()}
    assert set(folders) == {"examples_test_probe_remove.py__test_probe_online_remove",
                            "examples_test_acpi_dimm.py__test_acpi_dimm_add_remove"}
    for folder in folders.values():
        data = json.loads((folder / "report.json").read_text())
        assert (folder / "report.html").is_file() and data["verdict"] == "PASS"
        (method,) = data["methods"]
        checks = {c["name"]: c["verdict"] for c in method["checks"]}
        assert checks["tables-freed"] == checks["no-table-freed-while-linked"] == "PASS"
        assert checks["tlb-flushed-before-free"] == "PASS"     # gdb followed the removal
        assert (folder / method["method"] / "console.log").is_file()


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
                      f"--basetemp={tmp_path / 'base'}", f"--hh-reports={tmp_path / 'r'}",
                      cwd=ROOT, timeout=1200)
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

from harness.kernel import kconfig
from harness.kernel import kernel as build
from harness.kernel import source as src
from harness.kernel.source import PreparedTree

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
    # make's output as the real Make counts it: the progress lines on stderr
    with build.BuildProgress(4, interval=1.5) as progress:
        for n in range(4):
            progress.step("CC", f"mm/f{n}.o")
            time.sleep(1)
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


def fake_build_run(tmp_path: Path, *args: str):
    """pytest ARGS test_k.py in a project of the fake build, a cache of its own."""
    import os
    project = tmp_path / "project"
    project.mkdir()
    (project / "conftest.py").write_text(FAKE_BUILD_CONFTEST)
    (project / "test_k.py").write_text(FAKE_BUILD_TESTS)
    env = dict(os.environ, HOTPLUG_HARNESS_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args,
                           "test_k.py"], capture_output=True, text=True, cwd=project,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return project, proc


def test_two_workers_build_the_same_kernel_once(tmp_path):
    """pytest -n 2: both workers' session-scoped hh_kernel ask for one kernel at
    once; the cache's per-source lock makes the second wait, and it then takes
    the kernel the first built (one make, the same Image for both tests)."""
    pytest.importorskip("xdist")
    project, proc = fake_build_run(tmp_path, "-n", "2", "-rA")
    assert "2 passed" in proc.stdout
    assert len((project / "makes.log").read_text().split()) == 1     # one build
    seen = {p.name.split("-")[0]: p.read_text().split()
            for p in project.iterdir() if p.name[:2] in ("a-", "b-")}
    assert set(seen) == {"a", "b"}
    assert seen["a"][0] == seen["b"][0]                  # the same cached Image
    assert sorted(s[1] for s in seen.values()) == ["False", "True"]
    pids = {p.name.split("-")[1] for p in project.iterdir() if p.name[:2] in ("a-", "b-")}
    assert len(pids) == 2                                # two worker processes
    # shown as they come (the capture suspended while hh_kernel builds or waits)
    assert "waiting for another run holding" in proc.stderr
    assert "[build] make finished: 4 objects" in proc.stderr
    assert re.search(r"\[build\] [1-3]/4 objects \(\d+%\), \d+ s elapsed", proc.stderr)
    assert "[hh_kernel] kernel built in" in proc.stderr


def test_a_cold_build_shows_its_progress_without_s(tmp_path):
    """One process, no -s, no -n: the build's progress lines reach the terminal
    (stderr) while the test runs, not the captured output shown on failure,
    and pytest's own line is ended first."""
    _, proc = fake_build_run(tmp_path)
    assert "[build] make finished: 4 objects" in proc.stderr
    assert "[hh_kernel] kernel built in" in proc.stderr
    assert "test_k.py \n" in proc.stdout      # pytest's line ended before the build's


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


# ------------------------------------------------- markers, options, reports --

MARKED_TESTS = """\
def test_guest(hh_guest):
    pass


def test_kernel_only(hh_kernel):
    pass


def test_plain():
    pass
"""


def collected(proc) -> set:
    return {line.split("::")[1] for line in proc.stdout.splitlines() if "::" in line}


def test_tests_using_the_fixtures_get_the_markers_by_themselves(tmp_path):
    """No pytestmark in the file: hh_guest brings kernel and qemu, hh_kernel
    kernel, in time for -m to deselect by them."""
    (tmp_path / "test_m.py").write_text(MARKED_TESTS)
    runs = {m: pytest_run("--collect-only", "-q", "-m", m, cwd=tmp_path)
            for m in ("kernel", "qemu", "not kernel and not qemu", "not qemu")}
    assert collected(runs["kernel"]) == {"test_guest", "test_kernel_only"}
    assert collected(runs["qemu"]) == {"test_guest"}
    assert collected(runs["not kernel and not qemu"]) == {"test_plain"}
    assert collected(runs["not qemu"]) == {"test_kernel_only", "test_plain"}


# synthetic: hh_kernel is a kernel as the stages after the build see it
# (fakes.ART) and boot() yields a fakes.FakeGuest (no QEMU); each boot's
# BootOptions go to boots.jsonl
FAKE_GUEST_CONFTEST = """\
import json
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

sys.path.insert(0, {tests!r})
import fakes  # noqa: E402
from harness import session  # noqa: E402

HERE = Path(__file__).parent


@contextmanager
def fake_boot(art, opts, out, progress=None):
    out.mkdir(parents=True, exist_ok=True)
    with open(HERE / "boots.jsonl", "a") as f:
        f.write(json.dumps({{"mode": opts.mode, "gdb": opts.gdb}}) + "\\n")
    yield fakes.FakeGuest(out)


session.boot = fake_boot


@pytest.fixture(scope="session")
def hh_kernel():
    return fakes.ART
"""

FAKE_GUEST_TESTS = """\
import json
from pathlib import Path

from harness.pytest_plugin import hh_option
from harness.records import MethodRun, Removal

RECORDED = Path({data!r}) / "recorded-4k-48-probe" / "probe.json"


def recorded_into(rec, good):
    run = MethodRun.from_dict(json.loads(RECORDED.read_text()))
    rec.geometry = run.geometry
    rec.steps.extend(run.steps)
    rec.phases.extend(run.phases)
    rec.removals.extend(run.removals if good else
                        [Removal(run.phases[-1].name, 0x40000000, 0x48000000)])


def test_settings(hh_guest, request):
    g = hh_guest(method="probe")
    names = ("kernel_src", "patch", "config", "order_check", "reports")
    settings = {{n: hh_option(request.config, n) for n in names}}
    settings.update(guest=g.order_check, recorder=g.recorder.order_check)
    Path(__file__).with_name("settings.json").write_text(json.dumps(settings))


def test_removal_left_mapped(hh_guest):
    g = hh_guest(method="probe")
    recorded_into(g.recorder, good=False)
    g.assert_pass("no-stale-linear-map")


def test_recorded_removal(hh_guest):
    g = hh_guest(method="probe", order_check="off")
    recorded_into(g.recorder, good=True)
    g.assert_pass("no-stale-linear-map", "tables-freed")
"""


def fake_guest_project(tmp_path: Path, ini: str = "") -> Path:
    project = tmp_path / "project"
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\n" + ini)
    (project / "conftest.py").write_text(FAKE_GUEST_CONFTEST.format(
        tests=str(ROOT / "tests")))
    (project / "test_user.py").write_text(FAKE_GUEST_TESTS.format(
        data=str(ROOT / "tests" / "data")))
    return project


def settings_of(project: Path, *args) -> tuple:
    import json
    for name in ("settings.json", "boots.jsonl"):
        (project / name).unlink(missing_ok=True)
    proc = pytest_run("-q", "test_user.py::test_settings", *args, cwd=project)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    boots = [json.loads(l) for l in (project / "boots.jsonl").read_text().splitlines()]
    return json.loads((project / "settings.json").read_text()), boots


def test_ordering_checks_on_by_default_and_options_from_the_ini_file(tmp_path):
    """Defaults: the ordering checks on (the guest booted with its gdbstub, the
    recorder watching removals), reports in <rootdir>/hotplug-reports. The ini
    file's hh_* options apply, paths relative to it; the command line wins."""
    project = fake_guest_project(tmp_path)
    got, boots = settings_of(project)
    assert got == {"kernel_src": "debian", "patch": [], "config": [], "order_check": "on",
                   "reports": str(project / "hotplug-reports"), "guest": "on",
                   "recorder": "on"}
    assert boots == [{"mode": "dt", "gdb": True}]

    (project / "pytest.ini").write_text(
        "[pytest]\nhh_kernel_src = ../linux\nhh_patch =\n    fix.patch\n    more/b.patch\n"
        "hh_config = 64k-42\nhh_order_check = off\nhh_reports = out\n")
    got, boots = settings_of(project)
    assert got == {"kernel_src": str(project / "../linux"),
                   "patch": [str(project / "fix.patch"), str(project / "more/b.patch")],
                   "config": ["64k-42"], "order_check": "off",
                   "reports": str(project / "out"), "guest": "off", "recorder": "off"}
    assert boots == [{"mode": "dt", "gdb": False}]    # no gdbstub when off

    got, boots = settings_of(project, "--hh-order-check", "sampled", "--hh-reports", "cli",
                             "--hh-patch", "/x.patch", "--hh-kernel-src", "debian")
    assert (got["order_check"], got["guest"], got["reports"]) == (
        "sampled", "sampled", str(project / "cli"))
    assert got["patch"] == ["/x.patch"] and got["kernel_src"] == "debian"
    assert got["config"] == ["64k-42"]        # not given: the ini file's
    assert boots == [{"mode": "dt", "gdb": True}]

    (project / "pytest.ini").write_text("[pytest]\nhh_order_check = maybe\n")
    bad = pytest_run("-q", "test_user.py", cwd=project)
    assert bad.returncode == 4 and "hh_order_check = 'maybe': choose from on, full, " \
        "sampled, off" in bad.stderr


def test_a_failure_names_the_tests_report_folder(tmp_path):
    """assert_pass's message and the failure's 'hotplug-harness report' section
    name the folder; it holds report.json (the checks' verdicts) and
    report.html, as run --report writes them; a passing test keeps one too."""
    import json
    project = fake_guest_project(tmp_path, "hh_reports = reps\n")
    proc = pytest_run("-q", "test_user.py::test_removal_left_mapped",
                      "test_user.py::test_recorded_removal", cwd=project)
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "1 failed, 1 passed" in proc.stdout
    folder = "reps/test_user.py__test_removal_left_mapped"
    assert "no-stale-linear-map: FAIL" in proc.stdout
    assert f"report: {folder} (report.json, report.html)" in proc.stdout
    assert re.search(r"-+ hotplug-harness report -+\n" + re.escape(folder), proc.stdout)
    data = json.loads((project / folder / "report.json").read_text())
    assert data["verdict"] == "FAIL" and data["pytest_test"] == \
        "test_user.py::test_removal_left_mapped"
    (method,) = data["methods"]
    assert method["method"] == "probe"
    assert {c["name"]: c["verdict"] for c in method["checks"]}["no-stale-linear-map"] \
        == "FAIL"
    assert (project / folder / "report.html").is_file()
    assert (project / folder / "probe" / "steps.txt").is_file()
    kept = project / "reps" / "test_user.py__test_recorded_removal"
    assert (kept / "report.json").is_file() and (kept / "report.html").is_file()


def test_report_folder_names():
    from types import SimpleNamespace

    from harness import pytest_plugin as plugin
    config = SimpleNamespace(getoption=lambda name: "/r", invocation_params=SimpleNamespace(
        dir="/"))
    assert plugin.report_folder(config, "examples/test_a.py::test_x[0-acpi]") == \
        Path("/r/examples_test_a.py__test_x_0-acpi")
    long = plugin.report_folder(config, "t.py::test_" + "x" * 200)
    assert len(long.name) == 113 and long.name.startswith("t.py__test_xxx")


# ------------------------------------------------ the building blocks --------

def test_building_blocks_record_steps_as_the_probe_method_does():
    """HotplugGuest's blocks over the drive tests' guest model: the probe
    method's step names, removal steps (gdb's windows) and removals; 'before'
    and 'online' taken when the test took none; the first removal (a
    neighbour still online) has no baseline, the last one 'before'."""
    from test_drive_methods import FakeRecorder, ModelGuest, names, recorded

    from harness.pytest_plugin import HotplugGuest
    from harness.records import Removal
    run = recorded("recorded-4k-48-probe/probe.json")
    guest = ModelGuest.from_phase(run.phases[0])
    rec = FakeRecorder(guest, None)
    g = HotplugGuest(guest, rec, "user-test")
    a = g.hidden_base()
    b = a + g.block_size()
    for addr in (a, b):
        g.probe(addr)
        g.online(addr)
    g.offline(a)
    g.remove(a)
    g.remove(b)                   # memory/remove offlines it first
    assert names(rec.steps) == [
        "inspect before", f"probe {a:#x}", f"online {a:#x}", f"probe {b:#x}",
        f"online {b:#x}", "inspect online", f"offline {a:#x}", f"remove {a:#x}",
        "inspect removed-1", f"remove {b:#x}", "inspect removed-2"]
    assert rec.removal_steps == [(f"remove {a:#x}", a, b), (f"remove {b:#x}", b, 2 * b - a)]
    assert rec.removals == [Removal("removed-1", a, b, ""),
                            Removal("removed-2", b, 2 * b - a, "before")]


def test_building_blocks_plug_and_unplug_a_dimm_and_resize_virtio_mem():
    from test_drive_methods import FakeRecorder, ModelGuest, dimm_addrs, names, recorded

    from harness.pytest_plugin import HotplugGuest
    from harness.records import Removal
    run = recorded("recorded-4k-48-acpi-dimm/methodrun.json")
    guest = ModelGuest.from_phase(run.phases[0], addrs=dimm_addrs(run))
    rec = FakeRecorder(guest, None)
    g = HotplugGuest(guest, rec, "user-test")
    d = g.add_dimm(512)
    g.online(d)
    g.offline(d)
    g.delete_dimm(d)
    assert (d.name, d.memdev, d.size) == ("dimm1", "mem1", 512 << 20)
    assert names(rec.steps) == ["inspect before", "add dimm1", "online dimm1",
                                "inspect online", "offline dimm1", "remove dimm1",
                                "inspect removed-1"]
    assert [c for c, _ in guest.qmp] == ["object-add", "device_add", "query-memory-devices",
                                         "device_del", "object-del"]
    assert guest.qmp[0][1]["mem-path"] == "/run/fake/mem1"
    assert rec.removal_steps == [("remove dimm1", d.addr, d.end)]
    assert rec.removals == [Removal("removed-1", d.addr, d.end, "before")]
    assert rec.backings == [(0x40000000, "ram")]      # the DIMM's file dropped

    run = recorded("recorded-4k-48-virtio-mem/virtio-mem.json")
    guest = ModelGuest.from_phase(run.phases[0])
    a = guest.vmem["addr"] = run.removals[0].pa_start
    rec = FakeRecorder(guest, None)
    g = HotplugGuest(guest, rec, "user-test")
    g.resize_virtio_mem(512)
    g.resize_virtio_mem(256)
    g.resize_virtio_mem(0)
    half = 256 << 20
    assert names(rec.steps) == [
        "inspect before", "auto-online online_movable", "grow to 512 MiB",
        "wait for blocks online", "inspect online", "shrink to 256 MiB", "inspect removed-1",
        "shrink to 0", "inspect removed-2"]
    assert rec.removal_steps == [("shrink to 256 MiB", a + half, a + 2 * half),
                                 ("shrink to 0", a, a + half)]
    assert rec.removals == [Removal("removed-1", a + half, a + 2 * half, ""),
                            Removal("removed-2", a, a + half, "before")]
    assert [(c, x.get("value")) for c, x in guest.qmp if c == "qom-set"] == [
        ("qom-set", 512 << 20), ("qom-set", half), ("qom-set", 0)]
    assert (a, "/run/fake/vmem0") in rec.backings     # its RAM file, for the walker


def test_a_long_evidence_is_cut_in_the_message_not_in_the_report():
    from harness.pytest_plugin import _evidence
    assert _evidence("one\ntwo") == "one\ntwo"
    text = "\n".join(f"free {n}" for n in range(40))
    assert _evidence(text) == "\n".join(f"free {n}" for n in range(6)) + \
        "\n  ... 34 more line(s) in the report"
