#!/usr/bin/env python3
"""The stock 6.12 kernel's memblock window, held open: an experiment.

The race method (docs/methods.md, "Races") once failed on the clean kernel:
``kernel BUG at mm/page_alloc.c`` in ``free_pages()``, from a process that
exited while the add/remove loop ran. The suspected cause:

* arm64's ``virt_addr_valid()`` asks ``pfn_is_map_memory()``, which searches
  ``memblock.memory`` without a lock;
* ``free_pages()`` checks ``VM_BUG_ON(!virt_addr_valid(addr))`` (DEBUG_VM),
  and every exiting process frees its pgd with ``free_page()`` (4K pages);
* hot-remove's ``memblock_remove()`` splits the region it cuts from:
  ``memblock_isolate_range()`` first moves the region's base up
  (``rgn->base = base``) and only then inserts the lower part again. In the
  probe flow the hot-added block is merged with boot memory, so for that
  moment memblock holds none of boot memory.

This script holds that moment open instead of waiting for a lucky schedule.
It boots the kasan+debug-vm kernel (probe flow, 2 vCPUs, a gdbstub), probes
one block, and puts a write watchpoint on ``memblock.memory.regions[0].base``.
Then it writes the block's address to ``memory/remove``: the watchpoint stops
the guest at the store, the store is stepped, and the memblock array is read
(the evidence that boot memory is gone from it). Then only the *other* vCPU
is resumed (``vCont;c:THREAD``), for ``--hold`` seconds, in four cells:

  window held + exits    the other CPU runs a loop of ``sh -c :``
  window held, no exits  the same with no process exiting
  window open + exits    nothing held: add and remove the block back to back
                         while the exits run, as the race method did (each
                         removal opens the window for a few instructions)
  (the fourth, no window and no exits, is every clean run)

and prints, per cell, whether the console showed a kernel report and its
first line. Expected if the cause is right: a BUG in ``free_pages()`` in the
first cell only, within a second or two.

Run: .venv/bin/python bench/bench_memblock_window.py [--hold S]
"""
from __future__ import annotations

import argparse
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchlib as bl  # noqa: E402

from harness.drive import probe  # noqa: E402
from harness.inspect.rsp_gdb import Link, thread_id  # noqa: E402
from harness.kernel import kernel as build  # noqa: E402
from harness.machine.crashwatch import KernelCrash  # noqa: E402
from harness.machine.qemu import free_port  # noqa: E402
from harness.session import BootOptions, boot  # noqa: E402

MEMROOT = "/sys/devices/system/memory"
STOP, COUNT = "/tmp/harness-stop-exits", "/tmp/harness-removals"    # in the guest
EXITS = f"(while [ ! -e {STOP} ]; do sh -c :; done) </dev/null >/dev/null 2>&1 &"
# struct memblock: bool bottom_up; phys_addr_t current_limit; struct memblock_type
# memory {unsigned long cnt, max; phys_addr_t total_size; struct memblock_region *regions}
MEMORY_CNT, MEMORY_REGIONS = 16, 40
REGION = 24                  # struct memblock_region: base, size, flags, (nid)


class Rsp(Link):
    def read(self, addr: int, size: int) -> bytes:
        """Guest memory at a kernel address, through whichever vCPU can see it
        (one stopped at EL0 may not: the stub translates with that CPU's MMU)."""
        reply = self.cmd(f"m{addr:x},{size:x}")
        for t in self.threads() if reply.startswith("E") else ():
            self.cmd(f"Hg{t}")
            reply = self.cmd(f"m{addr:x},{size:x}")
            if not reply.startswith("E"):
                break
        if reply.startswith("E"):
            raise RuntimeError(f"no vCPU could read {size} bytes at {addr:#x}: {reply}")
        return bytes.fromhex(reply)

    def threads(self) -> list:
        out, reply = [], self.cmd("qfThreadInfo")
        while reply.startswith("m"):
            out += [thread_id(t) for t in reply[1:].split(",")]
            reply = self.cmd("qsThreadInfo")
        return out


def regions(rsp: Rsp, memblock: int) -> list:
    cnt = struct.unpack("<Q", rsp.read(memblock + MEMORY_CNT, 8))[0]
    base = struct.unpack("<Q", rsp.read(memblock + MEMORY_REGIONS, 8))[0]
    raw = rsp.read(base, REGION * cnt)
    return [struct.unpack_from("<QQ", raw, i * REGION) for i in range(cnt)]


def shown(rs: list) -> str:
    return ", ".join(f"[{b:#x}-{b + s:#x})" for b, s in rs)


