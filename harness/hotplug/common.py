"""What every hotplug method shares: capturing a Phase, timing steps, the
host-side table walk, and turning a method's course into a MethodRun."""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional, Union

from .. import leakcheck
from ..build import KernelArtifacts
from ..errors import HarnessError
from ..inspect import ptdump, sysfs
from ..inspect import walker as walk_mod
from ..records import (  # noqa: F401  (REMOVAL_CHECKS: methods import it from here)
    REMOVAL_CHECKS,
    BootmemAttempt,
    Geometry,
    KselftestResult,
    Leaf,
    OrderRecord,
    Phase,
    Removal,
    Step,
    WalkSummary,
)
from ..session import Guest

PTDUMP = "/sys/kernel/debug/kernel_page_tables"
MEMROOT = "/sys/devices/system/memory"
REGIONS = ("Linear Mapping", "vmemmap")
# "on": the flush order is followed on every removal until this many cleared
# entries were followed (block-mapped removals clear 1-4 entries each, cheap; a
# page-mapped one clears 64, ~3 s of watchpoints); "full": on every removal
FLUSH_CLEARS_ENOUGH = 16
STRUCT_PAGE_SIZE = 64    # only when the kernel's layout does not say (see below)
RAM_BASE = 0x40000000   # QEMU virt


