"""Inspecting the guest at one point of a method (the phase half of
``common.Recorder``).

Takes a booted ``Guest`` (its shell, its QMP to pause and resume it, its RAM
files and output folder) and the kernel's artifacts (``art.layout``: the
translation geometry and the symbols learned at the build stage). Gives the
:class:`PhaseCollector`'s ``phases`` (``Phase``: memory blocks, meminfo,
System RAM, the ptdump ``Snapshot``, the host-side walks, page_owner), the
kernel's ``Geometry`` as learned at the first phase (region bounds from ptdump,
``memstart_addr`` from guest RAM, the linear offset from the walk), the
RAM-file ``backings`` the walker reads and ``notes`` on what could not be
observed. Each inspection's time goes, as a ``Step``, to the ``record``
callback it is given (the step runner's ``record``).
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Callable, Optional

from harness import faults
from harness.drive.steps import doing
from harness.errors import HarnessError
from harness.inspect import leakcheck, ptdump, sysfs
from harness.inspect import walker as walk_mod
from harness.kernel.kernel import KernelArtifacts
from harness.kernel.layout import Geometry as WalkGeometry
from harness.kernel.layout import KernelLayout
from harness.records import Geometry, Leaf, Phase, Step, WalkSummary
from harness.session import Guest

PTDUMP = "/sys/kernel/debug/kernel_page_tables"
REGIONS = ("Linear Mapping", "vmemmap")
STRUCT_PAGE_SIZE = 64    # only when the kernel's layout does not say (see below)
RAM_BASE = 0x40000000   # QEMU virt
# what a phase reads, in one guest command (one round trip, not four): each
# part's output follows a marker line; ``&&`` makes any failing part fail it
SECTION = "@@hh-inspect "
INSPECT_PARTS = (("blocks", sysfs.MEMORY_BLOCKS_CMD), ("meminfo", "cat /proc/meminfo"),
                 ("iomem", "cat /proc/iomem"), ("ptdump", f"cat {PTDUMP}"))
INSPECT_CMD = " && ".join(f"echo '{SECTION}{name}' && {cmd}" for name, cmd in INSPECT_PARTS)


def split_sections(text: str) -> dict[str, str]:
    """INSPECT_CMD's output -> {part: its output, byte for byte}; an error
    naming the parts that are missing."""
    parts: dict[str, list[str]] = {}
    current: Optional[list[str]] = None
    for line in text.splitlines(keepends=True):
        if line.startswith(SECTION):
            current = parts.setdefault(line[len(SECTION):].strip(), [])
        elif current is not None:
            current.append(line)
    missing = [name for name, _ in INSPECT_PARTS if name not in parts]
    if missing:
        raise HarnessError(f"the inspection printed no {', '.join(missing)} section",
                           step="inspect", evidence=text[-2000:])
    return {name: "".join(lines) for name, lines in parts.items()}

Span = tuple[int, int]
RecordStep = Callable[[Step, str], None]   # (inspection step, progress summary)


class PhaseCollector:
    """Takes phases and learns the kernel's geometry at the first (mutable on
    purpose: whatever was recorded survives a failure, for the report)."""

    def __init__(self, guest: Guest, art: KernelArtifacts, walk: bool = True,
                 record: Optional[RecordStep] = None) -> None:
        self.guest = guest
        self.art = art
        self.walk = walk              # the host-side walk; off when it cannot be done
        self.record = record
        self.phases: list[Phase] = []
        self.notes: list[str] = []
        self.geometry: Geometry = Geometry.unknown()   # at the first phase
        # (guest_pa, path) for the walker: boot RAM, then what a method plugs
        self.backings: list[tuple[int, str]] = [(RAM_BASE, guest.machine.spec.ram_path)]
        self._root_pa: Optional[int] = None

    # -- what a watched removal reads (steps.TableView) ----------------------
    @property
    def walk_geometry(self) -> Optional[WalkGeometry]:
        """The walker's translation geometry (the kernel's ``art.layout``; None
        before the first phase)."""
        return self.art.layout.geometry if self.geometry.learned else None

    @property
    def root_pa(self) -> Optional[int]:
        """``swapper_pg_dir``'s PA (None before the first phase or if unknown)."""
        return self._root_pa

    # -- phases --------------------------------------------------------------
    def phase(self, name: str, note: str = "", leak: bool = False) -> Phase:
        """Inspect the guest now. ``leak``: also take page_owner's hotplug-path
        allocation stacks (harness.inspect.leakcheck), for the leak check across cycles."""
        start = time.monotonic()
        out = split_sections(self._sh(INSPECT_CMD, 60))
        blocks = sysfs.parse_memory_blocks(out["blocks"])
        meminfo = sysfs.parse_meminfo(out["meminfo"])
        iomem = out["iomem"]
        ram = tuple((s, e) for s, e in sysfs.system_ram(iomem))
        dump_text = out["ptdump"]
        snap = ptdump.parse(dump_text)
        self.save(f"ptdump-{name}.txt", dump_text)
        self.learn_geometry(snap, iomem)
        walks = self.walk_tables(snap, name) if self.walk else ()
        owners = self.page_owner() if leak else None
        phase = Phase(name, blocks, meminfo, ram, snap, walks, note, owners)
        self.phases.append(phase)
        step = Step(f"inspect {name}", round(time.monotonic() - start, 3),
                    self.guest.transport.name)
        walked = f", walker {sum(w.seconds for w in walks) * 1000:.0f} ms" if walks else ""
        if self.record is not None:
            self.record(step, f"{len(blocks.blocks)} blocks, MemTotal "
                              f"{meminfo.get('MemTotal', 0)} kB{walked}")
        return phase

    def _sh(self, command: str, deadline: float = 30.0) -> str:
        return self.guest.check(command, deadline)

    def page_owner(self) -> dict[str, Any]:
        """Only the hotplug-path stacks are kept (a few of ~1-2 thousand)."""
        text = leakcheck.collect(self)
        if text is None:
            return {"unavailable": leakcheck.NOT_ENABLED}
        found = leakcheck.snapshot(text)       # not None: text is not None
        kept: dict[str, Any] = found.to_dict() if found is not None else {}
        return kept

    def save(self, name: str, text: str) -> None:
        """A file in the guest's output folder (the ptdump of each phase)."""
        (self.guest.out_dir / name).write_text(text)

    # -- geometry and the host-side walk ---------------------------------------
    def learn_geometry(self, snap: ptdump.Snapshot, iomem: str) -> None:
        """The kernel's Geometry, once: the static part from ``art.layout``, the
        region bounds from ptdump, ``swapper_pg_dir``'s and ``memstart_addr``'s
        PA from the kernel image's place in ``/proc/iomem``."""
        if self.geometry.learned:
            return
        lay = self.art.layout            # learned once per kernel, at the build stage
        geo = lay.geometry
        linear = region_span(snap, "Linear Mapping")
        vmemmap = region_span(snap, "vmemmap")
        sizes = struct_page_geometry(linear, vmemmap, geo.granule)
        self.geometry = Geometry(
            granule=geo.granule, va_bits=geo.va_bits, levels=geo.levels,
            page_offset=linear[0] if linear else None,
            linear_end=linear[1] if linear else None,
            vmemmap_start=vmemmap_start(vmemmap, geo.granule, geo.va_bits,
                                        sizes["struct_page_size"]),
            vmemmap_end=vmemmap[1] if vmemmap else None,
            linear_offset=None, memstart=None, **sizes)
        try:
            code = sysfs.kernel_code(iomem)
            text = kernel_code_va(lay, code)
            self._root_pa = walk_mod.kimage_pa(lay.symbol("swapper_pg_dir"), text, code[0])
            memstart_pa = walk_mod.kimage_pa(lay.symbol("memstart_addr"), text, code[0])
        except HarnessError as e:
            self.notes.append(f"host-side walker disabled, linear-map offset unknown: "
                              f"{e.message}")
            self.walk = False
            return
        self.learn_memstart(memstart_pa)

    def learn_memstart(self, memstart_pa: int) -> None:
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
            page_offset = self.art.layout.geometry.va_base
        self.geometry = replace(self.geometry, page_offset=page_offset, memstart=memstart,
                                linear_offset=page_offset - memstart)

    def walk_tables(self, snap: ptdump.Snapshot, phase: str = "") -> tuple[WalkSummary, ...]:
        """Pause the guest, walk each region from the shared RAM files, resume."""
        machine = self.guest.machine
        geo, root = self.walk_geometry, self._root_pa
        assert geo is not None and root is not None, "walk before the geometry"
        with doing(machine, f"in the host-side walk of phase {phase!r} (the guest "
                            "paused over QMP)"):
            summaries = self._walk_paused(machine, snap, geo, root)
        self.learn_linear_offset(summaries)
        return tuple(summaries)

    def _walk_paused(self, machine: Any, snap: ptdump.Snapshot, geo: WalkGeometry,
                     root: int) -> list[WalkSummary]:
        summaries: list[WalkSummary] = []
        machine.qmp_cmd("stop")
        try:
            with walk_mod.FileBackedPhysMem(self.backings) as mem:
                faults.point("walk", self.guest.step, machine=machine)
                for region in REGIONS:
                    span = region_span(snap, region)
                    if span is None:
                        continue
                    start = time.monotonic()
                    result = walk_mod.walk(mem, geo, root, *span)
                    summaries.append(summarise(region, result, time.monotonic() - start))
        finally:
            machine.qmp_cmd("cont")
        return summaries

    def learn_linear_offset(self, summaries: list[WalkSummary]) -> None:
        """The linear offset from the walk's first linear-map leaf: learned
        when ``memstart_addr`` was unreadable, else compared with it (a note)."""
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


