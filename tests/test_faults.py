"""Faults at every phase end in seconds with their true cause.

Unit tests (no QEMU): the fault plan's syntax, the QEMU watch on a plain
process (killed, stopped), the SSH channel retry and its budget, the report
printing the run's stopping error first.

Tests marked ``qemu``: a real run (``run --method M``) on the default kernel
with one fault injected at one point (``HOTPLUG_HARNESS_FAULT``,
harness/faults.py): its exit code, the first line of its cause, the seconds
from the fault to the exit, the artifacts kept and nothing left running. The
whole matrix is ``bench/bench_faults.py``.
"""
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import paramiko
import pytest
from procs import pids_where

from harness import faults
from harness.machine import qemu
from harness.machine.ssh import RETRIES, RETRY_BUDGET, SshTransport
from harness.verdict import report

ROOT = Path(__file__).resolve().parent.parent
BOUND_S = 5.0
MARK = "HH_FAULT_TEST"


# ------------------------------------------------------------ unit ----------

def test_the_plan_names_fault_point_match_and_delay():
    assert faults.Plan.parse("qemu-kill@removal") == faults.Plan("qemu-kill", "removal")
    assert faults.Plan.parse("qemu-stop@ssh~online+0.5") == \
        faults.Plan("qemu-stop", "ssh", "online", 0.5)
    assert faults.Plan.parse("qemu-kill@qmp-wait~0 MiB").match == "0 MiB"
    for bad in ("qemu-kill", "explode@removal", "qemu-kill@nowhere"):
        with pytest.raises(ValueError):
            faults.Plan.parse(bad)


def test_a_point_strikes_once_and_only_where_asked(monkeypatch, tmp_path):
    monkeypatch.setenv(faults.ENV, "sigint@ssh~online")
    monkeypatch.setenv(faults.LOG_ENV, str(tmp_path / "log"))
    faults.reset()
    hit = []
    monkeypatch.setattr(faults.os, "kill", lambda pid, sig: hit.append((pid, sig)))
    faults.point("ssh", "offline 0x80000000")
    faults.point("removal", "online 0x80000000")
    assert hit == []
    faults.point("ssh", "online 0x80000000")
    faults.point("ssh", "online 0x88000000")
    assert hit == [(os.getpid(), signal.SIGINT)]
    assert "sigint@ssh in 'online 0x80000000'" in (tmp_path / "log").read_text()
    faults.reset()


def test_fill_refuses_a_large_filesystem(tmp_path):
    if os.statvfs(tmp_path).f_blocks * os.statvfs(tmp_path).f_frsize <= faults.FILL_MAX_BYTES:
        pytest.skip("the temporary folder is on a small filesystem")
    assert faults.fill(tmp_path) == 0
    assert not (tmp_path / ".fault-fill").exists()


def sleeper():
    return subprocess.Popen(["sleep", "60"], start_new_session=True)


@pytest.mark.parametrize("sig,kind,words", [
    (signal.SIGKILL, "exited", "QEMU exited (killed by signal 9, SIGKILL) during step "
                               "'remove 0x80000000' with gdb attached"),
    (signal.SIGSTOP, "frozen", "QEMU froze (its process stopped by SIGSTOP, state T"),
])
def test_the_watch_sees_an_exit_at_once_and_a_freeze_within_its_bound(sig, kind, words):
    proc = sleeper()
    doing = ["with gdb attached"]
    watch = qemu.QemuWatch(proc, step_of=lambda: "remove 0x80000000",
                           doing_of=lambda: doing[-1], freeze_s=0.5).start()
    seen = []
    watch.listeners.append(seen.append)
    try:
        time.sleep(0.3)
        assert watch.fault is None
        start = time.monotonic()
        os.kill(proc.pid, sig)
        while watch.fault is None and time.monotonic() - start < 5:
            time.sleep(0.02)
        took = time.monotonic() - start
        assert watch.fault is not None and watch.fault.kind == kind
        assert watch.fault.message().startswith(words)
        assert took < (0.3 if kind == "exited" else 1.0)
        assert seen == [watch.fault]
        proc.wait(timeout=5)            # a frozen process is killed by the watch
        assert proc.returncode == -signal.SIGKILL
    finally:
        watch.stop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_shutdown_by_the_harness_is_no_fault():
    proc = sleeper()
    watch = qemu.QemuWatch(proc).start()
    watch.stop()
    proc.kill()
    proc.wait()
    time.sleep(0.3)
    assert watch.fault is None


