"""Running a method's named steps (the step half of ``common.Recorder``).

Takes a booted ``Guest`` (its transport, console line count and kmsg marker),
the kernel's artifacts (``vmlinux`` for gdb) and, for removals watched through
gdb, a read-only :class:`TableView` of what the phase collector learned (walker
geometry, ``swapper_pg_dir``'s PA, the RAM-file backings, the kernel's
``Geometry``). Gives the :class:`StepRunner`'s ``steps`` (``Step`` records),
``step_lines`` (the console line each step's marker followed) and ``order``
(one ``OrderRecord`` per removal with the ordering checks on).
"""
from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from typing import Any, Callable, Optional, Protocol

from harness import faults
from harness.errors import TRANSPORT_STEPS, HarnessError
from harness.kernel.kernel import KernelArtifacts
from harness.kernel.layout import Geometry as WalkGeometry
from harness.records import Geometry, OrderRecord, Step
from harness.session import Guest

Progress = Callable[[str], None]


class TableView(Protocol):
    """What a watched removal needs of the phase collector (read only)."""

    @property
    def walk_geometry(self) -> Optional[WalkGeometry]: ...

    @property
    def root_pa(self) -> Optional[int]: ...

    @property
    def backings(self) -> Sequence[tuple[int, str]]: ...

    @property
    def geometry(self) -> Geometry: ...


class StepRunner:
    """Runs named steps and keeps their records (mutable on purpose: whatever
    was recorded survives a failure, for the report)."""

    def __init__(self, guest: Guest, art: KernelArtifacts, tables: Optional[TableView] = None,
                 progress: Optional[Progress] = None, order_check: str = "off") -> None:
        self.guest = guest
        self.art = art
        self.tables = tables
        self.progress = progress          # called with one line per step
        # the free-time ordering checks around every removal: "on" ("full" is
        # the same: every removal followed in full), "sampled" (the first
        # removal in full, the others' frees only) or "off"
        self.order_check = order_check
        self.steps: list[Step] = []
        self.step_lines: list[tuple[int, str]] = []   # (console line no, step)
        self.order: list[OrderRecord] = []            # one per watched removal

    def step(self, name: str, action: Callable[[], Any],
             transport: Optional[str] = None) -> Any:
        """Run ``action()`` as a named step; record its duration either way."""
        self.step_lines.append((self.guest.console_line(), name))
        start = time.monotonic()
        ok, detail = False, ""
        try:
            self.guest.mark(name)
            if (transport or self.guest.transport.name) == "ssh":
                self._fault_point("ssh", name)
            result = action()
            ok = True
            detail = _detail(result)
            return result
        except HarnessError as e:
            if not e.step or e.step in TRANSPORT_STEPS:   # the step, not the means
                e.step = name
            detail = e.message
            raise
        finally:
            self.record(Step(name, round(time.monotonic() - start, 3),
                             transport or self.guest.transport.name, ok, detail))

    def _fault_point(self, point: str, name: str, gdb: Any = None) -> None:
        """A point fault injection may strike at (harness.faults; off unless
        asked for in the environment)."""
        if not faults.armed():
            return
        machine = self.guest.machine
        faults.point(point, name, machine=machine, console=self.guest.reader,
                     qemu=getattr(machine.proc, "pid", None),
                     gdb=getattr(getattr(gdb, "proc", None), "pid", None))

    def record(self, step: Step, summary: str = "") -> None:
        """Keep a step timed elsewhere (a phase's inspection) and print its
        progress line, with ``summary`` in brackets."""
        self.steps.append(step)
        if self.progress:
            self.progress(f"  {'ok ' if step.ok else 'ERR'} {step.seconds:6.2f}s "
                          f"{step.transport:6s} {step.name}"
                          f"{f' ({summary})' if summary else ''}")

    def removal_step(self, name: str, pa_start: int, pa_end: int,
                     action: Callable[[], Any], transport: Optional[str] = None) -> Any:
        """A step that removes ``[pa_start, pa_end)``. With the ordering checks on,
        gdb is attached to QEMU's gdbstub for this step only (harness.inspect.gdb): every
        page the kernel frees meanwhile is checked against a live walk of its
        tables, and every cleared table entry must see a covering TLB
        invalidation before its table is freed. The events go to ``self.order``."""
        machine = self.guest.machine
        if self.order_check == "off":
            return self.step(name, action, transport)
        tables = self.tables
        geo = tables.walk_geometry if tables is not None else None
        root_pa = tables.root_pa if tables is not None else None
        if tables is None or not machine.spec.gdb_port or root_pa is None or geo is None:
            why = ("QEMU has no gdbstub" if not machine.spec.gdb_port
                   else "the kernel's tables could not be located")
            self.order.append(OrderRecord(name, pa_start, pa_end, False, (), {},
                                          f"not watched: {why}"))
            return self.step(name, action, transport)
        from harness import progress
        from harness.inspect import gdb
        # every removal followed in full, but with "sampled" (the first only)
        flush = self.order_check != "sampled" or not any(r.flush_check for r in self.order)
        seen = sum(1 for r in self.order if r.step == name)   # --cycles repeats
        spec = gdb.GdbSpec.for_removal(
            self.art.vmlinux, port=machine.spec.gdb_port, out_dir=self.guest.out_dir,
            step=name, occurrence=seen + 1, pa_start=pa_start, pa_end=pa_end,
            backings=tables.backings, geometry=geo, root_pa=root_pa,
            vmemmap_start=tables.geometry.vmemmap_start, flush_check=flush,
            memstart=tables.geometry.memstart, page_offset=tables.geometry.page_offset,
            vmemmap_end=tables.geometry.vmemmap_end)
        # recorded in place until the step ends (the list keeps its position)
        record = OrderRecord(name, pa_start, pa_end, flush)
        index = len(self.order)
        self.order.append(record)
        held: dict[str, Any] = {}
        try:
            self.guest.step = name         # a fault while gdb attaches is this step's
            self._fault_point("gdb-attach", name)
            with doing(machine, "with gdb attached"), \
                    gdb.attach(spec, progress=progress.detail, watch=self._qemu_watch) \
                    as session:
                held["session"] = session
                with GdbDeathWatch(session) as died:
                    self._fault_point("removal", name, gdb=session)
                    held["died"] = died
                    return self.step(name, action, transport)
        except gdb.GdbError as e:
            watcher: Optional[GdbDeathWatch] = held.get("died")
            if watcher is not None and watcher.code is not None:    # the cause, first
                e.message = (f"gdb exited ({_exit_how(watcher.code)}) during step "
                             f"{name!r}; QEMU's gdbstub was detached so the guest ran on "
                             f"(then: {e.message})")
            record = replace(record, error=e.message)
            self.order[index] = record
            raise
        finally:
            session = held.get("session")
            if session is not None:
                stats = dict(session.stats)
                left = _resume_if_stopped(machine)
                if left:
                    stats["resumed_after_gdb"] = left
                record = replace(record, events=tuple(e.to_dict() for e in session.events),
                                 stats=stats)
                self.order[index] = record
                self.order_progress(record)

    def _qemu_watch(self) -> None:
        """For gdb's waits: raise QEMU's fault (it exited or froze) at once."""
        fault_error = getattr(self.guest.machine, "fault_error", None)
        cause = fault_error("gdb was waiting on QEMU's gdbstub") if fault_error else None
        if cause is not None:
            raise cause

    def order_progress(self, record: OrderRecord) -> None:
        """One progress line for a watched removal: its stops by kind."""
        if not self.progress:
            return
        kinds = Counter(e.get("kind", "?") for e in record.events)
        seen = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "no stops"
        self.progress(f"  gdb  {record.stats.get('attached_s', 0):6.2f}s gdb    "
                      f"{record.step}: {seen}"
                      f"{' (flush order watched)' if record.flush_check else ''}")

    def sh(self, command: str, deadline: float = 30.0, blame: Optional[str] = None,
           console: bool = False) -> str:
        """A guest command that must succeed; returns stdout. ``blame="kernel"``
        for hotplug operations the kernel must carry out. ``console``: typed
        into the serial console's login shell, where a builtin (``echo X >
        /sys/...``) runs without a process being created or exiting; so a
        removal gdb follows sees the kernel's own frees only (over SSH the
        shell running the command exits inside the step: about 35 more
        allocator stops in a probe removal, docs/ordering.md "Cost")."""
        if console:
            return self.guest.run(command, deadline, via=self.guest.console).check(
                self.guest.step, blame=blame).stdout
        return self.guest.check(command, deadline, blame=blame)


