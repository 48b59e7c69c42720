"""Ordering of a hot-remove: stop events and the two free-time checks (pure).

The gdb driver (:mod:`harness.inspect.gdb`) stops the guest at the page allocator's
entry points, at writes to the table entries a removal may clear, and at
``tlbi`` instructions, and records one event per stop. This module holds those
records and judges them; nothing here needs gdb, QEMU or a guest.

Events (frozen dataclasses, ``to_dict``/``from_dict``, ``event_from_dict``):

* :class:`Watch`  - before the removal: one table the removal may free, the
  entry that links it (its VA span and level) and the descriptor's address.
* :class:`Clear`  - a watched entry stopped pointing at its table (write
  watchpoint), with the PC of the writer.
* :class:`Tlbi`   - a TLB invalidation about to execute: op, operand, the VA
  range it invalidates walk-cache entries for (``full`` = everything).
* :class:`Free`   - ``free_pages``/``__free_pages``: freed PA range, order,
  caller, and the table entries that still point into it (live walk of
  ``swapper_pg_dir`` over the guest RAM files, taken at the stop).

Checks return an :class:`OrderVerdict` (a ``records.Verdict`` and
evidence text a reviewer can paste):

* :func:`check_no_table_freed_while_linked` - no freed page is still the
  target of a valid table descriptor.
* :func:`check_tlb_flushed_before_free` - for each watched table that was freed,
  its entry was cleared before the free and a broadcast walk-cache invalidation
  covering the entry's VA span executed between the clear and the free.

Also here: :func:`table_links` (the table-descriptor walk done at each stop,
reading only non-last-level tables) and :func:`decode_tlbi` /
:func:`tlbi_effect` (TLBI encoding and operand decoding).
"""
from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Optional

from harness.errors import Verdict

PASS, FAIL, SKIP, ERROR = Verdict.PASS, Verdict.FAIL, Verdict.SKIP, Verdict.ERROR

_U64 = (1 << 64) - 1

NO_TABLE_FREED_WHILE_LINKED = "no-table-freed-while-linked"
TLB_FLUSHED_BEFORE_FREE = "tlb-flushed-before-free"


def _hex(v: Optional[int]) -> Optional[str]:
    return None if v is None else hex(v)


def _int(v) -> Optional[int]:
    if v is None:
        return None
    return int(v, 0) if isinstance(v, str) else int(v)


# ---------------------------------------------------------------- records

@dataclass(frozen=True)
class Link:
    """A valid table descriptor: the entry at ``entry_pa`` (level ``level``,
    translating ``[va, va + span)``) points at the table page ``table_pa``."""
    table_pa: int
    entry_pa: int
    va: int
    span: int
    level: str

    def to_dict(self) -> dict:
        return {"table_pa": hex(self.table_pa), "entry_pa": hex(self.entry_pa),
                "va": hex(self.va), "span": hex(self.span), "level": self.level}

    @classmethod
    def from_dict(cls, d: dict) -> Link:
        return cls(_int(d["table_pa"]), _int(d["entry_pa"]), _int(d["va"]),
                   _int(d["span"]), d["level"])

    def describe(self) -> str:
        return (f"{self.level} entry for VA {self.va:#x}-{self.va + self.span:#x} "
                f"(descriptor at PA {self.entry_pa:#x})")


@dataclass(frozen=True)
class Watch:
    """A table the removal may free, watched from before the removal."""
    seq: int
    step: str
    link: Link
    entry_va: int            # kernel VA of the descriptor (the watched address)
    kind: str = "watch"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "seq": self.seq, "step": self.step,
                "link": self.link.to_dict(), "entry_va": hex(self.entry_va)}

    @classmethod
    def from_dict(cls, d: dict) -> Watch:
        return cls(d["seq"], d.get("step", ""), Link.from_dict(d["link"]),
                   _int(d["entry_va"]))


@dataclass(frozen=True)
class Clear:
    """The watched entry of ``table_pa`` no longer points at it."""
    seq: int
    step: str
    table_pa: int
    entry_va: int
    old: int
    new: int
    pc: int
    pc_sym: str = ""
    kind: str = "clear"
    # non-empty: what after the clear could not be observed (gdb got control only
    # some instructions after the store and could not tell what ran in between),
    # so a missing flush is "cannot judge", never a FAIL
    late: str = ""

    def to_dict(self) -> dict:
        d = {"kind": self.kind, "seq": self.seq, "step": self.step,
             "table_pa": hex(self.table_pa), "entry_va": hex(self.entry_va),
             "old": hex(self.old), "new": hex(self.new), "pc": hex(self.pc),
             "pc_sym": self.pc_sym}
        if self.late:
            d["late"] = self.late
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Clear:
        return cls(d["seq"], d.get("step", ""), _int(d["table_pa"]), _int(d["entry_va"]),
                   _int(d["old"]), _int(d["new"]), _int(d["pc"]), d.get("pc_sym", ""),
                   late=d.get("late", ""))


@dataclass(frozen=True)
class Tlbi:
    """A ``tlbi`` about to execute at ``pc``. ``lo``/``hi``: the VA range whose
    walk-cache entries it invalidates (``full``: all of them); ``leaf_only``
    for the ``*l*`` forms (last level only: no walk-cache entry for a table);
    ``broadcast`` for the ``is``/``os`` forms."""
    seq: int
    step: str
    pc: int
    op: str
    xt: int
    full: bool
    lo: int
    hi: int
    leaf_only: bool
    broadcast: bool
    pc_sym: str = ""
    kind: str = "tlbi"
    # non-empty: not stopped at, but shown to have executed between a clear's
    # store and a watch stop that came late (harness.inspect.gdb.late_window)
    note: str = ""

    def to_dict(self) -> dict:
        d = {"kind": self.kind, "seq": self.seq, "step": self.step, "pc": hex(self.pc),
             "op": self.op, "xt": hex(self.xt), "full": self.full, "lo": hex(self.lo),
             "hi": hex(self.hi), "leaf_only": self.leaf_only,
             "broadcast": self.broadcast, "pc_sym": self.pc_sym}
        if self.note:
            d["note"] = self.note
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Tlbi:
        return cls(d["seq"], d.get("step", ""), _int(d["pc"]), d["op"], _int(d["xt"]),
                   bool(d["full"]), _int(d["lo"]), _int(d["hi"]), bool(d["leaf_only"]),
                   bool(d["broadcast"]), d.get("pc_sym", ""), note=d.get("note", ""))

    def covers(self, va: int, span: int) -> bool:
        """Does it invalidate walk-cache entries for some VA in ``[va, va+span)``
        on every CPU? (A non-leaf TLBI by VA drops every cached table entry
        used to translate that VA, so one VA inside the entry's span is enough.)"""
        if not self.broadcast:
            return False
        if self.full:
            return True
        return not self.leaf_only and self.lo < va + span and va < self.hi

    def describe(self) -> str:
        what = "all" if self.full else f"VA {self.lo:#x}-{self.hi:#x}"
        at = self.pc_sym or hex(self.pc)
        return f"tlbi {self.op} ({what}) at {at}"


@dataclass(frozen=True)
class Free:
    """A page-allocator free: ``[pa, pa + (page_size << order))``.

    ``linked``: table descriptors that still pointed into the range at the
    stop; ``was_table``: the page was a table in the walk before the removal."""
    seq: int
    step: str
    fn: str                  # free_pages | __free_pages
    arg: int                 # x0 as passed (VA or struct page *)
    pa: int
    order: int
    page_size: int
    lr: int
    caller: str
    linked: tuple = ()       # (Link, ...)
    was_table: bool = False
    walk_ms: float = 0.0
    kind: str = "free"

    @property
    def pa_end(self) -> int:
        return self.pa + (self.page_size << self.order)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "seq": self.seq, "step": self.step, "fn": self.fn,
                "arg": hex(self.arg), "pa": hex(self.pa), "order": self.order,
                "page_size": self.page_size, "lr": hex(self.lr), "caller": self.caller,
                "linked": [l.to_dict() for l in self.linked], "was_table": self.was_table,
                "walk_ms": self.walk_ms}

    @classmethod
    def from_dict(cls, d: dict) -> Free:
        return cls(d["seq"], d.get("step", ""), d["fn"], _int(d["arg"]), _int(d["pa"]),
                   int(d["order"]), int(d.get("page_size", 4096)), _int(d["lr"]),
                   d.get("caller", ""), tuple(Link.from_dict(x) for x in d.get("linked", ())),
                   bool(d.get("was_table", False)), float(d.get("walk_ms", 0.0)))

    def describe(self) -> str:
        return (f"{self.fn}(PA {self.pa:#x}, order {self.order}) from "
                f"{self.caller or hex(self.lr)}")