class _Link:
    """A paramiko transport whose channels fail to open ``fails`` times."""

    def __init__(self, fails):
        self.fails, self.opened = fails, 0

    def is_active(self):
        return True

    def open_session(self, timeout=None):
        if self.fails:
            self.fails -= 1
            raise paramiko.SSHException("Timeout opening channel.")
        self.opened += 1
        return SimpleNamespace(id=self.opened)


def ssh_with(fails, gone=False, crash=False):
    ssh = SshTransport(0, key=None, gone=lambda: gone)
    ssh.crash_check = SimpleNamespace(pending=lambda: crash)
    link = _Link(fails)
    ssh.client = SimpleNamespace(get_transport=lambda: link)
    return ssh


def test_a_channel_that_fails_to_open_is_opened_again_and_recorded(monkeypatch):
    monkeypatch.setattr("harness.machine.ssh.RETRY_PAUSE_S", 0.01)
    ssh = ssh_with(fails=RETRIES)
    assert ssh.open_channel("cat /proc/iomem").id == 1
    assert [r.attempt for r in ssh.retries] == list(range(1, RETRIES + 1))
    note = ssh.retries[0].note()
    assert "cat /proc/iomem" in note and "Timeout opening channel" in note
    assert "QEMU was running" in note


def test_the_retry_is_bounded_per_command_and_per_run(monkeypatch):
    monkeypatch.setattr("harness.machine.ssh.RETRY_PAUSE_S", 0.01)
    with pytest.raises(paramiko.SSHException):
        ssh_with(fails=RETRIES + 1).open_channel("x")
    ssh = ssh_with(fails=0)
    link = ssh.client.get_transport()
    for _ in range(RETRY_BUDGET):
        link.fails = 1
        ssh.open_channel("y")
    link.fails = 1
    with pytest.raises(paramiko.SSHException):      # the run's budget is spent
        ssh.open_channel("z")
    assert len(ssh.retries) == RETRY_BUDGET


@pytest.mark.parametrize("gone,crash", [(True, False), (False, True)])
def test_no_retry_when_qemu_is_gone_or_the_console_shows_a_crash(monkeypatch, gone, crash):
    monkeypatch.setattr("harness.machine.ssh.RETRY_PAUSE_S", 0.01)
    ssh = ssh_with(fails=1, gone=gone, crash=crash)
    with pytest.raises(paramiko.SSHException):
        ssh.open_channel("x")
    assert ssh.retries == []


def test_the_report_prints_the_stopping_error_before_the_checks_that_could_not_look():
    method = {"method": "probe", "checks": [
        {"name": "tlb-flushed-before-free", "verdict": "ERROR", "evidence": "no stops",
         "step": "remove 0x80000000"}],
        "run": {"error": {"message": "QEMU exited (killed by signal 9, SIGKILL) during "
                                     "step 'remove 0x80000000' with gdb attached",
                          "step": "remove 0x80000000", "blame": "infra"}}}
    blocks = report._detail_blocks(method)
    assert blocks[0].startswith("ERROR: method probe, step remove 0x80000000, run stopped "
                                "(infra): QEMU exited (killed by signal 9")
    assert "tlb-flushed-before-free" in blocks[1]


# ------------------------------------------------------------ real runs -----

def marked(mark):
    """Processes of a run (QEMU, gdb: any depth) by the marker in their environment."""
    return [str(pid) for pid in pids_where("environ", lambda env: f"{MARK}={mark}".encode()
                                           in env)]


def shm_of(pid):
    left = []
    for path in Path("/dev/shm").glob("hotplug-harness-*"):
        try:
            if (path / "owner").read_text().split()[0] == str(pid):
                left.append(path)
        except (OSError, IndexError):
            pass
    return left


