"""harness.inspect.order: TLBI decoding, the table-descriptor walk, and the two
free-time ordering checks on synthetic and on recorded stop sequences."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from harness.inspect import order
from harness.inspect.order import (
    Clear,
    Free,
    Link,
    Tlbi,
    TlbiOp,
    Watch,
    decode_tlbi,
    events_from_lines,
    linked_into,
    table_links,
    tlbi_effect,
)
from harness.inspect.walker import BufferPhysMem, Geometry

DATA = Path(__file__).resolve().parent / "data"

# words and names from `aarch64-linux-gnu-as -march=armv8.5-a` + objdump -d
OBJDUMP = [
    (0xd508831f, "vmalle1is", 31), (0xd5088321, "vae1is", 1), (0xd5088362, "vaae1is", 2),
    (0xd50883a3, "vale1is", 3), (0xd50883e4, "vaale1is", 4), (0xd5088345, "aside1is", 5),
    (0xd5088726, "vae1", 6), (0xd508871f, "vmalle1", 31), (0xd5088167, "vaae1os", 7),
    (0xd508811f, "vmalle1os", 31), (0xd5088228, "rvae1is", 8), (0xd5088269, "rvaae1is", 9),
    (0xd50882aa, "rvale1is", 10), (0xd50882eb, "rvaale1is", 11), (0xd508862c, "rvae1", 12),
    (0xd508852d, "rvae1os", 13), (0xd50c839f, "alle1is", 31),
    (0xd50c83df, "vmalls12e1is", 31), (0xd50c802e, "ipas2e1is", 14),
]


@pytest.mark.parametrize("word,name,rt", OBJDUMP)
def test_decode_tlbi_agrees_with_objdump(word, name, rt):
    op = decode_tlbi(word)
    assert (op.name, op.rt) == (name, rt)


def test_decode_tlbi_rejects_other_instructions():
    for word in (0xd503201f, 0xd5033b9f, 0xd5033fdf, 0xd65f03c0, 0xd5182000):  # nop dsb isb ret msr
        assert decode_tlbi(word) is None


def test_op_classes():
    assert TlbiOp("vaae1is", 0).may_cover_table and TlbiOp("vaae1is", 0).broadcast
    assert not TlbiOp("vaale1is", 0).may_cover_table          # last level only
    assert not TlbiOp("aside1is", 0).may_cover_table          # by ASID: not global entries
    assert TlbiOp("vmalle1is", 31).full and TlbiOp("vmalle1is", 31).may_cover_table
    assert not TlbiOp("vae1", 0).broadcast
    assert TlbiOp("rvaae1is", 0).may_cover_table and TlbiOp("rvaae1is", 0).by_range


def test_tlbi_effect_by_va_sign_extends_kernel_addresses():
    va = 0xffff000040200000
    xt = (va >> 12) & ((1 << 44) - 1)                          # __TLBI_VADDR(va, 0)
    full, lo, hi = tlbi_effect(TlbiOp("vaae1is", 1), xt | (5 << 48))   # ASID ignored
    assert (full, lo, hi) == (False, va, va + 4096)
    assert tlbi_effect(TlbiOp("vmalle1is", 31), 0)[0] is True


def test_tlbi_effect_range():
    # __TLBI_VADDR_RANGE(start >> 12, asid 0, scale 1, num 3, ttl 0), TG=4K
    start = 0xffff000040000000
    xt = ((start >> 12) & ((1 << 37) - 1)) | (3 << 39) | (1 << 44) | (1 << 46)
    full, lo, hi = tlbi_effect(TlbiOp("rvaae1is", 0), xt)
    assert not full and lo == start and hi == start + (4 << 6) * 4096


def _tlbi(seq, op, lo=0, hi=0, full=False):
    o = TlbiOp(op, 1)
    return Tlbi(seq, "s", 0xffff800080001000, op, 0, full, lo, hi, o.leaf_only, o.broadcast,
                "free_empty_tables+0x10")


def test_tlbi_covers():
    span_va, span = 0xffff000040200000, 2 << 20
    assert _tlbi(1, "vaae1is", span_va, span_va + 4096).covers(span_va, span)
    assert _tlbi(1, "vaae1is", span_va + 0x1000, span_va + 0x2000).covers(span_va, span)
    assert not _tlbi(1, "vaae1is", span_va + span, span_va + span + 4096).covers(span_va, span)
    assert not _tlbi(1, "vaale1is", span_va, span_va + 4096).covers(span_va, span)
    assert not _tlbi(1, "vaae1", span_va, span_va + 4096).covers(span_va, span)   # local only
    assert _tlbi(1, "vmalle1is", full=True).covers(span_va, span)


# ---------------------------------------------------------------- table_links

def test_table_links_reads_only_upper_levels():
    geo = Geometry(4096, 48, 4)
    base = 0x40000000
    ram = bytearray(8 * 4096)
    pgd, pud, pmd, pte = (base + i * 4096 for i in range(4))

    def put(table, idx, desc):
        struct.pack_into("<Q", ram, table - base + 8 * idx, desc)

    put(pgd, 0, pud | 3)                       # VA 0xffff000000000000
    put(pud, 1, pmd | 3)                       # +1 GiB
    put(pmd, 2, pte | 3)                       # +4 MiB
    put(pmd, 3, 0x80000000 | 1 | (1 << 10))    # a block: no link
    put(pte, 0, 0x3 | 0x1234000)               # looks like a table, but it's level 3
    links = table_links(BufferPhysMem([(base, ram)]), geo, pgd)
    assert set(links) == {pud, pmd, pte}
    (l,) = links[pte]
    assert l.level == "PMD" and l.va == 0xffff000040400000 and l.span == 2 << 20
    assert l.entry_pa == pmd + 16
    assert linked_into(links, pte, pte + 4096) == (l,)
    assert linked_into(links, pte + 4096, pte + 8192) == ()


# ---------------------------------------------------------------- checks

LINK = Link(0x4a000000, 0x49fff010, 0xffff000040400000, 2 << 20, "PMD")


def _free(seq, linked=(), pa=LINK.table_pa):
    return Free(seq, "remove 0x80000000", "free_pages", 0, pa, 0, 4096,
                0xffff800080201234, "free_empty_tables+0x1a4", tuple(linked), True, 0.2)


def _clear(seq):
    return Clear(seq, "remove 0x80000000", LINK.table_pa, 0xffff000009fff010,
                 LINK.table_pa | 3, 0, 0xffff800080201200, "free_empty_tables+0x190")


WATCH = Watch(1, "remove 0x80000000", LINK, 0xffff000009fff010)


def test_clean_sequence_passes_both():
    evs = [WATCH, _clear(2), _tlbi(3, "vaae1is", LINK.va, LINK.va + 4096), _free(4)]
    a = order.check_no_table_freed_while_linked(evs)
    b = order.check_tlb_flushed_before_free(evs)
    assert (a.verdict, b.verdict) == ("PASS", "PASS")
    assert "vaae1is" in b.evidence


def test_free_before_clear_fails_both():
    evs = [WATCH, _free(2, linked=[LINK]), _clear(3)]
    a = order.check_no_table_freed_while_linked(evs, "remove 0x80000000")
    assert a.verdict == "FAIL"
    assert ("free_pages(PA 0x4a000000, order 0) from free_empty_tables+0x1a4: still "
            "linked from PMD entry at VA 0xffff000040400000 (level 2) during step "
            "remove 0x80000000") in a.evidence
    b = order.check_tlb_flushed_before_free(evs)
    assert b.verdict == "FAIL" and "before its entry was cleared" in b.evidence


def test_missing_or_unrelated_flush_fails():
    other = LINK.va + (64 << 20)
    for flush in ([], [_tlbi(3, "vaae1is", other, other + 4096)],
                  [_tlbi(3, "vaale1is", LINK.va, LINK.va + 4096)],
                  [_tlbi(3, "vae1", LINK.va, LINK.va + 4096)]):
        evs = [WATCH, _clear(2)] + flush + [_free(9)]
        v = order.check_tlb_flushed_before_free(evs)
        assert v.verdict == "FAIL", flush
        assert "no covering TLB invalidation" in v.evidence


def test_flush_before_the_clear_does_not_count():
    evs = [WATCH, _tlbi(2, "vmalle1is", full=True), _clear(3), _free(4)]
    assert order.check_tlb_flushed_before_free(evs).verdict == "FAIL"


def test_unobserved_clear_is_an_error_not_a_pass():
    evs = [WATCH, _free(2)]
    assert order.check_tlb_flushed_before_free(evs).verdict == "ERROR"


def test_skips():
    assert order.check_no_table_freed_while_linked([]).verdict == "SKIP"
    assert order.check_tlb_flushed_before_free([_free(1)]).verdict == "SKIP"
    assert order.check_tlb_flushed_before_free([WATCH]).verdict == "SKIP"


def test_events_round_trip():
    evs = [WATCH, _clear(2), _tlbi(3, "vaae1is", LINK.va, LINK.va + 4096), _free(4, [LINK])]
    lines = [json.dumps(e.to_dict()) for e in evs] + ['{"kind": "header"}', "# note"]
    assert events_from_lines(lines) == evs


# ---------------------------------------------------------------- recorded runs

def _recorded(name):
    path = DATA / name
    if not path.exists():
        pytest.skip(f"{name} not recorded")
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    assert header["kind"] == "recording" and header["how"]
    return header, events_from_lines(lines[1:])


# real captures (bench/bench_order.py --record, see tests/data/README): the
# verdict of each rule, in order.RULES' order: no-table-freed-while-linked,
# tlb-flushed-before-free, leaf-flushed-before-free, unlinked-tables-freed
RECORDED = [
    ("order-clean-block.jsonl", "PASS", "PASS", "PASS", "PASS"),
    ("order-clean-rodata-full.jsonl", "PASS", "PASS", "PASS", "PASS"),
    ("order-free-before-clear-rodata-full.jsonl", "FAIL", "FAIL", "PASS", "PASS"),   # 0005
    ("order-no-flush-rodata-full.jsonl", "PASS", "FAIL", "PASS", "PASS"),            # 0007
    ("order-vmemmap-freed-before-flush-block.jsonl", "PASS", "PASS", "FAIL", "PASS"),  # 0022
    ("order-flush-without-dsb-rodata-full.jsonl", "PASS", "FAIL", "PASS", "PASS"),   # 0023
    ("order-unlinked-never-freed-rodata-full.jsonl", "PASS", "PASS", "PASS", "FAIL"),  # 0024
    ("order-2017-ordering-rodata-full.jsonl", "FAIL", "FAIL", "FAIL", "PASS"),       # 0025
    ("order-linear-never-flushed-block.jsonl", "PASS", "PASS", "FAIL", "PASS"),      # 0026
]

# what a FAIL must name (the evidence), per rule
NAMES = {
    order.TLB_FLUSHED_BEFORE_FREE: ("table PA 0x", "entry at VA 0x", "from "),
    order.LEAF_FLUSHED_BEFORE_FREE: ("VA 0x",),
    order.UNLINKED_TABLES_FREED: ("table PA 0x", "level ", "entry cleared by "),
    order.NO_TABLE_FREED_WHILE_LINKED: ("PA 0x", "still linked from", "level "),
}


@pytest.mark.parametrize("name,linked,flushed,leaf,unlinked", RECORDED)
def test_recorded_streams(name, linked, flushed, leaf, unlinked):
    header, evs = _recorded(name)
    got = [rule(evs, header["step"]) for rule in order.RULES.values()]
    assert [v.verdict for v in got] == [linked, flushed, leaf, unlinked], \
        [(v.check, v.verdict, v.evidence[:400]) for v in got]
    for v in got:
        if v.verdict == "FAIL":
            for needle in NAMES[v.check]:
                assert needle in v.evidence, (v.check, needle, v.evidence[:600])
    counts = {k: n for v in got for k, n in v.counts.items()}
    for field, want in header.get("expect", {}).items():
        assert counts.get(field) == want, field


def test_the_leaf_rule_names_leaf_pc_free_and_caller_on_the_vmemmap_capture():
    header, evs = _recorded("order-vmemmap-freed-before-flush-block.jsonl")
    v = order.check_leaf_flushed_before_free(evs, header["step"])
    line = v.evidence.splitlines()[1]
    # the leaf's VA and level, the PC that cleared it, the freed PA, the free's caller
    for needle in ("vmemmap PMD leaf for VA 0x", "(level 2", "cleared by unmap_hotplug_range+",
                   "freed PA 0x", "from free_hotplug_page_range", "no covering TLB invalidation"):
        assert needle in line, (needle, line)


def test_the_completion_rule_names_the_tlbi_and_the_free_without_a_barrier():
    header, evs = _recorded("order-flush-without-dsb-rodata-full.jsonl")
    v = order.check_tlb_flushed_before_free(evs, header["step"])
    line = v.evidence.splitlines()[1]
    for needle in ("tlbi vaae1is", "at free_empty_tables+", "covered it, but no dsb ish",
                   "issued, never completed", "free_unref_page(PA 0x"):
        assert needle in line, (needle, line)
    # the clean kernel's own flushes complete: every one has a dsb after it
    _h, clean = _recorded("order-clean-rodata-full.jsonl")
    done = order.completions(clean)
    assert all(t.seq in done for t in clean if isinstance(t, order.Tlbi))


def test_the_2017_ordering_fails_the_leaf_rule_and_the_table_rules():
    header, evs = _recorded("order-2017-ordering-rodata-full.jsonl")
    leaf = order.check_leaf_flushed_before_free(evs, header["step"])
    assert leaf.verdict == "FAIL" and "while the leaf still mapped it" in leaf.evidence
    table = order.check_tlb_flushed_before_free(evs, header["step"])
    assert table.verdict == "FAIL" and "freed before its entry was cleared" in table.evidence


# ---------------------------------------------------------------- partial recordings

def _cut(evs, keep: int, why: str):
    return list(evs[:keep]) + [order.Incomplete(10**6, "remove 0x80000000", why)]


@pytest.mark.parametrize("why", [
    "stopped recording after 20000 stops (the cap, max_stops)",
    "gdb lost the connection to QEMU's gdbstub: Remote connection closed",
    "the guest stopped for no breakpoint of the agent (signal:SIGTRAP) at 0xffff8000",
    "arch_remove_memory() had not returned when the recording ended",
])
def test_a_partial_recording_is_never_a_verdict(why):
    """A recording cut short is ERROR for every rule, even where what was
    recorded before the cut looks clean (or looks like a FAIL)."""
    for name in ("order-clean-rodata-full.jsonl", "order-no-flush-rodata-full.jsonl"):
        _h, evs = _recorded(name)
        for keep in (len(evs) // 3, len(evs)):
            for rule in order.RULES.values():
                v = rule(_cut(evs, keep, why), "remove 0x80000000")
                assert v.verdict == "ERROR" and why in v.evidence, (rule, v.verdict)


def test_a_table_cleared_and_never_seen_freed_is_no_longer_a_pass():
    """Before: PASS (no free seen) and 'not applicable'. Now the unlinked rule FAILs."""
    _h, evs = _recorded("order-clean-rodata-full.jsonl")
    cleared = {e.table_pa for e in evs if isinstance(e, order.Clear) and not e.leaf}
    victim = sorted(cleared)[0]
    cut = [e for e in evs if not (isinstance(e, order.Free) and e.pa <= victim < e.pa_end)]
    v = order.check_unlinked_tables_freed(cut, "remove 0x80000000")
    assert v.verdict == "FAIL" and f"table PA {victim:#x}" in v.evidence
    assert order.unfreed_tables(cut) == [victim]


# ---------------------------------------------------------------- dsb and the linear map

def test_decode_dsb_options_and_which_complete():
    from harness.inspect import a64
    assert a64.decode_dsb(0xD5033B9F) == "ish" and a64.decode_dsb(0xD5033A9F) == "ishst"
    assert a64.decode_dsb(0xD5033F9F) == "sy" and a64.decode_dsb(0xD503339F) == "osh"
    assert a64.decode_dsb(0xD503309F) is None          # SSBB
    assert a64.decode_dsb(0xD5033FDF) is None          # ISB
    assert [o for o in ("ish", "ishst", "osh", "sy", "nsh", "ld")
            if o in a64.DSB_COMPLETES] == ["ish", "osh", "sy"]


def test_paired_dsb_says_whether_a_branch_lies_between():
    from harness.inspect import a64

    def code(*words):
        return b"".join(w.to_bytes(4, "little") for w in words)
    TLBI, ISHST, ISH, ISB, BNE, ADD, RET, BL = (0xD5088360, 0xD5033A9F, 0xD5033B9F,
                                                0xD5033FDF, 0x54FFFFC1, 0x91000400,
                                                0xD65F03C0, 0x94000000)
    assert a64.paired_dsb(code(TLBI, ISH, ISB), 0) == (4, "ish", True)
    assert a64.paired_dsb(code(TLBI, ISHST, ISH), 0) == (8, "ish", True)   # ishst skipped
    assert a64.paired_dsb(code(TLBI, ADD, BNE, ISH), 0) == (12, "ish", False)   # a loop
    assert a64.paired_dsb(code(TLBI, ISB, BL, ISH), 0) is None     # a call ends the line
    assert a64.paired_dsb(code(TLBI, RET, ISH), 0) is None


WLIN = 0xFFFF000040000000
WRUN = order.LeafRun(WLIN, 0x200000, "PMD", 4)          # four 2 MiB leaves


def _window(*between, valid_at_return=()):
    enter = order.RemoveEnter(1, "s", 0x80000000, 0x800000, 0, (WRUN,), WLIN)
    ret = order.RemoveReturn(99, "s", 0, tuple(valid_at_return), "try_remove_memory+0xe8")
    return [enter, *between, ret]


def _wtlbi(seq, full, lo=0, hi=0, lin_valid=(), cpu=0):
    return order.Tlbi(seq, "s", 0xffff800080010000, "vmalle1is" if full else "vaale1is",
                      0, full, lo, hi, not full, True, "flush+0x10", cpu=cpu,
                      lin_valid=tuple(lin_valid))


def _wdsb(seq, *tlbis, cpu=0):
    return order.Dsb(seq, "s", 0xffff800080010004, "ish", cpu, tuple(tlbis), "flush+0x14")


def test_the_linear_map_rule_on_synthetic_windows():
    rule = order.check_leaf_flushed_before_free
    # cleared, then a full flush that completed: PASS
    assert rule(_window(_wtlbi(10, True), _wdsb(11, 10))).verdict == "PASS"
    # the full flush ran while two leaves were still mapped: those two FAIL
    v = rule(_window(_wtlbi(10, True, lin_valid=[(WLIN + 0x400000, WLIN + 0x800000)]),
                     _wdsb(11, 10)))
    assert v.verdict == "FAIL" and "2 of 4 leaves" in v.evidence
    assert f"VA {WLIN + 0x400000:#x}" in v.evidence and "while it was still mapped" in v.evidence
    # issued after the clear, never completed before the return
    v = rule(_window(_wtlbi(10, True)))
    assert v.verdict == "FAIL" and "no dsb ish" in v.evidence and "4 of 4" in v.evidence
    # a dsb on another CPU completes nothing of CPU 0's
    assert rule(_window(_wtlbi(10, True), order.Dsb(11, "s", 0, "ish", 1, (), ""))
                ).verdict == "FAIL"
    # a leaf-only tlbi of one VA covers the one leaf it falls in
    v = rule(_window(_wtlbi(10, False, WLIN, WLIN + 0x1000), _wdsb(11, 10)))
    assert v.verdict == "FAIL" and "3 of 4 leaves" in v.evidence
    # still mapped at the return
    v = rule(_window(_wtlbi(10, True), _wdsb(11, 10),
                     valid_at_return=[(WLIN, WLIN + 0x200000)]))
    assert v.verdict == "FAIL" and "still mapped when it returned" in v.evidence
    # a return never seen: cannot judge
    enter = _window()[0]
    assert rule([enter]).verdict == "ERROR"


def test_a_per_page_tlbi_loop_is_recognised_and_counted():
    """flush_tlb_kernel_range()'s loop as 6.12 compiles it with 64K pages
    (unmap_hotplug_range+0x27c): 8192 iterations for a 512 MiB flush."""
    from harness.inspect import a64
    words = (0xD50883F4, 0x91004294, 0xEB1400FF, 0x54FFFFA8, 0xD5033B9F)
    code = b"".join(w.to_bytes(4, "little") for w in words)
    assert a64.tlbi_loop(code, 0) == (0x10, 7, "hi", False)
    assert a64.paired_dsb(code, 0) == (16, "ish", False)
    start = 0xFFFFC00000000 >> 0        # operand units (VA >> 12)
    assert a64.loop_count(start, start + 8192 * 0x10, 0x10, "hi", False) == 8192
    assert a64.loop_count(start, start, 0x10, "hi", False) == 1    # runs once anyway
    assert a64.loop_count(start, start + 0x35, 0x10, "ne", True) is None
    # not a loop: the add steps another register, or the branch goes elsewhere
    other = (0xD50883F4, 0x91004273, 0xEB1400FF, 0x54FFFFA8)
    assert a64.tlbi_loop(b"".join(w.to_bytes(4, "little") for w in other), 0) is None
    away = (0xD50883F4, 0x91004294, 0xEB1400FF, 0x54FFFF88)
    assert a64.tlbi_loop(b"".join(w.to_bytes(4, "little") for w in away), 0) is None
