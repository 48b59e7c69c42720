"""The session lifecycle (harness.session.boot) without QEMU: the real session,
Machine, console pipeline, crash gate and SSH transport, with the QEMU process,
the network and the guest image left out (tests/fakes.py). The guest's side is
recorded: console logs from tests/data, command outputs from a script."""
from __future__ import annotations

import time

import pytest

from fakes import ART, Answer, FakeQmp, crash_answer, install, qemu_dies_answer
from harness.errors import MachineError
from harness.machine import console as console_module
from harness.machine.crashwatch import KernelCrash
from harness.session import BootOptions, boot

T = 10.0
PANIC = "console-panic-sysrq.log"           # framed sysrq command, token 923a0759
WARN_OOPS = "console-warn-hotplug.log"      # READY, then a WARNING and an Oops


def test_boot_yields_a_ready_guest_and_tears_everything_down(monkeypatch, tmp_path):
    fake = install(monkeypatch, tmp_path, PANIC, ssh=[(r"^uname -r$", Answer("6.12.0\n"))])
    out = tmp_path / "out"
    with boot(ART, BootOptions(mode="dt"), out, progress=False) as guest:
        qemu, ssh = fake.qemu(), fake.ssh()
        assert guest.machine is qemu and guest.transport is ssh and guest.ssh is ssh
        assert guest.run("uname -r").check().stdout == "6.12.0\n"
        assert guest.times["guest_uptime_at_ready_s"] == 0.67   # from the READY line
        assert 0 <= guest.times["boot_to_ready_s"] <= guest.times["boot_to_ssh_s"]
        assert "printk.time=1" in qemu.spec.kernel_cmdline()
        assert guest.console_line() == 1 == guest.reader.lines_seen   # READY only
        assert guest.watcher is guest.reader.watcher is qemu.reader.watcher
        assert qemu.crash_check is ssh.crash_check               # one gate for both
        run_dir = fake.run_dirs[-1]
        assert run_dir.exists()
    assert ssh.client is None                                    # closed
    assert qemu.proc.returncode == 0 and ("quit", {}) in qemu.fake_qmp.calls
    assert qemu.fake_qmp.closed and qemu.reader.eof
    assert not run_dir.exists()
    assert (out / "console.log").read_text().startswith("HARNESS-READY")


def test_teardown_also_when_the_body_raises(monkeypatch, tmp_path):
    fake = install(monkeypatch, tmp_path, PANIC)
    with pytest.raises(RuntimeError, match="test body"):
        with boot(ART, BootOptions(mode="dt"), tmp_path / "out", progress=False):
            raise RuntimeError("test body")
    assert fake.qemu().fake_qmp.closed and fake.ssh().client is None
    assert not fake.run_dirs[-1].exists()


def test_serial_transport_frames_commands_and_blames_a_crash(monkeypatch, tmp_path):
    fake = install(monkeypatch, tmp_path, PANIC)
    monkeypatch.setattr(console_module.secrets, "token_hex", lambda n: "923a0759")
    opts = BootOptions(mode="dt", transport="serial", ssh=False)
    with pytest.raises(KernelCrash) as info:
        with boot(ART, opts, tmp_path / "out", progress=False) as guest:
            assert guest.ssh is None and guest.transport is guest.console
            guest.step = "crash"
            guest.run("echo c > /proc/sysrq-trigger", T)
    assert info.value.report.kind == "panic" and info.value.blame == "kernel"
    assert "sysrq" in info.value.evidence.lower()
    assert fake.script.commands == []                    # nothing went over SSH
    typed = fake.qemu().stream.sent
    assert len(typed) == 1 and "echo c > /proc/sysrq-trigger" in typed[0]


def test_a_crash_during_an_ssh_step_names_the_step(monkeypatch, tmp_path):
    """The connection drops as the kernel dies; the gate waits for the report
    and blames the step the guest was in (not 'boot', not 'ssh')."""
    install(monkeypatch, tmp_path, WARN_OOPS, ssh=[(r"/remove$", crash_answer())])
    with pytest.raises(KernelCrash) as info:
        with boot(ART, BootOptions(), tmp_path / "out", progress=False) as guest:
            guest.mark("remove dimm1")
            guest.run("echo 0x80000000 > /sys/devices/system/memory/remove", T)
    err = info.value
    assert err.step == "remove dimm1" and err.exit_code == 1
    # raised once the first report is complete (the Oops may follow it in)
    assert err.reports[0].kind == "warning" and err.reports[0].complete
    assert "free_empty_tables" in err.evidence