def faulted_run(tmp_path, spec, method="probe", extra_env=None):
    """``run --method METHOD`` with the fault ``spec``: (exit code, seconds from
    the fault to the exit, report.json or None, stdout+stderr)."""
    log = tmp_path / "fault.log"
    mark = uuid.uuid4().hex
    env = dict(os.environ, HOTPLUG_HARNESS_FAULT=spec, HOTPLUG_HARNESS_FAULT_LOG=str(log),
               **{MARK: mark}, **(extra_env or {}))
    out = tmp_path / "report"
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", "-q", "--method",
                             method, "--report", str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    text = proc.communicate(timeout=300)[0]
    end = time.monotonic()
    assert log.exists(), f"the fault {spec} never struck:\n{text[-3000:]}"
    seconds = end - float(log.read_text().split()[0])
    time.sleep(0.5)
    assert marked(mark) == [], f"processes left running:\n{text[-2000:]}"
    assert shm_of(proc.pid) == [], "run folders left on /dev/shm"
    try:
        data = json.loads((out / "report.json").read_text())
    except OSError:
        data = None
    return proc.returncode, seconds, data, text


def stopping_error(data):
    return next(m["run"]["error"] for m in data["methods"] if m["run"].get("error"))


QEMU_FAULTS = [
    # (spec, method, the step named, what the harness was doing)
    ("qemu-kill@launched", "probe", "boot", ""),
    ("qemu-kill@ssh~online", "probe", "online 0x80000000", ""),
    ("qemu-kill@qmp-wait", "acpi-dimm", "remove dimm1", "waiting for QMP event DEVICE_DELETED"),
    ("qemu-kill@gdb-attach+0.3", "probe", "remove 0x80000000", "with gdb attached"),
    ("qemu-kill@removal+0.5", "probe", "remove 0x80000000", "with gdb attached"),
    ("qemu-stop@launched", "probe", "boot", ""),
    ("qemu-stop@ssh~online", "probe", "online 0x80000000", ""),
    ("qemu-stop@qmp-wait", "acpi-dimm", "remove dimm1", "waiting for QMP event DEVICE_DELETED"),
    ("qemu-stop@removal+0.5", "probe", "remove 0x80000000", "with gdb attached"),
]


@pytest.mark.kernel
@pytest.mark.qemu
@pytest.mark.parametrize("spec,method,step,doing", QEMU_FAULTS)
def test_qemu_killed_or_frozen_is_named_first(tmp_path, spec, method, step, doing):
    code, seconds, data, text = faulted_run(tmp_path, spec, method)
    assert code == 2, text[-3000:]
    assert seconds <= BOUND_S, f"{seconds:.1f}s from the fault to the exit"
    error = stopping_error(data)
    head = ("QEMU exited (killed by signal 9, SIGKILL)" if spec.startswith("qemu-kill")
            else "QEMU froze (its process stopped by SIGSTOP")
    assert error["message"].startswith(head), error["message"]
    assert f"during step {step!r}" in error["message"] and doing in error["message"]
    assert error["blame"] == "infra" and error["step"] == step
    assert "console tail" in error["evidence"]
    kept = tmp_path / "report" / method
    assert (kept / "console.log").exists() or step == "boot" and (kept / "qemu.stderr").exists()
    first = next(line for line in text.splitlines() if line.startswith(("ERROR:", "FAIL:")))
    assert head in first                       # printed first, before the checks


OTHER_FAULTS = [
    # (spec, method, exit code, the cause's first words)
    ("panic@removal", "probe", 1, "kernel panic"),
    ("panic@qmp-wait", "acpi-dimm", 1, "kernel panic"),
    ("gdb-kill@removal", "probe", 2, "gdb exited (killed by signal 9, SIGKILL) during step "
                                     "'remove 0x80000000'"),
    ("sshd-kill@ssh~online", "probe", 2, "the guest's SSH server no longer answers"),
    ("sshd-kill@ready", "probe", 2, "the guest's SSH server does not answer"),
    ("forward-refuse@ready", "probe", 2, "the SSH forward"),
    ("sigint@removal", "probe", 130, "interrupted by SIGINT during step 'remove 0x80000000'"),
]


