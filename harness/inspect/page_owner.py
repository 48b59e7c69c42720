"""Parse page_owner's aggregated stacks and diff them across a hot-remove.

``/sys/kernel/debug/page_owner_stacks/show_stacks`` (6.12, ``mm/page_owner.c``
``stack_print``; needs ``CONFIG_PAGE_OWNER`` and the boot parameter
``page_owner=on``) lists every allocation stack that still holds pages::

     post_alloc_hook+0x1e0/0x210
     get_page_from_freelist+0x8d0/0x1330
     __alloc_pages_noprof+0x184/0x11f0
     vmemmap_alloc_block+0x9c/0x138
     ...
    nr_base_pages: 512
    <blank line>

One record per stack-depot entry (at most 16 frames, each ``%pS``: ``func+off/len``
with an optional `` [module]``, or a bare address). ``nr_base_pages`` counts the
base pages allocated from that exact stack and not yet freed (page_owner adds
``1 << order`` on allocation and subtracts it on free); a stack at 0 is not
printed. Two records with the same frames are the same depot entry, so a stack's
frames are its identity within one boot.

The diff: a stack on a hotplug allocation path (:func:`category`) that holds
more pages after the remove than before the add allocated them during the
add and never gave them back. Counts before the add are not zero in general
(boot-time tables, earlier cycles), so only the growth counts.

Pure: no guest, no QEMU; the guest-side read is ``harness.inspect.leakcheck.collect``.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Optional

from harness.inspect import ParseError

SHOW_STACKS = "/sys/kernel/debug/page_owner_stacks/show_stacks"
COUNT_THRESHOLD = "/sys/kernel/debug/page_owner_stacks/count_threshold"
# Before 6.10 (Debian 12's 6.1) there is no show_stacks: page_owner's own file
# lists one record per live allocation (its head page), which
# :func:`from_records` sums per stack into show_stacks' form.
RECORDS = "/sys/kernel/debug/page_owner"
_RECORD = re.compile(r"^Page allocated via order (\d+),")

_COUNT = re.compile(r"^nr_base_pages: (-?\d+)$")

# Categories: a stack belongs to one when any of its functions is listed
# (names without ".isra.0"-style suffixes). Checked in this order.
VMEMMAP_FUNCS = frozenset({
    # the struct pages of hot-added sections and the vmemmap tables above them
    "vmemmap_alloc_block", "vmemmap_alloc_block_buf", "vmemmap_alloc_block_zero",
    "vmemmap_populate", "vmemmap_populate_hugepages", "vmemmap_populate_basepages",
    "vmemmap_populate_range", "vmemmap_populate_address",
    "vmemmap_pte_populate", "vmemmap_pmd_populate", "vmemmap_pud_populate",
    "vmemmap_p4d_populate", "vmemmap_pgd_populate",
    "__populate_section_memmap", "populate_section_memmap",
})
PGTABLE_FUNCS = frozenset({
    # arm64 arch/arm64/mm/mmu.c: linear-map tables of hot-added memory
    # (arch_add_memory -> __create_pgd_mapping -> alloc_init_* -> pgd_pgtable_alloc)
    "__pgd_pgtable_alloc", "pgd_pgtable_alloc",
    "alloc_init_p4d", "alloc_init_pud", "alloc_init_cont_pmd", "init_pmd",
    "alloc_init_cont_pte", "init_pte",
    "__create_pgd_mapping", "__create_pgd_mapping_locked",
    # kallsyms names __create_pgd_mapping_locked by this alias of it (6.12)
    "create_kpti_ng_temp_pgd",
})
CATEGORIES = (("vmemmap", VMEMMAP_FUNCS), ("linear-map tables", PGTABLE_FUNCS))
# A slab page is shared by every object in it: its owner stack is whoever
# happened to need a new slab, not a hotplug allocation. Never judged.
SLAB_FUNCS = frozenset({"allocate_slab", "new_slab", "___slab_alloc", "__slab_alloc",
                        "kmalloc_large_node_noprof", "__kmalloc_large_node_noprof"})
# The page allocator's own frames: skipped when a stack is shown.
ALLOCATOR_FUNCS = frozenset({
    "post_alloc_hook", "prep_new_page", "get_page_from_freelist",
    "__alloc_pages_noprof", "__alloc_pages", "alloc_pages_noprof", "alloc_pages",
    "alloc_pages_mpol_noprof", "alloc_pages_mpol", "__alloc_pages_node_noprof",
    "alloc_pages_node_noprof", "__get_free_pages_noprof", "__get_free_pages",
    "get_free_pages_noprof",
    "get_zeroed_page_noprof", "pagetable_alloc_noprof", "__alloc_frozen_pages_noprof",
    "__folio_alloc_noprof", "__alloc_pages_slowpath", "__alloc_pages_direct_compact",
    "alloc_pages_exact_nid_noprof", "alloc_pages_exact_noprof",
})
# Hotplug paths in general: a stack that grew and passes through one of these
# but is in no category is shown as context, never failed on.
HOTPLUG_FUNCS = frozenset({
    "arch_add_memory", "add_memory_resource", "__add_memory", "add_memory",
    "add_memory_driver_managed", "__add_pages", "sparse_add_section",
    "section_activate", "online_pages", "online_page_ext", "memory_block_online",
    "offline_pages", "memory_block_offline", "add_memory_block",
    "create_memory_block_devices", "acpi_memory_device_add", "probe_store",
    "virtio_mem_add_memory",
})


def function(frame: str) -> str:
    """``vmemmap_populate+0x84/0xb0 [mod]`` -> ``vmemmap_populate`` (suffixes such
    as ``.isra.0`` dropped); a bare address stays as it is."""
    name = frame.strip().split("+", 1)[0].split(" ", 1)[0]
    if name.startswith("0x"):
        return name
    return name.split(".", 1)[0] or name


@dataclass(frozen=True)
class Stack:
    frames: tuple            # ("func+0xoff/0xlen", ...) innermost first
    nr_base_pages: int

    @property
    def functions(self) -> tuple:
        return tuple(function(f) for f in self.frames)

    def top(self, n: int = 8) -> tuple:
        """The first ``n`` frames after the page allocator's own."""
        funcs = self.functions
        i = 0
        while i < len(funcs) and funcs[i] in ALLOCATOR_FUNCS:
            i += 1
        return self.frames[i:i + n]