def kernel_code_va(lay: KernelLayout, code: tuple[int, int]) -> int:
    """The VA of the symbol ``/proc/iomem``'s "Kernel code" starts at:
    ``__pa_symbol(_text)`` in 6.12, ``__pa_symbol(_stext)`` in 6.1
    (arch/arm64/kernel/setup.c). Both end the range at ``__init_begin``, so its
    length says which; ``_text`` when the symbols cannot tell."""
    length = code[1] - code[0]
    for name in ("_text", "_stext"):
        try:
            if lay.symbol("__init_begin") - lay.symbol(name) == length:
                return lay.symbol(name)
        except HarnessError:
            break
    return lay.symbol("_text")


def region_span(snap: ptdump.Snapshot, name: str) -> Optional[Span]:
    """[first start, last end) of a ptdump region; None if absent or empty."""
    region = snap.regions.get(name)
    if region is None or not region.entries:
        return None
    return region.entries[0].start, region.entries[-1].end


def vmemmap_start(vmemmap: Optional[Span], granule: int, va_bits: Optional[int],
                  struct_page_size: int) -> Optional[int]:
    """VMEMMAP_START as the kernel defines it (arch/arm64/include/asm/memory.h,
    6.1 and 6.12 alike): VMEMMAP_END less one struct page per page of
    ``_PAGE_END(VA_BITS_MIN) - PAGE_OFFSET``, both from VA_BITS (VA_BITS_MIN:
    47 with 16K pages and 48 with others above 48 bits, else VA_BITS); not
    the linear region ptdump shows, which KASAN ends early at its shadow.
    ptdump's region bounds are only as exact as the entries that cross them:
    the end (-1 GiB in 6.12) is a block boundary every walk stops at, the
    start is not: where the vmemmap's first pages are unmapped (a randomised
    linear region moves the struct pages of memory far into it) the region's
    first entry starts at the next table boundary, 1 GiB past VMEMMAP_START
    on 4k-48. The dump never starts a region early, so a value past its first
    entry falls back to that entry."""
    if vmemmap is None:
        return None
    if not va_bits:
        return vmemmap[0]
    va_min = va_bits if va_bits <= 48 else 47 if granule == 16384 else 48
    page_offset = (1 << 64) - (1 << va_bits)
    page_end = (1 << 64) - (1 << (va_min - 1))
    start = vmemmap[1] - (page_end - page_offset) // granule * struct_page_size
    return start if start <= vmemmap[0] else vmemmap[0]


def summarise(region: str, result: walk_mod.WalkResult, seconds: float) -> WalkSummary:
    """A walk's result as the record the checks read."""
    leaves = tuple(Leaf(x.va_start, x.va_end, x.pa, x.level) for x in result.leaves)
    tables = {level: len(pages) for level, pages in result.tables.items()}
    empty = sum(len(p) for p in result.empty_tables.values())
    return WalkSummary(region, result.va_start, result.va_end, leaves, tables, empty,
                       round(seconds, 4), tuple(result.bad))


def struct_page_geometry(linear: Optional[Span], vmemmap: Optional[Span],
                         granule: int) -> dict[str, Any]:
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
