"""Run hygiene: a fresh, private report folder per run; Ctrl-C and SIGTERM stop
everything the harness started and leave a partial report; run folders of dead
runs on /dev/shm are swept.

Unit tests fake the build and the runner; the tests marked ``qemu`` send real
signals to a real run."""
import glob
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from procs import pids_where

from fakes import FakeGuest, shm_left_behind
from harness import cli, progress, runner, signals
from harness.cli import run as cli_run
from harness.drive.method import Method
from harness.machine import qemu as machine
from harness.records import MethodRun, Step

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def restore():
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, h in old.items():
        signal.signal(s, h)
    progress.set_level(progress.NORMAL)
    signals._state.update(signum=None, snapshot={})


def mode(path) -> int:
    return Path(path).stat().st_mode & 0o777


# ------------------------------------------------------------ fake run ------

ART = SimpleNamespace(source="debian 6.12", patches=(("0001-x.patch", "ab"),),
                      config_digest="cd", cache_key="ef" * 32, kernel_release="6.12.0",
                      fragments=("base", "4k-48"), seconds=0.1, rebuilt=False)


def partial_probe() -> MethodRun:
    return MethodRun(method="probe", geometry={},
                     steps=(Step("add 0x80000000", 1.5, "ssh"),
                            Step("online 0x80000000", 0.2, "ssh", ok=False)),
                     error={"message": "interrupted by SIGTERM during step "
                                       "'online 0x80000000'",
                            "step": "online 0x80000000", "blame": "interrupted",
                            "evidence": ""})


@pytest.fixture
def fake_run(monkeypatch, tmp_path):
    """cmd_run with the build and run_all replaced. ``behaviour(out)`` runs in
    place of run_all and returns the MethodRuns (or raises)."""
    monkeypatch.chdir(tmp_path)

    def install(behaviour, build=lambda: ART):
        monkeypatch.setattr(cli_run.build_mod, "build",
                            lambda req, progress=None: build())
        monkeypatch.setattr(runner, "run_all", lambda art, ropts, out: behaviour(out))
    return install


def write_console(out: Path, text: str) -> None:
    (out / "probe").mkdir(parents=True, exist_ok=True)
    (out / "probe" / "console.log").write_text(text)


def test_report_folder_is_replaced_not_merged(fake_run, tmp_path, capsys):
    report = tmp_path / "reports" / "latest"

    def first(out):
        write_console(out, "first run\n")
        (out / "probe" / "ptdump-before.txt").write_text("old dump\n")
        return [MethodRun(method="probe", geometry={})]
    fake_run(first)
    cli.main(["run", "--method", "probe", "--report", str(report)])
    assert (report / "probe" / "ptdump-before.txt").exists()

    def second(out):
        write_console(out, "second run\n")
        return [MethodRun(method="probe", geometry={})]
    fake_run(second)
    cli.main(["run", "--method", "probe", "--report", str(report)])
    assert (report / "probe" / "console.log").read_text() == "second run\n"
    assert not (report / "probe" / "ptdump-before.txt").exists()   # nothing merged
    assert sorted(p.name for p in report.parent.iterdir()) == ["latest"]  # no temp left
    assert json.loads((report / "report.json").read_text())["kernel"]["release"] == "6.12.0"
    assert f"report: {report}" in capsys.readouterr().out


def test_report_folder_and_created_parents_are_private(fake_run, tmp_path):
    os.umask(0o022)
    (tmp_path / "existing").mkdir(mode=0o755)
    report = tmp_path / "existing" / "new" / "deeper" / "rep"
    fake_run(lambda out: [MethodRun(method="probe", geometry={})])
    cli.main(["run", "--method", "probe", "--report", str(report)])
    assert mode(report) == 0o700
    assert mode(report.parent) == mode(report.parent.parent) == 0o700
    assert mode(tmp_path / "existing") == 0o755          # not ours: left alone


def test_default_run_folder_is_private(fake_run, tmp_path):
    fake_run(lambda out: [MethodRun(method="probe", geometry={})])
    cli.main(["run", "--method", "probe"])
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and mode(runs[0]) == 0o700 and mode(tmp_path / "runs") == 0o700
    assert (runs[0] / "report.json").exists()


