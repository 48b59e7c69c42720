"""The guest's serial console: one pipeline, and what is built on it.

**The pipeline** (``ConsoleReader``). The console (QEMU's serial socket, or
any descriptor: ``ConsoleStream``) is read by pexpect, as labgrid reads its
consoles: a ``pexpect.fdpexpect.fdspawn`` on the descriptor, the one reader.
Its read tee (``logfile_read``) gets every byte it reads, whoever asked (an
``expect`` of the serial transport, or the pump below), and for each chunk
writes the bytes to ``console.log``; for each line, numbers it once (from 1:
line N is line N of console.log), drops the terminal's echo of a line the
harness typed, feeds the one ``CrashWatcher``, calls the listeners (``-v``
printing, steps that keep the kernel's words) and keeps it for
``wait_ready``. Lines are split at ``\\n``, trailing ``\\r`` dropped, decoded
as UTF-8 (bad bytes replaced); a last line without a newline counts at end of
file, when the watcher is also flushed. ``read``/``send`` give the raw bytes
to an interactive shell (``boot --transport serial``).

What pexpect does not do stays here, hand-written:

* reading while nobody expects. pexpect reads only inside a call (``expect``,
  ``read_nonblocking``), but the crash watcher must see a panic during an SSH
  step or a QMP wait. The pump thread waits (``select``) until the descriptor
  has bytes and nobody holds the child (``exclusive()``), then reads them with
  ``read_nonblocking``, so they pass through the same tee;
* lines: pexpect has no line events. Numbering, the echo filter, the watcher
  and the listeners work on the tee's bytes; ``wait_ready`` waits for a line
  the tee numbered (possibly before it was called: the boot is read by the
  pump, which leaves nothing in pexpect's buffer);
* a crash during a command: an ``expect`` ends only on its patterns, a
  timeout or end of file, so the transport expects in slices of ``POLL_S``
  and looks at the watcher between them;
* kernel messages interleaved with a command's output (printk shares the
  UART): the markers' patterns allow a kernel line between any two of their
  bytes, and the output (pexpect's ``before``) is cleaned line by line;
* commands longer than the shell's line (the base64 upload below).

Built on it:

* ``CrashGate``: notices crash reports (finished or still being printed) and
  raises them as ``crashwatch.KernelCrash``; SSH steps and QMP waits call it,
  the serial transport has one of its own.
* ``SerialConsole``: the serial transport (framed commands), and the
  readiness wait (``wait_ready``).

Framing (labgrid style). For command CMD and a fresh random id, one line is
sent (``sendline``) and the two markers are awaited with ``expect``::

    echo 'HHM''ARK-<id>-S'; eval 'CMD' </dev/null 2>&1; echo "HHM""ARK-<id>-E $?"

and the guest prints ``HHMARK-<id>-S``, CMD's output, ``HHMARK-<id>-E <exit code>``.
The typed text carries the marker split by quotes, so the terminal's echo of the
line never matches; the id changes per command, so a command's own output (or a
stale command's marker) cannot end it either. Works with terminal echo on or off
(``disable_echo`` turns it off to halve the traffic). ``eval`` keeps CMD in the
login shell (``cd`` and variables persist, a trailing ``&`` or ``# comment`` is
fine); stdin is /dev/null so CMD cannot swallow the next command; stderr is
merged into stdout, since a serial line has one stream.

Output is recovered exactly: the text between the markers, line ends ``\\r*\\n``
turned into ``\\n``; output not ending in a newline is kept as is (``printf abc``
gives ``'abc'``).

Kernel messages: lines with a printk timestamp ``[   12.345678] `` are kernel
messages printed asynchronously on the same UART. They are left out of the
command's stdout (``strip_kernel=False`` keeps them) and collected in
``kernel_log``; everything stays in console.log. A kernel message that cuts a
shell line in two (``ab[  1.0] msg`` then ``cd``) is split off and the halves
joined (``abcd``). This needs printk timestamps on: boot with ``printk.time=1``
(allnoconfig leaves CONFIG_PRINTK_TIME off). Commands whose own output looks like
kernel messages (``dmesg``) need ``strip_kernel=False`` or SSH.

Long commands: the interactive shell reads a line into a bounded buffer (busybox
ash: CONFIG_FEATURE_EDITING_MAX_LEN, 1024 by default; the tty: 4095). A command
whose framed line exceeds ``max_line`` characters, or that contains a newline or
another control character, is written to ``<tmpdir>/harness-<id>.sh`` in
base64 chunks of ``CHUNK`` characters (each a framed command of its own, so the
shell is never sent more than one short line ahead, and a failed write is seen),
decoded with ``base64 -d`` and sourced with ``.`` (its first line deletes it).
The guest needs ``base64`` and a writable ``tmpdir``.

The watcher sees every line, minus the terminal's echo of a line the console
sent (recognised verbatim), so a command that prints kernel-like text does not
trigger on its own echo.

Crashes: when the watcher sees a crash signature of a kind in ``fatal_kinds``,
the console waits until no report is open and the output is quiet for ``quiet``
seconds (at most ``settle`` seconds, within the deadline) or QEMU exits, so the
report and whatever follows it (an oops, then the panic) are complete, then
raises ``crashwatch.KernelCrash`` (a GuestCrash, blame kernel). A deadline
raises MachineError (blame infra) with the last ``tail_lines`` console lines, or
KernelCrash if the kernel had reported a crash or warning by then. End of file
(QEMU died) raises MachineError likewise.
"""
from __future__ import annotations

