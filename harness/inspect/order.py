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
from harness.inspect.ranges import clip, coalesce, subtract

PASS, FAIL, SKIP, ERROR = Verdict.PASS, Verdict.FAIL, Verdict.SKIP, Verdict.ERROR

_U64 = (1 << 64) - 1

NO_TABLE_FREED_WHILE_LINKED = "no-table-freed-while-linked"
TLB_FLUSHED_BEFORE_FREE = "tlb-flushed-before-free"
LEAF_FLUSHED_BEFORE_FREE = "leaf-flushed-before-free"
UNLINKED_TABLES_FREED = "unlinked-tables-freed"
ISB_AFTER_TABLE_FLUSH = "isb-after-table-flush"
CONTIGUOUS_FLUSHED_WHOLE = "contiguous-flushed-whole"
PTE_CONT = 1 << 52
# entries per contiguous run (CONT_PTES, CONT_PMDS) by page shift and level
# (arch/arm64/include/asm/pgtable-hwdef.h)
CONT_ENTRIES = {12: {"PTE": 16, "PMD": 16}, 14: {"PTE": 128, "PMD": 32},
                16: {"PTE": 32, "PMD": 32}}


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
    # True: a leaf entry (page, block) of the vmemmap, whose mapped pages the
    # removal frees: ``link.table_pa`` is then the PA it maps, ``link.span``
    # the size it maps
    leaf: bool = False
    # for a leaf: "vmemmap" (its pages are freed) or "linear" (the first and
    # last leaf of an arch_remove_memory() range: who cleared them)
    region: str = ""

    def to_dict(self) -> dict:
        d = {"kind": self.kind, "seq": self.seq, "step": self.step,
             "link": self.link.to_dict(), "entry_va": hex(self.entry_va)}
        if self.leaf:
            d["leaf"] = True
            d["region"] = self.region or "vmemmap"
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Watch:
        return cls(d["seq"], d.get("step", ""), Link.from_dict(d["link"]),
                   _int(d["entry_va"]), leaf=bool(d.get("leaf", False)),
                   region=d.get("region", "vmemmap" if d.get("leaf") else ""))


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
    leaf: bool = False       # a watched leaf (Watch.leaf): table_pa is the mapped PA
    cpu: Optional[int] = None

    def to_dict(self) -> dict:
        d = {"kind": self.kind, "seq": self.seq, "step": self.step,
             "table_pa": hex(self.table_pa), "entry_va": hex(self.entry_va),
             "old": hex(self.old), "new": hex(self.new), "pc": hex(self.pc),
             "pc_sym": self.pc_sym}
        if self.late:
            d["late"] = self.late
        if self.leaf:
            d["leaf"] = True
        if self.cpu is not None:
            d["cpu"] = self.cpu
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Clear:
        return cls(d["seq"], d.get("step", ""), _int(d["table_pa"]), _int(d["entry_va"]),
                   _int(d["old"]), _int(d["new"]), _int(d["pc"]), d.get("pc_sym", ""),
                   late=d.get("late", ""), leaf=bool(d.get("leaf", False)),
                   cpu=d.get("cpu"))


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
    # store and a watch stop that came late (harness.inspect.a64.late_window)
    note: str = ""
    cpu: Optional[int] = None     # gdb thread (vCPU) that executed it; None: not recorded
    # inside arch_remove_memory(), for a tlbi that overlaps the linear map being
    # removed: the VA ranges of that linear map still mapped by a valid leaf at
    # this stop, before the tlbi executed (None: no snapshot taken)
    lin_valid: Optional[tuple] = None

    def to_dict(self) -> dict:
        d = {"kind": self.kind, "seq": self.seq, "step": self.step, "pc": hex(self.pc),
             "op": self.op, "xt": hex(self.xt), "full": self.full, "lo": hex(self.lo),
             "hi": hex(self.hi), "leaf_only": self.leaf_only,
             "broadcast": self.broadcast, "pc_sym": self.pc_sym}
        if self.note:
            d["note"] = self.note
        if self.cpu is not None:
            d["cpu"] = self.cpu
        if self.lin_valid is not None:
            d["lin_valid"] = [[hex(a), hex(b)] for a, b in self.lin_valid]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Tlbi:
        lv = d.get("lin_valid")
        return cls(d["seq"], d.get("step", ""), _int(d["pc"]), d["op"], _int(d["xt"]),
                   bool(d["full"]), _int(d["lo"]), _int(d["hi"]), bool(d["leaf_only"]),
                   bool(d["broadcast"]), d.get("pc_sym", ""), note=d.get("note", ""),
                   cpu=d.get("cpu"),
                   lin_valid=None if lv is None else tuple((_int(a), _int(b)) for a, b in lv))

    def covers_leaf(self, va: int, span: int) -> bool:
        """Does it invalidate, on every CPU, a leaf entry translating
        ``[va, va+span)``? (By VA, any address inside a block invalidates the
        block entry; leaf-only forms count for a leaf.)"""
        if not self.broadcast:
            return False
        if self.full:
            return True
        return self.lo < va + span and va < self.hi

    def covered_range(self) -> tuple:
        return (0, _U64 + 1) if self.full else (self.lo, self.hi)

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
    cpu: Optional[int] = None
    # watched vmemmap leaves that still mapped the freed range at the stop
    mapped_by: tuple = ()    # (Link, ...)

    @property
    def pa_end(self) -> int:
        return self.pa + (self.page_size << self.order)

    def to_dict(self) -> dict:
        d = {"kind": self.kind, "seq": self.seq, "step": self.step, "fn": self.fn,
             "arg": hex(self.arg), "pa": hex(self.pa), "order": self.order,
             "page_size": self.page_size, "lr": hex(self.lr), "caller": self.caller,
             "linked": [l.to_dict() for l in self.linked], "was_table": self.was_table,
             "walk_ms": self.walk_ms}
        if self.cpu is not None:
            d["cpu"] = self.cpu
        if self.mapped_by:
            d["mapped_by"] = [l.to_dict() for l in self.mapped_by]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Free:
        return cls(d["seq"], d.get("step", ""), d["fn"], _int(d["arg"]), _int(d["pa"]),
                   int(d["order"]), int(d.get("page_size", 4096)), _int(d["lr"]),
                   d.get("caller", ""), tuple(Link.from_dict(x) for x in d.get("linked", ())),
                   bool(d.get("was_table", False)), float(d.get("walk_ms", 0.0)),
                   cpu=d.get("cpu"),
                   mapped_by=tuple(Link.from_dict(x) for x in d.get("mapped_by", ())))

    def describe(self) -> str:
        return (f"{self.fn}(PA {self.pa:#x}, order {self.order}) from "
                f"{self.caller or hex(self.lr)}")