def test_a_folder_the_harness_did_not_write_is_refused(fake_run, tmp_path, capsys):
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious\n")
    fake_run(lambda out: pytest.fail("must not run"))
    assert cli.main(["run", "--method", "probe", "--report", str(mine)]) == 2
    assert "holds no harness report" in capsys.readouterr().err
    assert (mine / "thesis.tex").read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]


def test_a_harness_bug_mid_run_still_leaves_the_partial_folder(fake_run, tmp_path,
                                                               capsys):
    report = tmp_path / "rep"
    report.mkdir()
    (report / "report.json").write_text("{}")

    def crash(out):
        write_console(out, "new console\n")
        raise RuntimeError("bug")
    fake_run(crash)
    assert cli.main(["run", "--method", "probe", "--report", str(report)]) == 2
    assert "harness bug" in capsys.readouterr().err
    assert (report / "probe" / "console.log").read_text() == "new console\n"
    assert not (report / "report.json").exists()        # the old one is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]


@pytest.mark.parametrize("exc,code,name", [(signals.Interrupted, 130, "SIGINT"),
                                           (signals.Terminated, 143, "SIGTERM")])
def test_interrupted_run_writes_a_partial_report(fake_run, tmp_path, capsys,
                                                 exc, code, name):
    report = tmp_path / "rep"

    def interrupted(out):
        write_console(out, "booted\nharness: step add 0x80000000\n")
        e = exc()
        e.runs, e.not_run = [partial_probe()], ["virtio-mem"]
        raise e
    fake_run(interrupted)
    rc = cli.main(["run", "--method", "probe,virtio-mem", "--report", str(report)])
    out, err = capsys.readouterr()
    assert rc == code
    data = json.loads((report / "report.json").read_text())
    assert data["interrupted"] is True and data["signal"] == name
    assert data["verdict"] == "ERROR" and data["exit_code"] == code
    assert data["not_run"] == ["virtio-mem"] and data["stopped_in"] == "run"
    steps = data["methods"][0]["steps"]
    assert [s["name"] for s in steps] == ["add 0x80000000", "online 0x80000000"]
    assert data["methods"][0]["run"]["error"]["blame"] == "interrupted"
    assert (report / "probe" / "console.log").exists() and (report / "junit.xml").exists()
    assert f"interrupted by {name}: partial report (methods not run: virtio-mem)" in out
    assert f"verdict: ERROR (exit {code})" in out
    assert f"interrupted by {name} during the run" in err
    # re-judging keeps it an interrupted run
    assert cli.main(["report", str(report)]) == code


def test_interrupted_build_writes_a_partial_report(fake_run, tmp_path, capsys):
    report = tmp_path / "rep"

    def build():
        raise signals.Terminated()
    fake_run(lambda out: pytest.fail("must not run"), build=build)
    assert cli.main(["run", "--method", "probe", "--report", str(report)]) == 143
    data = json.loads((report / "report.json").read_text())
    assert data["interrupted"] and data["stopped_in"] == "build"
    assert data["methods"] == [] and data["not_run"] == ["probe"]
    assert data["kernel"] == {} and data["exit_code"] == 143


# ------------------------------------------------------------ runner --------

@dataclass
class FakeOptions:
    cycles: int = 1


def test_runner_keeps_the_steps_of_an_interrupted_method(monkeypatch, tmp_path):
    closed = []

    @contextmanager
    def boot(art, opts, out, progress=True):
        try:
            yield FakeGuest(out)
        finally:
            closed.append(True)

    def drive(rec, opts):
        rec.step("add 0x80000000", lambda: "ok")
        rec.step("online 0x80000000", lambda: (_ for _ in ()).throw(signals.Terminated()))

    method = Method(name="probe", mode="dt", summary="", options=FakeOptions, drive=drive,
                    honours=frozenset({"cycles"}))
    monkeypatch.setattr(runner, "boot", boot)
    monkeypatch.setitem(runner.METHODS, "probe", method)
    ropts = runner.RunOptions(methods=("probe", "virtio-mem"))
    with pytest.raises(signals.Terminated) as e:
        runner.run_all(SimpleNamespace(kconfig={}), ropts, tmp_path)
    assert closed == [True]
    run = e.value.runs[0]
    assert [(s.name, s.ok) for s in run.steps] == [("add 0x80000000", True),
                                                  ("online 0x80000000", False)]
    assert run.error["blame"] == "interrupted" and run.error["step"] == "online 0x80000000"
    assert "SIGTERM" in run.error["message"]
    assert e.value.not_run == ["virtio-mem"]


