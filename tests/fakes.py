"""Fakes that stand in for QEMU and the guest, so the console pipeline, the
session lifecycle, the runner and ``cli.main`` run in unit tests.

* ``ReplayStream``: a console stream serving a recorded console.log the way the
  guest printed it: in turns, each released by the command the harness sends.
* ``FakeQmp``: a QMP connection answering from a table, recording the calls.
* ``FakeMachine``: what ``session.boot`` makes of QEMU (``spec``, ``reader``,
  ``qmp_cmd``, ``wait_event``, ``times``, ``close``), over a ReplayStream.
* ``FakeShell``: a transport (SSH or serial) answering commands from recorded
  outputs (``tests/data``) by pattern; unknown commands fail the test.
"""
from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Optional, Union

from harness.console import ConsoleReader
from harness.errors import HarnessError, MachineError
from harness.transport import CommandResult, Transport

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
    ``hold_open`` waits there until ``shutdown`` (a guest gone quiet)."""

    def __init__(self, data: bytes, chunk: int = 37, hold_open: bool = False):
        self.data, self.chunk, self.hold_open = data, chunk, hold_open
        self.pos = 0
        ready = READY.search(data)
        self.limit = ready.end() if ready else len(data)
        self.sent: list = []
        self._cond = threading.Condition()
        self._stop = False

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


def replay_reader(data: Union[bytes, str], log_path=None, **kw) -> ConsoleReader:
    """A started ConsoleReader over a ReplayStream (``data``: bytes or a file
    name in tests/data)."""
    stream = ReplayStream.of(data, **kw) if isinstance(data, str) else ReplayStream(data, **kw)
    return ConsoleReader(stream, log_path).start()


# ------------------------------------------------------------ QMP / QEMU ----

class FakeQmp:
    """Answers QMP commands from ``answers`` (name -> value, or a callable of
    the arguments); records every call in ``calls``; events are queued with
    ``emit``. An unknown command is a HarnessError, as QEMU's would be."""

    def __init__(self, answers: Optional[dict] = None):
        self.answers = dict(answers or {})
        self.calls: list = []
        self.events: list = []

    def emit(self, event: str, **data) -> None:
        self.events.append({"event": event, "data": data})

    def qmp_cmd(self, name: str, **args):
        self.calls.append((name, args))
        if name not in self.answers:
            raise HarnessError(f"QMP {name} failed: unknown command (fake)", step="qmp")
        answer = self.answers[name]
        return answer(**args) if callable(answer) else answer

    def wait_event(self, name: str, match: Optional[dict] = None, deadline=10.0) -> dict:
        for event in self.events:
            data = event.get("data", {})
            if event["event"] == name and all(data.get(k) == v
                                              for k, v in (match or {}).items()):
                self.events.remove(event)
                return event
        raise MachineError(f"no QMP event {name} {match or ''} (fake)", step="qmp")


@dataclass
class FakeMachine:
    """Stands in for harness.machine.Machine after launch."""

    reader: ConsoleReader
    run_dir: str = "/nonexistent-run"
    qmp: FakeQmp = field(default_factory=FakeQmp)
    crash_check: Optional[Callable[[], None]] = None
    closed: bool = False
    dead: bool = False

    def __post_init__(self):
        self.spec = SimpleNamespace(run_dir=self.run_dir, ssh_port=2222, gdb_port=None,
                                    ram_path=f"{self.run_dir}/ram0")
        self.times = SimpleNamespace(launched=time.monotonic(), shutdown_s=0.0)
        self.proc = SimpleNamespace(pid=0)

    @property
    def tap(self) -> ConsoleReader:
        return self.reader

    def qmp_cmd(self, name: str, **args):
        if self.crash_check is not None:
            self.crash_check()
        return self.qmp.qmp_cmd(name, **args)

    def wait_event(self, name: str, match=None, deadline=10.0) -> dict:
        if self.crash_check is not None:
            self.crash_check()
        return self.qmp.wait_event(name, match, deadline)

    def alive(self) -> bool:
        return not self.dead

    def check_alive(self, doing: str, step: str = "boot", grace: float = 0.0) -> None:
        if self.dead:
            raise MachineError(f"QEMU exited with code -9 while {doing}", step=step,
                               evidence="--- console tail ---\n" + self.console_tail())

    def console_tail(self, lines: int = 50) -> str:
        return self.reader.tail(lines)

    def close(self) -> None:
        self.closed = True
        self.reader.close()


# ------------------------------------------------------------ transports ----

@dataclass
class Answer:
    """A recorded answer: stdout (text or a tests/data file name), exit code."""

    stdout: str = ""
    exit_code: int = 0
    stderr: str = ""
    file: Optional[str] = None

    def text(self) -> str:
        return (DATA / self.file).read_text() if self.file else self.stdout


class FakeShell(Transport):
    """A transport answering from ``script``: a list of (regex, Answer or a
    callable(command) -> Answer); the first regex that matches (``re.search``)
    answers. ``before(command)`` runs first (a crash gate, say). Every command
    is kept in ``commands``; one nothing answers fails with ``unknown``."""

    def __init__(self, script: list, name: str = "ssh",
                 before: Optional[Callable[[], None]] = None):
        self.script = [(re.compile(p), a) for p, a in script]
        self.name, self.before = name, before
        self.commands: list = []
        self.closed = False

    def run(self, command: str, deadline=30.0) -> CommandResult:
        self.commands.append(command)
        if self.before is not None:
            self.before()
        for regex, answer in self.script:
            if regex.search(command):
                got = answer(command) if callable(answer) else answer
                return CommandResult(command, got.text(), got.stderr, got.exit_code,
                                     0.0, self.name)
        raise AssertionError(f"FakeShell: no recorded answer for {command!r}")

    def put_text(self, path: str, text: str) -> None:
        self.commands.append(f"put_text {path}")

    def close(self) -> None:
        self.closed = True
