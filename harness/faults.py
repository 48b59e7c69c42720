"""Fault injection for the fault suite (tests/test_faults.py, bench/bench_faults.py).

Off unless ``HOTPLUG_HARNESS_FAULT`` is set; then it names one fault and the
point of the run it strikes at, once per process::

    HOTPLUG_HARNESS_FAULT=FAULT@POINT[~MATCH][+DELAY]

    qemu-kill@removal              SIGKILL QEMU as a removal with gdb attached starts
    qemu-stop@ssh~online           SIGSTOP QEMU at the first SSH step named '*online*'
    qemu-kill@gdb-attach+0.3       0.3 s after the point, from a timer thread
                                   (here: while gdb is attaching)

Points (where the harness calls :func:`point`):

=============  ==============================================================
``build``      the build starts (before the cache is looked up)
``launched``   QEMU was just started (the boot: firmware, kernel, init)
``ready``      the guest is ready on the console, before SSH connects
``ssh``        a step that runs over SSH starts (its command goes out next)
``qmp-wait``   a QMP event is waited for (``DEVICE_DELETED``, virtio-mem's size)
``gdb-attach`` gdb is about to attach for a removal step (``--order-check``)
``removal``    a removal step starts with gdb attached
``walk``       the host-side walk of the tables, the guest paused over QMP
``report``     the report folder is about to be written
=============  ==============================================================

``MATCH`` is a substring of the step (or the event) the point is reached in.

Faults: ``qemu-kill`` (SIGKILL), ``qemu-stop`` (SIGSTOP: a hang), ``gdb-kill``
(SIGKILL to the ordering agent's process: gdb-multiarch or the gdbstub
client), ``panic`` (``echo c > /proc/sysrq-trigger`` typed on the serial
console), ``sshd-kill`` (``kill -9`` every dropbear, on the serial
console), ``forward-refuse`` (QEMU's SSH forward removed over QMP: connections
to it are refused), ``fill`` (the filesystem of the report folder, or of
``HOTPLUG_HARNESS_FAULT_FILL``, filled to its last byte: only one of at most
512 MiB, a tmpfs made for it), ``sigint`` (Ctrl-C to the harness itself).

When ``HOTPLUG_HARNESS_FAULT_LOG`` names a file, a line ``<monotonic time>
<fault>@<point> <what>`` is appended to it when the fault strikes, for the
bench's time to the verdict (``time.monotonic()`` is one clock for every
process of the machine).
"""
from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from harness import progress

ENV = "HOTPLUG_HARNESS_FAULT"
LOG_ENV = "HOTPLUG_HARNESS_FAULT_LOG"
FILL_ENV = "HOTPLUG_HARNESS_FAULT_FILL"     # the folder ``fill`` fills where no path is known
FAULTS = ("qemu-kill", "qemu-stop", "gdb-kill", "panic", "sshd-kill", "forward-refuse",
          "fill", "sigint")
POINTS = ("build", "launched", "ready", "ssh", "qmp-wait", "gdb-attach", "removal", "walk",
          "report")
GDB_COMM = "gdb-multiarch"


@dataclass(frozen=True)
class Plan:
    fault: str
    point: str
    match: str = ""
    delay: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Plan:
        fault, sep, rest = text.strip().partition("@")
        delay = 0.0
        if "+" in rest:
            rest, _, after = rest.rpartition("+")
            delay = float(after)
        where, _, match = rest.partition("~")
        if not sep or fault not in FAULTS or where not in POINTS:
            raise ValueError(f"{ENV}={text!r}: expected FAULT@POINT[~MATCH][+DELAY] with "
                             f"FAULT one of {', '.join(FAULTS)} and POINT one of "
                             f"{', '.join(POINTS)}")
        return cls(fault, where, match, delay)


_state: dict[str, Any] = {"fired": False}
_lock = threading.Lock()


def plan() -> Optional[Plan]:
    text = os.environ.get(ENV, "")
    return Plan.parse(text) if text else None


def armed() -> bool:
    """Is a fault asked for (the environment names one)?"""
    return bool(os.environ.get(ENV))


