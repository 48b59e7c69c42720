"""Methods side by side (``RunOptions.jobs``, ``run --guests``): the runner's
threads, their labelled progress lines, the report's order, and Ctrl-C.

No QEMU: ``runner.boot`` is a fake guest and the methods are stand-ins put into
the registry; the real two-guest run is ``run --method all`` in test_qemu.py
(``make test-qemu``'s default is two guests).
"""
from __future__ import annotations

import _thread
import io
import json
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from fakes import FakeGuest
from harness import progress, runner, signals
from harness.drive.method import Method
from harness.errors import MachineError


@dataclass
class FakeOptions:
    cycles: int = 1


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """method-seconds.json goes to a cache of the test's own."""
    monkeypatch.setenv("HOTPLUG_HARNESS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def fake_guests(monkeypatch):
    """runner.boot yields a FakeGuest; returns the list of guests closed."""
    closed = []

    @contextmanager
    def boot(art, opts, out, progress=True):
        try:
            yield FakeGuest(out)
        finally:
            closed.append(out.name)
    monkeypatch.setattr(runner, "boot", boot)
    return closed


def stand_in(monkeypatch, name, drive):
    monkeypatch.setitem(runner.METHODS, name, Method(
        name=name, mode="dt", summary="", options=FakeOptions, drive=drive,
        honours=frozenset({"cycles"})))


@pytest.fixture
def printed():
    stream = io.StringIO()
    old = progress.install(progress.Printer(progress.NORMAL, stream))
    yield stream
    progress.install(old)


def test_default_jobs_is_two_guests_at_most():
    assert runner.default_jobs(("a",)) == 1
    assert runner.default_jobs(("a", "b", "c")) == min(2, runner.os.cpu_count() or 1)


def test_two_methods_run_at_once_and_keep_their_order(monkeypatch, tmp_path,
                                                      fake_guests, printed):
    both = threading.Barrier(2, timeout=10)     # broken unless both run at once
    finished = []

    def make(name, delay):
        def drive(rec, opts):
            rec.step(f"start {name}", lambda: both.wait())
            time.sleep(delay)
            rec.step(f"end {name}", lambda: finished.append(name))
        return drive
    stand_in(monkeypatch, "slow", make("slow", 0.3))
    stand_in(monkeypatch, "fast", make("fast", 0.0))
    stand_in(monkeypatch, "third", lambda rec, opts: rec.step("only", lambda: None))
    ropts = runner.RunOptions(methods=("slow", "fast", "third"), jobs=2)
    runs = runner.run_all(SimpleNamespace(kconfig={}), ropts, tmp_path)
    assert [r.method for r in runs] == ["slow", "fast", "third"]   # not finish order
    assert finished == ["fast", "slow"]
    assert all(r.error is None for r in runs)
    assert sorted(fake_guests) == ["fast", "slow", "third"]
    lines = printed.getvalue().splitlines()
    # every line a method's thread printed starts with its name, once
    steps = [ln for ln in lines if " ok " in ln or "ok  " in ln]
    assert steps and all(ln.startswith(("[slow] ", "[fast] ", "[third] ")) for ln in steps)
    assert not any(ln.startswith("[slow] [slow]") for ln in lines)
    assert "[third] booting (dt)" in lines
    assert any(ln.startswith("[fast] done in ") for ln in lines)


def test_one_job_is_one_after_the_other(monkeypatch, tmp_path, fake_guests, printed):
    running, most = [0], [0]

    def drive(rec, opts):
        running[0] += 1
        most[0] = max(most[0], running[0])
        time.sleep(0.05)
        running[0] -= 1
    stand_in(monkeypatch, "a", drive)
    stand_in(monkeypatch, "b", drive)
    runs = runner.run_all(SimpleNamespace(kconfig={}), runner.RunOptions(
        methods=("a", "b"), jobs=1), tmp_path)
    assert [r.method for r in runs] == ["a", "b"] and most == [1]
    assert not any(ln.startswith("[a]   ") for ln in printed.getvalue().splitlines())


def test_a_harness_bug_in_a_worker_reaches_the_caller(monkeypatch, tmp_path, fake_guests):
    def broken(name, art, ropts, out):
        raise RuntimeError("bug in " + name)
    monkeypatch.setattr(runner, "run_method", broken)
    with pytest.raises(RuntimeError, match="bug in"):
        runner.run_all(SimpleNamespace(kconfig={}), runner.RunOptions(
            methods=("a", "b"), jobs=2), tmp_path)


def test_ctrl_c_kills_the_guests_and_marks_both_runs_interrupted(monkeypatch, tmp_path,
                                                                 fake_guests, printed):
    """SIGINT reaches the main thread only: it kills the workers' QEMUs (here:
    the fake guests' steps fail as a killed QEMU makes them fail), waits for the
    workers, and reports both runs as interrupted in their steps, the third
    method as not run."""
    killed = threading.Event()
    started = threading.Barrier(3, timeout=10)

    def drive(rec, opts):
        rec.step("add", lambda: None)

        def wait_for_qemu_to_die():
            started.wait()
            if not killed.wait(10):
                raise AssertionError("the guests were never killed")
            raise MachineError("QEMU exited (signal 9) while running step 'hold'",
                               step="hold")
        rec.step("hold", wait_for_qemu_to_die)
    for name in ("a", "b", "c"):
        stand_in(monkeypatch, name, drive)
    monkeypatch.setattr(runner, "_kill_guests", killed.set)

    def interrupt():
        started.wait()
        time.sleep(0.1)
        _thread.interrupt_main()       # what a SIGINT does: KeyboardInterrupt in main
    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(KeyboardInterrupt) as e:
        runner.run_all(SimpleNamespace(kconfig={}), runner.RunOptions(
            methods=("a", "b", "c"), jobs=2), tmp_path)
    assert [r.method for r in e.value.runs] == ["a", "b"]
    for run in e.value.runs:
        assert run.error.blame == "interrupted" and run.error.step == "hold"
        assert run.error.message == f"interrupted by {signals.signame(e.value)} during step 'hold'"
        assert [s.name for s in run.steps] == ["add", "hold"]
    assert e.value.not_run == ["c"]
    assert sorted(fake_guests) == ["a", "b"]          # both guests closed
    lines = printed.getvalue().splitlines()
    assert any(ln.startswith("[a] interrupted after ") for ln in lines)
    assert not any(ln.startswith("[c]") for ln in lines)


def test_kill_guests_signals_only_our_qemu(monkeypatch):
    sent = []
    monkeypatch.setattr(signals, "descendants", lambda: {11: 5, 12: 6, 13: 7})
    monkeypatch.setattr(signals, "start_time", lambda pid: {11: 5, 12: 6, 13: 99}[pid])
    monkeypatch.setattr(signals, "kill", lambda pid, sig: sent.append((pid, sig)))
    comms = {11: "qemu-system-aar\n", 12: "gdb-multiarch\n", 13: "qemu-system-aar\n"}

    class FakePath:
        def __init__(self, path):
            self.pid = int(str(path).split("/")[2])

        def read_text(self):
            return comms[self.pid]
    monkeypatch.setattr(runner, "Path", FakePath)
    runner._kill_guests()
    assert sent == [(11, runner.signal.SIGKILL)]   # 13 is a reused PID: not ours


def test_the_longest_method_of_the_last_run_starts_first(monkeypatch, tmp_path,
                                                        fake_guests, own_cache):
    """Scheduling by the last run's times (unknown methods first, in the given
    order); the report keeps the given order; the times are saved for next time."""
    own_cache.mkdir(parents=True, exist_ok=True)
    (own_cache / "method-seconds.json").write_text(
        '{"": {"short": 1.0, "long": 9.0, "middle": 5.0}}')
    began = []
    first_two = threading.Barrier(2, timeout=10)

    def drive(rec, opts):
        name = rec.guest.out_dir.name
        began.append(name)
        if name in ("new", "long"):      # both lanes busy before the next is taken
            first_two.wait()
    for name in ("short", "long", "middle", "new"):
        stand_in(monkeypatch, name, drive)
    ropts = runner.RunOptions(methods=("short", "long", "middle", "new"), jobs=2)
    runs = runner.run_all(SimpleNamespace(kconfig={}), ropts, tmp_path / "out")
    assert [r.method for r in runs] == ["short", "long", "middle", "new"]
    assert set(began[:2]) == {"new", "long"} and set(began[2:]) == {"middle", "short"}
    assert runner.schedule(("short", "long", "middle", "new"), {
        "short": 1.0, "long": 9.0, "middle": 5.0}) == ["new", "long", "middle", "short"]
    saved = runner.method_seconds()
    assert set(saved) == {"short", "long", "middle", "new"} and saved["long"] < 9.0


def test_method_times_are_kept_per_kernel_config(own_cache):
    """A run of another kernel (a repro, a geometry) does not reorder the next
    run of the default one; a config never seen borrows the latest times."""
    own_cache.mkdir(parents=True, exist_ok=True)
    runner.save_method_seconds({"probe": 7.6, "acpi-dimm": 6.0}, "default")
    runner.save_method_seconds({"probe": 3.0}, "64k")
    assert runner.method_seconds("default") == {"probe": 7.6, "acpi-dimm": 6.0}
    assert runner.method_seconds("64k") == {"probe": 3.0, "acpi-dimm": 6.0}
    assert runner.method_seconds("patched-elsewhere") == {"probe": 3.0, "acpi-dimm": 6.0}
    runner.save_method_seconds({"acpi-dimm": 5.5}, "default")      # merged, moved last
    assert runner.method_seconds("default") == {"probe": 7.6, "acpi-dimm": 5.5}
    assert runner.method_seconds("new") == {"probe": 7.6, "acpi-dimm": 5.5}
    for i in range(runner.KEEP_CONFIGS + 3):
        runner.save_method_seconds({"probe": float(i)}, f"c{i}")
    assert len(json.loads((own_cache / "method-seconds.json").read_text())) == \
        runner.KEEP_CONFIGS
    (own_cache / "method-seconds.json").write_text('{"probe": 7.6}')   # the old format
    assert runner.method_seconds("default") == {}
