"""The agent of the ordering checks: runs in harness.inspect.rsp_gdb's Python
(the default: gdb's API over the remote protocol, no gdb) or inside
gdb-multiarch's Python (``HOTPLUG_HARNESS_GDB=gdb-multiarch``).

:mod:`harness.inspect.gdb` starts gdb with ``vmlinux`` and a spec file; gdb
imports this module and calls :func:`agent_main`, which connects to QEMU's
gdbstub and records one :mod:`harness.inspect.order` event per stop into
``gdb-<tag>.events.jsonl`` until the driver asks it to detach. What it stops on:

* **the page allocator's sinks**: ``free_unref_page(page, order)``,
  ``__free_pages_ok(page, order, fpi)`` and ``free_unref_folios(batch)``, which
  every free of an allocated page passes (``free_pages``, ``__free_pages``,
  ``put_page``, ``free_reserved_page``, ``pagetable_free``, folio batches).
  ``free_pages`` and ``__free_pages`` are broken on only until the first
  ``free_pages(va)`` -> ``page`` pair calibrates ``sizeof(struct page)``. At each
  free the live table descriptors are walked (``order.table_links``: which
  entries still point into the freed range) and the watched vmemmap leaves
  still mapping it are read (event ``free``, with the CPU and the first
  callers outside the allocator);
* **write watchpoints** on every table descriptor whose span overlaps the
  removed range's linear map or its vmemmap, and on every vmemmap **leaf**
  (page or block) that maps the removed range's ``struct page`` array (events
  ``watch`` before, ``clear`` when written; root entries through
  ``set_swapper_pgd``);
* **every tlbi** in vmlinux (leaf and non-leaf forms), enabled while a cleared
  table or leaf awaits its flush and for all of ``arch_remove_memory()``
  (event ``tlbi`` with its operand and CPU);
* **the dsb paired with each tlbi** (``a64.paired_dsb``: the first ``dsb ish``,
  ``osh`` or ``sy`` on its straight line), enabled while a tlbi of that site
  awaits completion; a hit on the CPU that issued it records event ``dsb``
  naming the invalidations it completed;
* **arch_remove_memory()** entry and return: the linear map's leaves for the
  range at entry (event ``remove_enter``), a snapshot of the leaves still
  valid at every tlbi overlapping that linear map (``tlbi.lin_valid``), and
  at the return (event ``remove_return``).

A stop cap, a lost connection or a stop nobody asked for ends the recording
with an ``incomplete`` event: the checks then give ERROR, never a verdict.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

# frames inside the allocator: the "caller" of a free is the first frame after them
ALLOCATOR_FRAMES = ("free_pages", "__free_pages", "___free_pages", "free_unref_page",
                    "__free_pages_ok", "free_unref_folios", "__folio_put",
                    "folios_put_refs", "free_one_page", "free_pages_exact")
SINKS = ("free_unref_page", "__free_pages_ok", "free_unref_folios")
CALIBRATION = ("free_pages", "__free_pages")


def agent_main(config_path: str) -> None:
    """Entry point inside the client's Python (see ``gdb.gdb_argv``)."""
    spec = json.loads(Path(config_path).read_text())
    out = open(spec["out_dir"] + f"/gdb-{spec['tag']}.events.jsonl", "a", buffering=1)
    agent = None
    try:
        agent = Agent(spec, out)
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