@dataclass(frozen=True)
class Dsb:
    """A ``dsb`` that completed the broadcast invalidations ``completes`` (Tlbi
    seqs) issued earlier by the same CPU."""
    seq: int
    step: str
    pc: int
    option: str
    cpu: Optional[int]
    completes: tuple = ()
    pc_sym: str = ""
    kind: str = "dsb"
    # non-empty: not stopped at, but decoded on the tlbi's unbranched path
    # (harness.inspect.a64.paired_dsb)
    note: str = ""
    # an isb on the straight line after it (a64.isb_follows); None: not looked
    # (a recording made before the agent looked, or a barrier not stopped at)
    isb_after: Optional[bool] = None

    def to_dict(self) -> dict:
        d = {"kind": self.kind, "seq": self.seq, "step": self.step, "pc": hex(self.pc),
             "option": self.option, "cpu": self.cpu, "completes": list(self.completes),
             "pc_sym": self.pc_sym}
        if self.note:
            d["note"] = self.note
        if self.isb_after is not None:
            d["isb_after"] = self.isb_after
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Dsb:
        return cls(d["seq"], d.get("step", ""), _int(d["pc"]), d["option"], d.get("cpu"),
                   tuple(d.get("completes", ())), d.get("pc_sym", ""),
                   note=d.get("note", ""), isb_after=d.get("isb_after"))


@dataclass(frozen=True)
class LeafRun:
    """``count`` adjacent leaf entries of one level, each mapping ``span``
    bytes from ``va`` on."""
    va: int
    span: int
    level: str
    count: int

    @property
    def end(self) -> int:
        return self.va + self.span * self.count


@dataclass(frozen=True)
class RemoveEnter:
    """``arch_remove_memory(pa, size)`` entered: the linear map's leaves for
    the range at that moment (``leaves``: runs of adjacent entries)."""
    seq: int
    step: str
    pa: int
    size: int
    cpu: Optional[int]
    leaves: tuple = ()       # (LeafRun, ...)
    lin_va: int = 0          # linear-map VA of pa
    kind: str = "remove_enter"
    # the VA ranges of the contiguous (CONT) groups among those leaves (merged);
    # None: a recording made before the agent looked
    cont: Optional[tuple] = None

    def to_dict(self) -> dict:
        d = {"kind": self.kind, "seq": self.seq, "step": self.step, "pa": hex(self.pa),
             "size": hex(self.size), "cpu": self.cpu, "lin_va": hex(self.lin_va),
             "leaves": [[hex(r.va), hex(r.span), r.level, r.count] for r in self.leaves]}
        if self.cont is not None:
            d["cont"] = [[hex(a), hex(b)] for a, b in self.cont]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RemoveEnter:
        cont = d.get("cont")
        return cls(d["seq"], d.get("step", ""), _int(d["pa"]), _int(d["size"]), d.get("cpu"),
                   tuple(LeafRun(_int(v), _int(s), lv, int(n)) for v, s, lv, n in d["leaves"]),
                   _int(d.get("lin_va", 0)),
                   cont=None if cont is None else tuple((_int(a), _int(b)) for a, b in cont))


@dataclass(frozen=True)
class RemoveReturn:
    """``arch_remove_memory()`` returned; ``valid``: linear-map VA ranges of the
    removed memory still mapped by a valid leaf."""
    seq: int
    step: str
    cpu: Optional[int]
    valid: tuple = ()
    pc_sym: str = ""
    kind: str = "remove_return"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "seq": self.seq, "step": self.step, "cpu": self.cpu,
                "valid": [[hex(a), hex(b)] for a, b in self.valid], "pc_sym": self.pc_sym}

    @classmethod
    def from_dict(cls, d: dict) -> RemoveReturn:
        return cls(d["seq"], d.get("step", ""), d.get("cpu"),
                   tuple((_int(a), _int(b)) for a, b in d.get("valid", ())),
                   d.get("pc_sym", ""))


