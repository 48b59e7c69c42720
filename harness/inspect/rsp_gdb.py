"""The ordering agent without gdb: the part of gdb's Python API that
:mod:`harness.inspect.gdb_agent` uses, over QEMU's gdbstub directly.

Why (docs/ordering.md "Where a stop's time goes", ``bench/bench_stop_cost.py``):
QEMU's gdbstub empties its translation cache at every debug stop that is not a
watchpoint hit, and QEMU reports a write watchpoint *before* the store. gdb
steps over every watchpoint hit on AArch64, so each cleared entry costs a
flush and a retranslation of what the guest runs next. This client carries
the store out itself instead (:func:`harness.inspect.a64.store_effect`: the
bytes written with ``M``, the base register's write-back and the pc with
``G``), so a watch stop flushes nothing; a store it cannot decode is stepped,
as gdb would. Breakpoints are stepped over with the breakpoint left in (QEMU
ignores breakpoints while single-stepping). It also spares gdb's own work per
stop (about 1.5 ms) and its start (loading vmlinux's symbols): names come from
``System.map`` beside ``vmlinux``.

Run as ``python -m harness.inspect.rsp_gdb CONFIG`` (``harness.inspect.gdb``
does, with ``GdbSpec.gdb == "rsp"``): this module is installed as ``gdb`` and
:func:`harness.inspect.gdb_agent.agent_main` runs unchanged. SIGINT (the
driver's "stop now") interrupts the target and ends the running ``continue``
with a SIGINT stop, as gdb's does.
"""
from __future__ import annotations

import bisect
import signal
import socket
import sys
import time
import types
from pathlib import Path
from typing import Any, Callable, Optional

from harness.inspect import a64

PC, SP, NREGS = 32, 31, 33          # 'g': x0-x30, sp, pc (8 bytes each), then cpsr
POLL_S = 0.02                       # how often a wait for a stop looks at SIGINT's flag
STOP_WAIT_S = 2.0                   # for the stop reply to an interrupt sent before a request
BP_BREAKPOINT, BP_WATCHPOINT, BP_HARDWARE_WATCHPOINT = 1, 6, 7
WP_WRITE = 1


class error(RuntimeError):  # noqa: N801 - gdb's name
    pass


class MemoryError(error):  # noqa: A001,N818 - gdb's name
    pass


