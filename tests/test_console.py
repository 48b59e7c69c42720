"""The console pipeline (ConsoleReader, CrashGate) and the SerialConsole
transport built on it: framing, kernel-line handling and crash detection, driven
through a real local /bin/sh on a pty (pexpect.spawn) or a replayed recording
(tests/fakes.ReplayStream): no QEMU needed."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pexpect
import pytest

from fakes import ReplayStream, replay_reader
from harness.errors import CommandError, GuestCrash, MachineError
from harness.host import Deadline
from harness.machine import console as console_module
from harness.machine.console import (
    MAX_LINE,
    ConsoleReader,
    CrashGate,
    FdStream,
    SerialConsole,
    frame_command,
)
from harness.machine.crashwatch import KernelCrash

T = 10.0  # generous deadline for commands that should answer at once


def spawn_shell(tmp_path, *args, encoding=None):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PS1": "$ ",
           "HOME": str(tmp_path), "TERM": "dumb"}
    argv = list(args) or ["-i"]
    return pexpect.spawn("/bin/sh", argv, env=env, cwd=str(tmp_path), encoding=encoding)


@pytest.fixture
def make_console(tmp_path):
    made = []

    def make(*args, **kw):
        child = spawn_shell(tmp_path, *args)
        kw.setdefault("quiet", 0.2)
        kw.setdefault("settle", 2.0)
        kw.setdefault("tmpdir", str(tmp_path))
        reader = ConsoleReader(FdStream(child.child_fd), tmp_path / "console.log").start()
        console = SerialConsole(reader, own_reader=True, **kw)
        made.append((console, child))
        return console

    yield make
    for console, child in made:
        console.close()
        child.close(force=True)


@pytest.fixture
def console(make_console):
    return make_console()


def log_text(tmp_path):
    return (tmp_path / "console.log").read_bytes().decode()


# --- framing -----------------------------------------------------------------

def test_frame_echo_cannot_match_markers():
    line = frame_command("abcd1234", "echo hi")
    assert "HHMARK-abcd1234-S" not in line and "HHMARK-abcd1234-E" not in line


def test_output_and_exit_code(console):
    result = console.run("echo hello; echo world", T)
    assert (result.stdout, result.stderr, result.exit_code) == ("hello\nworld\n", "", 0)
    assert result.ok and result.transport == "serial" and result.seconds < T
    assert result.check("x") is result


@pytest.mark.parametrize("command,code", [("true", 0), ("false", 1), ("(exit 42)", 42),
                                          ("sh -c 'exit 3'", 3)])
def test_exit_codes(console, command, code):
    assert console.run(command, T).exit_code == code


def test_failed_check_raises_command_error(console):
    with pytest.raises(CommandError) as info:
        console.run("echo oops; exit_code_is() { return 7; }; exit_code_is", T).check("probe")
    assert "exit 7" in str(info.value) and "oops" in info.value.evidence


@pytest.mark.parametrize("command,stdout", [
    ("true", ""),
    ("echo", "\n"),
    ("printf abc", "abc"),
    ("printf 'a\\nb'", "a\nb"),
    ("printf 'a\\n\\n\\nb\\n'", "a\n\n\nb\n"),
    ("for i in 1 2 3; do echo line $i; done", "line 1\nline 2\nline 3\n"),
    ("echo \"it's \\\"quoted\\\"\" 'and $HOME' `echo back`", "it's \"quoted\" and $HOME back\n"),
    ("echo HHMARK-00000000-E 1; echo 'HHM''ARK'; echo HHMARK-deadbeef-S",
     "HHMARK-00000000-E 1\nHHMARK\nHHMARK-deadbeef-S\n"),
    ("echo err >&2; echo out", "err\nout\n"),
    ("sleep 0 &  # a trailing comment", ""),
])
def test_stdout_is_exact(console, command, stdout):
    assert console.run(command, T).stdout == stdout


def test_state_persists_between_commands(console, tmp_path):
    console.run("cd / && MYVAR=42", T).check()
    assert console.run("pwd; echo $MYVAR", T).stdout == "/\n42\n"


def test_stdin_is_not_the_console(console):
    result = console.run("cat", 3)  # would swallow the next command if it read the tty
    assert (result.stdout, result.exit_code) == ("", 0)
    assert console.run("echo next", T).stdout == "next\n"


def test_multiline_command_goes_through_a_script(console, tmp_path):
    command = "x=1\nif [ $x = 1 ]; then\n  echo yes\nfi\ncat <<EOF\nhere doc\nEOF"
    assert console.run(command, T).stdout == "yes\nhere doc\n"
    assert not list(tmp_path.glob("harness-*"))  # cleaned up


def test_long_command_goes_through_a_script(console, tmp_path):
    payload = "x" * 5000
    result = console.run(f"echo {payload} | wc -c; echo '{payload[:10]}'\"'\"", T)
    assert result.stdout == f"5001\n{payload[:10]}'\n"
    assert len(frame_command("0" * 8, f"echo {payload}")) > MAX_LINE
    assert not list(tmp_path.glob("harness-*"))


def test_upload_failure_is_reported(make_console):
    console = make_console(tmpdir="/nonexistent-dir")
    with pytest.raises(CommandError) as info:
        console.run("echo " + "y" * 2000, T)
    assert info.value.step == "serial upload"


def test_echo_off(console, tmp_path):
    console.disable_echo(T)
    assert console.run("echo quiet please", T).stdout == "quiet please\n"
    assert "eval 'echo quiet please'" not in log_text(tmp_path)


def test_utf8_output(console):
    assert console.run("echo héllo", T).stdout == "héllo\n"


# --- kernel messages ---------------------------------------------------------

def test_kernel_lines_are_stripped_but_logged(console, tmp_path):
    command = ('(sleep 0.05; echo "[   12.345678] memory: fake") & '
               'echo a; sleep 0.5; echo b')
    assert console.run(command, T).stdout == "a\nb\n"
    assert "[   12.345678] memory: fake" in console.kernel_log
    assert "[   12.345678] memory: fake" in log_text(tmp_path)


def test_kernel_lines_kept_on_request(console):
    result = console.run('echo a; echo "[   12.345678] memory: kept"', T, strip_kernel=False)
    assert result.stdout == "a\n[   12.345678] memory: kept\n"


def test_kernel_line_cutting_a_shell_line(console):
    command = "printf ab; printf '[   12.345678] memory: cut\\n'; echo cd"
    assert console.run(command, T).stdout == "abcd\n"
    assert console.kernel_log[-1] == "[   12.345678] memory: cut"


# --- crashes -----------------------------------------------------------------

OOPS_LINES = ["[   13.000000] Unable to handle kernel paging request at virtual address "
              "ffff000080065000",
              "[   13.000100] Internal error: Oops: 0000000096000007 [#1] SMP",
              "[   13.000200] pc : copy_page+0x30/0xd0",
              "[   13.000300] ---[ end trace 0000000000000000 ]---"]


def echo_lines(lines):
    return "; ".join(f'echo "{line}"' for line in lines)


def test_crash_mid_command_raises_guest_crash(console):
    command = f"echo before; {echo_lines(OOPS_LINES)}; echo after; sleep 30"
    start = time.monotonic()
    with pytest.raises(GuestCrash) as info:
        console.run(command, 60)
    assert time.monotonic() - start < 10  # did not wait for the deadline
    err = info.value
    assert isinstance(err, KernelCrash) and err.blame == "kernel"
    assert (err.report.kind, err.report.pc_symbol) == ("oops", "copy_page+0x30/0xd0")
    assert err.report.lines[0] == err.report.title == OOPS_LINES[0][15:]
    assert err.report.complete and err.report.timestamp == 13.0
    assert "copy_page+0x30/0xd0" in err.evidence


def test_kernel_text_in_the_typed_command_is_not_a_crash(console):
    result = console.run('true || echo "[   15.000000] Kernel panic - not syncing: no"', T)
    assert result.ok and console.crashes == ()


def test_crash_without_end_marker_does_not_wait_for_deadline(console):
    command = 'echo "[   14.000000] Kernel panic - not syncing: test crash"; sleep 30'
    start = time.monotonic()
    with pytest.raises(KernelCrash) as info:
        console.run(command, 60)
    assert time.monotonic() - start < 10
    assert info.value.report.kind == "panic"
    assert info.value.report.title == "Kernel panic - not syncing: test crash"


def test_non_fatal_kinds_are_collected(make_console):
    console = make_console(fatal_kinds=("panic", "oops"))
    warn = ["[   20.000000] ------------[ cut here ]------------",
            "[   20.000100] WARNING: CPU: 1 PID: 77 at mm/memory_hotplug.c:123 "
            "try_remove_memory+0x1c/0x1a0",
            "[   20.000200] ---[ end trace 0000000000000000 ]---"]
    result = console.run(f"echo x; {echo_lines(warn)}; echo y", T)
    assert (result.stdout, result.exit_code) == ("x\ny\n", 0)
    assert [r.kind for r in console.crashes] == ["warning"]


# --- failures ----------------------------------------------------------------

def test_timeout_is_machine_error_with_tail(console):
    console.run("echo warm-up-line", T)
    with pytest.raises(MachineError) as info:
        console.run("sleep 5", Deadline(0.5))
    err = info.value
    assert err.blame == "infra" and err.step == "serial"
    assert "console tail" in err.evidence and "warm-up-line" in err.evidence
    console.interrupt()
    assert console.run("echo recovered", T).stdout == "recovered\n"


def test_timeout_after_a_warning_blames_the_kernel(make_console):
    console = make_console(fatal_kinds=())
    console.run(echo_lines(["[   20.000000] WARNING: CPU: 0 PID: 1 at a.c:1 f+0x1/0x2",
                            "[   20.000100] ---[ end trace 0000000000000000 ]---"]), T)
    with pytest.raises(KernelCrash) as info:
        console.run("sleep 5", 0.5)
    assert "no answer" in info.value.message and "console tail" in info.value.evidence


def test_eof_is_machine_error(console):
    with pytest.raises(MachineError) as info:
        console.run("exit 3", T)
    assert "closed" in info.value.message and "exit 3" in info.value.evidence
    with pytest.raises(MachineError):
        console.run("echo again", T)


# --- wait_ready and drain ----------------------------------------------------

BOOT = ("echo booting; echo '[    0.000000] Booting Linux on physical CPU 0x0'; "
        "sleep 0.1; echo HARNESS-READY kernel=test; exec /bin/sh -i")


def test_wait_ready_returns_the_line(make_console, tmp_path):
    console = make_console("-c", BOOT)
    assert console.wait_ready(T) == "HARNESS-READY kernel=test"
    assert console.run("echo up", T).stdout == "up\n"
    assert "Booting Linux" in log_text(tmp_path)


def test_wait_ready_sees_a_boot_panic(make_console):
    console = make_console("-c", "echo '[    1.000000] Kernel panic - not syncing: VFS: "
                                 "Unable to mount root fs'; sleep 30")
    start = time.monotonic()
    with pytest.raises(GuestCrash) as info:
        console.wait_ready(60)
    assert time.monotonic() - start < 10
    assert "Unable to mount root fs" in info.value.message


def test_wait_ready_timeout(make_console):
    console = make_console("-c", "echo booting; sleep 30")
    with pytest.raises(MachineError) as info:
        console.wait_ready(0.5)
    assert "HARNESS-READY" in info.value.message and "booting" in info.value.evidence


def test_lines_read_before_the_transport_exists_are_kept(tmp_path):
    child = spawn_shell(tmp_path, "-c", "echo one; echo two; exec /bin/sh -i")
    reader = ConsoleReader(FdStream(child.child_fd)).start()
    try:
        assert reader.wait_for(lambda: reader.lines_seen >= 2, T)
        console = SerialConsole(reader, quiet=0.2)
        assert console.wait_ready(T, pattern="^two$") == "two"
    finally:
        reader.close()
        child.close(force=True)


def test_drain_collects_late_reports_without_raising(make_console):
    console = make_console("-c", "echo '[    2.000000] BUG: scheduling while atomic: "
                                 "sh/1/0x00000002'; exit 0")
    reports = console.drain(5, quiet=0.5)
    assert [r.kind for r in reports] == ["bug"]


# --- replay of recorded console logs -------------------------------------------

DATA = Path(__file__).parent / "data"


def replay(name, token, monkeypatch, logfile=None, **kw):
    monkeypatch.setattr(console_module.secrets, "token_hex", lambda n: token)
    reader = ConsoleReader(ReplayStream.of(name), logfile).start()
    return SerialConsole(reader, quiet=0.05, settle=1.0, own_reader=True, **kw)


def test_replay_oops_mid_output(monkeypatch):
    console = replay("console-oops-copy-page.log", "8f1413d7", monkeypatch)
    assert console.wait_ready(T).startswith("HARNESS-READY")
    with pytest.raises(KernelCrash) as info:
        console.run("echo offline > /sys/devices/system/memory/memory17/state", T)
    assert [r.kind for r in info.value.reports] == ["oops"]
    assert info.value.report.pc_symbol == "copy_page+0x4/0xd0"


def test_replay_warning_not_fatal(monkeypatch, tmp_path):
    console = replay("console-warn-hotplug.log", "3c4d5e6f", monkeypatch,
                     fatal_kinds=("panic", "oops", "bug", "kasan"),
                     logfile=tmp_path / "console.log")
    console.wait_ready(T)
    # recorded over SSH (no framed command): the WARNING does not end the wait,
    # the Oops that follows it does
    with pytest.raises(KernelCrash) as info:
        console.run("while [ -e /sys/devices/system/memory/memory16 ]; "
                    "do sleep 0.1; done; echo gone", T)
    assert [r.kind for r in info.value.reports] == ["warning", "oops"]
    assert len(console.kernel_log) == 90  # every timestamped line of the recording
    assert [r.kind for r in console.drain(T)] == ["warning", "oops"]  # to EOF
    console.close()
    expected = (DATA / "console-warn-hotplug.log").read_bytes()
    assert (tmp_path / "console.log").read_bytes() == expected


def test_replay_panic_then_eof_is_guest_crash(monkeypatch):
    console = replay("console-panic-sysrq.log", "923a0759", monkeypatch)
    console.wait_ready(T)
    with pytest.raises(KernelCrash) as info:
        console.run("echo c > /proc/sysrq-trigger", T)
    assert info.value.report.kind == "panic"
    assert info.value.report.lines[-1] == "Memory Limit: none"



# --- the pipeline: one reader, one watcher, numbered lines ----------------------

def test_reader_numbers_lines_as_in_console_log(tmp_path):
    """Every report's first_line_no is its line in console.log, whatever the
    chunking (ReplayStream cuts lines in 37-byte pieces)."""
    reader = replay_reader("console-warn-hotplug.log", tmp_path / "console.log")
    reader.stream.release_all()
    try:
        assert reader.wait_for(lambda: reader.eof, T)
        log = (tmp_path / "console.log").read_bytes()
        assert log == (DATA / "console-warn-hotplug.log").read_bytes()
        lines = log.decode().split("\n")
        assert reader.lines_seen == len(lines) - (lines[-1] == "")
        reports = reader.watcher.reports
        assert [r.kind for r in reports] == ["warning", "oops"]
        for r in reports:
            assert r.lines[0] in lines[r.first_line_no - 1]
    finally:
        reader.close()


def test_reader_listeners_unread_lines_and_tail():
    seen = []
    data = b"one\r\ntwo\r\n[    1.000000] three\r\nfour"   # no newline at the end
    reader = ConsoleReader(ReplayStream(data, chunk=5))
    reader.listeners.append(seen.append)
    reader.listeners.append(lambda line: 1 / 0)   # a broken listener is ignored
    reader.start()
    try:
        assert reader.wait_for(lambda: reader.eof, T)
        assert seen == ["one", "two", "[    1.000000] three", "four"]
        assert [(l.no, l.text) for l in reader.unread()] == [
            (1, "one"), (2, "two"), (3, "[    1.000000] three"), (4, "four")]
        assert reader.tail(2) == "[    1.000000] three\nfour"
        with pytest.raises(EOFError):
            reader.next_line(0.1)
    finally:
        reader.close()


def test_reader_keeps_the_echo_of_a_sent_line_from_the_watcher():
    """A typed line that looks like a kernel message, echoed back, is no crash;
    the same text printed by the kernel is."""
    typed = "echo '[   15.000000] Kernel panic - not syncing: typed'"
    echo = f"# {typed}\r\n".encode()
    stream = ReplayStream(b"HARNESS-READY\r\n" + echo
                          + b"[   16.000000] Kernel panic - not syncing: real\r\n")
    reader = ConsoleReader(stream).start()
    try:
        assert reader.wait_for(lambda: reader.lines_seen >= 1, T)
        reader.send_line(typed)          # releases the rest of the recording
        assert reader.wait_for(lambda: reader.eof, T)
        assert [r.title for r in reader.watcher.reports] == [
            "Kernel panic - not syncing: real"]
        assert [l.scan for l in reader.unread()][1] == "# "
    finally:
        reader.close()


def test_raw_bytes_for_an_interactive_shell():
    stream = ReplayStream(b"HARNESS-READY\r\n# ", chunk=4)
    reader = ConsoleReader(stream)
    reader.discard()                     # keep raw bytes from the start
    stream.release_all()
    reader.start()
    try:
        got = b""
        for _ in range(20):
            got += reader.read(3, T)
            if len(got) >= len(stream.data):
                break
        assert got == stream.data
        with pytest.raises(EOFError):
            reader.read(10, T)
    finally:
        reader.close()


def test_crash_gate_raises_each_report_once_naming_the_step():
    reader = replay_reader("console-warn-hotplug.log")
    step = ["remove dimm1"]
    gate = CrashGate(reader, step_of=lambda: step[0])
    try:
        gate()                            # nothing shown yet: HARNESS-READY only
        reader.stream.release_all()
        assert gate.wait(T)
        end = time.monotonic() + T        # the pump may not have read the oops yet
        while len(reader.watcher.reports) < 2 and time.monotonic() < end:
            time.sleep(0.01)
        with pytest.raises(KernelCrash) as info:
            gate()
        assert info.value.step == "remove dimm1" and info.value.blame == "kernel"
        assert [r.kind for r in info.value.reports] == ["warning", "oops"]
        assert not gate.pending()
        gate()                            # already raised: nothing new
    finally:
        reader.close()


def test_crash_gate_wait_ends_when_the_console_closes():
    reader = replay_reader(b"HARNESS-READY\r\nbye\r\n")
    gate = CrashGate(reader)
    try:
        reader.stream.release_all()
        start = time.monotonic()
        assert gate.wait(5.0) is False
        assert time.monotonic() - start < 2.0
    finally:
        reader.close()


def test_kernel_lines_cutting_the_markers(monkeypatch):
    """printk shares the UART: a kernel line may land inside a marker, even in
    the exit code; the markers are still found, the exit code read whole."""
    data = (b"HARNESS-READY\r\n"
            b"HHMARK-0badc0de-S\r\nout\r\n"
            b"HHMA[    1.000000] one\r\nRK-0badc0de-E 1[    1.100000] two\r\n2\r\n# ")
    monkeypatch.setattr(console_module.secrets, "token_hex", lambda n: "0badc0de")
    console = SerialConsole(ConsoleReader(ReplayStream(data, hold_open=True)).start(),
                            quiet=0.05, own_reader=True)
    try:
        console.wait_ready(T)
        result = console.run("anything", T)
        assert (result.stdout, result.exit_code) == ("out\n", 12)
        assert console.kernel_log == ["[    1.000000] one", "[    1.100000] two"]
    finally:
        console.close()


def test_commands_and_the_pump_share_one_reader(console, tmp_path):
    """Output printed between commands (read by the pump) and during them (read
    by pexpect's expect) reaches console.log once, in order, numbered once."""
    console.run("(sleep 0.3; echo between-commands) &", T)
    assert console.reader.wait_for(lambda: any(
        line.endswith("between-commands") for line in console.reader.tail(5).split("\n")), T)
    console.run("echo during-a-command", T)
    log = log_text(tmp_path)
    printed = ("between-commands\r\n", "during-a-command\r\n")   # not the echo
    assert [log.count(text) for text in printed] == [1, 1]
    assert log.index(printed[0]) < log.index(printed[1])
    assert console.reader.lines_seen == len(log.split("\n")) - 1


def test_a_command_gets_through_a_flood(console):
    """The pump stands aside for a command even while output never stops."""
    console.run("(i=0; while [ $i -lt 20000 ]; do echo flood-$i; i=$((i+1)); done) &", T)
    start = time.monotonic()
    result = console.run("echo through", T)
    assert result.exit_code == 0 and "through\n" in result.stdout
    assert time.monotonic() - start < 5