# ------------------------------------------------------------ signals -------

def test_first_signal_raises_later_ones_are_ignored(capsys):
    signals.install()
    with pytest.raises(signals.Terminated) as e:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
    assert e.value.exit_code == 143 and signals.received() == signal.SIGTERM
    os.kill(os.getpid(), signal.SIGINT)       # during the clean-up: no exception
    time.sleep(0.1)
    assert "SIGINT again" in capsys.readouterr().err
    assert signals.exit_code() == 143


def test_stop_children_ends_orphans_of_a_killed_make(tmp_path):
    """make killed with SIGKILL (what build.py does on an exception) leaves its
    compilers running: the PIDs noted at the signal are ended afterwards."""
    pids = tmp_path / "pids"
    make = subprocess.Popen(["sh", "-c", f"sleep 300 & echo $! >> {pids}; "
                                         f"sleep 301 & echo $! >> {pids}; wait"])
    while not pids.exists() or len(pids.read_text().split()) < 2:
        time.sleep(0.05)
    children = [int(p) for p in pids.read_text().split()]
    signals.install()
    with pytest.raises(signals.Interrupted):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)
    assert set(children) | {make.pid} <= set(signals._state["snapshot"])
    make.kill()
    make.wait()
    assert all(signals.start_time(p) for p in children)      # orphans still run
    stopped = signals.stop_children(grace=1.0)
    assert set(children) <= set(stopped)
    time.sleep(0.2)
    for pid in children:
        assert not signals._alive(pid, signals.start_time(pid)), pid


def test_stop_children_spares_a_reused_pid():
    """A noted PID now held by another process (other start time) is left alone."""
    out = subprocess.run(["sh", "-c", "sleep 30 >/dev/null 2>&1 & echo $!"],
                         capture_output=True, text=True).stdout
    pid = int(out)                       # an orphan: no longer our descendant
    start = signals.start_time(pid)
    try:
        signals._state["snapshot"] = {pid: start - 1}
        assert pid not in signals.stop_children(grace=0.1)
        assert signals.start_time(pid) == start
        signals._state["snapshot"] = {pid: start}
        assert pid in signals.stop_children(grace=1.0)
        time.sleep(0.2)
        assert not signals._alive(pid, start)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