@dataclass(frozen=True)
class Incomplete:
    """The recording missed part of the removal: a stop cap, a disconnect, an
    unexpected stop, a removal still running at the end. Every ordering check
    of the removal is then an ERROR, never a PASS."""
    seq: int
    step: str
    why: str
    kind: str = "incomplete"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "seq": self.seq, "step": self.step, "why": self.why}

    @classmethod
    def from_dict(cls, d: dict) -> Incomplete:
        return cls(d.get("seq", 0), d.get("step", ""), d.get("why", ""))


_KINDS = {"watch": Watch, "clear": Clear, "tlbi": Tlbi, "free": Free, "dsb": Dsb,
          "remove_enter": RemoveEnter, "remove_return": RemoveReturn,
          "incomplete": Incomplete}


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
    # where each violation is, for the report's pictures: (va, span, level, text)
    marks: tuple = ()

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- checks

def check_no_table_freed_while_linked(events: Sequence, step: str = "") -> OrderVerdict:
    """FAIL for every freed page that a valid table descriptor still pointed at."""
    frees = [e for e in events if isinstance(e, Free)]
    where = f" during step {step}" if step else ""
    partial = _partial(NO_TABLE_FREED_WHILE_LINKED, events, where)
    if partial:
        return partial
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


def incomplete(events: Sequence) -> list:
    """Why the recording is partial (Incomplete events); empty when whole."""
    return [e.why for e in events if isinstance(e, Incomplete)]


def _partial(check: str, events: Sequence, where: str) -> Optional[OrderVerdict]:
    whys = incomplete(events)
    if not whys:
        return None
    return OrderVerdict(check, ERROR, f"the recording{where} is incomplete, so no verdict "
                        "is given from it: " + "; ".join(dict.fromkeys(whys)))


def completions(events: Sequence) -> dict:
    """``{tlbi seq: seq of the dsb that completed it}``. A recording made
    before barriers were followed (no ``cpu`` on its tlbis) counts each tlbi
    as complete where it ran."""
    out = {}
    for e in events:
        if isinstance(e, Dsb):
            for t in e.completes:
                out.setdefault(t, e.seq)
        elif isinstance(e, Tlbi) and e.cpu is None:
            out.setdefault(e.seq, e.seq)
    return out


def _flush_verdict(tlbis: list, done: dict, before: int, covers) -> tuple:
    """Among ``tlbis`` (Tlbi events after the clear, before ``before``), the
    first covering one that completed before ``before``: ``(tlbi, None)``;
    else ``(None, why)``."""
    covering = [t for t in tlbis if t.seq < before and covers(t)]
    for t in covering:
        if done.get(t.seq, before) < before:
            return t, None
    if not covering:
        return None, "no covering TLB invalidation in between"
    t = covering[-1]
    where = "" if t.cpu is None else f" on CPU {t.cpu}"
    return None, (f"{t.describe()}{where} covered it, but no dsb ish (or osh, sy) "
                  f"executed{where} after it before the free: issued, never completed")


def _problems_first(check: str, counts: dict, marks: list, problems: list, fail_head: str,
                    unobserved: list, error_head: str) -> Optional[OrderVerdict]:
    """FAIL when anything broke the rule, else ERROR when something could not
    be seen, else None (the caller decides between PASS and SKIP)."""
    if problems:
        return OrderVerdict(check, FAIL, "\n".join(_clip([fail_head] + problems)), counts,
                            marks=tuple(marks))
    if unobserved:
        return OrderVerdict(check, ERROR, "\n".join(_clip([error_head] + unobserved)),
                            counts)
    return None


def _judge_freed(c: Optional[Clear], still_there: bool, tlbis: list, done: dict,
                 free_seq: int, covers) -> tuple:
    """One freed table or page against the clear of the entry that linked or
    mapped it: ``(how, tlbi, why)`` with how "ok" (a covering invalidation
    issued after the clear completed before the free), "early" (freed before
    the clear, the entry still there), "unseen" (what happened could not be
    seen: ``why``) or "unflushed" (``why``)."""
    if c is None:
        return (("early", None, "") if still_there else
                ("unseen", None, "entry found clear but its clearing write was not "
                                 "observed"))
    t, why = _flush_verdict([x for x in tlbis if x.seq > c.seq], done, free_seq, covers)
    if t is not None:
        return "ok", t, ""
    if c.late:
        return "unseen", None, f"cleared by {c.pc_sym or hex(c.pc)}, but {c.late}"
    return "unflushed", None, why


