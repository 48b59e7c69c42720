"""Free-time ordering checks over QEMU's gdbstub: the driver and its in-gdb agent.

QEMU runs with ``-gdb tcp:127.0.0.1:PORT`` (``VmSpec.gdb_port``). Around one
removal step only, the harness attaches Debian's ``gdb-multiarch`` with
``vmlinux`` (symbols only, no DWARF needed); boot and every other step run
without gdb. The agent (this module, imported inside gdb's Python) records one
event per stop (:mod:`harness.inspect.order`) into ``<out_dir>/gdb-<tag>.events.jsonl``:

* breakpoints on ``free_pages`` (x0 linear-map VA, x1 order) and ``__free_pages``
  (x0 ``struct page *``: PFN = (page - VMEMMAP_START) / sizeof(struct page) +
  memstart PFN). At each stop the agent walks the live table descriptors of
  ``swapper_pg_dir`` from the shared guest-RAM files (:func:`order.table_links`:
  only non-last-level tables are read) and records
  which entries still point into the freed range (about 1-2 ms per stop), and
  the caller (LR and two more return addresses from the frame-record chain,
  through vmlinux symbols). ``free_pages`` calls ``__free_pages``: the first
  such pair calibrates sizeof(struct page) from the kernel's own arithmetic
  (event ``calibration``; it must agree with ``vmemmap_start`` when given),
  then the ``free_pages`` breakpoint is disabled and its frees are reported
  from ``__free_pages`` (one stop per free, named ``free_pages``).
* with ``flush_check``: before resuming, a walk finds every table descriptor
  whose VA span overlaps the removed range's linear map or its vmemmap; each
  gets a write watchpoint (event ``watch``). When one is cleared (event
  ``clear``) breakpoints are enabled on every ``tlbi`` in vmlinux that can drop
  a cached table entry (full flushes and non-leaf by-VA/range forms; found by
  decoding the executable sections once per vmlinux, cached by its digest) and
  stay enabled only while a cleared table awaits its flush; each hit records
  the decoded operand (event ``tlbi``).

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
    verdicts = [order.check_no_table_freed_while_linked(session.events, spec.step),
                order.check_tlb_flushed_before_free(session.events, spec.step)]
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

Cost, measured on 6.12 (TCG, 2 vCPUs; ``bench/bench_order.py``): attach
~0.25 s, detach ~0.05 s; block-mapped removal ~11 stops, ~0.3 s instead of
0.07 s; ``rodata=full`` ~205 stops (per PTE table: clear, tlbi, free), ~3 s
instead of 0.08 s. No single-stepping is needed, so there is no stepping mode.
Limits: a clearing write through another alias than the watched one (linear
map; the kernel image for ``swapper_pg_dir``) is not seen (the flush check then
says ERROR, not PASS); ``tlbi`` instructions patched in at run time by
alternatives are not in the scan; a non-broadcast ``tlbi`` never counts.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import subprocess
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from harness.errors import HarnessError

ROOT = Path(__file__).resolve().parent.parent.parent
GDB = "gdb-multiarch"
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
    tlbi_sites: tuple = ()                # ((address, op name, Rt), ...)
    vmemmap_start: Optional[int] = None   # VMEMMAP_START (ptdump's "vmemmap start")
    page_offset: Optional[int] = None     # default: the geometry's va_base
    memstart: Optional[int] = None        # default: read memstart_addr from the guest
    tag: str = "order"
    gdb: str = GDB
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
        sites = tuple(s for s in tlbi_sites(vmlinux) if s[3]) if flush_check else ()
        sites = tuple((a, op, rt) for a, op, rt, _ in sites)
        tag = tag or "order-" + "".join(c if c.isalnum() else "-" for c in step).strip("-")
        if occurrence > 1:
            tag += f"-{occurrence}"
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
    def stdout_path(self) -> str:
        return str(Path(self.out_dir) / f"gdb-{self.tag}.stdout")

    @property
    def stderr_path(self) -> str:
        return str(Path(self.out_dir) / f"gdb-{self.tag}.stderr")

    def to_dict(self) -> dict:
        return asdict(self)


def gdb_argv(spec: GdbSpec) -> list:
    """The gdb command line for a spec. Pure: no I/O."""
    boot = (f"python import sys; sys.path.insert(0, {str(ROOT)!r}); "
            f"import harness.inspect.gdb as _h; _h.agent_main({spec.config_path!r})")
    return [spec.gdb, "-q", "-nx", "-batch",
            "-ex", "set pagination off", "-ex", "set confirm off",
            "-ex", "set width 0", "-ex", boot, spec.vmlinux]


# ---------------------------------------------------------------- tlbi sites

def tlbi_sites(vmlinux) -> list:
    """Every TLBI in vmlinux's executable sections: ``[(addr, op, rt, may_cover)]``.

    Decoded from the instruction words (SYS, CRn=8/9), not from a disassembler;
    cached under the harness cache by the vmlinux digest."""
    from harness.host import cache_root
    data = Path(vmlinux).read_bytes()
    digest = hashlib.sha256(data).hexdigest()[:24]
    cache = cache_root() / "tlbi-sites" / f"{digest}.json"
    try:
        return [tuple(x) for x in json.loads(cache.read_text())["sites"]]
    except (OSError, ValueError, KeyError):
        pass
    sites = scan_tlbi(data)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"vmlinux": str(vmlinux), "sites": sites}))
    os.replace(tmp, cache)
    return [tuple(x) for x in sites]


def scan_tlbi(elf_bytes: bytes) -> list:
    import io
    import re

    from elftools.elf.elffile import ELFFile

    from harness.inspect.order import decode_tlbi
    SHF_EXECINSTR = 0x4
    pattern = re.compile(rb"[\x00-\xff][\x80-\x9f][\x08-\x0f]\xd5", re.S)
    out = []
    elf = ELFFile(io.BytesIO(elf_bytes))
    for sec in elf.iter_sections():
        if not sec["sh_flags"] & SHF_EXECINSTR or sec["sh_type"] != "SHT_PROGBITS":
            continue
        code, base = sec.data(), sec["sh_addr"]
        for m in pattern.finditer(code):
            off = m.start()
            if off % 4:
                continue
            op = decode_tlbi(int.from_bytes(code[off:off + 4], "little"))
            if op is not None:
                out.append([base + off, op.name, op.rt, op.may_cover_table])
    return out


# ---------------------------------------------------------------- late watch stops
#
# A watchpoint stop is normally reported with the PC right after the store that
# hit it. Under MTTCG with two vCPUs QEMU sometimes reports it later: seen once in
# the false-alarm bench (run --method all --cycles 2, virtio-mem "shrink to 0",
# cycle 2), the stop came at free_empty_tables+0x3b4, five instructions after the
# str xzr at +0x39c, with the "tlbi vaae1is" at +0x3ac already executed; the flush
# check then reported a flush that did happen as missing. So the agent locates the
# store behind every watch stop (below) and accounts for what ran in between.

LATE_SCAN_INSNS = 16     # how far back from a watch stop the store is looked for
_U64 = (1 << 64) - 1


def _sext(value: int, bits: int) -> int:
    return value - (1 << bits) if value & (1 << (bits - 1)) else value


def store_range(word: int, reg: Callable[[int], int]) -> Optional[tuple]:
    """``(address, size)`` written by an AArch64 general-purpose register store
    (STR/STUR/STTR of any size, pre/post-indexed or register offset; STP/STNP),
    computed from the registers as they are now (``reg(n)``: Xn, 31 = SP);
    None for anything else. A write-back form is undone (post-index) or
    already applied (pre-index), so the address is the one the store used as
    long as the base register was not written again since."""
    size, v = word >> 30, (word >> 26) & 1
    if (word >> 24) & 0x3B == 0x39 and (word >> 22) & 3 == 0 and not v:     # unsigned imm
        return (reg((word >> 5) & 31) + (((word >> 10) & 0xFFF) << size)) & _U64, 1 << size
    if (word >> 24) & 0x3B == 0x38 and (word >> 22) & 3 == 0 and not v:
        base = reg((word >> 5) & 31)
        if (word >> 21) & 1 == 0:                                   # imm9 forms
            imm, idx = _sext((word >> 12) & 0x1FF, 9), (word >> 10) & 3
            addr = {0: base + imm, 1: base - imm, 2: base + imm, 3: base}[idx]
            return addr & _U64, 1 << size
        if (word >> 10) & 3 == 2:                                   # register offset
            m, option, s = (word >> 16) & 31, (word >> 13) & 7, (word >> 12) & 1
            xm = 0 if m == 31 else reg(m)
            if option == 2:
                xm &= 0xFFFFFFFF
            elif option == 6:
                xm = _sext(xm & 0xFFFFFFFF, 32)
            elif option not in (3, 7):
                return None
            return (base + (xm << (size if s else 0))) & _U64, 1 << size
        return None
    if (word >> 27) & 7 == 0b101 and not v and (word >> 22) & 1 == 0 and size in (0, 2):
        scale = 2 + (size >> 1)                                     # STP/STNP W or X
        imm = _sext((word >> 15) & 0x7F, 7) << scale
        base = reg((word >> 5) & 31)
        kind = (word >> 23) & 3
        addr = {0: base + imm, 1: base - imm, 2: base + imm, 3: base}[kind]
        return addr & _U64, 2 << scale
    return None


def is_branch(word: int) -> bool:
    return (word & 0x7C000000 == 0x14000000 or word & 0xFF000000 == 0x54000000
            or word & 0x7E000000 in (0x34000000, 0x36000000)
            or word & 0xFE000000 == 0xD6000000)


def is_barrier_or_hint(word: int) -> bool:
    """DSB/DMB/ISB/SB and the hint space (NOP, BTI, PAC hints): no register written."""
    return word & 0xFFFFF01F in (0xD503201F, 0xD503301F)


def late_window(words: list, base: int, pc: int, entry_va: int,
                reg: Callable[[int], int], sites) -> tuple:
    """Where the store behind a watch stop at ``pc`` is, and which TLBIs ran
    between it and the stop.

    ``words``: the instruction words at ``base``, ``base + 4``... up to ``pc``;
    ``sites``: ``(addr, op, rt)`` of the TLBIs the check follows. Returns
    ``(store_addr, tlbis, why)``: ``store_addr`` is None when no store to
    ``entry_va`` was found before ``pc``; ``tlbis`` are the sites in between,
    each executed on the straight line from the store to the stop; ``why`` is
    empty when that account is complete, else what could not be established
    (a branch in between, a TLBI whose operand may have been overwritten)."""
    n = len(words)
    store = None
    for k in range(n - 1, -1, -1):
        got = store_range(words[k], reg)
        if got is not None and got[0] <= entry_va < got[0] + got[1]:
            store = base + 4 * k
            break
    if store is None:
        return None, [], (f"no store to {entry_va:#x} in the {n} instructions before the "
                          f"stop at {pc:#x}: what ran between the store and the stop "
                          "is unknown")
    between = [(base + 4 * k, words[k]) for k in range((store - base) // 4 + 1, n)]
    if any(is_branch(w) for _a, w in between):
        return store, [], (f"the stop at {pc:#x} came {len(between)} instructions after "
                           f"the store at {store:#x}, with a branch in between")
    tlbis = []
    for addr, op, rt in sites:
        if not store < addr < pc:
            continue
        after = [w for a, w in between if a > addr]
        if rt != 31 and not all(is_barrier_or_hint(w) for w in after):
            return store, [], (f"the tlbi at {addr:#x} ran between the store at {store:#x} "
                               f"and the stop at {pc:#x}, and its operand x{rt} may have "
                               "changed before the stop")
        tlbis.append((addr, op, rt))
    return store, sorted(tlbis), ""


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
def attach(spec: GdbSpec, progress: Optional[Callable[[str], None]] = None):
    """Attach gdb for the duration of the block; yields a :class:`Session`."""
    from harness import progress as ui
    from harness.host import require_tool
    from harness.inspect.order import events_from_lines
    say = progress or ui.stage("gdb")
    require_tool_pkg = GDB_PACKAGE
    try:
        require_tool(spec.gdb)
    except HarnessError as e:
        e.message = f"{spec.gdb} not found: install the Debian package '{require_tool_pkg}'"
        raise
    Path(spec.out_dir).mkdir(parents=True, exist_ok=True)
    Path(spec.config_path).write_text(json.dumps(spec.to_dict(), indent=1) + "\n")
    Path(spec.events_path).unlink(missing_ok=True)
    session = Session(spec, gdb_argv(spec))
    say("$ " + " ".join(shlex.quote(a) for a in session.argv))
    start = time.monotonic()
    try:
        with open(spec.stdout_path, "wb") as out, open(spec.stderr_path, "wb") as err:
            session.proc = subprocess.Popen(session.argv, stdin=subprocess.DEVNULL,
                                            stdout=out, stderr=err, cwd=spec.out_dir,
                                            start_new_session=True, preexec_fn=_pdeathsig)
        _wait_for(session, "ready", READY_TIMEOUT_S, "attaching")
        session.attach_s = time.monotonic() - start
        attached = time.monotonic()
        try:
            yield session
        except BaseException:
            # the step failed (or Ctrl-C): still try to leave the guest running
            # without breakpoints, briefly, then the finally kills gdb by PID
            session.attached_s = time.monotonic() - attached
            try:
                _detach(session, timeout=5.0)
            except (GdbError, OSError):
                pass
            raise
        session.attached_s = time.monotonic() - attached
        _detach(session)
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


def _wait_for(session: Session, kind: str, timeout: float, doing: str) -> None:
    end = time.monotonic() + timeout
    while True:
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


def _detach(session: Session, timeout: Optional[float] = None) -> None:
    """Interrupt the target (SIGINT to gdb), let the agent clean up and detach."""
    start = time.monotonic()
    proc = session.proc
    timeout = DETACH_TIMEOUT_S if timeout is None else timeout
    end = start + timeout
    next_sig = 0.0
    sigints = 0
    while True:
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
    removes every breakpoint and watchpoint and resumes the guest."""
    import socket
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"$D#44")
            reply, end = b"", time.monotonic() + timeout
            while b"OK" not in reply and time.monotonic() < end:
                chunk = sock.recv(256)
                if not chunk:
                    break
                reply += chunk
            sock.sendall(b"+")
            return b"OK" in reply
    except OSError:
        return False


