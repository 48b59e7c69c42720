#!/usr/bin/env python3
"""What one stop at QEMU's gdbstub costs under TCG, and where the time goes.

The ordering checks stop the guest at every free, cleared entry and ``tlbi``
of a removal (docs/ordering.md), so a stop's price sets what following a
removal costs. This bench boots the default kernel (DT, snapshot off) with a
gdbstub, keeps one guest CPU busy in a ``read(2)`` loop (busybox ``dd bs=1``),
and stops it ``--stops`` times in each of these ways:

* ``gdb``: gdb-multiarch with a breakpoint on ``vfs_read`` and a Python loop
  of ``continue`` (what the agent does, with ``breakpoint always-inserted``);
* ``raw``: a remote-protocol client doing what gdb does on the wire: remove
  the breakpoint, step, insert it, continue;
* ``raw-step``: the same without removing the breakpoint (QEMU ignores
  breakpoints while stepping), one packet round trip less per stop;
* ``raw-pc``: no step at all: the breakpoint sits on ``vfs_read``'s first
  instruction (``mov x4, x1``), which the client carries out itself
  (registers written back with ``G``, the pc moved on);
* ``watch``: a write watchpoint on ``jiffies`` (the timer tick's store),
  stepped over as gdb must (QEMU reports the stop before the store). Its
  stops come once per tick, so its time is the tick's: only its ``tb_flush``
  count is a figure.

With ``perf`` and root, QEMU's ``tb_flush`` is counted per stop through a
uprobe (``perf probe -x QEMU tb_flush``): QEMU's gdbstub empties the whole
translation cache at every debug stop that is not a watchpoint hit, so the
guest's code is translated again after each stop. That retranslation, not
the protocol, is most of a stop's price; see docs/ordering.md "Cost".

Run: .venv/bin/python bench/bench_stop_cost.py [--stops N] [--ways gdb,raw,...]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchlib as bl  # noqa: E402

from harness.inspect.rsp_gdb import Link  # noqa: E402
from harness.kernel import kernel as build  # noqa: E402
from harness.machine.qemu import free_port  # noqa: E402
from harness.session import BootOptions, boot  # noqa: E402

WAYS = ("gdb", "raw", "raw-step", "raw-pc", "watch")
ADDED: list = []                    # uprobes this bench defined
LOAD = ("(while :; do dd if=/dev/zero of=/dev/null bs=1 count=100000000; done) "
        ">/dev/null 2>&1 </dev/null &")
PC = 32                      # aarch64 'g' packet: x0-x30, sp, pc (8 bytes each), cpsr

# gdb's side of the "gdb" way, sourced into gdb-multiarch
GDB_LOOP = """
import gdb, os, time
n, addr = int(os.environ["STOPS"]), int(os.environ["ADDR"], 16)
for cmd in ("set breakpoint always-inserted on", "set can-use-hw-watchpoints 1"):
    gdb.execute(cmd)
gdb.execute("target remote 127.0.0.1:" + os.environ["PORT"], to_string=True)
bp = gdb.Breakpoint("*%#x" % addr, internal=True)
times = []
for _ in range(n):
    t = time.perf_counter()
    gdb.execute("continue", to_string=True)
    gdb.parse_and_eval("$pc")
    times.append(time.perf_counter() - t)
bp.delete()
gdb.execute("detach", to_string=True)
print("STOP-SECONDS " + " ".join("%.6f" % t for t in times))
"""


def raw_way(port: int, way: str, addr: int, stops: int) -> list:
    r = Link("127.0.0.1", port)
    r.cmd("qSupported:multiprocess+;swbreak+;hwbreak+")
    r.send("?")
    r.recv()
    kind, size = ("2", 8) if way == "watch" else ("0", 4)
    if r.cmd(f"Z{kind},{addr:x},{size}") != "OK":
        raise RuntimeError(f"the gdbstub refused Z{kind} at {addr:#x}")
    times: list = []
    r.send("vCont;c")
    for _ in range(stops):
        t = time.perf_counter()
        _, tid = r.stop()
        if way == "raw":
            r.cmd(f"z0,{addr:x},4")
            r.send(f"vCont;s:{tid}")
            r.stop()
            r.cmd(f"Z0,{addr:x},4")
        elif way in ("raw-step", "watch"):
            if way == "watch":
                r.cmd(f"z2,{addr:x},8")
            r.send(f"vCont;s:{tid}")
            r.stop()
            if way == "watch":
                r.cmd(f"Z2,{addr:x},8")
        elif way == "raw-pc":              # carry out 'mov x4, x1' here, move the pc on
            regs = bytearray(bytes.fromhex(r.cmd("g")))
            regs[4 * 8:5 * 8] = regs[1 * 8:2 * 8]
            pc = int.from_bytes(regs[PC * 8:PC * 8 + 8], "little") + 4
            regs[PC * 8:PC * 8 + 8] = pc.to_bytes(8, "little")
            if r.cmd("G" + regs.hex()) != "OK":
                raise RuntimeError("the gdbstub refused G")
        r.send("vCont;c")
        times.append(time.perf_counter() - t)
    r.sock.sendall(b"\x03")
    r.stop()
    r.cmd(f"z{kind},{addr:x},{size}")
    r.send("D")
    r.sock.close()
    return times


def gdb_way(port: int, vmlinux: str, addr: int, stops: int, folder: Path) -> list:
    script = folder / "gdb-loop.py"
    script.write_text(GDB_LOOP)
    env = dict(os.environ, STOPS=str(stops), ADDR=hex(addr), PORT=str(port))
    out = subprocess.run(["gdb-multiarch", "-q", "-nx", "-batch", "-ex", f"source {script}",
                          vmlinux], env=env, capture_output=True, text=True, timeout=600)
    line = next((x for x in out.stdout.splitlines() if x.startswith("STOP-SECONDS")), None)
    if line is None:
        raise RuntimeError(f"gdb failed: {out.stderr.strip()[-400:]}")
    return [float(x) for x in line.split()[1:]]


def flush_counter(qemu_bin: str):
    """A uprobe on QEMU's tb_flush, or None (no perf, not root, no symbol)."""
    if os.geteuid() != 0 or not shutil.which("perf"):
        return None
    before = subprocess.run(["perf", "probe", "-l"], capture_output=True, text=True).stdout
    probe = subprocess.run(["perf", "probe", "-x", qemu_bin, "-a", "tb_flush"],
                           capture_output=True, text=True)
    listed = subprocess.run(["perf", "probe", "-l"], capture_output=True, text=True).stdout
    if "tb_flush" not in listed:
        bl.note(f"no tb_flush uprobe: {probe.stderr.strip()[-200:]}")
        return None
    event = next(line.split()[0] for line in listed.splitlines() if "tb_flush" in line)
    if "tb_flush" not in before:
        ADDED.append(event)            # removed again when the bench ends
    return event


