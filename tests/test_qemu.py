"""Integration: a real guest under qemu-system-aarch64 (TCG)."""
import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_recorded import assert_named_checks_fail

from fakes import shm_left_behind  # noqa: E402
from harness.errors import MachineError
from harness.kernel import kernel as build
from harness.machine.crashwatch import KernelCrash
from harness.records import Check
from harness.session import BootOptions, boot
from harness.verdict import repro

pytestmark = [pytest.mark.kernel, pytest.mark.qemu]
ROOT = Path(__file__).resolve().parent.parent
REPRO = ROOT / "patches" / "repro"


@pytest.fixture(scope="module")
def kernel():
    return build.build(build.BuildRequest())


def harness_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "harness.cli", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def our_shm():
    return set(glob.glob("/dev/shm/hotplug-harness-*"))


@pytest.mark.parametrize("mode", ["acpi", "dt"])
def test_boot_check_both_transports(kernel, mode, tmp_path):
    proc = harness_cli("boot", "--check", "--json", "--mode", mode, "--out",
                       str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout)
    assert res["serial_uname"] == res["ssh_uname"] == kernel.kernel_release
    assert 0 < res["boot_to_ready_s"] <= res["boot_to_ssh_s"]
    assert "HARNESS-READY" in (tmp_path / "out" / "console.log").read_text(errors="replace")


def test_transports_agree_and_probe_remove_exist(kernel, tmp_path):
    with boot(kernel, BootOptions(mode="dt"), tmp_path) as guest:
        ls = "ls -1 /sys/devices/system/memory"
        serial = guest.console.run(ls, 20).check()
        ssh = guest.ssh.run(ls, 20).check()
        assert serial.stdout.split() == ssh.stdout.split()
        assert "probe" in ssh.stdout.split() and "remove" in ssh.stdout.split()
        bad = guest.ssh.run("echo 0x12345 > /sys/devices/system/memory/remove", 20)
        assert bad.exit_code != 0 and "Invalid argument" in bad.stderr
        absent = guest.ssh.run("echo 0x200000000 > /sys/devices/system/memory/remove", 20)
        assert absent.exit_code != 0 and "No such device" in absent.stderr
        code = guest.console.run("false", 10)
        assert code.exit_code == 1 and code.transport == "serial"


@pytest.mark.parametrize("transport", ["ssh", "serial"])
def test_forced_crash_is_blamed_on_the_kernel(kernel, transport, tmp_path):
    with pytest.raises(KernelCrash) as e:
        with boot(kernel, BootOptions(mode="dt", transport=transport), tmp_path) as guest:
            guest.step = "crash"
            guest.run("echo c > /proc/sysrq-trigger", 30)
    assert e.value.blame == "kernel" and e.value.exit_code == 1
    kinds = [r.kind for r in e.value.reports]
    assert "panic" in kinds or "oops" in kinds
    assert "sysrq" in e.value.evidence.lower()