@pytest.mark.kernel
@pytest.mark.qemu
@pytest.mark.parametrize("spec,method,exit_code,cause", OTHER_FAULTS)
def test_other_faults_end_in_seconds_with_their_cause(tmp_path, spec, method, exit_code,
                                                      cause):
    code, seconds, data, text = faulted_run(tmp_path, spec, method)
    assert code == exit_code, text[-3000:]
    assert seconds <= BOUND_S, f"{seconds:.1f}s from the fault to the exit"
    assert stopping_error(data)["message"].startswith(cause), stopping_error(data)
    assert (tmp_path / "report" / method / "console.log").exists()


@pytest.mark.kernel
@pytest.mark.qemu
def test_a_panic_at_boot_names_the_boot_not_the_console(tmp_path):
    """The guest panics once ready, before the run's first step: the kernel's
    (exit 1), and the stopping error's step is 'boot', not 'serial' (the
    transport the panic was seen through)."""
    code, seconds, data, text = faulted_run(tmp_path, "panic@ready", "probe")
    assert code == 1, text[-3000:]
    assert seconds <= BOUND_S, f"{seconds:.1f}s from the fault to the exit"
    error = stopping_error(data)
    assert error["message"].startswith("kernel panic") and error["step"] == "boot", error


@contextmanager
def small_tmpfs(tmp_path: Path):
    """A 64 MiB tmpfs under tmp_path for the full-filesystem cells (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64M", "tmpfs", str(small)]
                      ).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield small
    finally:
        subprocess.run(["umount", str(small)])


@pytest.mark.kernel
@pytest.mark.qemu
@pytest.mark.parametrize("spec", ["fill@report", "fill@ssh~online"])
def test_a_full_report_filesystem_is_the_machines_error(tmp_path, spec):
    with small_tmpfs(tmp_path) as small:
        code, seconds, _, text = faulted_run(
            small, spec, extra_env={faults.FILL_ENV: str(small)})
    assert code == 2 and seconds <= BOUND_S, text[-3000:]
    assert "error (infra)" in text and "No space left on device" in text
    assert "harness bug" not in text


def test_a_full_cache_filesystem_at_the_build_is_the_machines_error(tmp_path):
    """The build phase with the cache on a 64 MiB tmpfs: Debian's source does
    not fit when it is unpacked. The error names the cache's filesystem and its
    free space (it was a traceback and 'harness bug'); nothing is left in it."""
    if not Path("/usr/src/linux-source-6.12.tar.xz").exists():
        pytest.skip("needs Debian's linux-source-6.12 (make deps)")
    with small_tmpfs(tmp_path) as small:
        env = dict(os.environ, HOTPLUG_HARNESS_CACHE=str(small / "cache"))
        res = subprocess.run([sys.executable, "-m", "harness.cli", "build"], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=300)
        left = sorted(p.name for p in (small / "cache" / "src").iterdir())
    text = res.stdout + res.stderr
    assert res.returncode == 2, text[-3000:]
    assert "error (infra): [source] unpacking" in text and "MiB free" in text, text[-3000:]
    assert "No space left on device" in text and "harness bug" not in text
    assert left == []                                  # the half-unpacked tree is gone


def test_a_fail_in_the_step_an_infra_error_cut_short_is_an_error_not_the_kernels():
    from harness.records import Check, MethodRun, RunError
    from harness.verdict import checks
    run = MethodRun(method="probe", geometry={}, error=RunError(
        "QEMU exited (killed by signal 9, SIGKILL) during step 'remove 0x80000000' with "
        "gdb attached", "remove 0x80000000", "infra"))
    cut = checks._cut_short(Check("unlinked-tables-freed", "FAIL", "1 of 4 tables ...",
                                  "remove 0x80000000"), run)
    assert cut.verdict == "ERROR" and "could not judge" in cut.evidence
    assert "QEMU exited" in cut.evidence and "1 of 4 tables" in cut.evidence
    earlier = Check("tables-freed", "FAIL", "leaked", "remove 0x88000000")
    assert checks._cut_short(earlier, run) is earlier             # another step: stands
    kernel = MethodRun(method="probe", geometry={}, error=RunError(
        "kernel Oops", "remove 0x80000000", "kernel"))
    same = Check("unlinked-tables-freed", "FAIL", "x", "remove 0x80000000")
    assert checks._cut_short(same, kernel) is same                 # the kernel's: stands