def count_flushes(event: str, pid: int, fn) -> tuple:
    with tempfile.NamedTemporaryFile(suffix=".perf") as out:
        perf = subprocess.Popen(["perf", "stat", "-x,", "-e", event, "-p", str(pid),
                                 "-o", out.name], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        try:
            result = fn()
        finally:
            perf.send_signal(2)
            perf.wait()
        text = Path(out.name).read_text()
    counts = [int(x.split(",")[0]) for x in text.splitlines()
              if x and not x.startswith("#") and x.split(",")[0].isdigit()]
    return result, (counts[0] if counts else None)


def per_stop(flushes, times) -> str:
    if flushes is None:
        return "; tb_flush not counted (needs perf and root)"
    return f"; tb_flush {flushes / len(times):.2f} per stop"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stops", type=int, default=300)
    p.add_argument("--ways", default=",".join(WAYS),
                   help=f"comma-separated, of: {', '.join(WAYS)}")
    bl.add_common(p)
    args = p.parse_args()
    ways = [w for w in args.ways.split(",") if w]
    bad = [w for w in ways if w not in WAYS]
    if bad:
        bl.die(f"unknown way(s): {', '.join(bad)} (choose from {', '.join(WAYS)})")
    bl.start_results_for(args, __file__, None)
    bl.header("one stop at QEMU's gdbstub: its cost, and what QEMU does at it")
    art = build.build(build.BuildRequest())
    symbols = {}
    for line in open(art.system_map):
        addr, _t, name = line.split()[:3]
        symbols.setdefault(name, int(addr, 16))
    port = free_port()
    opts = BootOptions(mode="dt", devices=("-gdb", f"tcp:127.0.0.1:{port}"), snapshot=False)
    with tempfile.TemporaryDirectory(prefix="bench-stop-cost-") as tmp, \
            boot(art, opts, Path(tmp), progress=False) as guest:
        guest.check(LOAD)
        time.sleep(0.5)
        qemu = guest.machine.proc
        qemu_bin = shutil.which(guest.machine.argv[0]) or guest.machine.argv[0]
        event = flush_counter(qemu_bin) if qemu else None
        for way in ways:
            addr = symbols["jiffies"] if way == "watch" else symbols["vfs_read"]
            if way in ("gdb", "raw", "raw-step"):
                addr += 4              # after the instruction raw-pc carries out

            def go(way=way, addr=addr):
                if way == "gdb":
                    return gdb_way(port, art.vmlinux, addr, args.stops, Path(tmp))
                return raw_way(port, way, addr, args.stops)
            if event and qemu:
                times, flushes = count_flushes(event, qemu.pid, go)
            else:
                times, flushes = go(), None
            med = statistics.median(times)
            if way == "watch":         # one stop per timer tick: the time is the tick's
                print(f"{way:9s} {len(times)} stops{per_stop(flushes, times)}", flush=True)
                continue
            per = per_stop(flushes, times)
            print(f"{way:9s} {len(times)} stops: median {med * 1000:.2f} ms, "
                  f"p90 {sorted(times)[9 * len(times) // 10] * 1000:.2f} ms, "
                  f"total {sum(times):.2f} s{per}", flush=True)
            bl.record(f"stop_cost_{way.replace('-', '_')}",
                      f"one gdbstub stop, {way} (median of {len(times)})", med, "s",
                      command=bl.command_text([sys.executable, "bench/bench_stop_cost.py",
                                               "--ways", way]),
                      extra=per.lstrip("; "))
            time.sleep(0.3)
    for event in ADDED:
        subprocess.run(["perf", "probe", "-d", event], capture_output=True)
    return 0


if __name__ == "__main__":
    bl.entry(main)