class GdbDeathWatch:
    """While a watched step runs: a gdb that dies (killed, crashed) leaves
    QEMU's breakpoints in place and the guest stopped at the next one, so the
    step would sit until its timeout. Seen within 0.1 s, QEMU's stub is
    detached (``gdb.rsp_detach``: the guest runs on) and ``code`` is kept for
    the error the driver raises when the block ends."""

    def __init__(self, session: Any):
        self.session = session
        self.code: Optional[int] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="gdb-watch")

    def __enter__(self) -> GdbDeathWatch:
        if getattr(self.session, "proc", None) is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _watch(self) -> None:
        from harness.inspect import gdb
        while not self._stop.wait(0.1):
            code = self.session.proc.poll()
            if code is not None:
                self.code = code
                # the stub may still hold the dead client's connection a moment
                for _ in range(10):
                    if gdb.rsp_detach(self.session.spec.host, self.session.spec.port,
                                      timeout=1.0) or self._stop.wait(0.2):
                        return
                return


def _exit_how(code: int) -> str:
    if code < 0:
        try:
            return f"killed by signal {-code}, {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def doing(machine: Any, what: str) -> AbstractContextManager[Any]:
    """``machine.doing(what)``: a QEMU fault meanwhile names it (a stand-in
    machine without it: nothing)."""
    named = getattr(machine, "doing", None)
    return named(what) if named is not None else nullcontext()


def _resume_if_stopped(machine: Any) -> str:
    """After gdb has gone: a guest QEMU still holds stopped (gdb gave up on a
    slow target and its rescue ``D`` did not reach the stub; seen once under
    a load of 8 on 2 cores, the next SSH command then timed out) is resumed
    over QMP. Returns the state it was left in, "" when it was running (or
    QMP cannot say: QEMU's own death is reported where it is noticed)."""
    try:
        status = machine.qmp_cmd("query-status")
        state = str(status.get("status", ""))
        if state in ("debug", "paused"):
            machine.qmp_cmd("cont")
            return state
    except Exception:  # noqa: BLE001 - QEMU gone or QMP busy: not this function's news
        return ""
    return ""


def _detail(result: Any) -> str:
    if result is None:
        return ""
    if hasattr(result, "command"):
        return f"$ {result.command}"
    if hasattr(result, "to_dict"):     # a record: as its saved dict (as before)
        result = result.to_dict()
    return str(result)[:200]