class Link:
    """One connection to the gdbstub, remote protocol with acks."""

    def __init__(self, host: str, port: int, timeout: float = 20.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(None)
        self.buf = b""
        self.running = False     # a vCont sent, its stop reply not read yet

    def send(self, data: str) -> None:
        raw = data.encode()
        self.sock.sendall(b"$%s#%02x" % (raw, sum(raw) & 0xFF))
        if data.startswith(("vCont;c", "vCont;s", "c", "s")):
            self.running = True

    def recv(self, poll: Optional[Callable[[], None]] = None,
             timeout: Optional[float] = None) -> str:
        """The next packet. ``poll``: called every POLL_S while waiting (the
        interrupt flag is looked at there, never by an exception in the middle
        of a packet). ``timeout``: give up after so long (TimeoutError)."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            i = self.buf.find(b"$")
            j = self.buf.find(b"#", i) if i >= 0 else -1
            if j >= 0 and len(self.buf) >= j + 3:
                data, self.buf = self.buf[i + 1:j].decode(), self.buf[j + 3:]
                self.sock.sendall(b"+")
                if data[:1] in ("T", "S", "W", "X"):
                    self.running = False
                return data
            if end is not None and time.monotonic() >= end:
                raise TimeoutError("no packet from the gdbstub")
            self.sock.settimeout(POLL_S if poll is not None or end is not None else None)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                if poll is not None:
                    poll()
                continue
            finally:
                self.sock.settimeout(None)
            if not chunk:
                raise error("Remote connection closed")
            self.buf += chunk

    def cmd(self, data: str) -> str:
        """A request and its reply; stop replies met on the way are dropped
        (the one QEMU sends when a client connects). A target still running
        (an interrupt that cut a continue short before its stop reply was
        read: the agent's loop ends on the driver's SIGINT) is stopped first:
        QEMU takes any byte sent to a running guest as an interrupt and drops
        it, so the request would never be answered."""
        if self.running:
            self.interrupt()
            try:
                while self.running:      # the stop reply, pending or caused now
                    self.recv(timeout=STOP_WAIT_S)
            except TimeoutError:         # no reply: it was stopped already
                self.running = False
        self.send(data)
        while True:
            reply = self.recv()
            if not reply.startswith(("T", "S")):
                return reply

    def interrupt(self) -> None:
        self.sock.sendall(b"\x03")

    def stop(self, timeout: Optional[float] = None) -> tuple[str, str]:
        """Wait for a stop reply: (its text, the thread it names)."""
        reply = self.recv(timeout=timeout)
        if not reply.startswith("T"):
            raise error(f"expected a stop reply, got {reply!r}")
        return reply, thread_id(reply.split("thread:")[1].split(";")[0])


def thread_id(text: str) -> str:
    """A thread id as the stub gives it ("p01.02", or "2" without
    multiprocess) in one spelling ("p1.2")."""
    if text.startswith("p"):
        pid, _, t = text[1:].partition(".")
        return f"p{int(pid, 16):x}.{int(t or '1', 16):x}"
    return f"p1.{int(text, 16):x}"


class Breakpoint:
    """gdb.Breakpoint for ``*ADDR`` (software) and ``*(unsigned long *)ADDR``
    write watchpoints, inserted lazily before the target runs."""

    def __init__(self, spec: str, type: int = BP_BREAKPOINT,  # noqa: A002 - gdb's name
                 wp_class: int = WP_WRITE, internal: bool = False):
        target = _TARGET
        text = spec.lstrip("*").replace("(unsigned long *)", "").strip()
        self.address = int(text, 0)
        self.watch = type == BP_WATCHPOINT
        self.type = BP_HARDWARE_WATCHPOINT if self.watch else BP_BREAKPOINT
        target.last_number -= 1
        self.number = target.last_number
        self.enabled = True              # set by the agent; synced before the target runs
        self.inserted = False
        target.bps[self.number] = self

    def packet(self, insert: bool) -> str:
        kind, length = ("2", 8) if self.watch else ("0", 4)
        return f"{'Z' if insert else 'z'}{kind},{self.address:x},{length}"

    def delete(self) -> None:
        target = _TARGET
        if self.inserted and target.link is not None:
            target.link.cmd(self.packet(False))
            target.removed.add((self.watch, self.address))
        self.inserted = False
        target.bps.pop(self.number, None)


class StopEvent:
    def __init__(self, breakpoints: list, stop_signal: Optional[str] = None):
        self.breakpoints = breakpoints
        if stop_signal is not None:
            self.stop_signal = stop_signal


class Target:
    """The stub's state as this client knows it."""

    def __init__(self) -> None:
        self.link: Optional[Link] = None
        self.bps: dict = {}
        self.last_number = 0
        self.listeners: list = []
        self.thread = "p1.1"
        self.regs: Optional[bytearray] = None       # 'g' of the stopped thread
        self.step_over: Optional[int] = None        # the pc a breakpoint stopped at
        self.symbols: list = []                     # sorted (address, name)
        self.by_name: dict = {}
        self.stats = {"emulated_stores": 0, "stepped_stores": 0, "stale_stops": 0}
        # (watch, address) of breakpoints and watchpoints taken out: a stop QEMU
        # still reports for one (hit as it was removed) is passed over, as gdb
        # does with its "moribund" locations
        self.removed: set = set()
        # SIGINT (the driver's "stop now") only sets this; the wait for a stop
        # sends the interrupt (an exception raised wherever the signal came
        # could cut a packet in two and lose the stop reply it carried)
        self.sigint = False

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self.sigint = True

    # -- symbols (System.map beside vmlinux)
    def load_symbols(self, vmlinux: str) -> None:
        path = Path(vmlinux).with_name("System.map")
        pairs = []
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3:
                addr = int(parts[0], 16)
                self.by_name.setdefault(parts[2], addr)
                if parts[1] in "tTwW":
                    pairs.append((addr, parts[2]))
        pairs.sort()
        self.symbols = pairs
        self._starts = [a for a, _ in pairs]

    def info_symbol(self, addr: int) -> str:
        i = bisect.bisect_right(self._starts, addr) - 1
        if i < 0:
            return f"No symbol matches {addr:#x}."
        base, name = self.symbols[i]
        off = addr - base
        return f"{name} + {off} in section .text" if off else f"{name} in section .text"

    # -- registers and memory of the stopped thread
    def registers(self) -> bytearray:
        if self.regs is None:
            self.regs = bytearray(bytes.fromhex(self._link().cmd("g")))
        return self.regs

    def reg(self, n: int) -> int:
        return int.from_bytes(self.registers()[8 * n:8 * n + 8], "little")

    def set_reg(self, n: int, value: int) -> None:
        self.registers()[8 * n:8 * n + 8] = (value & ((1 << 64) - 1)).to_bytes(8, "little")

    def write_registers(self) -> None:
        if self._link().cmd("G" + self.registers().hex()) != "OK":
            raise error("the gdbstub refused to write the registers")

    def read(self, addr: int, length: int) -> bytes:
        out = b""
        while length > 0:
            n = min(length, 0x400)
            reply = self._link().cmd(f"m{addr:x},{n:x}")
            if not reply or reply.startswith("E"):
                raise MemoryError(f"Cannot access memory at address {addr:#x}")
            out += bytes.fromhex(reply)
            addr, length = addr + n, length - n
        return out

    def write(self, addr: int, data: bytes) -> None:
        if self._link().cmd(f"M{addr:x},{len(data):x}:{data.hex()}") != "OK":
            raise MemoryError(f"Cannot access memory at address {addr:#x}")

    def _link(self) -> Link:
        if self.link is None:
            raise error("The program is not being run.")
        return self.link

    # -- running
    def connect(self, where: str) -> None:
        host, port = where.rsplit(":", 1)
        self.link = Link(host, int(port))
        self.link.cmd("qSupported:multiprocess+;swbreak+;hwbreak+")
        self.link.send("?")
        self._stopped(self.link.recv())

    def sync_breakpoints(self) -> None:
        for bp in list(self.bps.values()):
            if bp.enabled != bp.inserted:
                reply = self._link().cmd(bp.packet(bp.enabled))
                if reply != "OK":
                    raise error(f"the gdbstub refused {bp.packet(bp.enabled)}: {reply!r}")
                if not bp.enabled:
                    self.removed.add((bp.watch, bp.address))
                bp.inserted = bp.enabled

    def cont(self) -> None:
        """gdb's ``continue``: past the breakpoint stopped at, then run to the
        next stop, which the listeners are told of."""
        link = self._link()
        pc = self.reg(PC)
        if self.step_over is not None and pc == self.step_over and any(
                bp.enabled and not bp.watch and bp.address == pc for bp in self.bps.values()):
            link.send(f"vCont;s:{self.thread}")  # breakpoints are ignored while stepping
            reply = link.recv()
            self._stopped(reply)
            if "watch:" in reply:                # the stepped instruction hit a watch
                self._report(reply)
                return
        self.step_over = None
        while True:
            if self.sigint:              # asked to stop while stopped: stay stopped
                self._fire(StopEvent([], stop_signal="SIGINT"))
                return
            self.sync_breakpoints()
            sent = []

            def poll(sent: list = sent) -> None:
                if self.sigint and not sent:
                    link.interrupt()
                    sent.append(True)
            try:
                link.send("vCont;c")
                reply = link.recv(poll=poll)
            except KeyboardInterrupt:    # no handler of ours (used in-process: tests)
                link.interrupt()
                reply = link.recv()
                self._stopped(reply)
                self._fire(StopEvent([], stop_signal="SIGINT"))
                return
            self._stopped(reply)
            if sent:                     # the interrupt's stop (or one that came first)
                self._fire(StopEvent([], stop_signal="SIGINT"))
                return
            if not self._stale(reply):
                break
            self.stats["stale_stops"] += 1
        self._report(reply)

    def _stopped(self, reply: str) -> None:
        self.regs = None
        if "thread:" in reply:
            self.thread = thread_id(reply.split("thread:")[1].split(";")[0])

    def _stale(self, reply: str) -> bool:
        """A stop for a breakpoint or watchpoint already taken out. A watched
        store is carried out (or stepped) first; nothing is reported."""
        if "watch:" in reply:
            addr = _watch_address(reply)
            if self._watch_hits(addr) or not any(
                    w and a <= addr < a + 8 for w, a in self.removed):
                return False
            self._past_store([])
            return True
        if not reply.startswith("T05"):
            return False
        pc = self.reg(PC)
        return not self._breakpoint_hits(pc) and (False, pc) in self.removed

    def _watch_hits(self, addr: int) -> list:
        return [bp for bp in self.bps.values()
                if bp.watch and bp.inserted and bp.address <= addr < bp.address + 8]

    def _breakpoint_hits(self, pc: int) -> list:
        return [bp for bp in self.bps.values()
                if not bp.watch and bp.inserted and bp.address == pc]

    def _report(self, reply: str) -> None:
        if "watch:" in reply:
            hit = self._watch_hits(_watch_address(reply))
            self._past_store(hit)
            self._fire(StopEvent(hit))
            return
        pc = self.reg(PC)
        hit = self._breakpoint_hits(pc)
        if hit:
            self.step_over = pc
            self._fire(StopEvent(hit))
        else:
            sig = reply[1:3] if reply[:1] in "TS" else "??"
            self._fire(StopEvent([], stop_signal=f"SIG{int(sig, 16)}"))

    def _past_store(self, hit: list) -> None:
        """QEMU stops before the watched store: carry it out here (no step, so
        no flush), or step it with those watchpoints out of the way."""
        pc = self.reg(PC)
        word = int.from_bytes(self.read(pc, 4), "little")
        effect = a64.store_effect(word, self.reg)
        if effect is not None:
            addr, data, wb = effect
            self.write(addr, data)
            if wb is not None:
                self.set_reg(wb[0], wb[1])
            self.set_reg(PC, pc + 4)
            self.write_registers()
            self.stats["emulated_stores"] += 1
            return
        link = self._link()
        for bp in hit:
            link.cmd(bp.packet(False))
        link.send(f"vCont;s:{self.thread}")
        self._stopped(link.recv())
        for bp in hit:
            link.cmd(bp.packet(True))
        self.stats["stepped_stores"] += 1

    def _fire(self, event: StopEvent) -> None:
        for fn in list(self.listeners):
            fn(event)

    def detach(self) -> None:
        if self.link is None:
            return
        for bp in self.bps.values():
            bp.inserted = False
        self.link.cmd("D;1")
        self.link.sock.close()
        self.link = None


def _watch_address(reply: str) -> int:
    """The data address of a watchpoint stop reply (``...;watch:ADDR;``)."""
    return int(reply.split("watch:")[1].split(";")[0], 16)


_TARGET = Target()


def reset() -> Target:
    """A fresh client state (one per process normally; tests make several)."""
    global _TARGET
    _TARGET = Target()
    return _TARGET


def parse_and_eval(expr: str) -> int:
    text = expr.replace("(unsigned long)", "").strip()
    if text.startswith("$"):
        name = text[1:]
        n = {"pc": PC, "sp": SP, "lr": 30, "fp": 29}.get(name)
        if n is None and name.startswith("x") and name[1:].isdigit():
            n = int(name[1:])
        if n is None:
            raise error(f"no register {name}")
        return _TARGET.reg(n)
    if text.startswith("&"):
        name = text[1:].strip("'\"")
        if name not in _TARGET.by_name:
            raise error(f"No symbol \"{name}\" in current context.")
        return _TARGET.by_name[name]
    raise error(f"cannot evaluate {expr!r}")


def execute(command: str, to_string: bool = False) -> str:
    words = command.split()
    if not words or words[0] == "set":
        return ""
    if words[:2] == ["target", "remote"]:
        _TARGET.connect(words[2])
    elif words[0] == "continue":
        _TARGET.cont()
    elif words[0] == "detach":
        _TARGET.detach()
    elif words[:2] == ["info", "symbol"]:
        return _TARGET.info_symbol(int(words[2], 0))
    elif words[0] == "quit":
        raise SystemExit(int(words[1]) if len(words) > 1 else 0)
    else:
        raise error(f"not supported without gdb: {command!r}")
    return ""


class _Thread:
    @property
    def num(self) -> int:
        return int(_TARGET.thread.split(".")[1], 16)


def selected_thread() -> _Thread:
    return _Thread()


class _Inferior:
    def read_memory(self, addr: int, length: int) -> bytes:
        return _TARGET.read(addr, length)


def selected_inferior() -> _Inferior:
    return _Inferior()


class _Events:
    class stop:  # noqa: N801 - gdb's name
        @staticmethod
        def connect(fn: Callable[[Any], None]) -> None:
            _TARGET.listeners.append(fn)


events = _Events()


def client_stats() -> dict:
    return {"client": "rsp", **_TARGET.stats}


def as_module() -> types.ModuleType:
    mod = types.ModuleType("gdb")
    for name in ("Breakpoint", "BP_BREAKPOINT", "BP_WATCHPOINT", "BP_HARDWARE_WATCHPOINT",
                 "WP_WRITE", "error", "MemoryError", "parse_and_eval", "execute",
                 "selected_thread", "selected_inferior", "events", "client_stats"):
        setattr(mod, name, globals()[name])
    return mod


def main(argv: list) -> int:
    import json
    config = argv[1]
    spec = json.loads(Path(config).read_text())
    _TARGET.load_symbols(spec["vmlinux"])
    # the agent's own process: SIGINT sets a flag the waits look at
    signal.signal(signal.SIGINT, _TARGET._on_sigint)
    sys.modules["gdb"] = as_module()
    from harness.inspect import gdb_agent
    try:
        gdb_agent.agent_main(config)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