@dataclass
class Recorder:
    """Collects steps and phases while a method runs (mutable on purpose:
    whatever was recorded survives a failure, for the report)."""
    guest: Guest
    art: KernelArtifacts
    walk: bool = True
    steps: list = field(default_factory=list)
    phases: list = field(default_factory=list)
    removals: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    geometry: Geometry = field(default_factory=Geometry.unknown)  # at the first phase
    backings: list = field(default_factory=list)   # (guest_pa, path) for the walker
    bootmem: Optional[BootmemAttempt] = None
    step_lines: list = field(default_factory=list)  # (console line no, step)
    progress: Optional[Callable] = None   # called with one line per step
    # the method's mem-on-off-test.sh result; a dict (hotplug/kselftest.py) is
    # read as KselftestResult when the run is recorded (runner._method_run)
    kselftest: Union[KselftestResult, dict, None] = None
    # the free-time ordering checks around every removal: "on", "full" or "off"
    # (see removal_step for what "on" leaves out)
    order_check: str = "off"
    order: list[OrderRecord] = field(default_factory=list)   # one per watched removal
    _walk_geo: Optional[walk_mod.Geometry] = None
    _root_pa: Optional[int] = None

    def __post_init__(self):
        spec = self.guest.machine.spec
        self.backings.append((RAM_BASE, spec.ram_path))

    # -- steps ---------------------------------------------------------------
    def step(self, name: str, action: Callable, transport: Optional[str] = None):
        """Run ``action()`` as a named step; record its duration either way."""
        self.step_lines.append((self.guest.console_line(), name))
        self.guest.mark(name)
        start = time.monotonic()
        ok, detail = False, ""
        try:
            result = action()
            ok = True
            detail = _detail(result)
            return result
        except HarnessError as e:
            if not e.step:
                e.step = name
            detail = e.message
            raise
        finally:
            step = Step(name, round(time.monotonic() - start, 3),
                        transport or self.guest.transport.name, ok, detail)
            self.steps.append(step)
            if self.progress:
                self.progress(f"  {'ok ' if ok else 'ERR'} {step.seconds:6.2f}s "
                              f"{step.transport:6s} {name}")

    def removal_step(self, name: str, pa_start: int, pa_end: int, action: Callable,
                     transport: Optional[str] = None):
        """A step that removes ``[pa_start, pa_end)``. With the ordering checks on,
        gdb is attached to QEMU's gdbstub for this step only (harness.gdb): every
        page the kernel frees meanwhile is checked against a live walk of its
        tables, and every cleared table entry must see a covering TLB
        invalidation before its table is freed. The events go to ``self.order``."""
        machine = self.guest.machine
        if self.order_check == "off":
            return self.step(name, action, transport)
        if not machine.spec.gdb_port or self._root_pa is None or self._walk_geo is None:
            why = ("QEMU has no gdbstub" if not machine.spec.gdb_port
                   else "the kernel's tables could not be located")
            self.order.append(OrderRecord(name, pa_start, pa_end, False, (), {},
                                          f"not watched: {why}"))
            return self.step(name, action, transport)
        from .. import gdb, progress
        flush = self.order_check == "full" or self._flush_clears() < FLUSH_CLEARS_ENOUGH
        seen = sum(1 for r in self.order if r.step == name)   # --cycles repeats
        spec = gdb.GdbSpec.for_removal(
            self.art.vmlinux, port=machine.spec.gdb_port, out_dir=self.guest.out_dir,
            step=name, occurrence=seen + 1, pa_start=pa_start, pa_end=pa_end,
            backings=self.backings,
            geometry=self._walk_geo, root_pa=self._root_pa,
            vmemmap_start=self.geometry.vmemmap_start, flush_check=flush,
            memstart=self.geometry.memstart, page_offset=self.geometry.page_offset)
        # recorded in place until the step ends (the list keeps its position)
        record = OrderRecord(name, pa_start, pa_end, flush)
        index = len(self.order)
        self.order.append(record)
        held: dict = {}
        try:
            with gdb.attach(spec, progress=progress.detail) as session:
                held["session"] = session
                return self.step(name, action, transport)
        except gdb.GdbError as e:
            record = replace(record, error=e.message)
            self.order[index] = record
            raise
        finally:
            session = held.get("session")
            if session is not None:
                record = replace(record, events=tuple(e.to_dict() for e in session.events),
                                 stats=dict(session.stats))
                self.order[index] = record
                self._order_progress(record)

    def _flush_clears(self) -> int:
        """Table entries whose flush order this run has already followed."""
        return sum(1 for r in self.order if r.flush_check
                   for e in r.events if e.get("kind") == "clear")

    def _order_progress(self, record: OrderRecord) -> None:
        if not self.progress:
            return
        from collections import Counter
        kinds = Counter(e.get("kind", "?") for e in record.events)
        seen = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "no stops"
        self.progress(f"  gdb  {record.stats.get('attached_s', 0):6.2f}s gdb    "
                      f"{record.step}: {seen}"
                      f"{' (flush order watched)' if record.flush_check else ''}")

    def sh(self, command: str, deadline: float = 30.0, blame=None) -> str:
        """A guest command that must succeed; returns stdout. ``blame="kernel"``
        for hotplug operations the kernel must carry out."""
        return self.guest.check(command, deadline, blame=blame)

    # -- phases --------------------------------------------------------------
    def phase(self, name: str, note: str = "", leak: bool = False) -> Phase:
        """Inspect the guest now. ``leak``: also take page_owner's hotplug-path
        allocation stacks (harness.leakcheck), for the leak check across cycles."""
        start = time.monotonic()
        text = self.sh(sysfs.MEMORY_BLOCKS_CMD)
        blocks = sysfs.parse_memory_blocks(text)
        meminfo = sysfs.parse_meminfo(self.sh("cat /proc/meminfo"))
        iomem = self.sh("cat /proc/iomem")
        ram = tuple((start, end) for start, end in sysfs.system_ram(iomem))
        dump_text = self.sh(f"cat {PTDUMP}", 60)
        snap = ptdump.parse(dump_text)
        self._save(f"ptdump-{name}.txt", dump_text)
        self._learn_geometry(snap, iomem)
        walks = self._walk(snap) if self.walk else ()
        owners = self._page_owner(name) if leak else None
        phase = Phase(name, blocks, meminfo, ram, snap, walks, note, owners)
        self.phases.append(phase)
        step = Step(f"inspect {name}", round(time.monotonic() - start, 3),
                    self.guest.transport.name)
        self.steps.append(step)
        if self.progress:
            walked = f", walker {sum(w.seconds for w in walks) * 1000:.0f} ms" if walks else ""
            self.progress(f"  ok  {step.seconds:6.2f}s {step.transport:6s} {step.name} "
                          f"({len(blocks.blocks)} blocks, MemTotal "
                          f"{meminfo.get('MemTotal', 0)} kB{walked})")
        return phase

    def _page_owner(self, name: str) -> dict:
        """Only the hotplug-path stacks are kept (a few of ~1-2 thousand)."""
        text = leakcheck.collect(self)
        if text is None:
            return {"unavailable": leakcheck.NOT_ENABLED}
        return leakcheck.snapshot(text).to_dict()

    def removed(self, phase: str, pa_start: int, pa_end: int, baseline: str = "") -> None:
        self.removals.append(Removal(phase, pa_start, pa_end, baseline))

    def _save(self, name: str, text: str) -> None:
        folder = self.guest.out_dir
        (folder / name).write_text(text)

    # -- geometry and the host-side walk ---------------------------------------
    def _learn_geometry(self, snap: ptdump.Snapshot, iomem: str) -> None:
        if self.geometry.learned:
            return
        lay = self.art.layout            # learned once per kernel, at the build stage
        geo = lay.geometry
        self._walk_geo = geo
        linear = _region_span(snap, "Linear Mapping")
        vmemmap = _region_span(snap, "vmemmap")
        self.geometry = Geometry(
            granule=geo.granule, va_bits=geo.va_bits, levels=geo.levels,
            page_offset=linear[0] if linear else None,
            linear_end=linear[1] if linear else None,
            vmemmap_start=vmemmap[0] if vmemmap else None,
            vmemmap_end=vmemmap[1] if vmemmap else None,
            linear_offset=None, memstart=None,
            **struct_page_geometry(linear, vmemmap, geo.granule))
        try:
            text = lay.symbol("_text")
            code = sysfs.kernel_code(iomem)
            self._root_pa = walk_mod.kimage_pa(lay.symbol("swapper_pg_dir"), text, code[0])
            memstart_pa = walk_mod.kimage_pa(lay.symbol("memstart_addr"), text, code[0])
        except HarnessError as e:
            self.notes.append(f"host-side walker disabled, linear-map offset unknown: "
                              f"{e.message}")
            self.walk = False
            return
        self._learn_memstart(memstart_pa)

    def _learn_memstart(self, memstart_pa: int) -> None:
        """``memstart_addr`` (PHYS_OFFSET) read from guest RAM: the linear map is
        ``va = pa - memstart + PAGE_OFFSET``. Known without the walker, so the
        ptdump-only checks can judge with ``--no-walker`` too."""
        try:
            with walk_mod.FileBackedPhysMem(self.backings[:1]) as mem:
                memstart = int.from_bytes(mem.read(memstart_pa, 8), "little", signed=True)
        except (HarnessError, OSError) as e:
            self.notes.append(f"memstart_addr unreadable at PA {memstart_pa:#x}: {e}")
            return
        page_offset = self.geometry.page_offset
        if page_offset is None:
            page_offset = self._walk_geo.va_base
        self.geometry = replace(self.geometry, page_offset=page_offset, memstart=memstart,
                                linear_offset=page_offset - memstart)

    def _walk(self, snap: ptdump.Snapshot) -> tuple:
        """Pause the guest, walk each region from the shared RAM files, resume."""
        machine = self.guest.machine
        summaries = []
        machine.qmp_cmd("stop")
        try:
            with walk_mod.FileBackedPhysMem(self.backings) as mem:
                for region in REGIONS:
                    span = _region_span(snap, region)
                    if span is None:
                        continue
                    start = time.monotonic()
                    result = walk_mod.walk(mem, self._walk_geo, self._root_pa, *span)
                    summaries.append(_summarise(region, result,
                                                time.monotonic() - start))
        finally:
            machine.qmp_cmd("cont")
        self._learn_linear_offset(summaries)
        return tuple(summaries)

    def _learn_linear_offset(self, summaries) -> None:
        known = self.geometry.linear_offset
        first = next((s.leaves[0] for s in summaries
                      if s.region == "Linear Mapping" and s.leaves), None)
        if first is None:
            return
        va, pa = first.va_start, first.pa
        if known is not None:
            if va - pa != known and not any("linear offset" in n for n in self.notes):
                self.notes.append(f"linear offset from memstart_addr {known:#x} "
                                  f"differs from the walker's first leaf "
                                  f"(VA {va:#x} -> PA {pa:#x})")
            return
        page_offset = self.geometry.page_offset
        self.geometry = replace(
            self.geometry, linear_offset=va - pa,
            memstart=self.geometry.memstart if page_offset is None
            else page_offset - (va - pa))


