"""Serial console transport: framed shell commands over a pexpect spawn object,
with every line read shown to a CrashWatcher.

Framing (labgrid style). For command CMD and a fresh random id, one line is sent::

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

The watcher sees every line read, minus the terminal's echo of a line the
console sent (recognised verbatim), so a command that prints kernel-like text
does not trigger on its own echo.

Crashes: when the watcher sees a crash signature of a kind in ``fatal_kinds``,
the console keeps reading until the output is quiet for ``quiet`` seconds (at
most ``settle`` seconds, within the deadline) or QEMU exits, so the report and
whatever follows it (an oops, then the panic) are complete, then raises
``crashwatch.KernelCrash`` (a GuestCrash, blame kernel). A deadline raises
MachineError (blame infra) with the last ``tail_lines`` console lines, or
KernelCrash if the kernel had reported a crash or warning by then. End of file
(QEMU died) raises MachineError likewise.
"""
from __future__ import annotations

import base64
import codecs
import re
import secrets
import shlex
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from re import Pattern
from typing import NamedTuple, Optional, Union

import pexpect

from .crashwatch import KINDS, CrashWatcher, KernelCrash, split_kernel_line
from .errors import MachineError
from .host import Deadline
from .transport import CommandResult, Transport, as_deadline

MARKER = "HHMARK"
MAX_LINE = 900
CHUNK = 600
READ_SIZE = 4096
_NEWLINE = re.compile(r"\r*\n")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


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


def _short(command: str, limit: int = 80) -> str:
    text = " ".join(command.split())
    return repr(text if len(text) <= limit else text[:limit - 3] + "...")


def _needs_script(command: str, max_line: int) -> bool:
    return bool(_CONTROL.search(command)) or len(frame_command("0" * 8, command)) > max_line