_KINDS = {"watch": Watch, "clear": Clear, "tlbi": Tlbi, "free": Free}


def event_from_dict(d: dict):
    """One event from its dict; None for other lines (header, stats)."""
    cls = _KINDS.get(d.get("kind"))
    return cls.from_dict(d) if cls else None


def events_from_lines(lines: Iterable[str]) -> list:
    """Events from JSON lines (other kinds of lines are skipped)."""
    import json
    out = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        ev = event_from_dict(json.loads(line))
        if ev is not None:
            out.append(ev)
    return out


@dataclass(frozen=True)
class OrderVerdict:
    check: str
    verdict: Verdict
    evidence: str
    counts: dict = field(default_factory=dict)
    applicable: bool = True    # False: a SKIP that looked and found nothing to judge

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- checks

def check_no_table_freed_while_linked(events: Sequence, step: str = "") -> OrderVerdict:
    """FAIL for every freed page that a valid table descriptor still pointed at."""
    frees = [e for e in events if isinstance(e, Free)]
    where = f" during step {step}" if step else ""
    if not frees:
        return OrderVerdict(NO_TABLE_FREED_WHILE_LINKED, SKIP,
                       f"no free_pages/__free_pages stop was recorded{where}")
    bad = [f for f in frees if f.linked]
    counts = {"frees": len(frees), "linked": len(bad),
              "tables_freed": len({f.pa for f in frees if f.was_table})}
    if not bad:
        return OrderVerdict(NO_TABLE_FREED_WHILE_LINKED, PASS,
                       f"{len(frees)} frees{where} ({counts['tables_freed']} of them "
                       f"table pages): none was still linked from a live table entry",
                       counts)
    lines = [f"{len(bad)} of {len(frees)} frees{where} were still linked from a live "
             f"table entry:"]
    for f in bad:
        for link in f.linked:
            lines.append(f"{f.describe()}: still linked from {link.level} entry at VA "
                         f"{link.va:#x} (level {_hw_level(link)}) during step "
                         f"{f.step or step or '?'}")
    return OrderVerdict(NO_TABLE_FREED_WHILE_LINKED, FAIL, "\n".join(_clip(lines)), counts)


