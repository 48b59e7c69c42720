"""Ctrl-C and SIGTERM: unwind like an exception, then stop what the harness started.

``install()`` (called by the CLI) makes SIGINT raise :class:`Interrupted` and
SIGTERM raise :class:`Terminated` (both ``KeyboardInterrupt`` subclasses), so
every ``with``/``finally`` block runs: QEMU is shut down by its Machine, the
run folder is removed, what was recorded is written as a partial report.

Only the first signal raises. Later ones are reported and ignored, so a second
Ctrl-C cannot cut the clean-up short (SIGKILL still ends everything; QEMU has
PR_SET_PDEATHSIG and goes with it).

At the moment of the signal the handler also notes every process the harness
started (its descendants: ``make`` and the compilers under it, QEMU, gdb),
by PID and start time. :func:`stop_children` ends whichever of them is still
alive once the Python side has unwound, including compilers orphaned when
``make`` was killed; a PID reused by an unrelated process is never touched
(its start time differs).
"""
from __future__ import annotations

import os
import signal
import time

from harness import progress

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Interrupted(KeyboardInterrupt):
    """The run was stopped by SIGINT (Ctrl-C): exit 130."""
    signum = signal.SIGINT

    def __init__(self, message: str = ""):
        super().__init__(message or f"interrupted by {self.signame}")

    @property
    def signame(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.signum]


class Terminated(Interrupted):
    """The run was stopped by SIGTERM: exit 143."""
    signum = signal.SIGTERM


_state = {"signum": None, "snapshot": {}}


def received():
    """The signal number that interrupted this process, or None."""
    return _state["signum"]


def signame(exc: BaseException | None = None) -> str:
    """SIGINT or SIGTERM: from the exception, else from what was received."""
    if isinstance(exc, Interrupted):
        return exc.signame
    return signal.Signals(_state["signum"] or signal.SIGINT).name


def exit_code(exc: BaseException | None = None) -> int:
    if isinstance(exc, Interrupted):
        return exc.exit_code
    return EXIT_CODES.get(_state["signum"] or signal.SIGINT, 130)


def _handler(signum, frame):
    if _state["signum"] is not None:
        progress.warn(f"{signal.Signals(signum).name} again: still stopping QEMU and "
                      "the build (SIGKILL ends everything at once)", "signals")
        return
    _state["signum"] = signum
    try:
        _state["snapshot"] = descendants()
    except Exception:
        pass
    raise (Terminated if signum == signal.SIGTERM else Interrupted)()


def install() -> bool:
    """Route SIGINT and SIGTERM through the handler (main thread only)."""
    _state["signum"] = None
    _state["snapshot"] = {}
    try:
        signal.signal(signal.SIGINT, _handler)
        signal.signal(signal.SIGTERM, _handler)
    except ValueError:  # not the main thread
        return False
    return True


def installed() -> bool:
    try:
        return signal.getsignal(signal.SIGTERM) is _handler
    except ValueError:
        return False


# ------------------------------------------------------------ processes -----

def _stat(pid: int):
    """(ppid, starttime) of a process from /proc/PID/stat, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2:].split()
    # fields[0] is the state (field 3); ppid is field 4, starttime field 22
    try:
        return int(fields[1]), int(fields[19])
    except (IndexError, ValueError):
        return None


def start_time(pid: int):
    st = _stat(pid)
    return st[1] if st else None


def descendants(root: int | None = None) -> dict:
    """{pid: starttime} of every live descendant of ``root`` (default: us)."""
    root = os.getpid() if root is None else root
    children = {}
    starts = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        st = _stat(int(name))
        if st is None:
            continue
        children.setdefault(st[0], []).append(int(name))
        starts[int(name)] = st[1]
    found, todo = {}, [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found and child != root:
                found[child] = starts[child]
                todo.append(child)
    return found


def _alive(pid: int, start) -> bool:
    st = _stat(pid)
    if st is None:
        return False
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            if b"\nState:\tZ" in f.read():
                return False
    except OSError:
        return False
    return st[1] == start


def stop_children(grace: float = 2.0) -> list:
    """SIGTERM, then SIGKILL, every process started by the harness that is still
    running: those noted when the signal arrived and our current descendants.
    Returns the PIDs signalled."""
    targets = dict(_state["snapshot"])
    try:
        targets.update(descendants())
    except OSError:
        pass
    targets.pop(os.getpid(), None)
    live = {p: s for p, s in targets.items() if _alive(p, s)}
    for pid in live:
        _kill(pid, signal.SIGTERM)
    end = time.monotonic() + grace
    while time.monotonic() < end and any(_alive(p, s) for p, s in live.items()):
        time.sleep(0.05)
    for pid, start in live.items():
        if _alive(pid, start):
            _kill(pid, signal.SIGKILL)
    return sorted(live)


def kill(pid: int, sig) -> None:
    """Send ``sig`` to ``pid`` if it still exists (and may be signalled)."""
    _kill(pid, sig)


def _kill(pid: int, sig) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass

