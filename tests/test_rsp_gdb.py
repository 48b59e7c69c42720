"""harness.inspect.rsp_gdb, the ordering agent's client without gdb, against a
scripted stand-in for QEMU's gdbstub (a socket that answers the remote
protocol from a small model of one CPU: registers, memory, breakpoints, and
the stops the test lists). What the real stub does is in tests/test_gdb.py's
real-guest test and the seeded regressions (tests/test_qemu.py)."""
from __future__ import annotations

import socket
import threading

import pytest

from harness.inspect import rsp_gdb

PC = 32
STR_X1_X2_8 = 0xF9000441          # str x1, [x2, #8]
STP_PRE = 0xA9BA7BFD              # stp x29, x30, [sp, #-96]!
SWPAL = 0xF8E18041                # swpal x1, x1, [x2]: not carried out, stepped


def listen(stub) -> int:
    """Serve ``stub.serve`` on a loopback port of its own (one connection)."""
    stub.server = socket.socket()
    stub.server.bind(("127.0.0.1", 0))
    stub.server.listen(1)
    threading.Thread(target=stub.serve, daemon=True).start()
    return stub.server.getsockname()[1]


def take_packet(buf: bytes):
    """(the first whole packet's text or None, what is left), acks dropped."""
    buf = buf.lstrip(b"+")
    i, j = buf.find(b"$"), buf.find(b"#")
    if i < 0 or j < 0 or len(buf) < j + 3:
        return None, buf
    return buf[i + 1:j].decode(), buf[j + 3:]


def send_packet(conn, text: str) -> None:
    raw = text.encode()
    conn.sendall(b"$%s#%02x" % (raw, sum(raw) & 0xFF))


class FakeStub:
    """QEMU's gdbstub as far as the client uses it. ``stops``: what each
    ``vCont;c`` ends with: ("watch", addr, pc) or ("bp", pc)."""

    def __init__(self, stops, code):
        self.regs = [0] * 33
        self.mem = {}
        for addr, word in code.items():
            self.put(addr, word.to_bytes(4, "little"))
        self.stops = list(stops)
        self.log = []
        self.port = listen(self)

    def put(self, addr, data):
        for i, b in enumerate(data):
            self.mem[addr + i] = b

    def get(self, addr, n):
        return bytes(self.mem.get(addr + i, 0) for i in range(n))

    def serve(self):
        conn, _ = self.server.accept()
        buf = b""
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                return
            buf += chunk
            while True:
                packet, buf = take_packet(buf)
                if packet is None:
                    break
                conn.sendall(b"+")
                reply = self.answer(packet)
                if reply is not None:
                    send_packet(conn, reply)

    def answer(self, p):
        self.log.append(p)
        if p.startswith("qSupported"):
            return "PacketSize=1000;vContSupported+;multiprocess+"
        if p == "?":
            return "T05thread:p01.01;"
        if p == "g":
            return b"".join(r.to_bytes(8, "little") for r in self.regs).hex() + "00000000"
        if p.startswith("G"):
            data = bytes.fromhex(p[1:])
            self.regs = [int.from_bytes(data[8 * n:8 * n + 8], "little") for n in range(33)]
            return "OK"
        if p.startswith("m"):
            addr, n = (int(x, 16) for x in p[1:].split(","))
            return self.get(addr, n).hex()
        if p.startswith("M"):
            where, data = p[1:].split(":")
            self.put(int(where.split(",")[0], 16), bytes.fromhex(data))
            return "OK"
        if p[0] in "Zz" or p.startswith("D"):
            return "OK"
        if p.startswith("vCont;s"):
            self.regs[PC] += 4
            return "T05thread:p01.01;"
        if p == "vCont;c":
            stop = self.stops.pop(0)
            self.regs[PC] = stop[-1]
            if stop[0] == "watch":
                return f"T05thread:p01.01;watch:{stop[1]:x};"
            return "T05thread:p01.01;"
        return ""


@pytest.fixture
def client(tmp_path):
    target = rsp_gdb.reset()
    (tmp_path / "System.map").write_text(
        "ffff800080010000 T free_unref_page\nffff800080020000 D memstart_addr\n")
    target.load_symbols(str(tmp_path / "vmlinux"))
    yield rsp_gdb.as_module()
    target.link = None


def hits(gdb):
    seen = []
    gdb.events.stop.connect(lambda ev: seen.append(
        ([b.number for b in getattr(ev, "breakpoints", [])], getattr(ev, "stop_signal", None))))
    return seen


def test_a_watched_store_is_carried_out_not_stepped(client):
    stub = FakeStub([("watch", 0x1008, 0x5000)], {0x5000: STR_X1_X2_8})
    stub.regs[1], stub.regs[2] = 0, 0x1000
    stub.put(0x1008, (0x41234003).to_bytes(8, "little"))      # a table descriptor
    gdb = client
    seen = hits(gdb)
    gdb.execute(f"target remote 127.0.0.1:{stub.port}")
    wp = gdb.Breakpoint("*(unsigned long *)0x1008", type=gdb.BP_WATCHPOINT,
                        wp_class=gdb.WP_WRITE, internal=True)
    assert wp.type == gdb.BP_HARDWARE_WATCHPOINT
    gdb.execute("continue")
    assert seen == [([wp.number], None)]
    assert stub.get(0x1008, 8) == bytes(8)                     # the clear happened
    assert gdb.parse_and_eval("(unsigned long)$pc") == 0x5004  # past the store
    assert stub.regs[PC] == 0x5004
    assert not any(p.startswith("vCont;s") for p in stub.log)  # no step: no flush
    assert "Z2,1008,8" in stub.log
    assert rsp_gdb._TARGET.stats == {"emulated_stores": 1, "stepped_stores": 0, "stale_stops": 0}


def test_a_pre_indexed_pair_store_writes_both_and_the_base(client):
    stub = FakeStub([("watch", 0x8000 - 96, 0x5000)], {0x5000: STP_PRE})
    stub.regs[29], stub.regs[30], stub.regs[31] = 0x1111, 0x2222, 0x8000
    gdb = client
    gdb.execute(f"target remote 127.0.0.1:{stub.port}")
    gdb.Breakpoint(f"*(unsigned long *){0x8000 - 96:#x}", type=gdb.BP_WATCHPOINT,
                   wp_class=gdb.WP_WRITE, internal=True)
    gdb.execute("continue")
    assert stub.get(0x8000 - 96, 16) == (0x1111).to_bytes(8, "little") + \
        (0x2222).to_bytes(8, "little")
    assert stub.regs[31] == 0x8000 - 96 and stub.regs[PC] == 0x5004


def test_a_store_it_cannot_decode_is_stepped_with_its_watchpoint_out(client):
    stub = FakeStub([("watch", 0x1000, 0x5000)], {0x5000: SWPAL})
    stub.regs[2] = 0x1000
    gdb = client
    gdb.execute(f"target remote 127.0.0.1:{stub.port}")
    gdb.Breakpoint("*(unsigned long *)0x1000", type=gdb.BP_WATCHPOINT,
                   wp_class=gdb.WP_WRITE, internal=True)
    gdb.execute("continue")
    i = stub.log.index("z2,1000,8")
    assert stub.log[i + 1] == "vCont;s:p1.1" and "Z2,1000,8" in stub.log[i + 2:]
    assert rsp_gdb._TARGET.stats == {"emulated_stores": 0, "stepped_stores": 1, "stale_stops": 0}


def test_a_breakpoint_is_stepped_over_with_breakpoints_left_in(client):
    stub = FakeStub([("bp", 0x6000), ("bp", 0x6000)], {})
    gdb = client
    seen = hits(gdb)
    gdb.execute(f"target remote 127.0.0.1:{stub.port}")
    bp = gdb.Breakpoint("*0x6000", internal=True)
    off = gdb.Breakpoint("*0x7000", internal=True)
    off.enabled = False                       # never inserted
    gdb.execute("continue")
    gdb.execute("continue")
    assert seen == [([bp.number], None)] * 2
    first = stub.log.index("vCont;c")
    assert stub.log[first + 1:].count("vCont;s:p1.1") == 1      # past it, once
    assert "z0,6000,4" not in stub.log                          # left in
    assert not any(p.startswith("Z0,7000") for p in stub.log)
    bp.delete()
    assert "z0,6000,4" in stub.log
    gdb.execute("detach")
    assert stub.log[-1] == "D;1"


def test_symbols_come_from_system_map(client):
    gdb = client
    assert gdb.parse_and_eval("(unsigned long)&'memstart_addr'") == 0xffff800080020000
    assert gdb.execute("info symbol 0xffff800080010010", to_string=True) == \
        "free_unref_page + 16 in section .text"
    assert gdb.execute("info symbol 0xffff800080010000", to_string=True) == \
        "free_unref_page in section .text"
    with pytest.raises(gdb.error):
        gdb.parse_and_eval("(unsigned long)&'no_such_symbol'")


def test_a_stop_for_a_breakpoint_already_taken_out_is_passed_over(client):
    """QEMU may report a hit of a breakpoint the agent has just disabled (the
    other CPU reached it): like gdb's moribund locations, it is not a stop."""
    stub = FakeStub([("bp", 0x6000), ("bp", 0x6000), ("bp", 0x7000)], {})
    gdb = client
    seen = hits(gdb)
    gdb.execute(f"target remote 127.0.0.1:{stub.port}")
    first = gdb.Breakpoint("*0x6000", internal=True)
    second = gdb.Breakpoint("*0x7000", internal=True)
    gdb.execute("continue")
    first.enabled = False
    gdb.execute("continue")               # the stale 0x6000 stop, then 0x7000
    assert seen == [([first.number], None), ([second.number], None)]
    assert rsp_gdb._TARGET.stats["stale_stops"] == 1


def test_a_stop_at_no_breakpoint_is_reported_as_a_signal(client):
    stub = FakeStub([("bp", 0x9000)], {})
    gdb = client
    seen = hits(gdb)
    gdb.execute(f"target remote 127.0.0.1:{stub.port}")
    gdb.Breakpoint("*0x6000", internal=True)
    gdb.execute("continue")
    assert seen == [([], "SIG5")]


class RunningStub:
    """QEMU's stub about a running guest: after ``vCont;c`` no reply comes
    until a byte arrives; any byte then stops the guest (``T02``) and is
    dropped, the whole packet it began with it (gdb_read_byte, system mode)."""

    def __init__(self):
        self.log = []
        self.port = listen(self)

    def serve(self):
        conn, _ = self.server.accept()
        running, buf = False, b""
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                return
            buf += chunk
            while buf:
                buf = buf.lstrip(b"+")
                if running and buf:      # the first byte stops it; the rest is dropped
                    running, buf = False, b""
                    self.log.append("stopped by a byte")
                    send_packet(conn, "T02thread:p01.01;")
                    break
                packet, buf = take_packet(buf)
                if packet is None:
                    break
                conn.sendall(b"+")
                self.log.append(packet)
                if packet.startswith("vCont;c"):
                    running = True
                elif packet == "?":
                    send_packet(conn, "T05thread:p01.01;")
                elif packet == "g":
                    send_packet(conn, "00" * (8 * 33 + 4))
                else:
                    send_packet(conn, "OK")


def test_a_request_to_a_running_guest_stops_it_first():
    """The agent's loop can end (the driver's SIGINT) after a continue whose
    stop reply was never read; a packet sent then would be eaten as an
    interrupt and never answered (the detach hung for 30 s once). cmd()
    stops the guest and reads its stop reply first."""
    stub = RunningStub()
    link = rsp_gdb.Link("127.0.0.1", stub.port)
    link.send("?")
    link.recv()
    link.send("vCont;c")
    assert link.running
    assert link.cmd("D;1") == "OK" and not link.running
    assert stub.log == ["?", "vCont;c", "stopped by a byte", "D;1"]


def test_sigint_while_running_ends_the_continue_with_a_sigint_stop():
    """The driver's SIGINT only sets a flag; the wait for a stop sends the
    interrupt and the continue ends with a SIGINT stop, the stop reply read
    whole. A SIGINT that came while the guest was stopped ends the next
    continue before it resumes anything."""
    stub = RunningStub()
    target = rsp_gdb.Target()
    target.link = rsp_gdb.Link("127.0.0.1", stub.port)
    target.link.send("?")
    target._stopped(target.link.recv())
    events = []
    target.listeners.append(events.append)
    timer = threading.Timer(0.2, target._on_sigint, (2, None))
    timer.start()
    target.cont()
    assert [e.stop_signal for e in events] == ["SIGINT"] and not target.link.running
    assert stub.log[-2:] == ["vCont;c", "stopped by a byte"]
    target.cont()                          # the flag is still up: no resume
    assert len(events) == 2 and stub.log.count("vCont;c") == 1