class SerialConsole(Transport):
    """Transport over the guest's serial console (see the module docstring).

    ``spawn`` is any pexpect spawn object (``pexpect.spawn`` of a pty,
    ``pexpect.fdpexpect.fdspawn`` of a socket), bytes or text mode. ``logfile``
    (a path, or a file opened in the spawn's mode) receives everything read, via
    pexpect's ``logfile_read``. The spawn stays the caller's unless ``own_spawn``.
    """

    name = "serial"

    def __init__(self, spawn, *, logfile=None, watcher: Optional[CrashWatcher] = None,
                 fatal_kinds: Sequence[str] = KINDS, settle: float = 5.0,
                 quiet: float = 1.0, tail_lines: int = 50, tmpdir: str = "/tmp",
                 max_line: int = MAX_LINE, own_spawn: bool = False):
        self.spawn = spawn
        self.watcher = watcher or CrashWatcher()
        self.fatal_kinds = frozenset(fatal_kinds)
        self.settle, self.quiet = settle, quiet
        self.tmpdir, self.max_line = tmpdir, max_line
        self.kernel_log: list = []
        self._tail: deque = deque(maxlen=tail_lines)
        self._queue: deque = deque()
        self._sent: deque = deque(maxlen=8)  # lines sent whose echo may still come
        self._partial = ""   # read, not yet a whole line
        self._cut = ""       # shell text cut short by a kernel message
        self._eof = False
        self._raised = 0     # watcher reports already raised as KernelCrash
        self._own_spawn = own_spawn
        self._decoder = (codecs.getincrementaldecoder("utf-8")("replace")
                         if getattr(spawn, "encoding", None) is None else None)
        self._own_log = self._attach_log(logfile)
        self._take_spawn_buffer()

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
                   pattern: Union[str, Pattern] = "HARNESS-READY") -> str:
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
        self.spawn.send("\x03")

    def drain(self, deadline: Union[Deadline, float], quiet: Optional[float] = None) -> tuple:
        """Read until the guest is quiet, QEMU exits or the deadline; never raises
        for a crash. Returns every report seen. Call before tearing down so that
        console.log and the watcher get the last lines."""
        deadline = as_deadline(deadline)
        self._read_until_quiet(deadline, self.quiet if quiet is None else quiet)
        if self._eof:
            self.watcher.flush()
        self._queue.clear()
        return self.watcher.reports

    @property
    def crashes(self) -> tuple:
        """Every crash/warning report seen on this console so far."""
        return self.watcher.reports

    def tail(self) -> str:
        """The last console lines read (``tail_lines`` of them)."""
        return "\n".join(self._tail)

    def close(self) -> None:
        if self._own_log is not None:
            self.spawn.logfile_read = None
            self._own_log.close()
            self._own_log = None
        if self._own_spawn and not getattr(self.spawn, "closed", True):
            self.spawn.close()

    # --- commands -----------------------------------------------------------

    def _exchange(self, body: str, deadline: Deadline, *, what: str,
                  strip_kernel: bool = True, null_stdin: bool = True) -> tuple:
        token = secrets.token_hex(4)
        self._send(frame_command(token, body, null_stdin=null_stdin) + "\n", what)
        return self._collect(token, deadline, what, strip_kernel)

    def _send(self, text: str, what: str) -> None:
        if not self._eof:
            try:
                self._sent.append(text.rstrip("\n"))
                self.spawn.send(text)
                return
            except (OSError, ValueError):
                self._at_eof()
        raise self._failure(f"serial console closed (QEMU exited?) before {what}")

    def _collect(self, token: str, deadline: Deadline, what: str,
                 strip_kernel: bool) -> tuple:
        start = f"{MARKER}-{token}-S"
        end = re.compile(re.escape(f"{MARKER}-{token}-E ") + r"(\d+)")
        while True:
            line = self._next_line(deadline, what)
            if not line.kernel and start in line.text:
                break
        out = []
        while True:
            line = self._next_line(deadline, what)
            found = None if line.kernel else end.search(line.text)
            if found:
                text = "".join(s + "\n" for s in out) + line.text[:found.start()]
                return text, int(found.group(1))
            if not (line.kernel and strip_kernel):
                out.append(line.text)

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
            if self._queue:
                return self._queue.popleft()
            if self._eof:
                raise self._failure(f"serial console closed (QEMU exited?) while {what}")
            if deadline.expired():
                raise self._failure(f"no answer within {deadline.seconds:.1f}s while {what}")
            self._pump(deadline.remaining())

    def _pump(self, timeout: float) -> bool:
        """Read what arrives within ``timeout``; False on timeout or EOF."""
        if self._eof:
            return False
        try:
            data = self.spawn.read_nonblocking(READ_SIZE, timeout)
        except pexpect.TIMEOUT:
            return False
        except (pexpect.EOF, ValueError, OSError):
            self._at_eof()
            return False
        self._take_text(self._decoder.decode(data) if self._decoder else data)
        return True

    def _take_text(self, text: str) -> None:
        pieces = _NEWLINE.split(self._partial + text)
        self._partial = pieces.pop()
        for piece in pieces:
            self._take_line(piece.rstrip("\r"))

    def _take_line(self, line: str) -> None:
        self._tail.append(line)
        scan = self._without_echo(line)
        self.watcher.feed(scan)
        split = split_kernel_line(scan)
        if split.message is None:
            self._queue.append(Line(self._cut + line, False))
            self._cut = ""
            return
        self._cut += split.prefix
        kernel = scan[len(split.prefix):]
        self.kernel_log.append(kernel)
        self._queue.append(Line(kernel, True))

    def _without_echo(self, line: str) -> str:
        """``line`` minus the terminal's echo of a line we sent, so that text typed
        as part of a command is never taken for a kernel message."""
        for sent in self._sent:
            if sent in line:
                self._sent.remove(sent)
                return line.replace(sent, "", 1)
        return line

    def _at_eof(self) -> None:
        self._eof = True
        if self._partial:
            self._take_line(self._partial.rstrip("\r"))
            self._partial = ""
        self.watcher.flush()

    def _read_until_quiet(self, deadline: Deadline, quiet: float) -> None:
        while not self._eof and not deadline.expired():
            if not self._pump(min(quiet, deadline.remaining())):
                return

    # --- failures -----------------------------------------------------------

    def _raise_if_crashed(self, deadline: Deadline, what: str) -> None:
        new = self.watcher.reports[self._raised:]
        if self.watcher.open_kind not in self.fatal_kinds and not any(
                r.kind in self.fatal_kinds for r in new):
            return
        self._read_until_quiet(deadline.sub(self.settle), self.quiet)
        self.watcher.flush()
        new = self.watcher.reports[self._raised:]
        self._raised = len(self.watcher.reports)
        self._queue.clear()
        first = next(r for r in new if r.kind in self.fatal_kinds)
        raise KernelCrash(new, step="serial",
                          message=f"kernel {first.summary()} (while {what})")

    def _failure(self, message: str) -> Exception:
        """MachineError with the console tail, or KernelCrash if the kernel complained."""
        tail = f"--- console tail ---\n{self.tail()}"
        if self.watcher.reports:
            last = self.watcher.reports[-1]
            return KernelCrash(self.watcher.reports, step="serial", extra=tail,
                               message=f"{message}; the kernel had reported {last.summary()}")
        return MachineError(message, step="serial", evidence=tail)

    # --- setup --------------------------------------------------------------

    def _attach_log(self, logfile):
        """Point the spawn's logfile_read at ``logfile``; return it if we opened it."""
        if logfile is None:
            return None
        owned = None
        if isinstance(logfile, (str, Path)):
            binary = self._decoder is not None
            owned = logfile = (open(logfile, "ab") if binary
                               else open(logfile, "a", encoding="utf-8"))
        self.spawn.logfile_read = logfile
        return owned

    def _take_spawn_buffer(self) -> None:
        """Data the caller's own ``expect`` calls left unread is ours now."""
        pending = getattr(self.spawn, "buffer", None)
        if pending:
            self.spawn.buffer = self.spawn.string_type()
            self._take_text(self._decoder.decode(pending) if self._decoder else pending)