def _region_span(snap: ptdump.Snapshot, name: str):
    region = snap.regions.get(name)
    if region is None or not region.entries:
        return None
    return region.entries[0].start, region.entries[-1].end


def _summarise(region: str, result, seconds: float) -> WalkSummary:
    leaves = tuple(Leaf(x.va_start, x.va_end, x.pa, x.level) for x in result.leaves)
    tables = {level: len(pages) for level, pages in result.tables.items()}
    empty = sum(len(p) for p in result.empty_tables.values())
    return WalkSummary(region, result.va_start, result.va_end, leaves, tables, empty,
                       round(seconds, 4), tuple(result.bad))


def _detail(result: Any) -> str:
    if result is None:
        return ""
    if hasattr(result, "command"):
        return f"$ {result.command}"
    if hasattr(result, "to_dict"):     # a record: as its saved dict (as before)
        result = result.to_dict()
    return str(result)[:200]


def wait_for(predicate: Callable[[], bool], deadline: float, what: str,
             interval: float = 0.2):
    """Poll ``predicate`` until true; HarnessError (infra) naming ``what``."""
    end = time.monotonic() + deadline
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= end:
            raise HarnessError(f"timed out after {deadline:.0f}s waiting for {what}",
                               step="wait", blame="infra")
        time.sleep(interval)