@dataclass(frozen=True)
class Snapshot:
    stacks: tuple            # Stack, in the kernel's order (newest first)

    @property
    def total_pages(self) -> int:
        return sum(s.nr_base_pages for s in self.stacks)

    def counts(self) -> dict:
        """frames -> pages (a repeated record, which the kernel never prints, adds up)."""
        out: dict = {}
        for s in self.stacks:
            out[s.frames] = out.get(s.frames, 0) + s.nr_base_pages
        return out

    def hotplug(self) -> Snapshot:
        """Only the stacks :func:`diff` and :func:`grown` look at: what a report
        needs to keep to re-judge (a few records instead of thousands)."""
        return Snapshot(tuple(s for s in self.stacks
                              if category(s) or _on_hotplug_path(s)))

    def to_dict(self) -> dict:
        return {"stacks": [{"frames": list(s.frames), "nr_base_pages": s.nr_base_pages}
                           for s in self.stacks]}

    @classmethod
    def from_dict(cls, d: dict) -> Snapshot:
        return cls(tuple(Stack(tuple(s["frames"]), int(s["nr_base_pages"]))
                         for s in d.get("stacks", ())))


def parse(text: str) -> Snapshot:
    """``show_stacks`` text -> Snapshot. Frames without a closing
    ``nr_base_pages:`` line (a truncated read) are a ParseError."""
    stacks, frames = [], []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            if frames:
                raise ParseError(f"show_stacks line {number}: blank line inside a "
                                 f"stack (no nr_base_pages after {frames[-1]!r})")
            continue
        m = _COUNT.match(line)
        if m:
            if not frames:
                raise ParseError(f"show_stacks line {number}: nr_base_pages without "
                                 f"a stack")
            stacks.append(Stack(tuple(frames), int(m.group(1))))
            frames = []
            continue
        if not raw.startswith(" "):
            raise ParseError(f"show_stacks line {number}: not a stack frame "
                             f"(' func+off/len') nor 'nr_base_pages: N': {raw[:120]!r}")
        frames.append(line)
    if frames:
        raise ParseError(f"show_stacks ends inside a stack of {len(frames)} frames "
                         f"(truncated read?), last {frames[-1]!r}")
    return Snapshot(tuple(stacks))