def check_tlb_flushed_before_free(events: Sequence, step: str = "") -> OrderVerdict:
    """For each watched table that was freed: cleared before the free, and a
    covering broadcast invalidation issued between the clear and the free and
    completed (a ``dsb ish`` or stronger on the same CPU) before the free."""
    where = f" during step {step}" if step else ""
    watched = {e.link.table_pa: e for e in events if isinstance(e, Watch) and not e.leaf}
    partial = _partial(TLB_FLUSHED_BEFORE_FREE, events, where)
    if partial:
        return partial
    if not watched:
        return OrderVerdict(TLB_FLUSHED_BEFORE_FREE, SKIP,
                       f"no table entry was watched{where} (none in the removed range)",
                       applicable=False)
    done = completions(events)
    cleared: dict[int, Clear] = {}
    tlbis: list = []
    freed_ok, problems, unobserved = [], [], []
    marks: list = []
    used: dict = {}
    seen: set = set()
    for e in events:
        if isinstance(e, Clear) and not e.leaf and e.table_pa in watched \
                and e.table_pa not in cleared:
            cleared[e.table_pa] = e
        elif isinstance(e, Tlbi):
            tlbis.append(e)
        elif isinstance(e, Free):
            for pa in [p for p in watched if e.pa <= p < e.pa_end and p not in seen]:
                seen.add(pa)               # a later free of the page is a reuse
                link = watched[pa].link
                head = (f"{e.describe()}: table PA {pa:#x} of {link.level} entry at VA "
                        f"{link.va:#x} (level {_hw_level(link)})")
                c = cleared.get(pa)
                how, t, why = _judge_freed(c, bool(e.linked), tlbis, done, e.seq,
                                           lambda x, link=link: x.covers(link.va, link.span))
                if how == "early":
                    marks.append((link.va, link.span, link.level,
                                  f"table PA {pa:#x} of this {link.level} entry not "
                                  f"flushed: freed before its entry was cleared"))
                    problems.append(f"{head} freed before its entry was cleared "
                                    f"(no flush can have covered it) during step "
                                    f"{e.step or step or '?'}")
                elif how == "unseen":
                    unobserved.append(f"{head}: {why}")
                elif how == "ok":
                    freed_ok.append(pa)
                    used[pa] = t
                else:
                    assert c is not None
                    marks.append((link.va, link.span, link.level,
                                  f"table PA {pa:#x} of this {link.level} entry not flushed: "
                                  f"cleared, then freed with {why}"))
                    problems.append(f"{head} cleared by {c.pc_sym or hex(c.pc)}, freed "
                                    f"with {why} during step {e.step or step or '?'}")
    counts = {"watched": len(watched), "cleared": len(cleared),
              "freed": len(freed_ok) + len(problems) + len(unobserved),
              "flushed_in_time": len(freed_ok), "violations": len(problems),
              "unobserved": len(unobserved)}
    bad = _problems_first(
        TLB_FLUSHED_BEFORE_FREE, counts, marks,
        problems, f"{len(problems)} of {counts['freed']} freed tables{where} were not "
                  f"flushed (invalidation issued and completed) between the clear of "
                  f"their entry and the free:",
        unobserved, f"{len(unobserved)} freed tables{where}: the clearing write or what "
                    f"followed it was not seen: cannot judge")
    if bad:
        return bad
    if not freed_ok:
        return OrderVerdict(TLB_FLUSHED_BEFORE_FREE, SKIP,
                       f"{len(watched)} tables watched{where}, none was freed", counts,
                       applicable=False)
    ops = sorted({used[p].op for p in freed_ok})
    legacy = any(used[p].cpu is None for p in freed_ok)
    how = ("(completion not recorded: a recording without barriers)" if legacy
           else "completed by a dsb on the same CPU")
    return OrderVerdict(TLB_FLUSHED_BEFORE_FREE, PASS,
                   f"{len(freed_ok)} tables freed{where}: each entry cleared, then a "
                   f"covering TLB invalidation ({', '.join(ops)}) {how}, then the free",
                   counts)