def test_a_qmp_wait_ends_at_a_console_crash(monkeypatch, tmp_path):
    fake = install(monkeypatch, tmp_path, WARN_OOPS, qmp=FakeQmp({"device_del": {}}))
    with boot(ART, BootOptions(), tmp_path / "out", progress=False) as guest:
        guest.step = "remove dimm1"
        guest.machine.qmp_cmd("device_del", id="dimm1")
        fake.qemu().show_rest()
        start = time.monotonic()
        with pytest.raises(KernelCrash) as info:
            guest.machine.wait_event("DEVICE_DELETED", {"device": "dimm1"}, 30.0)
        assert time.monotonic() - start < 5, "the wait ran on to its timeout"
    assert info.value.step == "remove dimm1"
    assert ("device_del", {"id": "dimm1"}) in fake.qemu().fake_qmp.calls


def test_qemu_dying_mid_step_is_a_machine_error_naming_the_step(monkeypatch, tmp_path):
    install(monkeypatch, tmp_path, PANIC, ssh=[(r"^sleep", qemu_dies_answer())])
    start = time.monotonic()
    with pytest.raises(MachineError) as info:
        with boot(ART, BootOptions(mode="dt"), tmp_path / "out", progress=False) as guest:
            guest.step = "use memory"
            guest.run("sleep 5", 30)
    assert time.monotonic() - start < 5   # the console closed: no 2 s crash wait
    err = info.value
    assert "QEMU exited with code -9 while running step 'use memory'" in err.message
    assert err.exit_code == 2 and "HARNESS-READY" in err.evidence   # console tail


def test_a_guest_that_never_gets_ready_ends_at_its_deadline(monkeypatch, tmp_path):
    fake = install(monkeypatch, tmp_path, b"EFI stub: Booting Linux Kernel...\r\n")
    start = time.monotonic()
    with pytest.raises(MachineError) as info:
        with boot(ART, BootOptions(boot_timeout=0.5), tmp_path / "out", progress=False):
            pytest.fail("booted")
    assert time.monotonic() - start < 5
    assert info.value.message.startswith("the guest never became ready: no answer within")
    assert "EFI stub: Booting Linux Kernel" in info.value.evidence
    assert fake.qemu().fake_qmp.closed and not fake.run_dirs[-1].exists()


def test_a_panic_before_ready_is_the_kernels(monkeypatch, tmp_path):
    panic = (b"[    1.000000] Kernel panic - not syncing: VFS: Unable to mount root fs\r\n"
             b"[    1.000100] ---[ end Kernel panic - not syncing: VFS ]---\r\n")
    install(monkeypatch, tmp_path, panic, hold_open=False)
    with pytest.raises(KernelCrash) as info:
        with boot(ART, BootOptions(), tmp_path / "out", progress=False):
            pytest.fail("booted")
    assert "Unable to mount root fs" in info.value.message


def test_verbose_shows_every_console_line(monkeypatch, tmp_path, capsys):
    from harness import progress
    install(monkeypatch, tmp_path, PANIC)
    progress.set_level(progress.VERBOSE)
    try:
        with boot(ART, BootOptions(mode="dt"), tmp_path / "out", progress=False) as guest:
            assert guest.reader.wait_for(lambda: guest.reader.lines_seen >= 1, T)
    finally:
        progress.set_level(progress.NORMAL)
    assert "console| HARNESS-READY 6.12.117 uptime 0.67" in capsys.readouterr().err


def test_an_unreadable_snapshot_boots_and_leaves_no_run_folder(monkeypatch, tmp_path):
    """A snapshot whose RAM cannot be copied (SYNTHETIC: prepare raises) is
    removed and the guest boots in a new run folder; the first one, which may
    hold a partial RAM file and the first key, is removed too."""
    from types import SimpleNamespace

    from harness import session
    fake = install(monkeypatch, tmp_path, PANIC)
    removed = []
    snap = SimpleNamespace(key="k", remove=lambda: removed.append("k"),
                           console=lambda: b"")
    monkeypatch.setattr(session.snapshot, "enabled", lambda: False)
    with boot(ART, BootOptions(mode="dt", snapshot=False), tmp_path / "a", progress=False):
        pass
    assert not fake.run_dirs[-1].exists()
    monkeypatch.setattr(session.snapshot, "enabled", lambda: True)
    monkeypatch.setattr(session.guest_image, "build_base_image",
                        lambda: SimpleNamespace(path=tmp_path / "base.cpio.gz"))
    monkeypatch.setattr(session.snapshot, "key_for", lambda spec: "k")
    monkeypatch.setattr(session.snapshot, "find", lambda key: snap)

    def unreadable(snap, run_dir):
        (session.Path(run_dir) / "ram0").write_bytes(b"partial")
        raise OSError("no space left on device")
    monkeypatch.setattr(session.snapshot, "prepare", unreadable)
    bring_up = session._bring_up        # the fake console speaks no serial shell
    monkeypatch.setattr(session, "_bring_up", lambda m, key, opts, out, **kw: bring_up(
        m, key, opts, out))
    with boot(ART, BootOptions(mode="dt"), tmp_path / "b", progress=False) as guest:
        assert not guest.snapshot
        first, second = fake.run_dirs[-2:]
        assert not first.exists() and second.exists()
    assert removed == ["k"] and not second.exists()
