"""A PASS can be trusted: QMP waits end at a crash, QEMU dying in a QMP call is
reported like one dying in an SSH step, and (on a real kernel) a run without
the walker still judges, while a kernel that lets boot memory go offline fails.

The unit tests drive ``Machine``'s QMP paths with a fake QMP connection and a
real (short-lived) child process standing in for QEMU.
"""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.errors import MachineError
from harness.machine.crashwatch import CrashReport, KernelCrash
from harness.machine.qemu import Machine, VmSpec

ROOT = Path(__file__).resolve().parent.parent
REPRO = ROOT / "patches" / "repro"


class FakeQmp:
    """pull_event never has the event; cmd runs ``on_cmd`` then fails as a
    broken socket does."""

    def __init__(self, on_cmd=None):
        self.on_cmd, self.pulls = on_cmd, 0

    def pull_event(self, wait=0.0):
        self.pulls += 1
        time.sleep(min(wait, 0.01))
        return None

    def cmd(self, name, **args):
        if self.on_cmd:
            self.on_cmd()
        raise ConnectionResetError("[Errno 104] Connection reset by peer")


def machine(tmp_path, qmp, proc_argv=("sleep", "30")) -> Machine:
    spec = VmSpec(kernel="/k/Image", initrd="/r/initrd.gz", run_dir=str(tmp_path / "run"))
    m = Machine(spec, tmp_path)
    m.proc = subprocess.Popen(list(proc_argv))
    m.qmp = qmp
    (tmp_path / "console.log").write_text("[    1.0] booted\n")
    return m


def crash() -> KernelCrash:
    report = CrashReport(kind="oops", title="Unable to handle kernel paging request",
                         lines=("Unable to handle kernel paging request",),
                         first_line_no=7, pc_symbol="copy_page+0x30/0xd0",
                         call_trace=("copy_page+0x30/0xd0",))
    return KernelCrash([report], step="remove dimm1")


def test_a_crash_ends_a_qmp_wait_at_once(tmp_path):
    m = machine(tmp_path, FakeQmp())
    calls = []

    def gate():
        calls.append(1)
        if len(calls) > 3:
            raise crash()
    m.crash_check = gate
    start = time.monotonic()
    try:
        with pytest.raises(KernelCrash) as e:
            m.wait_event("DEVICE_DELETED", {"device": "dimm1"}, 30.0)
    finally:
        m.proc.kill()
        m.proc.wait()
    assert time.monotonic() - start < 5, "the wait ran on to its timeout"
    assert e.value.blame == "kernel" and e.value.step == "remove dimm1"
    assert e.value.exit_code == 1


def test_qemu_dying_during_a_qmp_call_is_a_machine_error(tmp_path):
    m = machine(tmp_path, None)
    m.qmp = FakeQmp(on_cmd=lambda: (m.proc.kill(), m.proc.wait()))
    with pytest.raises(MachineError) as e:
        m.qmp_cmd("device_del", id="dimm1")
    assert "QEMU exited with code -9 while running QMP device_del" in str(e.value)
    assert e.value.exit_code == 2 and e.value.step == "qmp"
    assert "console tail" in e.value.evidence and "booted" in e.value.evidence


def test_a_panic_that_ends_qemu_is_the_kernels_fault(tmp_path):
    """QEMU exits after a panic (-no-reboot): the crash on the console is what
    the verdict names, not the exit."""
    m = machine(tmp_path, FakeQmp(), proc_argv=("true",))
    m.proc.wait()

    def gate():
        raise crash()
    m.crash_check = gate
    with pytest.raises(KernelCrash):
        m.wait_event("DEVICE_DELETED", {"device": "dimm1"}, 30.0)
    with pytest.raises(KernelCrash):
        m.qmp_cmd("query-status")


def test_a_live_qemu_with_a_broken_qmp_socket_names_the_call(tmp_path):
    m = machine(tmp_path, FakeQmp())
    try:
        with pytest.raises(MachineError, match="QMP query-status: the connection failed: "
                                               "ConnectionResetError"):
            m.qmp_cmd("query-status")
    finally:
        m.proc.kill()
        m.proc.wait()


# ---------------------------------------------------------------- real kernel

def harness_cli(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "harness.cli", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def checks_of(report: dict) -> dict:
    [method] = report["methods"]
    return {c["name"]: c for c in method["checks"]}


@pytest.mark.kernel
@pytest.mark.qemu
def test_no_walker_still_judges_and_says_so(tmp_path):
    """ptdump-only judging needs the linear offset, now read from memstart_addr."""
    proc = harness_cli("run", "--method", "probe", "--no-walker", "--report", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    assert "walker: off (--no-walker) for probe" in proc.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    found = checks_of(report)
    for name in ("no-stale-linear-map", "no-stale-vmemmap", "online-memory-mapped",
                 "tables-freed", "bootmem-not-removable"):
        assert found[name]["verdict"] == "PASS", found[name]
    assert "walker" not in found["no-stale-linear-map"]["evidence"]
    assert found["walker-agrees-with-ptdump"]["verdict"] == "SKIP"
    assert "offlining attempted" in found["bootmem-not-removable"]["evidence"]


@pytest.mark.kernel
@pytest.mark.qemu
def test_a_kernel_that_offlines_boot_memory_fails(tmp_path):
    """Before the boot-memory rule was tested for real, this kernel passed: the
    top boot block has firmware holes and is refused whatever the rule says."""
    proc = harness_cli("run", "--method", "probe", "--patch",
                       str(REPRO / "0020-bootmem-offline-allowed.patch"),
                       "--report", str(tmp_path))
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-3000:]
    found = checks_of(json.loads((tmp_path / "report.json").read_text()))
    bootmem = found["bootmem-not-removable"]
    assert bootmem["verdict"] == "FAIL", bootmem
    assert "exit code 0, state after: offline" in bootmem["evidence"]
    assert "FAIL" in proc.stdout and "bootmem-not-removable" in proc.stdout