def check_isb_after_table_flush(events: Sequence, step: str = "") -> OrderVerdict:
    """For each watched table freed after a covering invalidation that completed
    (as :func:`check_tlb_flushed_before_free` finds it): the barrier that
    completed it is followed by an ``isb`` on its straight line (upstream
    d6984c21d815: without it, later instructions on that CPU may still use the
    walk-cache entry of the freed table). A recording that did not look after
    its barriers (``Dsb.isb_after`` None) is not judged: not applicable."""
    name, where = ISB_AFTER_TABLE_FLUSH, f" during step {step}" if step else ""
    watched = {e.link.table_pa: e for e in events if isinstance(e, Watch) and not e.leaf}
    done = completions(events)
    dsbs = {e.seq: e for e in events if isinstance(e, Dsb)}
    cleared: dict = {}
    tlbis: list = []
    seen: set = set()
    ok, problems, unseen = [], [], 0
    for e in events:
        if isinstance(e, Clear) and not e.leaf and e.table_pa in watched \
                and e.table_pa not in cleared:
            cleared[e.table_pa] = e
        elif isinstance(e, Tlbi):
            tlbis.append(e)
        elif isinstance(e, Free):
            for pa in [p for p in watched if e.pa <= p < e.pa_end and p not in seen]:
                seen.add(pa)
                link = watched[pa].link
                how, t, _why = _judge_freed(cleared.get(pa), bool(e.linked), tlbis, done,
                                            e.seq, lambda x, link=link: x.covers(link.va,
                                                                                 link.span))
                if how != "ok" or t is None:
                    continue               # tlb-flushed-before-free judges those
                dsb = dsbs.get(done.get(t.seq, -1))
                if dsb is None or dsb.isb_after is None:
                    unseen += 1
                elif dsb.isb_after:
                    ok.append(pa)
                else:
                    problems.append(
                        f"table PA {pa:#x} of {link.level} entry at VA {link.va:#x} "
                        f"(level {_hw_level(link)}): {t.describe()} completed by dsb "
                        f"{dsb.option} at {dsb.pc_sym or hex(dsb.pc)} on CPU {dsb.cpu}, "
                        f"with no isb after it before {e.describe()}")
    counts = {"judged": len(ok) + len(problems), "isb": len(ok),
              "violations": len(problems), "not_looked": unseen}
    if problems:
        return OrderVerdict(name, FAIL, "\n".join(_clip(
            [f"{len(problems)} of {counts['judged']} freed tables{where} were flushed "
             f"without an isb after the completing barrier (the walk cache may still "
             f"hold them for later instructions):"] + problems)), counts)
    if not ok:
        return OrderVerdict(name, SKIP, f"no freed table{where} whose barrier was looked "
                            f"after ({unseen} not looked)", counts, applicable=False)
    return OrderVerdict(name, PASS, f"{len(ok)} tables freed{where}: each flush's "
                        f"completing dsb followed by an isb"
                        + (f" ({unseen} not looked)" if unseen else ""), counts)


def cont_groups(leaves: Sequence, page_shift: int) -> tuple:
    """The VA ranges of the contiguous groups the leaves with the contiguous bit
    belong to (each group: CONT_ENTRIES entries, aligned), in VA order."""
    groups = []
    for leaf in leaves:
        n = CONT_ENTRIES.get(page_shift, {}).get(leaf.level)
        if n and leaf.desc & PTE_CONT:
            size = leaf.span * n
            start = leaf.va - leaf.va % size
            groups.append((start, start + size))
    return tuple(sorted(set(groups)))


def check_contiguous_flushed_whole(events: Sequence, step: str = "") -> OrderVerdict:
    """Break-before-make for a contiguous run (upstream 48478b9f7913): inside
    arch_remove_memory(), a TLB invalidation of part of a contiguous group of
    the removed linear map runs only once the whole group is cleared. One
    issued while some entries of the group are cleared and others still valid
    invalidates a group the TLB may still hold whole through a neighbour: on
    hardware, conflicting or stale entries (TCG has no contiguous TLB entries,
    so only the order shows). Judged from the leaves still valid at each such
    invalidation (``Tlbi.lin_valid``) and the groups seen at entry
    (``RemoveEnter.cont``); recordings without them: not applicable."""
    name, where = CONTIGUOUS_FLUSHED_WHOLE, f" during step {step}" if step else ""
    problems, judged, groups_seen = [], 0, 0
    for en in (e for e in events if isinstance(e, RemoveEnter)):
        ret = next((r for r in events if isinstance(r, RemoveReturn) and r.seq > en.seq),
                   None)
        if en.cont is None or ret is None:
            continue
        groups_seen += len(en.cont)
        lo, hi = en.lin_va, en.lin_va + en.size
        for t in events:
            if not isinstance(t, Tlbi) or not en.seq < t.seq < ret.seq \
                    or t.lin_valid is None or not t.broadcast:
                continue
            a, b = t.covered_range()
            for g0, g1 in en.cont:
                if not (g0 < min(b, hi) and max(a, lo) < g1):
                    continue
                judged += 1
                valid = clip(list(t.lin_valid), g0, g1)
                if valid and coalesce(valid) != [(g0, g1)]:
                    problems.append(
                        f"{t.describe()}{'' if t.cpu is None else f' on CPU {t.cpu}'} "
                        f"invalidated VA {a:#x}-{b:#x} while the contiguous range around "
                        f"it ({g0:#x}-{g1:#x}) was partly cleared: still valid "
                        + ", ".join(f"{x:#x}-{y:#x}" for x, y in valid[:2]))
                    break
    counts = {"groups": groups_seen, "judged": judged, "violations": len(problems)}
    if problems:
        return OrderVerdict(name, FAIL, "\n".join(_clip(
            [f"{len(problems)} TLB invalidations{where} hit a contiguous range of the "
             f"removed linear map that was only partly cleared (break-before-make "
             f"wants the whole run cleared first):"] + problems)), counts)
    if not groups_seen:
        return OrderVerdict(name, SKIP, f"no contiguous linear-map range was removed"
                            f"{where} (or the recording did not look)", counts,
                            applicable=False)
    return OrderVerdict(name, PASS, f"{groups_seen} contiguous range(s) removed{where}: "
                        f"every invalidation came after the whole range was cleared",
                        counts)