def struct_page_geometry(linear, vmemmap, granule: int) -> dict:
    """``sizeof(struct page)`` as the kernel lays out its vmemmap: arm64 sizes
    the vmemmap region as the linear region >> (PAGE_SHIFT - STRUCT_PAGE_MAX_SHIFT)
    (arch/arm64/include/asm/memory.h), and ptdump prints both regions' bounds.
    STRUCT_PAGE_MAX_SHIFT is order_base_2(sizeof(struct page)): exact for the
    64-byte struct page of these configs (gdb's order checks calibrate the exact
    value from a free and say when it differs)."""
    if linear and vmemmap:
        ratio, rem = divmod(linear[1] - linear[0], vmemmap[1] - vmemmap[0])
        if rem == 0 and ratio > 0 and ratio & (ratio - 1) == 0 and granule % ratio == 0:
            return {"struct_page_size": granule // ratio,
                    "struct_page_size_from": "ptdump: Linear Mapping / vmemmap region sizes"}
    return {"struct_page_size": STRUCT_PAGE_SIZE,
            "struct_page_size_from": f"assumed {STRUCT_PAGE_SIZE} (ptdump shows no usable "
                                     "Linear Mapping and vmemmap bounds)"}


def check_section_size(rec: Recorder, want_mb: int) -> int:
    """block_size_bytes of the booted kernel; an error if the layout chosen at
    boot (section_mb) assumed another size."""
    bs = block_size(rec)
    if bs != want_mb << 20:
        raise HarnessError(f"the memory layout was sized for {want_mb} MiB blocks, "
                           f"but the kernel's block_size_bytes is {bs >> 20} MiB "
                           "(harness.layout.section_mb is out of date for "
                           "this kernel)", step="layout")
    return bs


def block_size(rec: Recorder) -> int:
    return int(rec.sh(f"cat {MEMROOT}/block_size_bytes").strip(), 16)


def blocks_in(rec: Recorder, pa_start: int, pa_end: int):
    table = sysfs.parse_memory_blocks(rec.sh(sysfs.MEMORY_BLOCKS_CMD))
    return table.in_range(pa_start, pa_end)


def set_state(rec: Recorder, blocks, state: str) -> None:
    """Write ``state`` to each block's state file (all must succeed)."""
    for b in blocks:
        rec.sh(f"echo {state} > {MEMROOT}/memory{b.index}/state", 120, blame="kernel")


BOOTMEM_MOVABLE = "movablecore=256M"   # kernel parameter: the top 256 MiB of boot
# memory in ZONE_MOVABLE, so that offlining one of its blocks reaches arm64's
# boot-memory notifier instead of failing earlier on unmovable pages
BOOTMEM_RULE_TEXT = "offlining attempted"   # "Boot memory [%lx %lx] offlining attempted"


def bootmem_candidate(phase: Phase, size: int):
    """(block, hole_free): the lowest online boot block in ZONE_MOVABLE that lies
    inside one System RAM range (no firmware holes); else the last online block.
    Offlining a block with holes or unmovable pages fails whatever arm64's rule
    says, so only the first kind tests the rule."""
    online = [b for b in phase.blocks.blocks if b.state == "online"]
    ram = [(s, e + 1 if e % 2 else e) for s, e in phase.system_ram]
    def hole_free(b) -> bool:
        return any(s <= b.phys_start(size) and b.phys_end(size) <= e for s, e in ram)
    for block in online:
        if "Movable" in block.valid_zones and hole_free(block):
            return block, True
    return online[-1], hole_free(online[-1])


def try_bootmem_offline(rec: Recorder, boot_phase: Phase) -> BootmemAttempt:
    """Try to offline a boot block that only arm64's rule can protect (see
    :func:`bootmem_candidate`); record the console lines printed meanwhile, so
    the check can tell the rule's refusal from any other."""
    size = boot_phase.blocks.block_size
    block, hole_free = bootmem_candidate(boot_phase, size)
    lines: list = []
    reader, listener = rec.guest.reader, lines.append
    reader.listeners.append(listener)
    try:
        res = rec.guest.run(f"echo offline > {MEMROOT}/memory{block.index}/state", 60)
        after = rec.sh(f"cat {MEMROOT}/memory{block.index}/state").strip()
        end = time.monotonic() + 2.0     # the console may lag the shell
        while time.monotonic() < end and not any(BOOTMEM_RULE_TEXT in l for l in lines):
            if res.exit_code == 0:
                break
            time.sleep(0.05)
    finally:
        reader.listeners.remove(listener)
    said = [l for l in lines if "Boot memory" in l or "offlin" in l.lower()]
    return BootmemAttempt(block=block.index, exit_code=res.exit_code,
                          output=(res.stdout + res.stderr).strip()[-500:], state_after=after,
                          zones=tuple(block.valid_zones), hole_free=hole_free,
                          range=(block.phys_start(size), block.phys_end(size)),
                          console=tuple(said[-20:]))


def memory_device(machine, dev_id: str) -> dict:
    """The ``data`` of a QMP query-memory-devices entry (pc-dimm, virtio-mem)."""
    for dev in machine.qmp_cmd("query-memory-devices"):
        data = dev.get("data", {})
        if data.get("id") == dev_id:
            return data
    raise HarnessError(f"{dev_id} is not in QMP query-memory-devices", step="qmp",
                       blame="infra")
