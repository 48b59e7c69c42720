"""Free-time ordering checks over QEMU's gdbstub: the driver.

QEMU runs with ``-gdb tcp:127.0.0.1:PORT`` (``VmSpec.gdb_port``). Around one
removal step only, the harness attaches a client to QEMU's gdbstub; boot and
every other step run without one. The client is, by default,
:mod:`harness.inspect.rsp_gdb`: the agent below in a Python process that
speaks the remote protocol itself and carries out a watched store instead of
stepping it (a stop then flushes no translated code: about half the cost of a
followed removal, docs/ordering.md "Cost"). With ``HOTPLUG_HARNESS_GDB=gdb-multiarch``
the same agent runs inside Debian's ``gdb-multiarch`` with ``vmlinux`` instead
(symbols only, no DWARF needed). "gdb" below is whichever client runs. Four
modules share the work:

* this one, the **driver**: the spec and the client's command line, starting
  it, waiting for it to be ready, waiting for deferred frees after the step,
  detaching, and never leaving a client or a breakpoint behind;
* :mod:`harness.inspect.rsp_gdb`, the **client** without gdb: the part of
  gdb's Python API the agent uses, over the remote protocol;
* :mod:`harness.inspect.gdb_agent`, the **agent** the client imports: what it breaks
  on (the page allocator's sinks, writes to the removed range's table entries
  and vmemmap leaves, every broadcast ``tlbi`` and its completing ``dsb``,
  ``arch_remove_memory()``) and the events it records into
  ``<out_dir>/gdb-<tag>.events.jsonl`` (:mod:`harness.inspect.order`);
* :mod:`harness.inspect.a64`, the **instruction decoder**: ``tlbi``, ``dsb``,
  stores and branches, and the sites in vmlinux (cached by its digest).

The rules that judge the events are pure functions in
:mod:`harness.inspect.order`.

Use (``hotplug.steps.StepRunner.removal_step`` wires this into a removal step)::

    from harness.inspect import gdb, order
    spec = gdb.GdbSpec.for_removal(
        art.vmlinux, port=machine.spec.gdb_port, out_dir=guest.out_dir,
        step="remove 0x80000000", pa_start=0x80000000, pa_end=0x88000000,
        backings=rec.backings, geometry=rec.collector.walk_geometry,
        root_pa=rec.collector.root_pa, vmemmap_start=rec.geometry.vmemmap_start,
        flush_check=True)
    with gdb.attach(spec) as session:       # prints the gdb command line
        rec.sh("echo 0x80000000 > /sys/devices/system/memory/remove", blame="kernel")
    verdicts = [rule(session.events, spec.step) for rule in order.RULES.values()]
    session.stats     # stops, seconds attached, walk ms, ...

``attach`` returns once gdb is connected, the walk is done and the guest runs
again; leaving the block interrupts the target, deletes every breakpoint and
watchpoint, detaches (the guest keeps running) and waits for gdb to exit; on
every path (exceptions, Ctrl-C) gdb is then killed by PID if still there, and
if it never detached the driver sends the gdbstub a remote-protocol ``D``
itself (QEMU keeps a vanished client's breakpoints: the guest would hang at the
next hit). A gdb that dies or fails raises :class:`GdbError` with its stderr
tail. Do not pause
the guest over QMP (Recorder phases) while gdb is attached.

The command line is a pure function of the spec (:func:`gdb_argv`); the spec
is also written as JSON next to the events for the agent to read.

The cost is measured by ``bench/bench_order.py`` (figures in the docs). No
single-stepping is needed. Limits: a clearing write through another alias than
the watched one (linear map; the kernel image for ``swapper_pg_dir``) is not
seen (the checks then say ERROR, not PASS); ``tlbi`` and ``dsb`` instructions
patched in at run time by alternatives are not in the scan; a non-broadcast
``tlbi`` never counts; a ``dsb`` that completes an invalidation off the
``tlbi``'s straight line (after a call or a return) is not seen, so such a
kernel is reported as never completing it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from harness.errors import HarnessError
from harness.inspect import a64

ROOT = Path(__file__).resolve().parent.parent.parent
GDB = "gdb-multiarch"
RSP = "rsp"                 # no gdb: harness.inspect.rsp_gdb speaks to the gdbstub itself
CLIENT_ENV = "HOTPLUG_HARNESS_GDB"  # "gdb-multiarch" (or a path): the agent inside gdb


def client() -> str:
    """Who speaks to QEMU's gdbstub: ``rsp`` (the default: the agent over the
    remote protocol, harness.inspect.rsp_gdb) or, with HOTPLUG_HARNESS_GDB set
    to it, a gdb binary whose Python runs the same agent."""
    return os.environ.get(CLIENT_ENV) or RSP
GDB_PACKAGE = "gdb-multiarch"
READY_TIMEOUT_S = 60.0
DETACH_TIMEOUT_S = 30.0
# A second SIGINT while gdb still waits for the stop the first one asked for
# makes gdb give up on the target ("The target is not responding to interrupt
# requests. Stop debugging it?", answered yes in batch mode: "Disconnected from
# target."). Seen twice in the false-alarm bench on a loaded 2-core host, when
# the SIGINT was re-sent after 1 s. So the interrupt is re-sent only after this
# long without the agent saying "stopping" (a lost SIGINT: none seen so far).
INTERRUPT_RESEND_S = 10.0
# how long a removal's unlinked, not yet freed tables are waited for after its
# step returned (a deferred free); then unlinked-tables-freed judges
DEFERRED_FREE_WAIT_S = 2.0


class GdbError(HarnessError):
    """gdb failed to attach, died, or would not detach."""
    blame = "infra"


# ---------------------------------------------------------------- spec and argv

@dataclass(frozen=True)
class GdbSpec:
    """Everything that decides the gdb command line and what the agent does."""
    vmlinux: str
    port: int
    out_dir: str
    step: str
    pa_start: int
    pa_end: int
    backings: tuple                       # ((guest_pa, ram_file_path), ...)
    geometry: tuple                       # (granule, va_bits, levels, pa_bits)
    root_pa: int                          # PA of swapper_pg_dir
    flush_check: bool = True
    tlbi_sites: tuple = ()                # ((address, op, Rt, dsb, unbranched, loop), ...)
    vmemmap_start: Optional[int] = None   # VMEMMAP_START (ptdump's "vmemmap start")
    page_offset: Optional[int] = None     # default: the geometry's va_base
    memstart: Optional[int] = None        # default: read memstart_addr from the guest
    vmemmap_end: Optional[int] = None     # ptdump's "vmemmap end" (default: 6.12's -1 GiB)
    tag: str = "order"
    gdb: str = RSP                        # or a gdb binary (GDB)
    host: str = "127.0.0.1"
    max_stops: int = 20000                # a runaway stream ends the recording

    @classmethod
    def for_removal(cls, vmlinux, *, port: int, out_dir, step: str, pa_start: int,
                    pa_end: int, backings, geometry, root_pa: int,
                    vmemmap_start: Optional[int] = None, flush_check: bool = True,
                    tag: Optional[str] = None, occurrence: int = 1, **kw) -> GdbSpec:
        """``geometry``: a walker Geometry (or its 4-tuple). ``tlbi_sites`` are
        found (cached per vmlinux) when ``flush_check`` is on. ``occurrence``:
        the how-many-th watch of a step of this name (``--cycles`` repeats step
        names); from the second on, the files get ``-N`` so none is overwritten."""
        if hasattr(geometry, "granule"):
            geometry = (geometry.granule, geometry.va_bits, geometry.levels,
                        geometry.pa_bits)
        sites = followed_sites(tlbi_sites(vmlinux)) if flush_check else ()
        tag = tag or "order-" + "".join(c if c.isalnum() else "-" for c in step).strip("-")
        if occurrence > 1:
            tag += f"-{occurrence}"
        kw.setdefault("gdb", client())
        # absolute: gdb runs in out_dir, and reads its config from there
        return cls(str(vmlinux), int(port), str(Path(out_dir).resolve()), step,
                   int(pa_start), int(pa_end),
                   tuple((int(b), str(p)) for b, p in backings), tuple(geometry),
                   int(root_pa), flush_check, sites, vmemmap_start, tag=tag, **kw)

    @property
    def config_path(self) -> str:
        return str(Path(self.out_dir) / f"gdb-{self.tag}.json")

    @property
    def events_path(self) -> str:
        return str(Path(self.out_dir) / f"gdb-{self.tag}.events.jsonl")

    @property
    def detach_path(self) -> str:
        """Written by the driver before it interrupts gdb to detach: a stop
        without it is one nobody asked for (the recording is then partial)."""
        return str(Path(self.out_dir) / f"gdb-{self.tag}.detach")

    @property
    def stdout_path(self) -> str:
        return str(Path(self.out_dir) / f"gdb-{self.tag}.stdout")

    @property
    def stderr_path(self) -> str:
        return str(Path(self.out_dir) / f"gdb-{self.tag}.stderr")

    def to_dict(self) -> dict:
        return asdict(self)


def gdb_argv(spec: GdbSpec) -> list:
    """The gdb command line for a spec. Pure: no I/O. ``spec.gdb == "rsp"``:
    the agent over the gdbstub without gdb (harness.inspect.rsp_gdb)."""
    if spec.gdb == RSP:
        return [sys.executable, "-c",
                f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
                "from harness.inspect import rsp_gdb; sys.exit(rsp_gdb.main(sys.argv))",
                spec.config_path]
    boot = (f"python import sys; sys.path.insert(0, {str(ROOT)!r}); "
            f"import harness.inspect.gdb_agent as _h; _h.agent_main({spec.config_path!r})")
    return [spec.gdb, "-q", "-nx", "-batch",
            "-ex", "set pagination off", "-ex", "set confirm off",
            "-ex", "set width 0", "-ex", boot, spec.vmlinux]


# ---------------------------------------------------------------- tlbi sites

def tlbi_sites(vmlinux) -> list:
    """Every TLBI in vmlinux's executable sections:
    ``[(addr, op, rt, may_cover_table, dsb_addr, dsb_option, unbranched, loop)]``
    (``dsb_addr``: the barrier that completes it on its straight line, or None;
    ``unbranched``: no branch between the two; ``loop``: a64.tlbi_loop).

    Decoded from the instruction words (:func:`harness.inspect.a64.scan_sites`),
    not from a disassembler; cached under the harness cache by the vmlinux digest."""
    from harness.host import cache_root
    data = Path(vmlinux).read_bytes()
    digest = hashlib.sha256(data).hexdigest()[:24]
    cache = cache_root() / "tlbi-sites" / f"{digest}.v4.json"
    try:
        return [tuple(x) for x in json.loads(cache.read_text())["sites"]["tlbi"]]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    sites = a64.scan_sites(data)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"vmlinux": str(vmlinux), "sites": sites}))
    os.replace(tmp, cache)
    return [tuple(x) for x in sites["tlbi"]]


def followed_sites(sites) -> tuple:
    """The TLBIs the agent breaks on: broadcast ones that invalidate kernel
    entries by VA, by range or all of them (``(addr, op, rt, dsb_addr,
    unbranched, loop)``). By-ASID forms (user address spaces) and local
    (non-broadcast) ones never count for the checks, so they cost no stops."""
    out = []
    for addr, name, rt, _may, dsb, _opt, unbranched, loop in sites:
        op = a64.TlbiOp(name, rt)
        if op.broadcast and (op.full or op.by_va or op.by_range):
            out.append((addr, name, rt, dsb, bool(unbranched),
                        None if loop is None else tuple(loop)))
    return tuple(out)


# ---------------------------------------------------------------- driver

@dataclass
class Session:
    spec: GdbSpec
    argv: list
    proc: Optional[subprocess.Popen] = None
    events: list = field(default_factory=list)     # order.* events, in stop order
    lines: list = field(default_factory=list)      # every JSON line (dicts)
    stats: dict = field(default_factory=dict)
    attach_s: float = 0.0
    attached_s: float = 0.0
    detach_s: float = 0.0

    def _read(self) -> list:
        try:
            text = Path(self.spec.events_path).read_text()
        except OSError:
            return []
        out = []
        for line in text.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass                                 # a line being written
        return out

    def _kinds(self) -> set:
        return {d.get("kind") for d in self._read()}

    def stderr_tail(self, lines: int = 25) -> str:
        parts = []
        for path in (self.spec.stderr_path, self.spec.stdout_path):
            try:
                text = Path(path).read_text(errors="replace")
            except OSError:
                continue
            if text.strip():
                parts.append("\n".join(text.splitlines()[-lines:]))
        errs = [d for d in self._read() if d.get("kind") == "error"]
        for e in errs:
            parts.append(f"agent: {e.get('message')}\n{e.get('traceback', '')}")
        return ("$ " + " ".join(shlex.quote(a) for a in self.argv) + "\n"
                + "\n".join(parts))


def _pdeathsig() -> None:
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:
        pass


@contextmanager
def attach(spec: GdbSpec, progress: Optional[Callable[[str], None]] = None,
           watch: Optional[Callable[[], None]] = None):
    """Attach gdb for the duration of the block; yields a :class:`Session`.
    ``watch()`` is called while gdb is waited for and raises (QEMU's fault,
    harness.machine.qemu) to end the wait at once."""
    from harness import progress as ui
    from harness.host import require_tool
    from harness.inspect.order import events_from_lines
    say = progress or ui.stage("gdb")
    require_tool_pkg = GDB_PACKAGE
    try:
        if spec.gdb != RSP:
            require_tool(spec.gdb)
    except HarnessError as e:
        e.message = f"{spec.gdb} not found: install the Debian package '{require_tool_pkg}'"
        raise
    Path(spec.out_dir).mkdir(parents=True, exist_ok=True)
    Path(spec.config_path).write_text(json.dumps(spec.to_dict(), indent=1) + "\n")
    Path(spec.events_path).unlink(missing_ok=True)
    Path(spec.detach_path).unlink(missing_ok=True)
    session = Session(spec, gdb_argv(spec))
    say("$ " + " ".join(shlex.quote(a) for a in session.argv))
    start = time.monotonic()
    try:
        with open(spec.stdout_path, "wb") as out, open(spec.stderr_path, "wb") as err:
            session.proc = subprocess.Popen(session.argv, stdin=subprocess.DEVNULL,
                                            stdout=out, stderr=err, cwd=spec.out_dir,
                                            start_new_session=True, preexec_fn=_pdeathsig)
        _wait_for(session, "ready", READY_TIMEOUT_S, "attaching", watch)
        session.attach_s = time.monotonic() - start
        attached = time.monotonic()
        try:
            yield session
        except BaseException:
            # the step failed (or Ctrl-C): still try to leave the guest running
            # without breakpoints, briefly, then the finally kills gdb by PID
            session.attached_s = time.monotonic() - attached
            try:
                if watch is not None:
                    watch()        # QEMU is gone: nothing to detach from
                _detach(session, timeout=5.0)
            except (HarnessError, OSError):
                pass
            raise
        session.attached_s = time.monotonic() - attached
        _wait_for_deferred_frees(session)
        _detach(session, watch=watch)
    finally:
        _kill(session)
        lines = session._read()
        session.lines = lines
        session.events = events_from_lines(json.dumps(d) for d in lines)
        for d in lines:
            if d.get("kind") in ("detached", "disconnected"):
                # the driver's own figures (sigints, rescue_detach) are kept
                session.stats = {**d.get("stats", {}), **session.stats}
            if d.get("kind") == "disconnected":
                session.stats["disconnected"] = d.get("message", "")
        session.stats.update(attach_s=round(session.attach_s, 3),
                             attached_s=round(session.attached_s, 3),
                             detach_s=round(session.detach_s, 3))


def _wait_for(session: Session, kind: str, timeout: float, doing: str,
              watch: Optional[Callable[[], None]] = None) -> None:
    end = time.monotonic() + timeout
    while True:
        if watch is not None:
            watch()
        kinds = session._kinds()
        if kind in kinds:
            return
        if "error" in kinds:
            raise GdbError(f"gdb agent failed while {doing}", step=session.spec.step,
                           evidence=session.stderr_tail())
        code = session.proc.poll()
        if code is not None:
            raise GdbError(f"gdb exited with code {code} while {doing}",
                           step=session.spec.step, evidence=session.stderr_tail())
        if time.monotonic() > end:
            raise GdbError(f"gdb did not finish {doing} within {timeout:.0f}s",
                           step=session.spec.step, evidence=session.stderr_tail())
        time.sleep(0.02)


def _wait_for_deferred_frees(session: Session, wait: Optional[float] = None) -> None:
    """A table unlinked during the step but not freed yet may be freed late
    (RCU, a worker): keep recording up to ``DEFERRED_FREE_WAIT_S`` for it, so
    ``unlinked-tables-freed`` judges what the kernel did, not when gdb left."""
    from harness.inspect.order import events_from_lines, unfreed_tables
    wait = DEFERRED_FREE_WAIT_S if wait is None else wait
    start = time.monotonic()
    while True:
        lines = [json.dumps(d) for d in session._read()]
        left = unfreed_tables(events_from_lines(lines))
        if not left or time.monotonic() - start >= wait or session.proc.poll() is not None:
            break
        time.sleep(0.05)
    waited = time.monotonic() - start
    if waited > 0.01:
        session.stats["deferred_wait_s"] = round(waited, 3)
        session.stats["unfreed_at_detach"] = len(left)


def _detach(session: Session, timeout: Optional[float] = None,
            watch: Optional[Callable[[], None]] = None) -> None:
    """Interrupt the target (SIGINT to gdb), let the agent clean up and detach."""
    Path(session.spec.detach_path).write_text("detach\n")
    start = time.monotonic()
    proc = session.proc
    timeout = DETACH_TIMEOUT_S if timeout is None else timeout
    end = start + timeout
    next_sig = 0.0
    sigints = 0
    while True:
        if watch is not None:
            watch()
        exited = proc.poll() is not None
        kinds = session._kinds()      # read after poll(): an exited gdb wrote everything
        if exited and ("detached" in kinds or "disconnected" in kinds):
            break
        if exited:
            raise GdbError(f"gdb exited with code {proc.returncode} before detaching",
                           step=session.spec.step, evidence=session.stderr_tail())
        if "error" in kinds and "detached" not in kinds:
            why = next((d.get("message", "") for d in session._read()
                        if d.get("kind") == "error"), "")
            raise GdbError(f"gdb agent failed while recording: {why}".rstrip(": "),
                           step=session.spec.step, evidence=session.stderr_tail())
        now = time.monotonic()
        if now > end:
            raise GdbError(f"gdb did not detach within {timeout:.0f}s",
                           step=session.spec.step, evidence=session.stderr_tail())
        if "stopping" not in kinds and now >= next_sig:
            try:
                os.kill(proc.pid, signal.SIGINT)
                sigints += 1
            except ProcessLookupError:
                pass
            next_sig = now + INTERRUPT_RESEND_S
        time.sleep(0.02)
    session.detach_s = time.monotonic() - start
    session.stats["sigints"] = sigints


def _kill(session: Session) -> None:
    """Kill gdb by PID if it is still there; if it never detached, detach
    QEMU's gdbstub ourselves: QEMU keeps the breakpoints of a client that
    vanished, and the guest hangs at the next hit (measured)."""
    proc = session.proc
    if proc is None:
        return
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    if "detached" not in session._kinds():
        session.stats["rescue_detach"] = rsp_detach(session.spec.host, session.spec.port)


def rsp_detach(host: str, port: int, timeout: float = 3.0) -> bool:
    """Connect to the gdbstub and send a remote-protocol ``D`` (detach): QEMU
    removes every breakpoint and watchpoint and resumes the guest. QEMU 7.2
    keeps the multiprocess mode the vanished gdb asked for, and answers a
    plain ``D`` with ``E22`` then: ``D;1`` (process 1) is sent next."""
    import socket
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            for packet in (b"$D#44", b"$D;1#b0"):
                sock.sendall(packet)
                reply, end = b"", time.monotonic() + timeout
                while b"OK" not in reply and b"$E" not in reply \
                        and time.monotonic() < end:
                    chunk = sock.recv(256)
                    if not chunk:
                        break
                    reply += chunk
                sock.sendall(b"+")
                if b"OK" in reply:
                    return True
            return False
    except OSError:
        return False