import base64
import os
import re
import secrets
import select
import shlex
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from re import Pattern
from typing import Callable, NamedTuple, Optional, Protocol, Union

import pexpect
from pexpect import fdpexpect

from harness import progress
from harness.errors import MachineError
from harness.host import Deadline
from harness.machine.crashwatch import (
    KINDS,
    CrashReport,
    CrashWatcher,
    KernelCrash,
    split_kernel_line,
)
from harness.machine.transport import CommandResult, Transport, as_deadline

MARKER = "HHMARK"
MAX_LINE = 900
CHUNK = 600
QUEUE_LINES = 20000      # lines kept for the serial transport until it reads them
TAIL_LINES = 200         # lines kept for error evidence
RAW_KEEP = 1 << 20       # bytes kept for an interactive shell (read())
SETTLE_S = 1.5           # after a crash signature, let the report finish
READ_SIZE = 4096         # bytes per read (pexpect's maxread)
WINDOW = 16384           # bytes an expect searches (searchwindowsize; > READ_SIZE
                         # plus the longest marker match)
POLL_S = 0.05            # an expect's slice: crash reports are looked at between
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# ------------------------------------------------------------ streams -------

class ConsoleStream(Protocol):
    """The console's file descriptor, which pexpect reads and writes; the
    stream owns it."""

    def fileno(self) -> int: ...

    def shutdown(self) -> None:
        """Make the far end see the console go (optional courtesy)."""
        ...

    def close(self) -> None:
        """Release the descriptor (after the reading stopped)."""
        ...