def test_guest_that_never_gets_ready_ends_at_its_deadline(kernel, tmp_path):
    opts = BootOptions(mode="dt", cmdline=("rdinit=/nonexistent",), boot_timeout=8)
    start = time.monotonic()
    with pytest.raises((MachineError, KernelCrash)) as e:
        with boot(kernel, opts, tmp_path):
            pass
    assert time.monotonic() - start < 30
    assert e.value.evidence  # the console tail


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_no_leftovers_after_sigint(kernel, tmp_path, sig):
    """boot() used as a library (no CLI handler): SIGINT and SIGTERM both unwind."""
    before = our_shm()
    script = ("import sys, time\n"
              "from harness.kernel import kernel as build\n"
              "from pathlib import Path\n"
              "from harness.session import boot, BootOptions\n"
              "art = build.build()\n"
              f"with boot(art, BootOptions(mode='dt'), Path({str(tmp_path)!r})) as g:\n"
              "    print('PID', g.machine.proc.pid, g.machine.spec.run_dir, flush=True)\n"
              "    time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline().split()
    assert line and line[0] == "PID", proc.stderr.read()[-2000:]
    qemu_pid, run_dir = int(line[1]), line[2]
    assert os.path.exists(f"/proc/{qemu_pid}")
    proc.send_signal(sig)
    err = proc.communicate(timeout=30)[1]
    assert "KeyboardInterrupt" in err or "Terminated" in err, err[-2000:]
    time.sleep(0.5)
    assert not os.path.exists(f"/proc/{qemu_pid}"), "QEMU outlived the harness"
    assert not os.path.exists(run_dir), "run folder left behind"
    assert shm_left_behind(before) == set()


def test_ctrl_c_with_two_guests_side_by_side(kernel, tmp_path):
    """``run`` with two guests at once (its default): SIGINT once both have
    started stops both QEMUs, writes a partial report naming both runs as
    interrupted, and leaves no process or run folder behind."""
    before = our_shm()
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", "--method",
                             "acpi-dimm,probe,virtio-mem", "--guests", "2",
                             "--report", str(tmp_path)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: set = set()
    deadline = time.monotonic() + 120
    while seen != {"acpi-dimm", "probe"} and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        for name in ("acpi-dimm", "probe"):
            if line.startswith(f"[{name}]   ok"):     # booted, a step done
                seen.add(name)
    assert seen == {"acpi-dimm", "probe"}, "both guests did not start"
    qemus = [p for p in os.listdir("/proc") if p.isdigit() and _is_child_qemu(p, proc.pid)]
    assert len(qemus) == 2, qemus
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    said = out[-2000:] + err[-3000:]
    assert proc.returncode == 130, said
    time.sleep(0.5)
    assert not [p for p in qemus if os.path.exists(f"/proc/{p}")], "QEMU outlived the run"
    assert shm_left_behind(before) == set(), said
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["interrupted"] is True and data["not_run"] == ["virtio-mem"], said
    assert [m["method"] for m in data["methods"]] == ["acpi-dimm", "probe"], said
    for m in data["methods"]:
        assert m["run"]["error"]["blame"] == "interrupted", (m["run"]["error"], said)
    assert "[acpi-dimm] interrupted after" in err and "[probe] interrupted after" in err, said


def _is_child_qemu(pid: str, parent: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        comm = Path(f"/proc/{pid}/comm").read_text()
    except OSError:
        return False
    return comm.startswith("qemu-system") and int(stat.rsplit(")", 1)[1].split()[1]) == parent


def test_a_booted_guest_is_saved_then_restored(kernel, tmp_path):
    """The first boot of a command line saves a snapshot once the guest is ready;
    the next is restored from it (SSH with the new run's own key, the boot on its
    console); a snapshot that does not restore is removed and the guest boots."""
    from harness.machine import snapshot
    marker = f"harness.snaptest={os.getpid()}_{time.time_ns()}"   # a key of its own
    opts = BootOptions(mode="dt", cmdline=(marker,))
    keys = []
    try:
        with boot(kernel, opts, tmp_path / "first") as g:
            assert "snapshot_save_s" in g.times and not g.snapshot
            keys.append(snapshot.key_for(g.machine.spec))
            assert g.ssh.run("cat /proc/cmdline", 10).stdout.count(marker) == 1
        snap = snapshot.find(keys[0])
        assert snap is not None and snap.meta()["ram"] == ["ram0"]
        with boot(kernel, opts, tmp_path / "second") as g:
            assert g.snapshot == keys[0] and "restored_s" in g.times
            assert g.times["boot_to_ssh_s"] < 2.0
            assert g.ssh.run("grep -c ssh- /root/.ssh/authorized_keys", 10).stdout.strip() == "1"
            assert g.ssh.run("echo restored-ok", 10).stdout.strip() == "restored-ok"
            assert g.console.run("uname -r", 10).stdout.strip() == kernel.kernel_release
        log = (tmp_path / "second" / "console.log").read_text(errors="replace")
        assert "Booting Linux" in log and "HARNESS-READY" in log
        # a broken snapshot: removed, the guest boots, a new one is saved
        (snap.path / snapshot.STATE).write_bytes(b"not a migration stream")
        with boot(kernel, opts, tmp_path / "third") as g:
            assert not g.snapshot and "snapshot_save_s" in g.times
            assert g.ssh.run("true", 10).exit_code == 0
        assert snapshot.find(keys[0]) is not None
        assert snapshot.find(keys[0]).state.read_bytes() != b"not a migration stream"
    finally:
        for key in keys:
            found = snapshot.find(key)
            if found:
                found.remove()


def test_run_all_methods_pass_on_the_default_kernel(kernel, tmp_path):
    proc = harness_cli("run", "--method", "all", "--json", "--report", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["verdict"] == "PASS"
    assert [m["method"] for m in report["methods"]] == [
        "acpi-dimm", "probe", "virtio-mem", "kselftest"]
    for m in report["methods"]:
        verdicts = {c["name"]: c["verdict"] for c in m["checks"]}
        assert verdicts["no-stale-linear-map"] == "PASS"
        assert verdicts["tables-freed"] == "PASS"
    assert (tmp_path / "junit.xml").exists()
    again = harness_cli("report", str(tmp_path))
    assert again.returncode == 0 and "PASS" in again.stdout


def test_race_method_runs_under_load(kernel, tmp_path):
    """The race scenario on the clean default kernel: the loop really iterates
    under concurrent ptdump reads (its note counts both), and the end state is
    judged like any removal."""
    proc = harness_cli("run", "--method", "race", "--race-seconds", "10",
                       "--report", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    run = json.loads((tmp_path / "report.json").read_text())["methods"][0]
    note = next(n for n in run["run"]["notes"] if n.startswith("race: ") and "iteration" in n)
    iterations, reads = int(note.split()[1]), int(note.split("under ")[1].split()[0])
    assert iterations >= 1 and reads >= 1, note
    verdicts = {c["name"]: c["verdict"] for c in run["checks"]}
    assert verdicts["tables-freed"] == verdicts["no-kernel-splat"] == "PASS"
    assert run["run"]["options"]["order_check"] == "off"


# every regression the default geometry can show (those with a Repro-Config need
# cold builds of their own: make test-repro runs them, tests/test_repro_configs.py)
SUITE = {r.name: r for r in repro.discover() if r.expect and not r.configs}


@pytest.mark.parametrize("patch", sorted(SUITE))
def test_seeded_regressions_fail_the_right_check(kernel, patch, tmp_path):
    """Each patches/repro patch on a real kernel, run the way its header says:
    every check its Repro-Expect names FAILs, with evidence naming an address."""
    reg = SUITE[patch]
    args = ["run", "--method", ",".join(reg.methods), "--patch", reg.path,
            "--report", str(tmp_path)]
    args += [a for p in reg.append for a in ("--append", p)]
    args += ["--cycles", str(reg.cycles)] if reg.cycles > 1 else []
    proc = harness_cli(*args)
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    found = [Check.from_dict(c) for m in report["methods"] for c in m["checks"]]
    assert any(m["verdict"] == "FAIL" for m in report["methods"])
    assert_named_checks_fail(found, patch)


def test_qemu_dying_is_reported_with_exit_code_and_tail(kernel, tmp_path):
    with pytest.raises(MachineError) as e:
        with boot(kernel, BootOptions(mode="dt"), tmp_path) as guest:
            guest.machine.proc.kill()
            guest.run("sleep 5", 30)
    assert "QEMU exited (killed by signal 9, SIGKILL) during step" in str(e.value)
    assert e.value.exit_code == 2
    assert "qemu-system-aarch64" in e.value.evidence   # the command line


def test_ssh_port_taken_meanwhile_is_retried(kernel, tmp_path, monkeypatch):
    import socket

    import harness.session as session
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        monkeypatch.setattr(session, "free_port", lambda: port)
        with boot(kernel, BootOptions(mode="dt"), tmp_path) as guest:
            assert guest.machine.spec.ssh_port != port
            assert guest.run("echo hi", 10).check().stdout.strip() == "hi"


def test_interactive_serial_shell(kernel, tmp_path):
    import pexpect
    child = pexpect.spawn(sys.executable, ["-m", "harness.cli", "boot", "--mode", "dt",
                                           "--transport", "serial", "--out",
                                           str(tmp_path)],
                          cwd=str(ROOT), timeout=60, encoding="utf-8")
    child.expect("Ctrl-] stops the guest")
    child.sendline("echo $((6*7))")
    child.expect("42")
    child.send("\x1d")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


@pytest.mark.skipif(not __import__("shutil").which("ssh"), reason="no ssh client")
def test_interactive_ssh_shell(kernel, tmp_path):
    import pexpect
    child = pexpect.spawn(sys.executable, ["-m", "harness.cli", "boot", "--mode", "dt",
                                           "--out", str(tmp_path)],
                          cwd=str(ROOT), timeout=60, encoding="utf-8")
    child.expect("exit the shell to stop the guest")
    child.sendline("echo $((6*7)); exit")
    child.expect("42")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