class Agent:
    def __init__(self, spec: dict, out):
        import gdb

        from harness.inspect import a64, order, walker
        self.gdb, self.walker, self.order, self.a64 = gdb, walker, order, a64
        self.spec, self.out = spec, out
        self.t0 = time.monotonic()
        self.step = spec["step"]
        self.geo = walker.Geometry(*spec["geometry"])
        self.codec = walker._Codec(self.geo)     # descriptor -> output address
        self.seq = 0
        self.stops = 0
        self.stop_s = 0.0
        self.walk_ms: list = []
        self.last_hit: list = []
        self.pending: dict = {}            # ("table"|"leaf", pa) -> [Clear, Link, [tlbi seqs]]
        self.watches: dict = {}            # bp number -> (order.Watch, bp, old descriptor)
        self.leaf_watches: dict = {}       # entry_pa -> order.Watch (vmemmap leaves)
        self.tlbi_bps: dict = {}           # bp number -> (addr, op name, rt, dsb addr)
        self.dsb_bps: dict = {}            # dsb addr -> bp
        self.dsb_roles: dict = {}          # bp number -> (addr, option)
        self.uncompleted: dict = {}        # cpu -> [Tlbi]
        self.loops: dict = {}              # tlbi bp number -> a64.tlbi_loop
        self.resting: dict = {}            # cpu -> [tlbi bp resting until its loop's dsb]
        self.tlbi_on = False
        self.tlbi_toggles = 0
        self.prev_free = None
        self.symcache: dict = {}
        self.mem = None
        self.bps: list = []
        self.roles: dict = {}              # bp number -> role name
        self.counts = {"free": 0, "free_dup": 0, "clear": 0, "watch_other": 0, "tlbi": 0,
                       "dsb": 0, "other": 0, "late": 0, "calibration_stops": 0}
        self.calibrated = None
        self.swapper_bp = None             # set_swapper_pgd breakpoint (root entries)
        self.window = None                 # open arch_remove_memory call
        self.windows = 0
        self.incomplete: list = []

    # -- output
    def emit(self, d: dict) -> None:
        # t: seconds since the agent started (where the time of a removal goes)
        d.setdefault("t", round(time.monotonic() - self.t0, 4))
        self.out.write(json.dumps(d) + "\n")

    def event(self, ev) -> None:
        self.emit(ev.to_dict())

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def give_up(self, why: str) -> None:
        """The recording misses part of the removal: say so, once per reason."""
        if why not in self.incomplete:
            self.incomplete.append(why)
            self.event(self.order.Incomplete(self.next_seq(), self.step, why))

    # -- gdb helpers
    def reg(self, name: str) -> int:
        return int(self.gdb.parse_and_eval(f"(unsigned long)${name}")) & ((1 << 64) - 1)

    def cpu(self):
        try:
            return self.gdb.selected_thread().num
        except Exception:  # noqa: BLE001 - no thread: not recorded
            return None

    def sym_addr(self, name: str) -> int:
        return int(self.gdb.parse_and_eval(f"(unsigned long)&'{name}'")) & ((1 << 64) - 1)

    def maybe_sym(self, name: str):
        try:
            return self.sym_addr(name)
        except Exception:  # noqa: BLE001 - not in this kernel (inlined, renamed)
            return None

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

    def callers(self, lr: int, fp: int, depth: int = 6) -> str:
        """The return addresses from ``lr`` up the frame-record chain at ``fp``
        (arm64 kernels keep frame pointers), the allocator's own frames
        dropped, three kept."""
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
        outside = [n for n in names if n.split("+")[0].split(".")[0] not in ALLOCATOR_FRAMES]
        return " <- ".join((outside or names)[:3])

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

    def vmemmap_range(self, pa0: int, pa1: int) -> tuple:
        mpfn = self.memstart >> self.geo.page_shift
        ps = self.geo.page_shift
        return (self.vmemmap_start + ((pa0 >> ps) - mpfn) * self.sp_size,
                self.vmemmap_start + ((pa1 >> ps) - mpfn) * self.sp_size)

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
        sinks = []
        for name in CALIBRATION + SINKS:
            addr = self.maybe_sym(name)
            if addr is None:
                continue
            bp = gdb.Breakpoint(f"*{addr:#x}", internal=True)
            self.roles[bp.number] = name
            self.bps.append(bp)
            if name in SINKS:
                sinks.append(name)
        if not sinks:
            raise RuntimeError(f"none of {', '.join(SINKS)} is a symbol of this vmlinux: "
                               "the frees of a removal cannot be followed")
        if spec["flush_check"]:
            self.arm_watches(before)
            for addr, op, rt, dsb, unbranched, loop in spec["tlbi_sites"]:
                bp = gdb.Breakpoint(f"*{addr:#x}", internal=True)
                bp.enabled = False
                self.tlbi_bps[bp.number] = (addr, op, rt, dsb, unbranched)
                if loop is not None:
                    self.loops[bp.number] = tuple(loop)
                self.bps.append(bp)
            enter = self.maybe_sym("arch_remove_memory")
            if enter is not None:
                bp = gdb.Breakpoint(f"*{enter:#x}", internal=True)
                self.roles[bp.number] = "arch_remove_memory"
                self.bps.append(bp)
        self.emit({"kind": "ready", "connect_s": round(connected, 3),
                   "setup_s": round(time.monotonic() - t0, 3),
                   "watchpoints": len(self.watches), "tlbi_sites": len(self.tlbi_bps),
                   "free_hooks": sinks})
        self.loop()

    def layout(self) -> None:
        """VMEMMAP_START and sizeof(struct page) (arch/arm64/include/asm/memory.h):
        VMEMMAP_SIZE = (linear-map pages) * sizeof; VMEMMAP_END = -1 GiB in 6.12,
        VMEMMAP_START + VMEMMAP_SIZE in 6.1 (VMEMMAP_START = -2^(VA_BITS -
        VMEMMAP_SHIFT)): ptdump's "vmemmap end" when the spec has it."""
        geo = self.geo
        lin_lo, lin_hi = geo.linear_map_range()
        self.lin_pages = (lin_hi - lin_lo) >> geo.page_shift
        self.vmemmap_end = self.spec.get("vmemmap_end") or (1 << 64) - (1 << 30)
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

    def entry_va(self, entry_pa: int) -> int:
        root_end = self.spec["root_pa"] + self.geo.entries(0) * 8
        if self.spec["root_pa"] <= entry_pa < root_end:
            return self.swapper_va + (entry_pa - self.spec["root_pa"])
        return self.pa_to_lin(entry_pa)

    def watch(self, link, leaf: bool, region: str = "") -> None:
        gdb = self.gdb
        entry_va = self.entry_va(link.entry_pa)
        wp = gdb.Breakpoint(f"*(unsigned long *){entry_va:#x}",
                            type=gdb.BP_WATCHPOINT, wp_class=gdb.WP_WRITE,
                            internal=True)
        if wp.type != gdb.BP_HARDWARE_WATCHPOINT:
            raise RuntimeError(f"gdb made a software watchpoint for {entry_va:#x}: "
                               "the gdbstub refused a hardware one")
        w = self.order.Watch(self.next_seq(), self.step, link, entry_va, leaf=leaf,
                             region=region)
        old = int.from_bytes(self.mem.read(link.entry_pa, 8), "little")
        self.watches[wp.number] = (w, wp, old)
        if leaf and region == "vmemmap":
            self.leaf_watches[link.entry_pa] = w
        self.bps.append(wp)
        self.event(w)
        if entry_va != self.pa_to_lin(link.entry_pa):
            self.watch_root_writes()

    def arm_watches(self, links: dict) -> None:
        """Watch every table descriptor overlapping the removed range's linear
        map or vmemmap, and every vmemmap leaf mapping its struct pages."""
        spec = self.spec
        pa0, pa1 = spec["pa_start"], spec["pa_end"]
        vm_lo, vm_hi = self.vmemmap_range(pa0, pa1)
        ranges = [(self.pa_to_lin(pa0), self.pa_to_lin(pa1)), (vm_lo, vm_hi)]
        chosen = [link for _table_pa, ls in sorted(links.items()) for link in ls
                  if any(link.va < hi and lo < link.va + link.span for lo, hi in ranges)]
        for link in chosen:
            self.watch(link, leaf=False)
        for leaf in self.order.range_leaves(self.mem, self.geo, spec["root_pa"], vm_lo, vm_hi):
            self.watch(self.order.Link(leaf.pa, leaf.entry_pa, leaf.va, leaf.span, leaf.level),
                       leaf=True, region="vmemmap")

    def watch_root_writes(self) -> None:
        """swapper_pg_dir is read-only in the kernel image: arm64 writes its
        entries through a fixmap alias (set_pgd -> set_swapper_pgd ->
        pgd_set_fixmap), which a watchpoint on the image address never sees.
        So the write is observed at set_swapper_pgd(pgdp, pgd) instead: x0 is
        the image address of the entry (the watch's entry_va), x1 the value."""
        if self.swapper_bp is not None:
            return
        addr = self.maybe_sym("set_swapper_pgd")
        if addr is None:          # not in this kernel: the watchpoint stays alone
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

    def detach_requested(self) -> bool:
        """The driver writes this file before the SIGINT that ends the recording."""
        return os.path.exists(self.spec["out_dir"] + f"/gdb-{self.spec['tag']}.detach")

    def loop(self) -> None:
        gdb = self.gdb
        self.started = time.monotonic()
        while True:
            self.last_hit = []
            try:
                gdb.execute("continue", to_string=True)
                t = time.monotonic()
                signals = [h for h in self.last_hit if str(h).startswith("signal:")]
                if not self.last_hit or signals:
                    if not self.detach_requested():
                        pc = self.symbolise(self.reg("pc"))
                        self.give_up(f"the guest stopped for no breakpoint of the agent "
                                     f"({', '.join(signals) or 'no stop reason'}) at {pc}")
                    break                      # interrupted (SIGINT from the harness)
                self.stops += 1
                self.handle(self.last_hit)
                self.stop_s += time.monotonic() - t
                if self.stops >= self.spec["max_stops"]:
                    self.give_up(f"stopped recording after {self.stops} stops (the cap, "
                                 f"max_stops)")
                    break
            except KeyboardInterrupt:
                break
            except self.gdb.error as e:
                # gdb gave up on the target after a second interrupt (see
                # gdb.INTERRUPT_RESEND_S): what was recorded is kept but is
                # partial; the harness detaches QEMU's gdbstub itself (rsp_detach)
                if "Disconnected" not in str(e) and "connection closed" not in str(e):
                    raise
                if self.detach_requested():
                    # the step was over and every stop before the driver's
                    # request was handled: the recording is whole, only the
                    # way out was rough
                    self.emit({"kind": "note", "message": f"gdb lost the connection "
                               f"after the driver asked to detach: {e}"})
                else:
                    self.give_up(f"gdb lost the connection to QEMU's gdbstub: {e}")
                self.emit({"kind": "stopping"})
                self.finish(kind="disconnected", why=str(e))
                return
        if self.window is not None:
            self.give_up("arch_remove_memory() had not returned when the recording ended")
        self.emit({"kind": "stopping"})
        self.finish()

    def handle(self, hits: list) -> None:
        roles: dict = {}
        for n in hits:
            if n in self.watches:
                roles.setdefault("watch", []).append(n)
            elif n in self.tlbi_bps:
                roles["tlbi"] = n
            elif n in self.dsb_roles:
                roles["dsb"] = n
            elif n in self.roles:
                roles[self.roles[n]] = n
        for n in roles.get("watch", ()):
            self.on_watch(n)
        if "set_swapper_pgd" in roles:
            self.on_swapper_write()
        if "dsb" in roles:
            self.on_dsb(roles["dsb"])
        if "tlbi" in roles:
            self.on_tlbi(roles["tlbi"])
        if "arch_remove_memory" in roles:
            self.on_remove_enter()
        if "arch_remove_return" in roles:
            self.on_remove_return(roles["arch_remove_return"])
        if "free_pages" in roles:
            self.on_free_pages()
        elif "__free_pages" in roles:
            self.on_calibration_pair()
        for sink in SINKS:
            if sink in roles:
                self.on_sink(sink)
        if not roles:
            self.counts["other"] += 1

    # -- writes to watched entries
    def on_watch(self, number: int) -> None:
        """A watched entry was written. The store is located behind the stop
        (a64.late_window): when QEMU reported the stop some instructions late, the
        clear is dated at the store and the TLBIs that ran in between are
        recorded as executed; what cannot be accounted for makes the clear
        ``late``, so a missing flush is "cannot judge", never a FAIL."""
        a64 = self.a64
        w, _wp, _old = self.watches[number]
        new = int.from_bytes(self.mem.read(w.link.entry_pa, 8), "little")
        pc = self.reg("pc")
        base = pc - 4 * a64.LATE_SCAN_INSNS
        data = bytes(self.gdb.selected_inferior().read_memory(base, 4 * a64.LATE_SCAN_INSNS))
        words = [int.from_bytes(data[i:i + 4], "little") for i in range(0, len(data), 4)]
        regs: dict = {}

        def reg(n: int) -> int:
            if n not in regs:
                regs[n] = self.reg("sp" if n == 31 else f"x{n}")
            return regs[n]
        sites = [(a, op, rt) for a, op, rt, _d, _u in self.tlbi_bps.values()]
        store, tlbis, why = a64.late_window(words, base, pc, w.entry_va, reg, sites)
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
            dsb = next((d for a, _o, _r, d, _u in self.tlbi_bps.values() if a == addr), None)
            self.tlbi_event(addr, op, rt, dsb, note=(
                f"executed between the store at {self.symbolise(store)} and a watch stop "
                f"that QEMU reported {(pc - store) // 4 - 1} instructions later, at "
                f"{self.symbolise(pc)}; x{rt} read at the stop (only barriers after the "
                "tlbi)"))
            for k in range((addr - base) // 4 + 1, (pc - base) // 4):
                option = a64.decode_dsb(words[k])
                if option in a64.DSB_COMPLETES:
                    self.complete(self.cpu(), base + 4 * k, option)
                    break

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
        """A watched entry was written: a Clear unless it still maps (a leaf)
        or links (a table) what it did (then False)."""
        w, wp, old = self.watches[number]
        link = w.link
        valid = new & 1 if w.leaf else new & 3 == 3      # a leaf, or a table descriptor
        if valid and self.codec.addr(new) == link.table_pa:
            self.counts["watch_other"] += 1
            return False
        c = self.order.Clear(self.next_seq(), self.step, link.table_pa, w.entry_va,
                             old=old, new=new, pc=pc, pc_sym=self.symbolise(pc), late=late,
                             leaf=w.leaf, cpu=self.cpu())
        self.event(c)
        self.counts["clear"] += 1
        wp.delete()
        self.bps.remove(wp)
        del self.watches[number]
        if w.region != "linear":
            self.pending[("leaf" if w.leaf else "table", link.table_pa)] = [c, link, []]
        self.update_tlbi()
        return True

    # -- invalidations and their completion
    def on_tlbi(self, number: int) -> None:
        addr, op_name, rt, dsb, unbranched = self.tlbi_bps[number]
        self.counts["tlbi"] += 1
        loop = self.loops.get(number)
        if loop is not None and dsb is not None and self.loop_tlbi(number, loop):
            return
        self.tlbi_event(addr, op_name, rt, dsb, unbranched=unbranched)

    def loop_tlbi(self, number: int, loop: tuple) -> bool:
        """The first ``tlbi`` of a per-page loop (a64.tlbi_loop): the whole
        loop is recorded as one invalidation of the range its operand steps
        through, and the site's breakpoint rests until the loop's dsb (8192
        stops for one 512 MiB flush with 64K pages otherwise). Nothing stores
        inside the loop, so the leaves valid now are valid at every iteration."""
        addr, op_name, rt, dsb, _u = self.tlbi_bps[number]
        inc, end_reg, cond, rt_first = loop
        start, end = self.reg(f"x{rt}"), self.reg(f"x{end_reg}")
        n = self.a64.loop_count(start, end, inc, cond, rt_first)
        op = self.order.TlbiOp(op_name, rt)
        if n == 1 and dsb == addr + 16:
            # the loop ends after this pass and its dsb follows the b.cond:
            # nothing but add, cmp and the branch lies between, as unbranched
            self.tlbi_event(addr, op_name, rt, dsb, unbranched=True, dsb_note=(
                f"after the only pass of the loop (x{end_reg} = {end:#x} ends it): the "
                f"add, the cmp and the b.{cond} between, no store, no call"))
            return True
        if n is None or n == 1 or not op.by_va or n > (1 << 20):
            return False           # unknown, or a loop whose dsb is elsewhere: a stop
        _full, lo, _hi = self.order.tlbi_effect(op, start, self.geo.page_shift)
        _full, _lo, hi = self.order.tlbi_effect(op, start + (n - 1) * inc,
                                                self.geo.page_shift)
        a, b = (rt, end_reg) if rt_first else (end_reg, rt)
        self.tlbi_event(addr, op_name, rt, dsb, lo_hi=(lo, hi), note=(
            f"the first of a loop of {n} (x{rt} from {start:#x} by {inc:#x} while "
            f"x{a} {cond} x{b}, x{end_reg} = {end:#x}): recorded as one invalidation of "
            f"the range, decoded, not stopped at {n} times"))
        bp = next(b for b in self.bps if b.number == number)
        bp.enabled = False
        self.resting.setdefault(self.cpu(), []).append(number)
        return True

    def tlbi_event(self, addr: int, op_name: str, rt: int, dsb, note: str = "",
                   unbranched: bool = False, lo_hi=None, dsb_note: str = "") -> None:
        """Record the TLBI at ``addr`` with its operand from x``rt`` now; the
        pending clears it covers now wait for its completion (the dsb)."""
        order = self.order
        op = order.TlbiOp(op_name, rt)
        xt = 0 if rt == 31 else self.reg(f"x{rt}")
        full, lo, hi = order.tlbi_effect(op, xt, self.geo.page_shift)
        if lo_hi is not None:
            lo, hi = lo_hi
        cpu = self.cpu()
        snap = None
        win = self.window
        if win is not None and op.broadcast and (full or (lo < win["lin_hi"]
                                                          and win["lin_lo"] < hi)):
            leaves = order.range_leaves(self.mem, self.geo, self.spec["root_pa"],
                                        win["lin_lo"], win["lin_hi"])
            snap = order.valid_ranges(leaves)
        t = order.Tlbi(self.next_seq(), self.step, addr, op_name, xt, full, lo, hi,
                       op.leaf_only, op.broadcast, pc_sym=self.symbolise(addr),
                       note=note, cpu=cpu, lin_valid=snap)
        self.event(t)
        if not op.broadcast:
            return
        for (kind, _pa), item in self.pending.items():
            _c, link, by = item
            if (t.covers_leaf(link.va, link.span) if kind == "leaf"
                    else t.covers(link.va, link.span)):
                by.append(t.seq)
        self.uncompleted.setdefault(cpu, []).append((t, dsb))
        if dsb is not None and unbranched:
            # the paired dsb follows with no branch in between (a64.paired_dsb):
            # the instructions between are decoded, not stopped at, which saves
            # a stop (two TB flushes in QEMU) per invalidation
            opt = self.a64.decode_dsb(int.from_bytes(
                bytes(self.gdb.selected_inferior().read_memory(dsb, 4)), "little"))
            self.complete(cpu, dsb, opt or "?", note=dsb_note or (
                f"{(dsb - addr) // 4 - 1} instructions after the tlbi at "
                f"{self.symbolise(addr)}, none a branch: executed next on its path"),
                isb=self.isb_after(dsb))
        elif dsb is not None:
            self.enable_dsb(dsb)

    def enable_dsb(self, addr: int) -> None:
        bp = self.dsb_bps.get(addr)
        if bp is None:
            bp = self.gdb.Breakpoint(f"*{addr:#x}", internal=True)
            self.dsb_bps[addr] = bp
            self.dsb_roles[bp.number] = addr
            self.bps.append(bp)
        elif not bp.enabled:
            bp.enabled = True

    def on_dsb(self, number: int) -> None:
        """A paired dsb ish/osh/sy is about to execute: once it has, every
        invalidation its CPU issued before it is complete (nothing the CPU
        does can come between the stop and the barrier)."""
        addr = self.dsb_roles[number]
        word = int.from_bytes(bytes(self.gdb.selected_inferior().read_memory(addr, 4)),
                              "little")
        self.counts["dsb"] += 1
        self.complete(self.cpu(), addr, self.a64.decode_dsb(word) or "?",
                      isb=self.isb_after(addr))

    def isb_after(self, addr: int):
        """Whether an isb follows the dsb at ``addr`` on its straight line
        (a64.isb_follows over the words after it, read from the guest)."""
        after = bytes(self.gdb.selected_inferior().read_memory(
            addr + 4, 4 * self.a64.ISB_SCAN_INSNS))
        return self.a64.isb_follows([int.from_bytes(after[i:i + 4], "little")
                                     for i in range(0, len(after), 4)])

    def complete(self, cpu, addr: int, option: str, note: str = "",
                 isb=None) -> None:
        for number in self.resting.pop(cpu, []):      # a loop ended: its site wakes
            bp = next((b for b in self.bps if b.number == number), None)
            if bp is not None and self.tlbi_on:
                bp.enabled = True
        waiting = self.uncompleted.pop(cpu, [])
        if not waiting:
            self.counts["other"] += 1
        else:
            done = [t.seq for t, _d in waiting]
            self.event(self.order.Dsb(self.next_seq(), self.step, addr, option, cpu,
                                      tuple(done), pc_sym=self.symbolise(addr), note=note,
                                      isb_after=isb))
            for key in [k for k, (_c, _l, by) in self.pending.items() if set(by) & set(done)]:
                del self.pending[key]
        needed = {d for ts in self.uncompleted.values() for _t, d in ts if d is not None}
        for a, bp in self.dsb_bps.items():
            if a not in needed and bp.enabled:
                bp.enabled = False
        self.update_tlbi()

    def update_tlbi(self) -> None:
        """tlbi breakpoints: on while a cleared entry awaits its flush or an
        arch_remove_memory() call is open."""
        on = bool(self.pending) or self.window is not None
        if on == self.tlbi_on or not self.tlbi_bps:
            return
        resting = {n for ns in self.resting.values() for n in ns}
        for bp in self.bps:
            if bp.number in self.tlbi_bps and not (on and bp.number in resting):
                bp.enabled = on
        self.tlbi_on = on
        self.tlbi_toggles += 1

    # -- arch_remove_memory()
    def on_remove_enter(self) -> None:
        pa, size = self.reg("x0"), self.reg("x1")
        lr, sp = self.reg("x30"), self.reg("sp")
        lo, hi = self.pa_to_lin(pa), self.pa_to_lin(pa + size)
        leaves = self.order.range_leaves(self.mem, self.geo, self.spec["root_pa"], lo, hi)
        cpu = self.cpu()
        self.event(self.order.RemoveEnter(self.next_seq(), self.step, pa, size, cpu,
                                          self.order.leaf_runs(leaves), lo,
                                          cont=self.order.cont_groups(
                                              leaves, self.geo.page_shift)))
        if self.window is not None:
            self.give_up("arch_remove_memory() entered again before the previous call "
                         "returned")
        if self.spec["flush_check"]:
            # who clears the linear map: the first and the last leaf are watched
            # (every one would cost a stop each: 32768 with rodata=full)
            for leaf in leaves[:1] + leaves[1:][-1:]:
                self.watch(self.order.Link(leaf.pa, leaf.entry_pa, leaf.va, leaf.span,
                                           leaf.level), leaf=True, region="linear")
        bp = self.gdb.Breakpoint(f"*{lr:#x}", internal=True)
        self.roles[bp.number] = "arch_remove_return"
        self.bps.append(bp)
        self.window = {"lin_lo": lo, "lin_hi": hi, "sp": sp, "cpu": cpu, "bp": bp}
        self.windows += 1
        self.update_tlbi()

    def on_remove_return(self, number: int) -> None:
        win = self.window
        # the task may have moved to another CPU meanwhile: its stack pointer
        # (back at the entry's value) tells the call apart from another one
        if win is None or self.reg("sp") != win["sp"]:
            self.counts["other"] += 1          # the same return address, another call
            return
        leaves = self.order.range_leaves(self.mem, self.geo, self.spec["root_pa"],
                                         win["lin_lo"], win["lin_hi"])
        pc = self.reg("pc")
        self.event(self.order.RemoveReturn(self.next_seq(), self.step, self.cpu(),
                                           self.order.valid_ranges(leaves),
                                           pc_sym=self.symbolise(pc)))
        bp = win["bp"]
        bp.delete()
        self.bps.remove(bp)
        del self.roles[number]
        self.window = None
        self.update_tlbi()

    # -- frees
    def on_free_pages(self) -> None:
        """free_pages(va, order): remembered for the calibration pair only."""
        self.counts["calibration_stops"] += 1
        self.prev_free = (self.lin_to_pa(self.reg("x0")), self.reg("x1") & 0xFFFFFFFF,
                          self.reg("x30"))

    def on_calibration_pair(self) -> None:
        """__free_pages(page, order) right after free_pages(va, order): the
        same free seen twice calibrates sizeof(struct page)."""
        self.counts["calibration_stops"] += 1
        prev, self.prev_free = self.prev_free, None
        page, order_ = self.reg("x0"), self.reg("x1") & 0xFFFFFFFF
        lr = self.reg("x30")
        via = self.symbolise(lr).startswith("free_pages+")
        if prev is not None and prev[1] == order_ and (prev[2] == lr or via):
            self.calibrate(prev[0], page)

    def on_sink(self, fn: str) -> None:
        x0, lr, fp = self.reg("x0"), self.reg("x30"), self.reg("x29")
        if fn == "__free_pages_ok" and self.symbolise(lr).startswith("free_unref_page"):
            self.counts["free_dup"] += 1      # free_unref_page already reported it
            return
        if fn == "free_unref_folios":
            items = self.folio_batch(x0)
        else:
            items = [(x0, self.reg("x1") & 0xFFFFFFFF)]
        w0 = time.monotonic()
        links = self.links()
        ms = (time.monotonic() - w0) * 1000
        self.walk_ms.append(ms)
        caller = self.callers(lr, fp)
        cpu = self.cpu()
        for page, order_ in items:
            pa = self.page_to_pa(page)
            size = self.geo.granule << order_
            linked = self.order.linked_into(links, pa, pa + size)
            mapped = self.mapped_by(pa, pa + size)
            f = self.order.Free(self.next_seq(), self.step, fn, page, pa, order_,
                                self.geo.granule, lr, caller, linked,
                                was_table=pa in self.tables_before
                                or any(pa <= t < pa + size for t in self.tables_before),
                                walk_ms=round(ms, 3), cpu=cpu, mapped_by=mapped)
            self.event(f)
            self.counts["free"] += 1
            for key in [k for k, (_c, link, _by) in self.pending.items()
                        if (link.table_pa < pa + size and pa < link.table_pa + link.span
                            if k[0] == "leaf" else pa <= link.table_pa < pa + size)]:
                del self.pending[key]
        self.update_tlbi()

    def folio_batch(self, batch: int) -> list:
        """``struct folio_batch { unsigned char nr, i; bool drained; struct folio
        *folios[]; }``: (page, order) of each folio (order from the head's
        ``_flags_1`` when PG_head, bit 6 of the flags, is set)."""
        nr = self.read_u64(batch) & 0xFF
        out = []
        for i in range(nr):
            folio = self.read_u64(batch + 8 + 8 * i)
            flags = self.read_u64(folio)
            order_ = self.read_u64(folio + self.sp_size) & 0xFF if flags >> 6 & 1 else 0
            out.append((folio, order_))
        return out

    def mapped_by(self, pa: int, pa_end: int) -> tuple:
        """Watched vmemmap leaves that still map some of ``[pa, pa_end)``."""
        out = []
        codec = self.codec
        for entry_pa, w in self.leaf_watches.items():
            link = w.link
            if not (link.table_pa < pa_end and pa < link.table_pa + link.span):
                continue
            d = int.from_bytes(self.mem.read(entry_pa, 8), "little")
            if d & 1 and codec.addr(d) == link.table_pa:
                out.append(link)
        return tuple(out)

    def calibrate(self, pa: int, page: int) -> None:
        """free_pages(va) called __free_pages(page): sizeof(struct page) from
        page = VMEMMAP_END - size * lin_pages + (pfn - memstart_pfn) * size;
        then the calibration breakpoints go."""
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
                if self.roles.get(bp.number) in CALIBRATION:
                    bp.enabled = False

    # -- the end
    def finish(self, kind: str = "detached", why: str = "") -> None:
        self.cleanup()
        attached = time.monotonic() - getattr(self, "started", time.monotonic())
        self.emit({"kind": kind, **({"message": why} if why else {}), "stats": {
            "stops": self.stops, "frees": self.counts["free"],
            "free_dups": self.counts["free_dup"], "clears": self.counts["clear"],
            "tlbi_stops": self.counts["tlbi"], "dsb_stops": self.counts["dsb"],
            "watch_other": self.counts["watch_other"],
            "other_stops": self.counts["other"], "tlbi_toggles": self.tlbi_toggles,
            "calibration_stops": self.counts["calibration_stops"],
            "late_watch_stops": self.counts["late"],
            "watchpoints": len(self.watches) + self.counts["clear"],
            "leaf_watchpoints": len(self.leaf_watches),
            "remove_calls": self.windows,
            "tlbi_sites": len(self.tlbi_bps), "pending_unflushed": len(self.pending),
            "incomplete": list(self.incomplete),
            "handler_s": round(self.stop_s, 3), "recording_s": round(attached, 3),
            "walk_ms_mean": round(sum(self.walk_ms) / len(self.walk_ms), 3)
            if self.walk_ms else 0.0,
            "walk_ms_max": round(max(self.walk_ms), 3) if self.walk_ms else 0.0,
            "struct_page_size": self.sp_size, "struct_page_size_from": self.sp_from,
            # the client's own figures (rsp_gdb: stores carried out or stepped)
            **(self.gdb.client_stats() if hasattr(self.gdb, "client_stats") else {})}})

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