FAKE_MAKE = """#!/bin/sh
sleep 300 & echo $! >> "$FAKE_MAKE_PIDS"
sleep 301 & echo $! >> "$FAKE_MAKE_PIDS"
echo "  CC      mm/a.o"
wait
"""


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_a_build_stops_make_and_its_children(tmp_path, fake_tree, sig,
                                                           code):
    """A real 'hotplug-harness build' whose make (first on PATH) starts two
    long compiler-like children: the signal ends all of them, exit 130/143."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "make").write_text(FAKE_MAKE)
    (bin_dir / "make").chmod(0o755)
    pids = tmp_path / "pids"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}",
               FAKE_MAKE_PIDS=str(pids), HOTPLUG_HARNESS_CACHE=str(tmp_path / "cache"))
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "build", "--kernel-src",
                             str(fake_tree), "--no-series"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    children = []
    try:
        for line in proc.stderr:
            if line.startswith("$ make"):
                break
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            children = [int(p) for p in pids.read_text().split()] if pids.exists() else []
            if len(children) == 2:
                break
            time.sleep(0.05)
        assert len(children) == 2, proc.stderr.read()
        make_pid = [p for p, _ in signals.descendants(proc.pid).items()
                    if Path(f"/proc/{p}/cmdline").read_bytes().startswith(b"/bin/sh")]
        starts = {p: signals.start_time(p) for p in children + make_pid}
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == code, err
        assert f"interrupted by {signal.Signals(sig).name}" in err
        assert "error" not in err and "does not build" not in err
        time.sleep(0.2)
        for pid, start in starts.items():
            assert not signals._alive(pid, start), f"{pid} still running"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# ------------------------------------------------------------ /dev/shm sweep -

def run_dir(base: Path, name: str, owner: str | None) -> Path:
    d = base / name
    d.mkdir(mode=0o700)
    (d / "ram0").write_bytes(b"\0" * 64)
    if owner is not None:
        (d / machine.OWNER_FILE).write_text(owner)
    return d


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_sweep_removes_only_folders_of_dead_runs(tmp_path, capsys):
    me = f"{os.getpid()} {signals.start_time(os.getpid())}\n"
    live = run_dir(tmp_path, "hotplug-harness-live", me)
    dead = run_dir(tmp_path, "hotplug-harness-dead", f"{dead_pid()} 12345\n")
    reused = run_dir(tmp_path, "hotplug-harness-reused", f"{os.getpid()} 1\n")
    no_owner = run_dir(tmp_path, "hotplug-harness-starting", None)
    garbage = run_dir(tmp_path, "hotplug-harness-garbage", "")
    other = run_dir(tmp_path, "someone-else", f"{dead_pid()} 1\n")
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "keep").write_text("x")
    (tmp_path / "hotplug-harness-link").symlink_to(tmp_path / "target")
    removed = machine.sweep_run_dirs(tmp_path)
    assert sorted(p.name for p in removed) == ["hotplug-harness-dead",
                                               "hotplug-harness-reused"]
    assert not dead.exists() and not reused.exists()
    for kept in (live, no_owner, garbage, other):
        assert kept.exists(), kept
    assert (tmp_path / "target" / "keep").exists()
    assert "hotplug-harness-dead, left by a run that died" in capsys.readouterr().err


def test_owner_without_start_time_must_be_a_harness_process(tmp_path):
    sleeper = subprocess.Popen(["sleep", "30"])
    harness_like = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)",
                                     "harness"])
    for p, word in ((sleeper, b"sleep"), (harness_like, b"harness")):
        for _ in range(200):      # until the child has exec'd (cmdline is final)
            if word in Path(f"/proc/{p.pid}/cmdline").read_bytes():
                break
            time.sleep(0.01)
    try:
        d = run_dir(tmp_path, "hotplug-harness-x", f"{sleeper.pid}\n")
        assert machine.run_dir_owner_alive(d) is False      # alive, but not ours
        (d / machine.OWNER_FILE).write_text(f"{harness_like.pid}\n")
        assert machine.run_dir_owner_alive(d) is True
        (d / machine.OWNER_FILE).write_text(f"{dead_pid()}\n")
        assert machine.run_dir_owner_alive(d) is False
    finally:
        for p in (sleeper, harness_like):
            p.kill()
            p.wait()


def test_make_run_dir_names_its_owner_and_sweeps(tmp_path, monkeypatch):
    monkeypatch.setattr(machine, "SHM", tmp_path)
    dead = run_dir(tmp_path, "hotplug-harness-dead", f"{dead_pid()} 1\n")
    path = machine.make_run_dir()
    try:
        assert path.parent == tmp_path and mode(path) == 0o700
        pid, start = (path / machine.OWNER_FILE).read_text().split()
        assert int(pid) == os.getpid() and int(start) == signals.start_time(os.getpid())
        assert machine.run_dir_owner_alive(path) is True
        assert not dead.exists()
    finally:
        import shutil
        shutil.rmtree(path)


# ------------------------------------------------------------ real QEMU -----

def our_shm() -> set:
    return set(glob.glob("/dev/shm/hotplug-harness-*"))


def qemu_processes(needle: str) -> list:
    """PIDs of qemu-system-aarch64 processes whose command line has ``needle``."""
    return pids_where("cmdline", lambda argv: argv[0].endswith(b"qemu-system-aarch64")
                      and any(needle.encode() in a for a in argv))


@pytest.fixture(scope="module")
def kernel():
    from harness.kernel import kernel as build
    return build.build(build.BuildRequest())


def _owner_pid(run_dir: str):
    try:
        return int((Path(run_dir) / machine.OWNER_FILE).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@pytest.mark.kernel
@pytest.mark.qemu
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_a_real_run(kernel, tmp_path, sig, code):
    before = our_shm()
    report = tmp_path / "rep"
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", "--method",
                             "probe", "--report", str(report)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dirs = set()
    try:
        for line in proc.stderr:      # "[probe] booting (dt)", then step lines
            run_dirs |= our_shm() - before
            if line.startswith("  ok ") or line.startswith("  ERR "):
                break
        else:
            pytest.fail("no step line: " + proc.stdout.read()[-2000:])
        run_dirs |= our_shm() - before
        # only this run's folder (another run on the machine may have one too)
        run_dirs = {d for d in run_dirs if _owner_pid(d) == proc.pid}
        assert len(run_dirs) == 1, run_dirs
        run_dir = run_dirs.pop()
        assert qemu_processes(run_dir), "QEMU not running yet?"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, err[-3000:]
    name = signal.Signals(sig).name
    assert f"interrupted by {name}" in err
    assert f"verdict: ERROR (exit {code})" in out
    data = json.loads((report / "report.json").read_text())
    assert data["interrupted"] is True and data["signal"] == name
    assert data["verdict"] == "ERROR" and data["exit_code"] == code
    method = data["methods"][0]
    assert method["method"] == "probe" and method["steps"], method["steps"]
    assert method["run"]["error"]["blame"] == "interrupted"
    assert (report / "probe" / "console.log").stat().st_size > 0
    assert (report / "probe" / "qemu.cmdline").exists()
    assert mode(report) == 0o700
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]
    time.sleep(0.5)
    assert qemu_processes(run_dir) == [], "QEMU outlived the harness"
    assert not os.path.exists(run_dir)
    assert shm_left_behind(before) == set()


@pytest.mark.kernel
@pytest.mark.qemu
def test_boot_exec_uname(kernel, tmp_path):
    before = our_shm()
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "boot", "--mode", "dt",
                           "--exec", "uname -r", "--out", str(tmp_path / "o")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == kernel.kernel_release + "\n"
    assert "HARNESS-READY" in (tmp_path / "o" / "console.log").read_text(errors="replace")
    assert shm_left_behind(before) == set()
    assert qemu_processes(str(tmp_path)) == []


@pytest.mark.kernel
@pytest.mark.qemu
def test_boot_exec_status_and_stderr(kernel, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "-q", "boot", "--mode",
                           "dt", "--exec", "echo out; echo err >&2; exit 7"],
                          cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 7, proc.stderr[-3000:]
    assert proc.stdout == "out\n" and proc.stderr == "err\n"


@pytest.mark.kernel
@pytest.mark.qemu
def test_folder_of_a_killed_run_is_swept_at_the_next_start(kernel, tmp_path):
    """SIGKILL leaves no chance to clean up: QEMU dies with its parent
    (PR_SET_PDEATHSIG), the /dev/shm folder stays; the next run removes it."""
    before = our_shm()
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "boot", "--mode", "dt",
                             "--exec", "sleep 120", "--out", str(tmp_path / "a")],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        console = tmp_path / "a" / "console.log"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if console.exists() and "HARNESS-READY" in console.read_text(errors="replace"):
                break
            time.sleep(0.2)
        (left,) = our_shm() - before
        assert Path(left, "owner").read_text().split()[0] == str(proc.pid)
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    time.sleep(1)
    assert os.path.isdir(left)                           # nobody cleaned up
    assert qemu_processes(left) == [], "QEMU outlived a SIGKILLed harness"
    again = subprocess.run([sys.executable, "-m", "harness.cli", "boot", "--mode", "dt",
                            "--exec", "true", "--out", str(tmp_path / "b")],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"removed {left}, left by a run that died" in again.stderr
    assert not os.path.exists(left)
    assert shm_left_behind(before) == set()