def from_records(text: str) -> str:
    """``/sys/kernel/debug/page_owner`` (6.1, ``print_page_owner``: a record per
    live allocation, ``Page allocated via order N, ...``, a ``PFN`` line, maybe a
    migration line, the stack as `` func+off/len`` lines, a blank line) ->
    show_stacks text: each stack once, ``nr_base_pages`` the sum of ``1 << order``
    over its records, in order of first appearance."""
    counts: dict = {}
    order, frames = -1, []
    for raw in text.splitlines() + [""]:
        m = _RECORD.match(raw)
        if m or not raw.strip():
            if order >= 0 and frames:
                key = tuple(frames)
                counts[key] = counts.get(key, 0) + (1 << order)
            order, frames = (int(m.group(1)) if m else -1), []
        elif raw.startswith(" ") and order >= 0:
            frames.append(raw.strip())
    return render(Snapshot(tuple(Stack(f, n) for f, n in counts.items())))


def render(snap: Snapshot) -> str:
    """Snapshot -> show_stacks text (what :func:`parse` reads back)."""
    return "".join("".join(f" {f}\n" for f in s.frames)
                   + f"nr_base_pages: {s.nr_base_pages}\n\n" for s in snap.stacks)


def category(stack: Stack) -> Optional[str]:
    """``"vmemmap"``, ``"linear-map tables"`` or None (slab pages: None)."""
    funcs = set(stack.functions)
    if funcs & SLAB_FUNCS:
        return None
    for name, wanted in CATEGORIES:
        if funcs & wanted:
            return name
    return None


def _on_hotplug_path(stack: Stack) -> bool:
    return bool(set(stack.functions) & HOTPLUG_FUNCS)


@dataclass(frozen=True)
class Growth:
    """A stack that holds more pages in ``after`` than in ``before``."""
    category: Optional[str]  # None: on a hotplug path but not judged (context)
    frames: tuple
    before: int
    after: int

    @property
    def pages(self) -> int:
        return self.after - self.before

    def stack(self) -> Stack:
        return Stack(self.frames, self.after)


def grown(before: Snapshot, after: Snapshot) -> list:
    """Every stack on a hotplug path (judged or context) that grew, largest first."""
    was, out = before.counts(), []
    for frames, pages in after.counts().items():
        stack = Stack(frames, pages)
        cat = category(stack)
        if cat is None and not _on_hotplug_path(stack):
            continue
        if pages > was.get(frames, 0):
            out.append(Growth(cat, frames, was.get(frames, 0), pages))
    return sorted(out, key=lambda g: (-g.pages, g.frames))


def diff(before: Snapshot, after: Snapshot) -> list:
    """The leaks: stacks in a judged category (vmemmap population, linear-map
    table allocation) holding more pages after the remove than before the add."""
    return [g for g in grown(before, after) if g.category is not None]


def describe(growth: Iterable, page_kb: int = 4, frames: int = 8) -> list:
    """Evidence lines: per stack its growth and top frames."""
    lines = []
    for g in growth:
        what = g.category or "hotplug path (context, not judged)"
        lines.append(f"{what}: +{g.pages} pages ({g.pages * page_kb} kB): "
                     f"{g.before} before, {g.after} after, allocated from")
        lines += [f"    {f}" for f in g.stack().top(frames)]
    return lines