def cell(art, symbols: dict, hold: bool, exits: bool, seconds: float, tmp: Path) -> dict:
    port = free_port()
    opts = probe.boot_options(BootOptions(mode="dt", snapshot=False,
                                          devices=("-gdb", f"tcp:127.0.0.1:{port}")),
                              None)
    name = f"{'held' if hold else 'open'}-{'exits' if exits else 'quiet'}"
    out = tmp / name
    out.mkdir()
    got: dict = {"cell": name, "report": "", "regions": "", "seconds": None}
    with boot(art, opts, out, progress=False) as guest:
        before = guest.check(f"grep -c . /proc/iomem >/dev/null; ls {MEMROOT}")
        bs = int(guest.check(f"cat {MEMROOT}/block_size_bytes").strip(), 16)
        top = max(int(n[6:]) for n in before.split() if n.startswith("memory")
                  and n[6:].isdigit())
        addr = (top + 1) * bs                 # the block right above boot memory
        guest.check(f"echo {addr:#x} > {MEMROOT}/probe")
        if exits:
            guest.check(EXITS)
        rsp = Rsp("127.0.0.1", port)
        rsp.cmd("qSupported:multiprocess+;swbreak+;hwbreak+")
        rsp.send("?")
        rsp.recv()
        memblock = symbols["memblock"]
        got["regions_added"] = shown(regions(rsp, memblock))
        first = struct.unpack("<Q", rsp.read(memblock + MEMORY_REGIONS, 8))[0]
        watched = f"{first:x},8"
        if hold and rsp.cmd(f"Z2,{watched}") != "OK":
            raise RuntimeError("the gdbstub refused a write watchpoint")
        rsp.send("vCont;c")
        if hold:        # one removal, stopped in its window
            guest.run(f"(echo {addr:#x} > {MEMROOT}/remove) </dev/null >/dev/null 2>&1 &", 10)
        else:           # removals and adds back to back, each with its short window
            guest.run(f"(echo {addr:#x} > {MEMROOT}/remove; n=1; while [ ! -e {STOP} ]; do "
                      f"echo {addr:#x} > {MEMROOT}/probe; echo {addr:#x} > {MEMROOT}/remove "
                      f"&& n=$((n+1)); echo $n > {COUNT}; done) </dev/null >/dev/null 2>&1 &", 10)
        start = time.monotonic()
        if hold:
            _, remover = rsp.stop(30)
            rsp.cmd(f"z2,{watched}")
            rsp.send(f"vCont;s:{remover}")           # carry out rgn->base = base
            rsp.stop(30)
            got["regions_held"] = shown(regions(rsp, memblock))
            others = [t for t in rsp.threads() if t != remover]
            got["resumed"] = f"{', '.join(others)} (the remover {remover} stays stopped)"
            rsp.send("vCont;" + ";".join(f"c:{t}" for t in others))
            start = time.monotonic()
        while time.monotonic() - start < seconds and not guest.crashes():
            time.sleep(0.1)
        if guest.crashes():
            got["seconds"] = round(time.monotonic() - start, 1)
            got["report"] = guest.crashes()[0].title
        rsp.sock.sendall(b"\x03")
        try:
            rsp.stop(10)
        except Exception:
            pass
        rsp.cmd("D;1")     # detached (by pid: multiprocess); closing alone leaves it stopped
        rsp.sock.close()
        if not guest.crashes():       # the guest runs on: did the removal end?
            try:
                left = guest.run(f"touch {STOP}; sleep 2; ls {MEMROOT}; "
                                 f"cat {COUNT} 2>/dev/null", 60,
                                 via=guest.console).stdout.split()
                got["after"] = ("the removal then finished" if f"memory{addr // bs}"
                                not in left else "the block is still there")
                if not hold and left and left[-1].isdigit():
                    got["after"] += f"; {left[-1]} removals meanwhile"
            except Exception as e:      # noqa: BLE001 - said, not raised
                got["after"] = f"the guest did not answer afterwards: {str(e)[:120]}"
    return got


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hold", type=float, default=15.0,
                   help="seconds each cell runs (default 15: a CPU held past 21 s is an RCU stall)")
    bl.add_common(p)
    args = p.parse_args()
    bl.start_results_for(args, __file__, None)
    bl.header("the memblock window of hot-remove, held open (stock kernel)")
    art = build.build(build.BuildRequest(configs=("kasan", "debug-vm")))
    symbols = {}
    for line in open(art.system_map):
        addr, _t, name = line.split()[:3]
        symbols.setdefault(name, int(addr, 16))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-memblock-") as tmp:
        for hold, exits in ((True, True), (True, False), (False, True)):
            try:
                got = cell(art, symbols, hold, exits, args.hold, Path(tmp))
            except KernelCrash as crash:
                got = {"cell": f"{'held' if hold else 'open'}-"
                       f"{'exits' if exits else 'quiet'}", "report": str(crash)[:200]}
            rows.append(got)
            print(f"{got['cell']:12s} "
                  + (f"kernel report after {got.get('seconds')} s: {got['report']}"
                     if got.get("report") else f"no kernel report in {args.hold:g} s"),
                  flush=True)
            for key in ("regions_added", "regions_held", "resumed", "after"):
                if got.get(key):
                    print(f"    {key}: {got[key]}", flush=True)
    return 0


if __name__ == "__main__":
    bl.entry(main)