class SocketStream:
    """A connected socket: QEMU's ``-serial chardev:`` UNIX socket."""

    def __init__(self, sock: socket.socket):
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def shutdown(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()


class FdStream:
    """A file descriptor, e.g. a pty master (a local shell in the tests); a
    duplicate is kept, so the caller's descriptor stays the caller's."""

    def __init__(self, fd: int):
        self.fd = os.dup(fd)

    def fileno(self) -> int:
        return self.fd

    def shutdown(self) -> None:
        pass

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


# ------------------------------------------------------------ pipeline ------

class ConsoleLine(NamedTuple):
    """One console line as the pipeline saw it."""

    no: int      # line number in console.log (from 1)
    text: str    # the line as printed
    scan: str    # the line minus the echo of a line the harness typed (what
                 # the crash watcher was fed)


class _ReadTee:
    """pexpect's ``logfile_read``: every byte pexpect reads, whoever asked for
    it (the pump or an ``expect``), goes into the pipeline once."""

    def __init__(self, reader: ConsoleReader):
        self.reader = reader

    def write(self, data: bytes) -> None:
        self.reader._tee(data)

    def flush(self) -> None:
        pass


class ConsoleReader:
    """The console pipeline (see the module docstring): ``child``, a pexpect
    ``fdspawn`` on the stream's descriptor, whose read tee feeds it. ``start()``
    the pump; it ends at end of file or ``close()``."""

    def __init__(self, stream: ConsoleStream, log_path: Union[str, Path, None] = None, *,
                 watcher: Optional[CrashWatcher] = None, queue_lines: int = QUEUE_LINES,
                 tail_lines: int = TAIL_LINES):
        self.stream = stream
        # "wb": console.log is this console only, so a line number in the
        # evidence (CrashReport.first_line_no) is a line of this file
        self.log = open(log_path, "wb", buffering=0) if log_path is not None else None
        self.watcher = watcher or CrashWatcher()
        self.listeners: list[Callable[[str], object]] = (
            [progress.bind(progress.console_line)] if progress.verbose() else [])
        self.lines_seen = 0
        self.eof = False
        self.last_data = time.monotonic()
        self._cond = threading.Condition()
        self._queue: deque[ConsoleLine] = deque(maxlen=queue_lines)
        self._tail: deque[str] = deque(maxlen=tail_lines)
        self._sent: deque[str] = deque(maxlen=8)   # lines typed whose echo may still come
        self._partial = b""
        self._raw: Optional[bytearray] = None  # bytes kept for read(), once asked
        self._closed = False
        # bytes mode; no timeout of its own (every expect passes one); the
        # stream keeps the descriptor (fdspawn never closes it here)
        self.child = fdpexpect.fdspawn(stream, timeout=None, maxread=READ_SIZE)
        self.child.logfile_read = _ReadTee(self)
        self._turn = threading.Lock()      # held by whoever reads through child
        self._wanted = 0                   # callers of exclusive() waiting for it
        self._wake_r, self._wake_w = os.pipe()   # close() wakes the pump's wait
        self._thread = threading.Thread(target=self._pump, daemon=True,
                                        name="console-reader")

    def start(self) -> ConsoleReader:
        self._thread.start()
        return self

    def feed(self, data: bytes) -> None:
        """Take ``data`` as if the console had shown it (before ``start()``): a
        guest restored from a snapshot shows its boot this way (console.log, the
        line numbers, the crash watcher)."""
        self._tee(data)

    @contextmanager
    def exclusive(self) -> Iterator[fdpexpect.fdspawn]:
        """The pexpect child, for ``expect``: the pump stands aside meanwhile
        (what the caller's expects read is teed into the pipeline as usual)."""
        with self._cond:
            self._wanted += 1
        try:
            self._turn.acquire()
        finally:
            with self._cond:
                self._wanted -= 1
        try:
            yield self.child
        finally:
            self._turn.release()

    # -- the reading ---------------------------------------------------------------
    def _pump(self) -> None:
        """Read while nobody expects: wait until the console has bytes (pexpect
        reads only when asked), then take them through ``child``, whose read
        tee feeds the pipeline."""
        fd = self.stream.fileno()
        while not self._closed and not self.eof:
            try:
                select.select([fd, self._wake_r], [], [])
            except (OSError, ValueError):
                break
            if self._closed:
                break
            if self._wanted:         # let an expect take the turn (and the bytes)
                time.sleep(0.001)
                continue
            with self._turn:
                if self.eof:
                    break
                try:
                    self.child.read_nonblocking(READ_SIZE, timeout=0)
                except pexpect.TIMEOUT:    # an expect took the bytes meanwhile
                    pass
                except (pexpect.EOF, OSError, ValueError):
                    break
        self.at_eof()

    def _tee(self, data: bytes) -> None:
        if self.log is not None:
            try:
                self.log.write(data)
            except (OSError, ValueError):
                pass
        self._take(data)

    def _take(self, data: bytes) -> None:
        chunks = (self._partial + data).split(b"\n")
        self._partial = chunks.pop()
        with self._cond:
            self.last_data = time.monotonic()
            if self._raw is not None:
                self._raw += data
                del self._raw[:-RAW_KEEP]
            lines = [self._number(raw) for raw in chunks]
            self._cond.notify_all()
        self._tell(lines)

    def at_eof(self) -> None:
        """The console ended (pexpect saw end of file, or ``close()``): count the
        unfinished line, flush the watcher, wake every waiter. Idempotent."""
        with self._cond:
            if self.eof:
                return
            lines = [self._number(self._partial)] if self._partial else []
            self._partial = b""
            self.watcher.flush()
            self.eof = True
            self._cond.notify_all()
        self._tell(lines)

    def _number(self, raw: bytes) -> ConsoleLine:
        """Number one line and feed the watcher (with the lock held)."""
        text = raw.decode("utf-8", "replace").rstrip("\r")
        self.lines_seen += 1
        scan = self._without_echo(text)
        self.watcher.feed(scan)
        line = ConsoleLine(self.lines_seen, text, scan)
        self._queue.append(line)
        self._tail.append(text)
        return line

    def _without_echo(self, text: str) -> str:
        for sent in self._sent:
            if sent in text:
                self._sent.remove(sent)
                return text.replace(sent, "", 1)
        return text

    def _tell(self, lines: list[ConsoleLine]) -> None:
        for line in lines:
            for listener in list(self.listeners):
                try:
                    listener(line.text)
                except Exception:   # a listener must not stop the console
                    pass

    # -- the serial transport's side ---------------------------------------------
    def send_line(self, text: str) -> None:
        """Type one line; its echo is kept from the watcher. Raises OSError if
        the console is gone."""
        with self._cond:
            self._sent.append(text)
        self.send((text + "\n").encode())

    def next_line(self, timeout: float) -> Optional[ConsoleLine]:
        """The oldest unread line (waiting up to ``timeout`` s); None on timeout;
        EOFError once the console closed and every line was read."""
        end = time.monotonic() + timeout
        with self._cond:
            while not self._queue:
                if self.eof:
                    raise EOFError
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            line: ConsoleLine = self._queue.popleft()
            return line

    def unread(self) -> list[ConsoleLine]:
        """Take every line not read yet."""
        with self._cond:
            lines = list(self._queue)
            self._queue.clear()
        return lines

    def wait_quiet(self, deadline: Deadline, quiet: float,
                   until: Callable[[], bool] = lambda: True) -> None:
        """Wait until nothing arrived for ``quiet`` s (counted from now at the
        earliest) and ``until()`` holds, the console closes, or ``deadline``."""
        start = time.monotonic()
        with self._cond:
            while not self.eof:
                left = deadline.remaining()
                idle = time.monotonic() - max(self.last_data, start)
                if left <= 0 or (idle >= quiet and until()):
                    return
                self._cond.wait(min(left, max(quiet - idle, 0.05)))

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait (woken by every line) until ``predicate()`` or the timeout."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def tail(self, lines: int = 50) -> str:
        """The last ``lines`` console lines (the unfinished one included)."""
        with self._cond:
            last = list(self._tail)[-lines:]
            partial = self._partial.decode("utf-8", "replace").rstrip("\r")
        if partial:
            last = last[1 - lines:] + [partial] if lines > 1 else [partial]
        return "\n".join(last)

    # -- raw bytes (an interactive shell) ------------------------------------------
    def discard(self) -> None:
        """Forget the bytes kept for ``read`` (and keep them from now on)."""
        with self._cond:
            self._raw = bytearray()

    def read(self, size: int, timeout: float) -> bytes:
        """Up to ``size`` bytes received since the first ``discard``/``read``;
        b"" on timeout; EOFError at end of file."""
        with self._cond:
            if self._raw is None:
                self._raw = bytearray()
            if not self._raw and not self.eof:
                self._cond.wait(timeout)
            if self._raw:
                out = bytes(self._raw[:size])
                del self._raw[:size]
                return out
            if self.eof:
                raise EOFError
            return b""

    def send(self, data: bytes) -> None:
        """Write ``data`` whole (pexpect's ``send`` writes once)."""
        while data:
            data = data[self.child.send(data):]

    # -- end -------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        os.write(self._wake_w, b"x")
        self.stream.shutdown()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        self.at_eof()
        self.stream.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        if self.log is not None:
            self.log.close()


# ------------------------------------------------------------ crash gate ----

class CrashGate:
    """Raises the crash reports the console shows as KernelCrash.

    Pending when the watcher holds a report of a kind in ``fatal_kinds`` not
    raised yet, or is collecting one. Raising first lets the report finish: it
    waits until no report is open and the console was quiet for ``quiet`` s, at
    most ``settle`` s, or the console closed. ``step_of()`` names the step the
    KernelCrash blames. Called (``gate()``) by SSH steps and QMP waits.
    """

    def __init__(self, reader: ConsoleReader, *, fatal_kinds: Sequence[str] = KINDS,
                 settle: float = SETTLE_S, quiet: float = 0.0,
                 step_of: Callable[[], str] = lambda: "boot"):
        self.reader, self.watcher = reader, reader.watcher
        self.fatal_kinds = frozenset(fatal_kinds)
        self.settle_s, self.quiet = settle, quiet
        self.step_of = step_of
        self.seen = 0    # watcher reports already raised

    def pending(self) -> bool:
        if self.watcher.open_kind in self.fatal_kinds:
            return True
        return any(r.kind in self.fatal_kinds for r in self.watcher.reports[self.seen:])

    def wait(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for a crash to show (after a lost connection);
        gives up early when the console closed."""
        self.reader.wait_for(lambda: self.pending() or self.reader.eof, seconds)
        return self.pending()

    def settle(self, deadline: Optional[Deadline] = None) -> None:
        """Let the open report (and what follows it) finish."""
        limit = Deadline(self.settle_s) if deadline is None else deadline.sub(self.settle_s)
        self.reader.wait_quiet(limit, self.quiet, until=lambda: self.watcher.open_kind is None)

    def raise_new(self, step: str, doing: str = "") -> None:
        """Raise the reports not raised yet (closing an open one) if one is fatal."""
        self.watcher.flush()
        reports = self.watcher.reports
        new: tuple[CrashReport, ...] = reports[self.seen:]
        self.seen = len(reports)
        first: Optional[CrashReport] = next(
            (r for r in new if r.kind in self.fatal_kinds), None)
        if first is None:
            return
        message = f"kernel {first.summary()} (while {doing})" if doing else ""
        raise KernelCrash(new, step=step, message=message)

    def __call__(self) -> None:
        if self.pending():
            self.settle()
            self.raise_new(self.step_of())


# ------------------------------------------------------------ transport -----

class Line(NamedTuple):
    """A logical console line; ``kernel`` if it is a timestamped kernel message."""

    text: str
    kernel: bool


def frame_command(token: str, body: str, *, null_stdin: bool = True) -> str:
    """The line to type for ``body``; its echo cannot contain the printed markers."""
    stdin = " </dev/null" if null_stdin else ""
    return (f"echo '{MARKER[:3]}''{MARKER[3:]}-{token}-S'; "
            f"eval {shlex.quote(body)}{stdin} 2>&1; "
            f"echo \"{MARKER[:3]}\"\"{MARKER[3:]}-{token}-E $?\"")


# kernel messages printed into the middle of a marker line ("HHMA[ 1.0] msg\r\nRK-...")
_KMSG_LINE = rb"\[\s*\d+\.\d{6}\](?:\[\s*[TC]\d+\])?[^\n]*\n"
_KMSG = rb"(?:" + _KMSG_LINE + rb")*"


def _marker(text: str) -> bytes:
    """A regex for ``text`` as printed, kernel messages allowed between its bytes."""
    return _KMSG.join(re.escape(bytes([c])) for c in text.encode())


# any command's markers (compiled once: a pattern per token cost 2.5 ms a
# command); group 1 is the token, kernel messages and all (``marker_token``)
_TOKEN = rb"([0-9a-f](?:" + _KMSG + rb"[0-9a-f]){7})"
START = re.compile(_marker(f"{MARKER}-") + _TOKEN + _KMSG + _marker("-S") + rb"[^\n]*\n")
END = re.compile(_marker(f"{MARKER}-") + _TOKEN + _KMSG + _marker("-E ")
                 + rb"(\d(?:" + _KMSG + rb"\d)*)" + _KMSG + rb"\r*\n")


def marker_text(match: re.Match[bytes], group: int) -> str:
    """A group of a marker's match without the kernel messages inside it."""
    return re.sub(_KMSG_LINE, b"", match.group(group)).decode()


def _short(command: str, limit: int = 80) -> str:
    text = " ".join(command.split())
    return repr(text if len(text) <= limit else text[:limit - 3] + "...")


def _needs_script(command: str, max_line: int) -> bool:
    return bool(_CONTROL.search(command)) or len(frame_command("0" * 8, command)) > max_line


def _output(before: bytes, strip_kernel: bool) -> str:
    """A command's output from the bytes between its markers: line ends
    ``\\r*\\n`` made ``\\n``, kernel messages left out (or kept as lines of
    their own), a shell line they cut joined again."""
    *lines, last = before.decode("utf-8", "replace").split("\n")
    out: list[str] = []
    cut = ""
    for raw in lines:
        line = raw.rstrip("\r")
        split = split_kernel_line(line)
        if split.message is None:
            out.append(cut + line + "\n")
            cut = ""
            continue
        cut += split.prefix
        if not strip_kernel:
            out.append(line[len(split.prefix):] + "\n")
    return "".join(out) + cut + last


class _CrashShown(Exception):
    """A fatal crash report showed while a command was expected."""


class SerialConsole(Transport):
    """Transport over the guest's serial console (see the module docstring):
    commands through the ``ConsoleReader``'s pexpect child, ``wait_ready``
    on its numbered lines. The reader stays the caller's unless ``own_reader``."""

    name = "serial"

    def __init__(self, reader: ConsoleReader, *, fatal_kinds: Sequence[str] = KINDS,
                 settle: float = 5.0, quiet: float = 1.0, tail_lines: int = 50,
                 tmpdir: str = "/tmp", max_line: int = MAX_LINE, own_reader: bool = False):
        self.reader = reader
        self.gate = CrashGate(reader, fatal_kinds=fatal_kinds, settle=settle, quiet=quiet)
        self.quiet, self.tail_lines = quiet, tail_lines
        self.tmpdir, self.max_line = tmpdir, max_line
        self.kernel_log: list[str] = []
        self._cut = ""       # shell text cut short by a kernel message
        self._own_reader = own_reader

    @property
    def watcher(self) -> CrashWatcher:
        return self.reader.watcher

    @property
    def fatal_kinds(self) -> frozenset[str]:
        return self.gate.fatal_kinds

    # --- public API ---------------------------------------------------------

    def run(self, command: str, deadline: Union[Deadline, float], *,
            strip_kernel: bool = True) -> CommandResult:
        """Run ``command`` in the guest shell and return its merged output."""
        deadline = as_deadline(deadline)
        start = time.monotonic()
        body = command
        if _needs_script(command, self.max_line):
            body = f". {self._upload(command, deadline)}"
        stdout, code = self._exchange(body, deadline, what=f"running {_short(command)}",
                                      strip_kernel=strip_kernel)
        return CommandResult(command, stdout, "", code, time.monotonic() - start,
                             self.name)

    def wait_ready(self, deadline: Union[Deadline, float],
                   pattern: Union[str, Pattern[str]] = "HARNESS-READY") -> str:
        """Wait for a console line matching ``pattern`` (regex); return the line."""
        deadline = as_deadline(deadline)
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        what = f"waiting for {regex.pattern!r} on the console"
        while True:
            line = self._next_line(deadline, what)
            if regex.search(line.text):
                return line.text

    def disable_echo(self, deadline: Union[Deadline, float]) -> None:
        """``stty -echo`` on the console (the framing works either way)."""
        deadline = as_deadline(deadline)
        out, code = self._exchange("stty -echo", deadline, what="stty -echo",
                                   null_stdin=False)
        CommandResult("stty -echo", out, "", code, 0.0, self.name).check("serial")

    def interrupt(self) -> None:
        """Send Ctrl-C, e.g. after a command timed out."""
        self.reader.send(b"\x03")

    def drain(self, deadline: Union[Deadline, float],
              quiet: Optional[float] = None) -> tuple[CrashReport, ...]:
        """Wait until the guest is quiet, QEMU exits or the deadline; never raises
        for a crash. Returns every report seen. Call before tearing down so that
        console.log and the watcher get the last lines."""
        deadline = as_deadline(deadline)
        self.reader.wait_quiet(deadline, self.quiet if quiet is None else quiet)
        self._skip_unread()
        return self.watcher.reports

    @property
    def crashes(self) -> tuple[CrashReport, ...]:
        """Every crash/warning report seen on this console so far."""
        return self.watcher.reports

    def tail(self) -> str:
        """The last console lines (``tail_lines`` of them)."""
        return self.reader.tail(self.tail_lines)

    def close(self) -> None:
        if self._own_reader:
            self.reader.close()

    # --- commands -----------------------------------------------------------

    def _exchange(self, body: str, deadline: Deadline, *, what: str,
                  strip_kernel: bool = True, null_stdin: bool = True) -> tuple[str, int]:
        token = secrets.token_hex(4)
        try:
            with self.reader.exclusive() as child:
                self._send(frame_command(token, body, null_stdin=null_stdin), what)
                self._expect(child, START, token, deadline, what)
                end, before = self._expect(child, END, token, deadline, what)
        except _CrashShown:
            self._raise_if_crashed(deadline, what)
            raise self._failure(f"a crash report vanished while {what}") from None
        finally:
            self._skip_unread()
        code = int(marker_text(end, 2))
        return _output(before, strip_kernel), code

    def _send(self, line: str, what: str) -> None:
        if not self.reader.eof:
            try:
                self.reader.send_line(line)
                return
            except (OSError, ValueError):
                pass
        raise self._failure(f"serial console closed (QEMU exited?) before {what}")

    def _expect(self, child: fdpexpect.fdspawn, pattern: Pattern[bytes], token: str,
                deadline: Deadline, what: str) -> tuple[re.Match[bytes], bytes]:
        """pexpect's ``expect`` of ``pattern`` with ``token``, in slices of
        ``POLL_S``, looking at the crash watcher between them (an expect ends
        only on its patterns); the match and the bytes before it. Another
        token's marker (a stale command's, or printed by the command) is
        passed over and kept in those bytes."""
        patterns = [pattern, pexpect.TIMEOUT, pexpect.EOF]
        passed: list[bytes] = []
        while True:
            if self.gate.pending():
                raise _CrashShown
            try:
                index = child.expect_list(patterns, searchwindowsize=WINDOW,
                                          timeout=max(0.0, min(deadline.remaining(), POLL_S)))
            except OSError:     # the socket reset as QEMU exited: an end of file
                index = 2
            if index == 0:
                match: re.Match[bytes] = child.match
                if marker_text(match, 1) == token:
                    return match, b"".join(passed) + child.before
                passed += [child.before, child.after]
                continue
            if index == 2:
                self.reader.at_eof()
                if self.gate.pending():
                    raise _CrashShown
                raise self._failure(f"serial console closed (QEMU exited?) while {what}")
            if deadline.expired():
                raise self._failure(f"no answer within {deadline.seconds:.1f}s while {what}")

    def _upload(self, command: str, deadline: Deadline) -> str:
        """Write ``command`` to a script in the guest that deletes itself when
        sourced; return its path."""
        path = f"{self.tmpdir}/harness-{secrets.token_hex(4)}.sh"
        data = base64.b64encode(f"rm -f {path}\n{command}".encode()).decode()
        for offset in range(0, len(data), CHUNK):
            redirect = ">" if offset == 0 else ">>"
            self._checked(f"printf %s {data[offset:offset + CHUNK]} {redirect}{path}.b64",
                          deadline)
        self._checked(f"base64 -d {path}.b64 >{path} && rm -f {path}.b64", deadline)
        return path

    def _checked(self, body: str, deadline: Deadline) -> None:
        out, code = self._exchange(body, deadline, what="uploading a long command")
        CommandResult(body, out, "", code, 0.0, self.name).check("serial upload")

    # --- reading ------------------------------------------------------------

    def _next_line(self, deadline: Deadline, what: str) -> Line:
        while True:
            self._raise_if_crashed(deadline, what)
            try:
                line = self.reader.next_line(deadline.remaining())
            except EOFError:
                raise self._failure(
                    f"serial console closed (QEMU exited?) while {what}") from None
            if line is not None:
                return self._logical(line)
            if deadline.expired():
                raise self._failure(f"no answer within {deadline.seconds:.1f}s while {what}")

    def _logical(self, line: ConsoleLine) -> Line:
        """Shell text (rejoined if a kernel message cut it) or a kernel message."""
        split = split_kernel_line(line.scan)
        if split.message is None:
            logical = Line(self._cut + line.text, False)
            self._cut = ""
            return logical
        self._cut += split.prefix
        kernel = line.scan[len(split.prefix):]
        self.kernel_log.append(kernel)
        return Line(kernel, True)

    def _skip_unread(self) -> None:
        for line in self.reader.unread():
            self._logical(line)

    # --- failures -----------------------------------------------------------

    def _raise_if_crashed(self, deadline: Deadline, what: str) -> None:
        if not self.gate.pending():
            return
        self.gate.settle(deadline)
        self._skip_unread()
        self.gate.raise_new("serial", doing=what)

    def _failure(self, message: str) -> Exception:
        """MachineError with the console tail, or KernelCrash if the kernel complained."""
        tail = f"--- console tail ---\n{self.tail()}"
        if self.watcher.reports:
            last = self.watcher.reports[-1]
            return KernelCrash(self.watcher.reports, step="serial", extra=tail,
                               message=f"{message}; the kernel had reported {last.summary()}")
        return MachineError(message, step="serial", evidence=tail)
