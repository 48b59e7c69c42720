"""Fakes that stand in for QEMU and the guest, so the console pipeline, the
session lifecycle, the runner and ``cli.main`` run in unit tests.

* ``ReplayStream``: a console stream serving a recorded console.log the way the
  guest printed it: in turns, each released by the command the harness sends.
* ``FakeQemu``: the real ``Machine`` with the QEMU process left out (a
  ``FakeProc``), its console a ReplayStream, its QMP a ``FakeQmp``.
* ``ReplaySsh``: the real ``SshTransport`` with the network left out, answering
  commands from a ``Script`` of recorded outputs (``tests/data``).
* ``install``: makes ``harness.session.boot`` use both (and no guest image), so
  the session, the runner and ``cli.main`` run whole without QEMU.
"""
from __future__ import annotations

import os
import re
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Optional, Union

from harness.machine.console import ConsoleReader
from harness.machine.qemu import Machine
from harness.machine.ssh import SshTransport

DATA = Path(__file__).resolve().parent / "data"
READY = re.compile(rb"HARNESS-READY[^\n]*\n")
START = re.compile(rb"HHMARK-([0-9a-f]{8})-S[^\n]*\n")
TOKEN = re.compile(r"ARK-([0-9a-f]{8})-S")


class ReplayStream:
    """Serves a recording in chunks of ``chunk`` bytes (so lines arrive cut),
    in turns: first up to the HARNESS-READY line; then each ``send`` of a framed
    command releases the recording up to the start marker that follows that
    command's own (``HHMARK-<token>-S``), or to the end if there is none or the
    token is not in the recording; any other ``send`` releases everything.
    ``recv`` returns b"" at the end of the recording (QEMU exited), or with
    ``hold_open`` waits there until ``shutdown`` (a guest gone quiet).

    The console reads a descriptor (pexpect): ``fileno()`` is one end of a
    socket pair, the other end served by two threads, one writing what
    ``recv`` gives (closing at its end), one passing what the harness writes
    to ``send``."""

    def __init__(self, data: bytes, chunk: int = 37, hold_open: bool = False):
        self.data, self.chunk, self.hold_open = data, chunk, hold_open
        self.pos = 0
        ready = READY.search(data)
        self.limit = ready.end() if ready else len(data)
        self.sent: list = []
        self._cond = threading.Condition()
        self._stop = False
        self._ends: Optional[tuple] = None    # (the harness's, the guest's)

    def fileno(self) -> int:
        if self._ends is None:
            self._ends = socket.socketpair()
            for target in (self._serve, self._listen):
                threading.Thread(target=target, daemon=True).start()
        return self._ends[0].fileno()

    def _serve(self) -> None:
        guest = self._ends[1]
        try:
            while data := self.recv():
                guest.sendall(data)
            guest.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _listen(self) -> None:
        line = b""
        try:
            while data := self._ends[1].recv(65536):
                line += data
                if line.endswith(b"\n") or not line.startswith(b"echo"):
                    self.send(line)
                    line = b""
        except OSError:
            pass

    @classmethod
    def of(cls, name: str, **kw) -> ReplayStream:
        return cls((DATA / name).read_bytes(), **kw)

    def _release(self, text: str) -> None:
        token = TOKEN.search(text)
        start = self.data.find(f"HHMARK-{token.group(1)}-S".encode()) if token else -1
        if start < 0:
            self.limit = len(self.data)
            return
        following = START.search(self.data, self.data.index(b"\n", start) + 1)
        self.limit = max(self.limit, following.start() if following else len(self.data))

    def recv(self) -> bytes:
        with self._cond:
            while (self.pos >= self.limit and not self._stop
                   and (self.pos < len(self.data) or self.hold_open)):
                self._cond.wait()
            if self._stop:
                return b""
            out = self.data[self.pos:min(self.pos + self.chunk, self.limit)]
            self.pos += len(out)
            return out

    def send(self, data: bytes) -> None:
        with self._cond:
            text = data.decode(errors="replace")
            self.sent.append(text)
            self._release(text)
            self._cond.notify_all()

    def release_all(self) -> None:
        with self._cond:
            self.limit = len(self.data)
            self._cond.notify_all()

    def shutdown(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()

    def close(self) -> None:
        self.shutdown()
        if self._ends is not None:
            for end in self._ends:
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                end.close()


def replay_reader(data: Union[bytes, str], log_path=None, **kw) -> ConsoleReader:
    """A started ConsoleReader over a ReplayStream (``data``: bytes or a file
    name in tests/data)."""
    stream = ReplayStream.of(data, **kw) if isinstance(data, str) else ReplayStream(data, **kw)
    return ConsoleReader(stream, log_path).start()


# ------------------------------------------------------------ QMP / QEMU ----

class FakeQmp:
    """QEMU's QMP as ``qemu.qmp.legacy.QEMUMonitorProtocol`` offers it to
    Machine: ``cmd`` answers from ``answers`` (name -> value, or a callable of
    the arguments) and records the call; ``pull_event`` serves ``emit``ted
    events. An unknown command raises AssertionError (a test without an answer)."""

    def __init__(self, answers: Optional[dict] = None):
        self.answers = {"quit": {}, **(answers or {})}
        self.calls: list = []
        self.events: list = []
        self.closed = False

    def emit(self, event: str, **data) -> None:
        self.events.append({"event": event, "data": data})

    def cmd(self, name: str, **args):
        self.calls.append((name, args))
        if name not in self.answers:
            raise AssertionError(f"FakeQmp: no answer for {name} {args}")
        answer = self.answers[name]
        return answer(**args) if callable(answer) else answer

    def pull_event(self, wait: float = 0.0):
        if self.events:
            return self.events.pop(0)
        time.sleep(min(float(wait or 0), 0.01))
        return None

    def settimeout(self, seconds) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class FakeProc:
    """A QEMU process that never ran: alive until ``returncode`` is set."""

    pid = None

    def __init__(self):
        self.returncode: Optional[int] = None

    def poll(self) -> Optional[int]:
        return self.returncode

    def wait(self, timeout=None) -> int:
        if self.returncode is None:
            self.returncode = 0
        return self.returncode

    def kill(self) -> None:
        self.returncode = -9


class FakeQemu(Machine):
    """harness.machine.qemu.Machine with QEMU left out: ``launch`` starts no process;
    the serial console replays ``console`` (bytes, or a file name in tests/data)
    through the real ConsoleReader; QMP is a FakeQmp. QMP guards, alive checks,
    the console tail and the shutdown are the real Machine's."""

    made: list = []     # every FakeQemu, newest last (tests look at the last)

    def __init__(self, spec, out_dir, boot_timeout: float = 60.0, *,
                 console: Union[bytes, str], qmp: Optional[FakeQmp] = None,
                 hold_open: bool = True):
        super().__init__(spec, out_dir, boot_timeout)
        self.recording = (DATA / console).read_bytes() if isinstance(console, str) else console
        self.fake_qmp = qmp or FakeQmp()
        self.hold_open = hold_open
        self.stream: Optional[ReplayStream] = None
        FakeQemu.made.append(self)

    def launch(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.times.launched = time.monotonic()
        self.proc = FakeProc()
        self.qmp = self.fake_qmp
        self.stream = ReplayStream(self.recording, hold_open=self.hold_open)
        self.reader = ConsoleReader(self.stream, self.console_log).start()

    def die(self, code: int = -9) -> None:
        """QEMU exits: its process ends and the console closes."""
        self.proc.returncode = code
        self.stream.shutdown()

    def show_rest(self) -> None:
        """The guest prints the rest of the recording (a crash, say)."""
        self.stream.release_all()


# ------------------------------------------------------------ transports ----

@dataclass
class Answer:
    """A recorded answer: stdout (text or a tests/data file name), exit code.
    ``lost``: the connection drops instead (exit status -1, as a guest that
    died mid-command leaves it); ``then`` runs first (the guest's side effects,
    e.g. ``FakeQemu.show_rest``)."""

    stdout: str = ""
    exit_code: int = 0
    stderr: str = ""
    file: Optional[str] = None
    lost: bool = False
    then: Optional[Callable[[], None]] = None

    def text(self) -> str:
        return (DATA / self.file).read_text() if self.file else self.stdout


def crash_answer() -> Answer:
    """The command kills the kernel: the guest prints the rest of its console
    recording (the crash) and the connection drops."""
    return Answer(lost=True, then=lambda: FakeQemu.made[-1].show_rest())


def qemu_dies_answer() -> Answer:
    """QEMU exits during the command: the connection drops, the console closes."""
    return Answer(lost=True, then=lambda: FakeQemu.made[-1].die())


class Script:
    """Recorded answers by pattern: (regex, Answer or callable(command) ->
    Answer); the first regex that ``re.search``es the command answers. Every
    command is kept in ``commands``; one nothing answers fails the test."""

    def __init__(self, rules: list):
        self.rules = [(re.compile(p), a) for p, a in rules]
        self.commands: list = []

    def answer(self, command: str) -> Answer:
        self.commands.append(command)
        for regex, answer in self.rules:
            if regex.search(command):
                got = answer(command) if callable(answer) else answer
                if got.then is not None:
                    got.then()
                return got
        raise AssertionError(f"Script: no recorded answer for {command!r}")


class _Link:
    def __init__(self):
        self.active = True

    def is_active(self) -> bool:
        return self.active

    def close(self) -> None:
        self.active = False


class _Client:
    def __init__(self):
        self.link = _Link()

    def get_transport(self) -> _Link:
        return self.link

    def close(self) -> None:
        self.link.close()


class ReplaySsh(SshTransport):
    """The real SshTransport (crash gate before and after, the watchdog, the
    wait for a crash and the alive check after a lost connection) with the
    network left out: ``connect`` makes a fake client, ``_exchange`` answers
    from ``script``."""

    script: Script = Script([])
    made: list = []

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        ReplaySsh.made.append(self)

    def connect(self, deadline, alive=lambda: None) -> float:
        alive()
        self.client = _Client()
        return 0.0

    def _exchange(self, command: str, out: bytearray, err: bytearray,
                  deadline=None) -> int:
        got = self.script.answer(command)
        if got.lost:
            self.client.link.close()
            return -1
        out += got.text().encode()
        err += got.stderr.encode()
        return got.exit_code

    def put_text(self, remote: str, text: str, deadline: float = 30.0) -> None:
        self.script.answer(f"put_text {remote}")

    def _kmsg_channel(self):
        return _ReplayKmsg(self)


class _ReplayKmsg:
    """SshTransport's /dev/kmsg channel: each line is answered by the script as
    the command ``echo 'LINE' > /dev/kmsg`` (a lost answer closes the link)."""

    def __init__(self, ssh: ReplaySsh):
        self.ssh, self.closed = ssh, False

    def alive(self) -> bool:
        return not self.closed and self.ssh.client.link.active

    def write(self, text: str, timeout: float) -> None:
        got = self.ssh.script.answer(f"echo '{text}' > /dev/kmsg")
        if got.lost:
            self.ssh.client.link.close()
            self.close()
            raise EOFError("channel closed")

    def close(self) -> None:
        self.closed = True


def install(monkeypatch, tmp_path: Path, console: Union[bytes, str], ssh: list = (),
            qmp: Optional[FakeQmp] = None, hold_open: bool = True) -> SimpleNamespace:
    """Make ``harness.session.boot`` boot FakeQemu and ReplaySsh: no QEMU, no
    guest image, no network. Returns what the test may look at: ``script``,
    ``qemu()`` (the last FakeQemu), ``ssh()`` (the last ReplaySsh), ``run_dirs``."""
    from harness import session
    from harness.machine import guest_image
    script = Script(list(ssh) + [(r"> /dev/kmsg$", Answer())])
    FakeQemu.made, ReplaySsh.made = [], []
    run_dirs: list = []

    def make_run_dir():
        path = Path(tempfile.mkdtemp(prefix="run-", dir=tmp_path))
        run_dirs.append(path)
        return path

    def machine(spec, out_dir, boot_timeout=60.0):
        return FakeQemu(spec, out_dir, boot_timeout, console=console, qmp=qmp,
                        hold_open=hold_open)
    # the fake QEMU cannot migrate: every fake guest boots (snapshots are tested
    # against real QEMU, test_qemu.py)
    monkeypatch.setattr(session.snapshot, "enabled", lambda: False)
    monkeypatch.setattr(session, "make_run_dir", make_run_dir)
    monkeypatch.setattr(session, "Machine", machine)
    monkeypatch.setattr(guest_image, "prepare_initrd",
                        lambda key, path: SimpleNamespace(path=path))
    monkeypatch.setattr(ReplaySsh, "script", script)
    monkeypatch.setattr(session, "SshTransport", ReplaySsh)
    return SimpleNamespace(script=script, run_dirs=run_dirs,
                           qemu=lambda: FakeQemu.made[-1], ssh=lambda: ReplaySsh.made[-1])


# a built kernel as the stages after the build see it (no file is read)
ART = SimpleNamespace(image="/k/Image", vmlinux="/nonexistent/vmlinux",
                      source="debian 6.12", patches=(("0001-x.patch", "ab"),),
                      config_digest="cd", cache_key="ef" * 32, kernel_release="6.12.0",
                      fragments=("base", "4k-48"), seconds=0.1, rebuilt=False, kconfig={})


# ------------------------------------------------------------ runner --------

class FakeGuest:
    """What the runner and a Recorder use of a booted Guest (no QEMU)."""

    def __init__(self, out):
        self.machine = SimpleNamespace(spec=SimpleNamespace(ram_path="/nonexistent"))
        self.transport = SimpleNamespace(name="ssh")
        self.console = SimpleNamespace(drain=lambda *a, **k: None)
        self.watcher = SimpleNamespace(reports=(), open_kind=None, flush=lambda: None)
        self.out_dir, self.step, self.marks = out, "boot", []
        self.snapshot = ""                  # booted, not restored

    def console_line(self):
        return len(self.marks)

    def mark(self, step):
        self.step = step
        self.marks.append(step)


def shm_left_behind(before: set, settle: float = 3.0) -> set:
    """Run folders on /dev/shm that appeared since ``before`` and that no live
    process uses: what a finished run left behind. On a machine where other
    runs start meanwhile, their folders are new too, but a live QEMU names
    its own folder on its command line; a folder made a moment before its
    QEMU starts is given ``settle`` seconds to be used or to go."""
    import glob

    def in_use() -> set:
        used = set()
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                argv = open(f"/proc/{pid}/cmdline", "rb").read()
            except OSError:
                continue
            used.update(m.decode() for m in re.findall(rb"/dev/shm/hotplug-harness-[\w.-]+", argv))
        return used

    end = time.monotonic() + settle
    while True:
        new = set(glob.glob("/dev/shm/hotplug-harness-*")) - set(before)
        left = {p for p in new if p not in in_use()}
        if not left or time.monotonic() >= end:
            return left
        time.sleep(0.2)