def check_tlb_flushed_before_free(events: Sequence, step: str = "") -> OrderVerdict:
    """For each watched table that was freed: cleared before the free, and a
    covering broadcast invalidation executed between the clear and the free."""
    where = f" during step {step}" if step else ""
    watched = {e.link.table_pa: e for e in events if isinstance(e, Watch)}
    if not watched:
        return OrderVerdict(TLB_FLUSHED_BEFORE_FREE, SKIP,
                       f"no table entry was watched{where} (none in the removed range)",
                       applicable=False)
    cleared: dict[int, Clear] = {}
    flushed: dict[int, Tlbi] = {}
    freed_ok, problems, unobserved = [], [], []
    done: set = set()
    for e in events:
        if isinstance(e, Clear) and e.table_pa in watched and e.table_pa not in cleared:
            cleared[e.table_pa] = e
        elif isinstance(e, Tlbi):
            for pa, c in cleared.items():
                link = watched[pa].link
                if pa not in flushed and e.seq > c.seq and e.covers(link.va, link.span):
                    flushed[pa] = e
        elif isinstance(e, Free):
            for pa in [p for p in watched if e.pa <= p < e.pa_end and p not in done]:
                done.add(pa)               # a later free of the page is a reuse
                link = watched[pa].link
                head = (f"{e.describe()}: table PA {pa:#x} of {link.level} entry at VA "
                        f"{link.va:#x} (level {_hw_level(link)})")
                c = cleared.get(pa)
                if c is None:
                    if e.linked:
                        problems.append(f"{head} freed before its entry was cleared "
                                        f"(no flush can have covered it) during step "
                                        f"{e.step or step or '?'}")
                    else:
                        unobserved.append(f"{head}: entry found clear but its clearing "
                                          f"write was not observed")
                elif pa not in flushed and c.late:
                    unobserved.append(f"{head}: cleared by {c.pc_sym or hex(c.pc)}, "
                                      f"but {c.late}")
                elif pa not in flushed:
                    problems.append(f"{head} cleared by {c.pc_sym or hex(c.pc)}, freed "
                                    f"with no covering TLB invalidation in between "
                                    f"during step {e.step or step or '?'}")
                else:
                    freed_ok.append(pa)
    counts = {"watched": len(watched), "cleared": len(cleared),
              "freed": len(freed_ok) + len(problems) + len(unobserved),
              "flushed_in_time": len(freed_ok), "violations": len(problems),
              "unobserved": len(unobserved)}
    if problems:
        lines = [f"{len(problems)} of {counts['freed']} freed tables{where} were not "
                 f"flushed between the clear of their entry and the free:"] + problems
        return OrderVerdict(TLB_FLUSHED_BEFORE_FREE, FAIL, "\n".join(_clip(lines)), counts)
    if unobserved:
        lines = [f"{len(unobserved)} freed tables{where}: the clearing write or what "
                 f"followed it was not seen: cannot judge"] + unobserved
        return OrderVerdict(TLB_FLUSHED_BEFORE_FREE, ERROR, "\n".join(_clip(lines)), counts)
    if not freed_ok:
        return OrderVerdict(TLB_FLUSHED_BEFORE_FREE, SKIP,
                       f"{len(watched)} tables watched{where}, none was freed", counts,
                       applicable=False)
    ops = sorted({flushed[p].op for p in freed_ok})
    return OrderVerdict(TLB_FLUSHED_BEFORE_FREE, PASS,
                   f"{len(freed_ok)} tables freed{where}: each entry cleared, then a "
                   f"covering TLB invalidation ({', '.join(ops)}), then the free", counts)


def _hw_level(link: Link) -> str:
    return {"PGD": "0", "P4D": "0", "PUD": "1", "PMD": "2", "PTE": "3"}.get(link.level, "?")


def _clip(lines: list, keep: int = 40) -> list:
    if len(lines) <= keep + 1:
        return lines
    return lines[:keep + 1] + [f"... and {len(lines) - keep - 1} more"]


# ---------------------------------------------------------------- table links

def table_links(mem, geo, root_pa: int) -> dict:
    """Every valid table descriptor under ``root_pa``: ``{table_pa: [Link]}``.

    Reads only tables above the last level (the last level holds no table
    descriptors), so a walk costs a few table reads even with a page-mapped
    linear map. ``mem``: a walker PhysMem; ``geo``: a walker Geometry."""
    from harness.inspect.walker import PhysMemError, _Codec
    codec = _Codec(geo)
    names, shifts, last = geo.level_names, geo.shifts, geo.levels - 1
    out: dict = {}

    def table(pa: int, pos: int, base: int) -> None:
        n = geo.entries(pos)
        try:
            raw = mem.read(pa, n * 8)
        except PhysMemError:
            return
        words = struct.unpack(f"<{n}Q", raw)
        span = 1 << shifts[pos]
        for i, d in enumerate(words):
            if d & 3 != 3:
                continue
            child = codec.addr(d)
            va = (base + i * span) & _U64
            out.setdefault(child, []).append(Link(child, pa + 8 * i, va, span, names[pos]))
            if pos + 1 < last:
                table(child, pos + 1, va)

    table(root_pa, 0, geo.va_base)
    return out


def linked_into(links: dict, pa: int, pa_end: int) -> tuple:
    """Links whose table page lies in ``[pa, pa_end)``."""
    return tuple(l for t, ls in sorted(links.items()) if pa <= t < pa_end for l in ls)


# ---------------------------------------------------------------- TLBI decoding