def point(name: str, what: str = "", **ctx: Any) -> None:
    """The run reached point ``name`` (in step or event ``what``): strike if
    the plan says so. ``ctx`` holds what a fault acts on: ``qemu`` (PID),
    ``console`` (a ConsoleReader), ``machine`` (a Machine), ``path`` (a folder),
    ``gdb`` (the PID of the ordering agent's process)."""
    if not armed():
        return
    p = plan()
    if p is None or p.point != name or (p.match and p.match not in what):
        return
    with _lock:
        if _state["fired"]:
            return
        _state["fired"] = True
    if p.delay > 0:
        threading.Timer(p.delay, _strike, args=(p, what, ctx)).start()
    else:
        _strike(p, what, ctx)


def reset() -> None:
    """Arm again (tests)."""
    _state["fired"] = False


def _strike(p: Plan, what: str, ctx: dict[str, Any]) -> None:
    desc = f"{p.fault}@{p.point}" + (f" in {what!r}" if what else "")
    log = os.environ.get(LOG_ENV)
    if log:
        with open(log, "a") as f:
            f.write(f"{time.monotonic():.6f} {desc}\n")
    progress.warn(f"fault injected: {desc}", "faults")
    if p.fault == "sigint":
        os.kill(os.getpid(), signal.SIGINT)
    elif p.fault in ("qemu-kill", "qemu-stop"):
        pid = ctx.get("qemu") or _qemu_of(ctx)
        if pid:
            os.kill(pid, signal.SIGKILL if p.fault == "qemu-kill" else signal.SIGSTOP)
    elif p.fault == "gdb-kill":
        if ctx.get("gdb"):
            os.kill(ctx["gdb"], signal.SIGKILL)
        else:          # not started yet (gdb-attach): killed once it is
            threading.Thread(target=_kill_gdb, daemon=True).start()
    elif p.fault in ("panic", "sshd-kill"):
        console = ctx.get("console")
        line = ("echo c > /proc/sysrq-trigger" if p.fault == "panic"
                else "kill -9 $(pidof dropbear)")
        if console is not None:
            console.send_line(line)
    elif p.fault == "forward-refuse":
        machine = ctx.get("machine")
        if machine is not None and machine.spec.ssh_port:
            machine.qmp_cmd("human-monitor-command", **{
                "command-line": f"hostfwd_remove tcp:127.0.0.1:{machine.spec.ssh_port}"})
    elif p.fault == "fill":
        path = ctx.get("path") or os.environ.get(FILL_ENV)
        if path:
            fill(Path(path))


def _qemu_of(ctx: dict[str, Any]) -> Optional[int]:
    machine = ctx.get("machine")
    proc = getattr(machine, "proc", None)
    return getattr(proc, "pid", None)


def _kill_gdb() -> None:
    """SIGKILL the gdb (gdb-multiarch, or the agent over the gdbstub without
    it: harness.inspect.rsp_gdb) this process started, waiting up to 5 s for it."""
    from harness import signals
    end = time.monotonic() + 5.0
    while time.monotonic() < end:
        for pid in signals.descendants():
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if argv.startswith(GDB_COMM.encode()) or b"rsp_gdb" in argv:
                signals.kill(pid, signal.SIGKILL)
                return
        time.sleep(0.05)


FILL_MAX_BYTES = 512 << 20


def fill(folder: Path) -> int:
    """Fill the filesystem of ``folder`` to its last byte (a file
    ``.fault-fill`` in it); returns the bytes written. Only a small filesystem
    (at most FILL_MAX_BYTES: the bench's tmpfs), never the machine's disk."""
    st = os.statvfs(folder)
    if st.f_blocks * st.f_frsize > FILL_MAX_BYTES:
        progress.warn(f"fault fill: {folder} is on a filesystem of "
                      f"{st.f_blocks * st.f_frsize >> 20} MiB, over "
                      f"{FILL_MAX_BYTES >> 20} MiB: not filled", "faults")
        return 0
    written = 0
    chunk = b"\0" * (1 << 20)
    try:
        with open(folder / ".fault-fill", "wb", buffering=0) as f:
            while True:
                try:
                    written += f.write(chunk)
                except OSError:
                    if len(chunk) == 1:
                        break
                    chunk = chunk[:len(chunk) // 2]
    except OSError:
        pass
    return written