# ---------------------------------------------------------------- the agent (in gdb)

def agent_main(config_path: str) -> None:
    """Entry point inside gdb-multiarch's Python (see :func:`gdb_argv`)."""
    spec = json.loads(Path(config_path).read_text())
    out = open(spec["out_dir"] + f"/gdb-{spec['tag']}.events.jsonl", "a", buffering=1)
    agent = None
    try:
        agent = _Agent(spec, out)
        agent.run()
    except BaseException as e:  # noqa: B902 - reported, then gdb exits non-zero
        import traceback
        out.write(json.dumps({"kind": "error", "message": f"{type(e).__name__}: {e}",
                              "traceback": traceback.format_exc()[-3000:]}) + "\n")
        if agent is not None:
            agent.cleanup()
        out.close()
        import gdb
        gdb.execute("quit 3")
    out.close()


class _Agent:
    def __init__(self, spec: dict, out):
        import gdb

        from harness.inspect import order, walker
        self.gdb, self.walker, self.order = gdb, walker, order
        self.spec, self.out = spec, out
        self.step = spec["step"]
        self.geo = walker.Geometry(*spec["geometry"])
        self.seq = 0
        self.stops = 0
        self.stop_s = 0.0
        self.walk_ms: list = []
        self.last_hit: list = []
        self.pending: dict = {}            # table_pa -> Clear (awaiting a flush)
        self.watches: dict = {}            # bp number -> order.Watch
        self.tlbi_bps: dict = {}           # bp number -> (addr, op name, rt)
        self.tlbi_on = False
        self.tlbi_toggles = 0
        self.prev_free = None
        self.symcache: dict = {}
        self.mem = None
        self.bps: list = []
        self.roles: dict = {}              # bp number -> free_pages | __free_pages
        self.counts = {"free": 0, "free_dup": 0, "clear": 0, "watch_other": 0, "tlbi": 0,
                       "other": 0, "late": 0}
        self.calibrated = None
        self.swapper_bp = None             # set_swapper_pgd breakpoint (root entries)

    # -- output
    def emit(self, d: dict) -> None:
        self.out.write(json.dumps(d) + "\n")

    def event(self, ev) -> None:
        self.emit(ev.to_dict())

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    # -- gdb helpers
    def reg(self, name: str) -> int:
        return int(self.gdb.parse_and_eval(f"(unsigned long)${name}")) & ((1 << 64) - 1)

    def sym_addr(self, name: str) -> int:
        return int(self.gdb.parse_and_eval(f"(unsigned long)&'{name}'")) & ((1 << 64) - 1)

    def read_u64(self, va: int) -> int:
        data = bytes(self.gdb.selected_inferior().read_memory(va, 8))
        return int.from_bytes(data, "little")

    def symbolise(self, addr: int) -> str:
        if addr in self.symcache:
            return self.symcache[addr]
        try:
            text = self.gdb.execute(f"info symbol {addr:#x}", to_string=True).strip()
        except self.gdb.error:
            text = ""
        name = hex(addr)
        if text and not text.startswith("No symbol"):
            head = text.split(" in section ")[0]
            parts = head.split(" + ")
            name = parts[0] + (f"+{int(parts[1]):#x}" if len(parts) > 1 else "")
        self.symcache[addr] = name
        return name

    def callers(self, lr: int, fp: int, depth: int = 2) -> str:
        """``lr``'s symbol, then up to ``depth`` return addresses from the
        frame-record chain at ``fp`` (arm64 kernels keep frame pointers)."""
        names = [self.symbolise(lr)]
        try:
            for _ in range(depth):
                if not fp:
                    break
                ra = self.read_u64(fp + 8)
                if ra >> 48 != 0xFFFF:
                    break
                names.append(self.symbolise(ra))
                fp = self.read_u64(fp)
        except self.gdb.MemoryError:
            pass
        return " <- ".join(names)

    # -- address conversion
    def lin_to_pa(self, va: int) -> int:
        return va - self.page_offset + self.memstart

    def pa_to_lin(self, pa: int) -> int:
        return pa - self.memstart + self.page_offset

    def page_to_pa(self, page: int) -> int:
        pfn = (page - self.vmemmap_start) // self.sp_size + (self.memstart >> self.geo.page_shift)
        return pfn << self.geo.page_shift

    def links(self) -> dict:
        return self.order.table_links(self.mem, self.geo, self.spec["root_pa"])

    # -- set-up
    def run(self) -> None:
        gdb, spec = self.gdb, self.spec
        t0 = time.monotonic()
        for cmd in ("set breakpoint always-inserted on", "set can-use-hw-watchpoints 1",
                    "set remotetimeout 20", "set tcp connect-timeout 20"):
            gdb.execute(cmd)
        gdb.events.stop.connect(self.on_stop)
        gdb.execute(f"target remote {spec['host']}:{spec['port']}", to_string=True)
        connected = time.monotonic() - t0
        self.page_offset = spec["page_offset"] or self.geo.va_base
        self.memstart = spec["memstart"]
        if self.memstart is None:
            self.memstart = self.read_u64(self.sym_addr("memstart_addr"))
        self.swapper_va = self.sym_addr("swapper_pg_dir")
        self.layout()
        self.mem = self.walker.FileBackedPhysMem([tuple(b) for b in spec["backings"]])
        w0 = time.monotonic()
        before = self.links()
        walk_ms = (time.monotonic() - w0) * 1000
        self.tables_before = set(before)
        self.emit({"kind": "header", "step": self.step, "pa_start": hex(spec["pa_start"]),
                   "pa_end": hex(spec["pa_end"]), "memstart": hex(self.memstart),
                   "page_offset": hex(self.page_offset),
                   "vmemmap_start": hex(self.vmemmap_start),
                   "struct_page_size": self.sp_size, "struct_page_size_from": self.sp_from,
                   "geometry": spec["geometry"], "root_pa": hex(spec["root_pa"]),
                   "tables_before": len(before), "first_walk_ms": round(walk_ms, 3),
                   "flush_check": spec["flush_check"]})
        for name in ("free_pages", "__free_pages"):
            bp = gdb.Breakpoint(f"*{self.sym_addr(name):#x}", internal=True)
            self.roles[bp.number] = name
            self.bps.append(bp)
        if spec["flush_check"]:
            self.arm_watches(before)
            for addr, op, rt in spec["tlbi_sites"]:
                bp = gdb.Breakpoint(f"*{addr:#x}", internal=True)
                bp.enabled = False
                self.tlbi_bps[bp.number] = (addr, op, rt)
                self.bps.append(bp)
        self.emit({"kind": "ready", "connect_s": round(connected, 3),
                   "setup_s": round(time.monotonic() - t0, 3),
                   "watchpoints": len(self.watches), "tlbi_sites": len(self.tlbi_bps)})
        self.loop()

    def layout(self) -> None:
        """VMEMMAP_START and sizeof(struct page) (arch/arm64/include/asm/memory.h):
        VMEMMAP_END = -1 GiB, VMEMMAP_SIZE = (linear-map pages) * sizeof."""
        geo = self.geo
        lin_lo, lin_hi = geo.linear_map_range()
        self.lin_pages = (lin_hi - lin_lo) >> geo.page_shift
        self.vmemmap_end = (1 << 64) - (1 << 30)
        start = self.spec["vmemmap_start"]
        if start:
            size, rem = divmod(self.vmemmap_end - start, self.lin_pages)
            if rem or size % 8:
                raise RuntimeError(f"vmemmap start {start:#x} does not fit the layout")
            self.vmemmap_start, self.sp_size, self.sp_from = start, size, "vmemmap_start"
        else:
            # provisional until a free_pages -> __free_pages pair calibrates it
            self.sp_size, self.sp_from = 64, "assumed"
            self.vmemmap_start = self.vmemmap_end - 64 * self.lin_pages

    def arm_watches(self, links: dict) -> None:
        gdb, spec, geo = self.gdb, self.spec, self.geo
        pa0, pa1 = spec["pa_start"], spec["pa_end"]
        ranges = [(self.pa_to_lin(pa0), self.pa_to_lin(pa1))]
        mpfn = self.memstart >> geo.page_shift
        vm_lo = self.vmemmap_start + ((pa0 >> geo.page_shift) - mpfn) * self.sp_size
        vm_hi = self.vmemmap_start + ((pa1 >> geo.page_shift) - mpfn) * self.sp_size
        ranges.append((vm_lo, vm_hi))
        root_end = self.spec["root_pa"] + geo.entries(0) * 8
        chosen = [link for _table_pa, ls in sorted(links.items()) for link in ls
                  if any(link.va < hi and lo < link.va + link.span for lo, hi in ranges)]
        for link in chosen:
            if spec["root_pa"] <= link.entry_pa < root_end:
                entry_va = self.swapper_va + (link.entry_pa - spec["root_pa"])
            else:
                entry_va = self.pa_to_lin(link.entry_pa)
            wp = gdb.Breakpoint(f"*(unsigned long *){entry_va:#x}",
                                type=gdb.BP_WATCHPOINT, wp_class=gdb.WP_WRITE,
                                internal=True)
            if wp.type != gdb.BP_HARDWARE_WATCHPOINT:
                raise RuntimeError(f"gdb made a software watchpoint for {entry_va:#x}: "
                                   "the gdbstub refused a hardware one")
            w = self.order.Watch(self.next_seq(), self.step, link, entry_va)
            old = int.from_bytes(self.mem.read(link.entry_pa, 8), "little")
            self.watches[wp.number] = (w, wp, old)
            self.bps.append(wp)
            self.event(w)
            if spec["root_pa"] <= link.entry_pa < root_end:
                self.watch_root_writes()

    def watch_root_writes(self) -> None:
        """swapper_pg_dir is read-only in the kernel image: arm64 writes its
        entries through a fixmap alias (set_pgd -> set_swapper_pgd ->
        pgd_set_fixmap), which a watchpoint on the image address never sees.
        So the write is observed at set_swapper_pgd(pgdp, pgd) instead: x0 is
        the image address of the entry (the watch's entry_va), x1 the value."""
        if self.swapper_bp is not None:
            return
        try:
            addr = self.sym_addr("set_swapper_pgd")
        except Exception:          # not in this kernel: the watchpoint stays alone
            self.swapper_bp = False
            return
        bp = self.gdb.Breakpoint(f"*{addr:#x}", internal=True)
        self.roles[bp.number] = "set_swapper_pgd"
        self.bps.append(bp)
        self.swapper_bp = bp

    # -- the loop
    def on_stop(self, ev) -> None:
        bps = getattr(ev, "breakpoints", None) or []
        sig = getattr(ev, "stop_signal", None)
        self.last_hit = [b.number for b in bps] + ([f"signal:{sig}"] if sig else [])

    def loop(self) -> None:
        gdb = self.gdb
        self.started = time.monotonic()
        while True:
            self.last_hit = []
            try:
                gdb.execute("continue", to_string=True)
                t = time.monotonic()
                if not self.last_hit or any(str(h).startswith("signal:") for h in self.last_hit):
                    break                      # interrupted (SIGINT from the harness)
                self.stops += 1
                self.handle(self.last_hit)
                self.stop_s += time.monotonic() - t
                if self.stops >= self.spec["max_stops"]:
                    self.emit({"kind": "note", "message": f"stopped after {self.stops} stops"})
                    break
            except KeyboardInterrupt:
                break
            except self.gdb.error as e:
                # gdb gave up on the target after a second interrupt (see
                # INTERRUPT_RESEND_S): what was recorded stands; the harness
                # detaches QEMU's gdbstub itself (rsp_detach)
                if "Disconnected" not in str(e) and "connection closed" not in str(e):
                    raise
                self.emit({"kind": "stopping"})
                self.finish(kind="disconnected", why=str(e))
                return
        self.emit({"kind": "stopping"})
        self.finish()

    def handle(self, hits: list) -> None:
        roles = {}
        for n in hits:
            if n in self.watches:
                roles.setdefault("watch", []).append(n)
            elif n in self.tlbi_bps:
                roles["tlbi"] = n
            elif n in self.roles:
                roles[self.roles[n]] = n
        if "watch" in roles:
            for n in roles["watch"]:
                self.on_watch(n)
        if "set_swapper_pgd" in roles:
            self.on_swapper_write()
        if "tlbi" in roles:
            self.on_tlbi(roles["tlbi"])
        if "free_pages" in roles:
            self.on_free("free_pages")
        elif "__free_pages" in roles:
            self.on_free("__free_pages")
        else:
            self.prev_free = None
        if not roles:
            self.counts["other"] += 1

    def on_watch(self, number: int) -> None:
        """A watched entry was written. The store is located behind the stop
        (late_window): when QEMU reported the stop some instructions late, the
        clear is dated at the store and the TLBIs that ran in between are
        recorded as executed; what cannot be accounted for makes the clear
        ``late``, so a missing flush is "cannot judge", never a FAIL."""
        w, _wp, _old = self.watches[number]
        new = int.from_bytes(self.mem.read(w.link.entry_pa, 8), "little")
        pc = self.reg("pc")
        base = pc - 4 * LATE_SCAN_INSNS
        data = bytes(self.gdb.selected_inferior().read_memory(base, 4 * LATE_SCAN_INSNS))
        words = [int.from_bytes(data[i:i + 4], "little") for i in range(0, len(data), 4)]
        regs: dict = {}

        def reg(n: int) -> int:
            if n not in regs:
                regs[n] = self.reg("sp" if n == 31 else f"x{n}")
            return regs[n]
        store, tlbis, why = late_window(words, base, pc, w.entry_va, reg,
                                        list(self.tlbi_bps.values()))
        if store == pc - 4 and not why:
            self.record_write(number, new, pc)
            return
        self.counts["late"] += 1
        at = pc if store is None else store + 4
        late = ""
        if why:
            late = (f"gdb got control only at {self.symbolise(pc)}, after the store "
                    f"({why}), so a flush in between may have gone unseen")
        if not self.record_write(number, new, at, late=late):
            return
        for addr, op, rt in tlbis:
            self.tlbi_event(addr, op, rt, note=(
                f"executed between the store at {self.symbolise(store)} and a watch stop "
                f"that QEMU reported {(pc - store) // 4 - 1} instructions later, at "
                f"{self.symbolise(pc)}; x{rt} read at the stop (only barriers after the "
                "tlbi)"))

    def on_swapper_write(self) -> None:
        """At set_swapper_pgd's entry: the write is about to happen through the
        fixmap; the caller (lr) is the code that clears the entry."""
        entry_va, new = self.reg("x0"), self.reg("x1")
        number = next((n for n, (w, _wp, _old) in self.watches.items()
                       if w.entry_va == entry_va), None)
        if number is None:
            self.counts["other"] += 1
            return
        self.record_write(number, new, self.reg("lr"))

    def record_write(self, number: int, new: int, pc: int, late: str = "") -> bool:
        """A watched entry was written: a Clear unless it still links its table
        (then False)."""
        w, wp, old = self.watches[number]
        link = w.link
        codec = self.walker._Codec(self.geo)
        if new & 3 == 3 and codec.addr(new) == link.table_pa:
            self.counts["watch_other"] += 1
            return False
        c = self.order.Clear(self.next_seq(), self.step, link.table_pa, w.entry_va,
                             old=old, new=new, pc=pc, pc_sym=self.symbolise(pc), late=late)
        self.event(c)
        self.counts["clear"] += 1
        wp.delete()
        self.bps.remove(wp)
        del self.watches[number]
        self.pending[link.table_pa] = (c, link)
        self.set_tlbi(True)
        return True

    def on_tlbi(self, number: int) -> None:
        addr, op_name, rt = self.tlbi_bps[number]
        self.tlbi_event(addr, op_name, rt)
        self.counts["tlbi"] += 1

    def tlbi_event(self, addr: int, op_name: str, rt: int, note: str = "") -> None:
        """Record the TLBI at ``addr`` with its operand from x``rt`` now, and
        settle the pending clears it covers."""
        op = self.order.TlbiOp(op_name, rt)
        xt = 0 if rt == 31 else self.reg(f"x{rt}")
        full, lo, hi = self.order.tlbi_effect(op, xt, self.geo.page_shift)
        t = self.order.Tlbi(self.next_seq(), self.step, addr, op_name, xt, full, lo, hi,
                            op.leaf_only, op.broadcast, pc_sym=self.symbolise(addr),
                            note=note)
        self.event(t)
        for pa, (_c, link) in list(self.pending.items()):
            if t.covers(link.va, link.span):
                del self.pending[pa]
        if not self.pending:
            self.set_tlbi(False)

    def set_tlbi(self, on: bool) -> None:
        if on == self.tlbi_on or not self.tlbi_bps:
            return
        for bp in self.bps:
            if bp.number in self.tlbi_bps:
                bp.enabled = on
        self.tlbi_on = on
        self.tlbi_toggles += 1

    def on_free(self, fn: str) -> None:
        x0, order_ = self.reg("x0"), self.reg("x1") & 0xFFFFFFFF
        lr = self.reg("x30")
        caller_lr, fp = lr, self.reg("x29")
        at_free_pages = fn == "free_pages"
        if at_free_pages:
            pa = self.lin_to_pa(x0)
        else:
            prev = self.prev_free
            via_free_pages = self.symbolise(lr).startswith("free_pages+")
            if prev is not None and prev[1] == order_ and (prev[2] == lr or via_free_pages):
                # the same free seen twice: calibrate sizeof(struct page) on it,
                # then stop breaking on free_pages (every call reaches here)
                self.calibrate(prev[0], x0)
                self.counts["free_dup"] += 1
                self.prev_free = None
                return
            pa = self.page_to_pa(x0)
            if via_free_pages:
                # free_pages(va) -> bl __free_pages: report it as free_pages,
                # called from the return address in free_pages' frame record
                fn, x0 = "free_pages", self.pa_to_lin(pa)
                fp = self.read_u64(self.reg("x29"))
                caller_lr = self.read_u64(self.reg("x29") + 8)
        w0 = time.monotonic()
        size = self.geo.granule << order_
        linked = self.order.linked_into(self.links(), pa, pa + size)
        ms = (time.monotonic() - w0) * 1000
        self.walk_ms.append(ms)
        f = self.order.Free(self.next_seq(), self.step, fn, x0, pa, order_, self.geo.granule,
                            caller_lr, self.callers(caller_lr, fp), linked,
                            was_table=pa in self.tables_before
                            or any(pa <= t < pa + size for t in self.tables_before),
                            walk_ms=round(ms, 3))
        self.event(f)
        self.counts["free"] += 1
        self.prev_free = (pa, order_, lr) if at_free_pages else None
        for t in [t for t in self.pending if pa <= t < pa + size]:
            del self.pending[t]
        if not self.pending:
            self.set_tlbi(False)

    def calibrate(self, pa: int, page: int) -> None:
        """free_pages(va) tail-called __free_pages(page): sizeof(struct page) from
        page = VMEMMAP_END - size * lin_pages + (pfn - memstart_pfn) * size."""
        if self.calibrated is not None:
            return
        ps = self.geo.page_shift
        idx = (pa >> ps) - (self.memstart >> ps)
        size, rem = divmod(self.vmemmap_end - page, self.lin_pages - idx)
        ok = rem == 0 and size % 8 == 0 and 32 <= size <= 256
        self.calibrated = size if ok else None
        self.emit({"kind": "calibration", "struct_page_size": size if ok else None,
                   "pa": hex(pa), "page": hex(page),
                   "agrees": ok and size == self.sp_size, "was": self.sp_size,
                   "was_from": self.sp_from})
        if ok and size != self.sp_size:
            self.sp_size, self.sp_from = size, "calibrated"
            self.vmemmap_start = self.vmemmap_end - size * self.lin_pages
        if ok:
            for bp in self.bps:
                if self.roles.get(bp.number) == "free_pages":
                    bp.enabled = False

    # -- the end
    def finish(self, kind: str = "detached", why: str = "") -> None:
        self.cleanup()
        attached = time.monotonic() - getattr(self, "started", time.monotonic())
        self.emit({"kind": kind, **({"message": why} if why else {}), "stats": {
            "stops": self.stops, "frees": self.counts["free"],
            "free_dups": self.counts["free_dup"], "clears": self.counts["clear"],
            "tlbi_stops": self.counts["tlbi"], "watch_other": self.counts["watch_other"],
            "other_stops": self.counts["other"], "tlbi_toggles": self.tlbi_toggles,
            "late_watch_stops": self.counts["late"],
            "watchpoints": len(self.watches) + self.counts["clear"],
            "tlbi_sites": len(self.tlbi_bps), "pending_unflushed": len(self.pending),
            "handler_s": round(self.stop_s, 3), "recording_s": round(attached, 3),
            "walk_ms_mean": round(sum(self.walk_ms) / len(self.walk_ms), 3)
            if self.walk_ms else 0.0,
            "walk_ms_max": round(max(self.walk_ms), 3) if self.walk_ms else 0.0,
            "struct_page_size": self.sp_size, "struct_page_size_from": self.sp_from}})

    def cleanup(self) -> None:
        gdb = self.gdb
        for bp in list(self.bps):
            try:
                bp.delete()
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.bps = []
        try:
            gdb.execute("detach", to_string=True)
        except Exception:  # noqa: BLE001 - not connected
            pass
        if self.mem is not None:
            self.mem.close()
            self.mem = None