# (op1, CRm, op2) -> name, for CRn=8 (CRn=9: the FEAT_XS "nxs" forms)
_TLBI = {}
for _crm, _sfx in ((3, "is"), (7, ""), (1, "os")):
    for _op2, _n in ((0, "vmalle1"), (1, "vae1"), (2, "aside1"), (3, "vaae1"),
                     (5, "vale1"), (7, "vaale1")):
        _TLBI[(0, _crm, _op2)] = _n + _sfx
for _crm, _sfx in ((2, "is"), (6, ""), (5, "os")):
    for _op2, _n in ((1, "rvae1"), (3, "rvaae1"), (5, "rvale1"), (7, "rvaale1")):
        _TLBI[(0, _crm, _op2)] = _n + _sfx
for _crm, _sfx in ((3, "is"), (7, ""), (1, "os")):
    _TLBI[(4, _crm, 4)] = "alle1" + _sfx
    _TLBI[(4, _crm, 6)] = "vmalls12e1" + _sfx
    _TLBI[(4, _crm, 0)] = "alle2" + _sfx
_TLBI[(4, 0, 1)], _TLBI[(4, 4, 1)] = "ipas2e1is", "ipas2e1"

FULL_OPS = ("vmalle1", "alle1", "vmalls12e1")


@dataclass(frozen=True)
class TlbiOp:
    name: str
    rt: int

    @property
    def base(self) -> str:
        n = self.name.removesuffix("nxs")
        for s in ("is", "os"):
            if n.endswith(s):
                return n[:-2]
        return n

    @property
    def broadcast(self) -> bool:
        n = self.name.removesuffix("nxs")
        return n.endswith("is") or n.endswith("os")

    @property
    def full(self) -> bool:
        return self.base in FULL_OPS

    @property
    def by_va(self) -> bool:
        return self.base in ("vae1", "vaae1", "vale1", "vaale1")

    @property
    def by_range(self) -> bool:
        return self.base.startswith("rva")

    @property
    def leaf_only(self) -> bool:
        return self.base in ("vale1", "vaale1", "rvale1", "rvaale1")

    @property
    def may_cover_table(self) -> bool:
        """Could it drop a cached kernel table entry? (full, or non-leaf by VA/range)"""
        return self.full or ((self.by_va or self.by_range) and not self.leaf_only)


def decode_tlbi(word: int) -> Optional[TlbiOp]:
    """A TLBI instruction (SYS with CRn=8, or 9 for nXS) -> TlbiOp, else None."""
    if word & 0xFFF8E000 != 0xD5088000:
        return None
    op1, crn = (word >> 16) & 7, (word >> 12) & 0xF
    crm, op2, rt = (word >> 8) & 0xF, (word >> 5) & 7, word & 0x1F
    name = _TLBI.get((op1, crm, op2))
    if name is None:
        name = f"sys#{op1},c{crn},c{crm},#{op2}"
    elif crn == 9:
        name += "nxs"
    return TlbiOp(name, rt)


def tlbi_effect(op: TlbiOp, xt: int, page_shift: int = 12) -> tuple:
    """``(full, lo, hi)``: the kernel VA range an operand invalidates.

    By VA: Xt[43:0] = VA[55:12], sign-extended from bit 55 (every granule).
    By range (FEAT_TLBIRANGE): BaseADDR Xt[36:0] in granule units, NUM Xt[43:39],
    SCALE Xt[45:44], TG Xt[47:46]; length (NUM+1) << (5*SCALE+1) pages."""
    if op.full:
        return True, 0, 0
    if op.by_va:
        va = (xt & ((1 << 44) - 1)) << 12
        if va & (1 << 55):
            va |= 0xFF00_0000_0000_0000
        return False, va, va + (1 << page_shift)
    if op.by_range:
        tg = (xt >> 46) & 3
        shift = {1: 12, 2: 14, 3: 16}.get(tg, page_shift)
        base = (xt & ((1 << 37) - 1)) << shift
        top = 36 + shift
        if base & (1 << top):
            base |= _U64 & ~((1 << (top + 1)) - 1)
        num, scale = (xt >> 39) & 0x1F, (xt >> 44) & 3
        return False, base, base + ((num + 1) << (5 * scale + 1) << shift)
    return False, 0, 0