def check_unlinked_tables_freed(events: Sequence, step: str = "") -> OrderVerdict:
    """Every watched table whose parent entry was cleared was freed before the
    recording ended (the driver waits for a deferred free before detaching)."""
    where = f" during step {step}" if step else ""
    partial = _partial(UNLINKED_TABLES_FREED, events, where)
    if partial:
        return partial
    watched = {e.link.table_pa: e for e in events if isinstance(e, Watch) and not e.leaf}
    cleared = {}
    for e in events:
        if isinstance(e, Clear) and not e.leaf and e.table_pa in watched:
            cleared.setdefault(e.table_pa, e)
    # freed at any point of the recording: a table freed before its entry was
    # cleared is not leaked (no-table-freed-while-linked judges that order)
    freed = {p for e in events if isinstance(e, Free) for p in cleared
             if e.pa <= p < e.pa_end}
    if not cleared:
        return OrderVerdict(UNLINKED_TABLES_FREED, SKIP,
                            f"no watched table entry was cleared{where}", applicable=False)
    lost = [p for p in cleared if p not in freed]
    counts = {"cleared": len(cleared), "freed": len(cleared) - len(lost),
              "never_freed": len(lost)}
    if lost:
        lines = [f"{len(lost)} of {len(cleared)} tables unlinked{where} were never freed "
                 f"(a leaked page-table page):"]
        for p in lost:
            link, c = watched[p].link, cleared[p]
            lines.append(f"table PA {p:#x} ({_child(link)} table of the {link.level} entry "
                         f"for VA {link.va:#x}-{link.va + link.span:#x}, level "
                         f"{_hw_level(link)}): entry cleared by {c.pc_sym or hex(c.pc)}, "
                         f"the page never freed while the removal was followed")
        return OrderVerdict(UNLINKED_TABLES_FREED, FAIL, "\n".join(_clip(lines)), counts)
    return OrderVerdict(UNLINKED_TABLES_FREED, PASS,
                        f"{len(cleared)} tables unlinked{where}, each freed afterwards",
                        counts)


def _child(link: Link) -> str:
    names = ["PGD", "P4D", "PUD", "PMD", "PTE"]
    return names[names.index(link.level) + 1] if link.level in names[:-1] else "?"


def check_leaf_flushed_before_free(events: Sequence, step: str = "") -> OrderVerdict:
    """Leaves: (a) every page freed that a watched vmemmap leaf mapped was
    freed only after the leaf was cleared and a covering broadcast
    invalidation issued after the clear had completed; (b) every linear-map
    leaf of the removed range was cleared, then covered by an invalidation
    issued after the clear and completed, before ``arch_remove_memory()``
    returned (the linear map's pages are not freed but handed back)."""
    where = f" during step {step}" if step else ""
    partial = _partial(LEAF_FLUSHED_BEFORE_FREE, events, where)
    if partial:
        return partial
    done = completions(events)
    leaves = {e.link.entry_pa: e for e in events if isinstance(e, Watch) and e.leaf
              and e.region != "linear"}
    lin_watch = {e.entry_va: e for e in events if isinstance(e, Watch) and e.leaf
                 and e.region == "linear"}
    lin_clear = {lin_watch[e.entry_va].link.va: e for e in events
                 if isinstance(e, Clear) and e.leaf and e.entry_va in lin_watch}
    enters = [e for e in events if isinstance(e, RemoveEnter)]
    if not leaves and not enters:
        happened = any(isinstance(e, (Free, Clear)) for e in events)
        return OrderVerdict(LEAF_FLUSHED_BEFORE_FREE, SKIP,
                            f"no vmemmap leaf was watched and no arch_remove_memory() call "
                            f"was seen{where}", applicable=happened)
    problems, unobserved, ok_windows = [], [], []
    ok_leaves = 0
    marks: list = []
    # (a) vmemmap leaves whose pages are freed
    cleared: dict = {}
    tlbis: list = []
    judged: set = set()
    for e in events:
        if isinstance(e, Clear) and e.leaf and e.entry_va is not None:
            for pa, w in leaves.items():
                if w.entry_va == e.entry_va and pa not in cleared:
                    cleared[pa] = e
        elif isinstance(e, Tlbi):
            tlbis.append(e)
        elif isinstance(e, Free):
            for epa, w in leaves.items():
                link = w.link
                if epa in judged or not (link.table_pa < e.pa_end
                                         and e.pa < link.table_pa + link.span):
                    continue
                judged.add(epa)
                head = (f"vmemmap {link.level} leaf for VA {link.va:#x}-"
                        f"{link.va + link.span:#x} (level {_hw_level(link)}, mapping PA "
                        f"{link.table_pa:#x}-{link.table_pa + link.span:#x}): freed PA "
                        f"{e.pa:#x}-{e.pa_end:#x} by {e.describe()}")
                c = cleared.get(epa)
                how, t, why = _judge_freed(
                    c, any(m.entry_pa == epa for m in e.mapped_by), tlbis, done, e.seq,
                    lambda x, link=link: x.covers_leaf(link.va, link.span))
                if how == "early":
                    marks.append((link.va, link.span, link.level,
                                  f"leaf given up before its flush: PA "
                                  f"{e.pa:#x} freed while this leaf still mapped it"))
                    problems.append(f"{head} while the leaf still mapped it (not "
                                    f"cleared, so no invalidation can have covered it)")
                elif how == "unseen":
                    unobserved.append(f"{head}: {why}")
                elif how == "ok":
                    ok_leaves += 1
                else:
                    assert c is not None
                    marks.append((link.va, link.span, link.level,
                                  f"leaf given up before its flush: PA {e.pa:#x} freed "
                                  f"with {why}"))
                    problems.append(f"{head}: cleared by {c.pc_sym or hex(c.pc)}, freed "
                                    f"with {why}")
    freed_leaves = len(judged)
    # (b) the linear map, by arch_remove_memory()'s return
    windows = 0
    for en in enters:
        ret = next((r for r in events if isinstance(r, RemoveReturn) and r.seq > en.seq),
                   None)
        what = f"arch_remove_memory(PA {en.pa:#x}, size {en.size:#x})"
        if ret is None:
            unobserved.append(f"{what}: its return was not seen")
            continue
        windows += 1
        lo, hi = en.lin_va, en.lin_va + en.size
        good, issued = [], []
        for t in tlbis:
            if not (en.seq < t.seq < ret.seq) or t.lin_valid is None or not t.broadcast:
                continue
            a, b = t.covered_range()
            part = subtract(clip([(a, b)], lo, hi), list(t.lin_valid))
            if not part:
                continue
            (good if done.get(t.seq, ret.seq) < ret.seq else issued).append((t, part))
        covered = coalesce(p for _t, ps in good for p in ps)
        covered_issued = coalesce(p for _t, ps in issued for p in ps)
        still = list(ret.valid)
        bad_runs, half_runs, stale, total = [], [], [], 0
        for run in en.leaves:
            total += run.count
            for k in range(run.count):
                va = run.va + k * run.span
                if _overlaps(still, va, va + run.span):
                    stale.append((va, run))
                elif not _overlaps(covered, va, va + run.span):
                    (half_runs if _overlaps(covered_issued, va, va + run.span)
                     else bad_runs).append((va, run))
        if stale:
            va, run = stale[0]
            problems.append(f"linear map: {len(stale)} of {total} leaves of {what} were "
                            f"still mapped when it returned at {ret.pc_sym or '?'}: first "
                            f"{run.level} entry for VA {va:#x}-{va + run.span:#x}")
        if half_runs:
            va, run = half_runs[0]
            t = next(t for t, ps in issued if _overlaps(ps, va, va + run.span))
            cpu = "" if t.cpu is None else f" on CPU {t.cpu}"
            problems.append(f"linear map: {len(half_runs)} of {total} leaves of {what}: "
                            f"invalidated by {t.describe()}{cpu} after their clear, but no "
                            f"dsb ish (or osh, sy) executed{cpu} after it before the return "
                            f"at {ret.pc_sym or '?'}: first {run.level} entry for VA "
                            f"{va:#x}-{va + run.span:#x}")
        for va, run in (stale + half_runs + bad_runs)[:1]:
            marks.append((va, run.span, run.level,
                          f"leaf given up before its flush: {len(stale + half_runs + bad_runs)} "
                          f"linear-map leaves of {what} not invalidated after their clear"))
        if bad_runs:
            va, run = bad_runs[0]
            over = [t for t in tlbis if en.seq < t.seq < ret.seq
                    and t.covers_leaf(va, run.span)]
            after = (f"; {over[-1].describe()} covered it, but ran while it was still "
                     f"mapped" if over else
                     "; no invalidation covering it ran between its clear and the return")
            c = lin_clear.get(va)
            if c is not None:
                who = f"cleared by {c.pc_sym or hex(c.pc)}"
            else:
                known = sorted(lin_clear.items())
                who = ("its clearing write not watched (only the first and last leaf of "
                       "a range are" + (f"; the first was cleared by "
                                        f"{known[0][1].pc_sym or hex(known[0][1].pc)})"
                                        if known else ")"))
            problems.append(f"linear map: {len(bad_runs)} of {total} leaves of {what} were "
                            f"cleared with no TLB invalidation after the clear before it "
                            f"returned at {ret.pc_sym or '?'}: first {run.level} entry for "
                            f"VA {va:#x}-{va + run.span:#x} (level "
                            f"{_LEVEL_NO.get(run.level, '?')}, PA {en.pa + va - lo:#x}), "
                            f"{who}{after}")
        if not (stale or half_runs or bad_runs):
            ok_windows.append(f"{what}: {total} linear-map leaves cleared, then invalidated "
                      f"({', '.join(sorted({t.op for t, _ in good}))}) and completed before "
                      f"the return")
    counts = {"vmemmap_leaves_watched": len(leaves), "vmemmap_leaves_freed": freed_leaves,
              "remove_calls": windows, "violations": len(problems),
              "unobserved": len(unobserved)}
    bad = _problems_first(
        LEAF_FLUSHED_BEFORE_FREE, counts, marks,
        problems, f"{len(problems)} leaf ordering violation(s){where} (a page or mapping "
                  f"given up before a completed TLB invalidation covered its cleared leaf):",
        unobserved, f"{len(unobserved)} leaf case(s){where} could not be judged:")
    if bad:
        return bad
    if not ok_leaves and not ok_windows:
        return OrderVerdict(LEAF_FLUSHED_BEFORE_FREE, SKIP,
                            f"{len(leaves)} vmemmap leaves watched{where}, none freed, and "
                            f"no arch_remove_memory() call", counts, applicable=False)
    return OrderVerdict(LEAF_FLUSHED_BEFORE_FREE, PASS,
                        f"{freed_leaves} vmemmap leaves' pages freed only after the leaf "
                        f"was cleared and a covering invalidation completed; " +
                        "; ".join(ok_windows or ["no linear-map window"]), counts)


def _overlaps(ranges, lo: int, hi: int) -> bool:
    import bisect
    starts = [a for a, _b in ranges]
    i = bisect.bisect_right(starts, lo) - 1
    for a, b in ranges[max(i, 0):]:
        if a >= hi:
            return False
        if b > lo and a < hi:
            return True
    return False


def unfreed_tables(events: Sequence) -> list:
    """PAs of watched tables whose entry was cleared and that were not freed
    (yet): what the driver waits for before detaching."""
    watched = {e.link.table_pa for e in events if isinstance(e, Watch) and not e.leaf}
    cleared = {e.table_pa for e in events if isinstance(e, Clear) and not e.leaf
               and e.table_pa in watched}
    for e in events:
        if isinstance(e, Free):
            cleared -= {p for p in cleared if e.pa <= p < e.pa_end}
    return sorted(cleared)


# every ordering rule by check name, in the report's order
RULES = {
    NO_TABLE_FREED_WHILE_LINKED: check_no_table_freed_while_linked,
    TLB_FLUSHED_BEFORE_FREE: check_tlb_flushed_before_free,
    LEAF_FLUSHED_BEFORE_FREE: check_leaf_flushed_before_free,
    UNLINKED_TABLES_FREED: check_unlinked_tables_freed,
}


_LEVEL_NO = {"PGD": "0", "P4D": "0", "PUD": "1", "PMD": "2", "PTE": "3"}


def _hw_level(link: Link) -> str:
    return _LEVEL_NO.get(link.level, "?")


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


@dataclass(frozen=True)
class LeafEntry:
    """A valid leaf descriptor (page or block) translating ``[va, va+span)``
    to ``pa``; ``entry_pa``: where the descriptor is."""
    va: int
    span: int
    level: str
    entry_pa: int
    pa: int
    desc: int


def range_leaves(mem, geo, root_pa: int, lo: int, hi: int) -> list:
    """The valid leaves translating some VA in ``[lo, hi)``, in VA order,
    walking only the tables whose span overlaps it (from ``root_pa``: a table
    already unlinked is not reached, so its leaves no longer count)."""
    from harness.inspect.walker import PhysMemError, _Codec
    codec = _Codec(geo)
    names, shifts, last = geo.level_names, geo.shifts, geo.levels - 1
    out: list = []

    def table(pa: int, pos: int, base: int) -> None:
        n = geo.entries(pos)
        span = 1 << shifts[pos]
        first = max(0, (lo - base) // span) if lo > base else 0
        stop = min(n, -(-(hi - base) // span))
        if first >= stop:
            return
        try:
            raw = mem.read(pa + 8 * first, 8 * (stop - first))
        except PhysMemError:
            return
        if not any(raw):
            return
        words = struct.unpack(f"<{stop - first}Q", raw)
        for k, d in enumerate(words):
            if not d & 1:
                continue
            i = first + k
            va = (base + i * span) & _U64
            if pos < last and d & 3 == 3:
                table(codec.addr(d), pos + 1, va)
            elif (pos == last and d & 3 == 3) or (pos < last and d & 3 == 1):
                out.append(LeafEntry(va, span, names[pos], pa + 8 * i, codec.addr(d), d))

    table(root_pa, 0, geo.va_base)
    return out


def leaf_runs(leaves: Sequence) -> tuple:
    """Adjacent leaves of one level and span merged into :class:`LeafRun`s."""
    runs: list = []
    for leaf in leaves:
        if runs and runs[-1].level == leaf.level and runs[-1].span == leaf.span \
                and runs[-1].end == leaf.va:
            r = runs[-1]
            runs[-1] = LeafRun(r.va, r.span, r.level, r.count + 1)
        else:
            runs.append(LeafRun(leaf.va, leaf.span, leaf.level, 1))
    return tuple(runs)


def valid_ranges(leaves: Sequence) -> tuple:
    """The VA ranges the leaves translate, merged."""
    return tuple(coalesce((leaf.va, leaf.va + leaf.span) for leaf in leaves))


def linked_into(links: dict, pa: int, pa_end: int) -> tuple:
    """Links whose table page lies in ``[pa, pa_end)``."""
    return tuple(l for t, ls in sorted(links.items()) if pa <= t < pa_end for l in ls)


# ---------------------------------------------------------------- TLBI decoding

# (harness.inspect.a64 decodes; the names stay importable from here)
from harness.inspect.a64 import (  # noqa: E402,F401
    DSB_COMPLETES,
    FULL_OPS,
    TlbiOp,
    decode_dsb,
    decode_tlbi,
    tlbi_effect,
)
