"""AArch64 instruction decoding for the ordering checks (pure: no gdb, no I/O).

What the gdb agent (:mod:`harness.inspect.gdb_agent`) must understand of the
kernel's machine code, and nothing more:

* ``tlbi`` (SYS with CRn=8, or 9 for the FEAT_XS nXS forms): which operation
  (:func:`decode_tlbi`, :class:`TlbiOp`) and which kernel VA range its operand
  invalidates (:func:`tlbi_effect`);
* ``dsb`` (:func:`decode_dsb`): its option, and whether it completes a
  broadcast TLB invalidation (:data:`DSB_COMPLETES`: ``ish``, ``osh``, ``sy``,
  the full-access forms whose domain includes every PE the ``is``/``os``
  invalidation reached; the ``st``/``ld`` forms and ``nsh`` do not);
* stores (:func:`store_range`), branches and barriers: to locate the store
  behind a watchpoint stop that QEMU reported late (:func:`late_window`);
* the sites in vmlinux (:func:`scan_sites`): every ``tlbi``, every ``dsb``, and
  for each ``tlbi`` the first ``dsb`` on its straight-line path (the barrier the
  agent breaks on to see the invalidation complete).
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Callable, Optional

_U64 = (1 << 64) - 1


def _sext(value: int, bits: int) -> int:
    return value - (1 << bits) if value & (1 << (bits - 1)) else value


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


# ---------------------------------------------------------------- DSB

# CRm -> option name (DSB: 0xD503309F | CRm << 8; CRm 0 and 4 are SSBB/PSSBB)
_DSB = {0xF: "sy", 0xE: "st", 0xD: "ld", 0xB: "ish", 0xA: "ishst", 0x9: "ishld",
        0x7: "nsh", 0x6: "nshst", 0x5: "nshld", 0x3: "osh", 0x2: "oshst", 0x1: "oshld"}
# Arm ARM, "TLB maintenance instructions": a broadcast TLBI is complete once the
# PE that issued it executes a DSB whose required access types are reads and
# writes and whose domain covers the PEs it was broadcast to: ISH (or OSH, SY)
DSB_COMPLETES = ("ish", "osh", "sy")


def decode_dsb(word: int) -> Optional[str]:
    """The option of a ``dsb`` instruction ("ish", "ishst", "sy", ...), else None."""
    if word & 0xFFFFF0FF != 0xD503309F:
        return None
    return _DSB.get((word >> 8) & 0xF)


# ---------------------------------------------------------------- sites in vmlinux

PAIR_SCAN_INSNS = 64      # how far after a tlbi its completing dsb is looked for


def _ends_straight_line(word: int) -> bool:
    """B, BL, BR, BLR, RET, ERET: the straight line after a tlbi ends here
    (conditional branches, CBZ/TBZ fall through: a loop's back edge)."""
    return (word & 0x7C000000 == 0x14000000            # B, BL
            or word & 0xFE000000 == 0xD6000000)         # BR, BLR, RET, ERET


def paired_dsb(code: bytes, off: int, limit: int = PAIR_SCAN_INSNS) -> Optional[tuple]:
    """``(offset, option, unbranched)`` of the first ``dsb`` that completes a
    broadcast invalidation (:data:`DSB_COMPLETES`) after the instruction at
    ``off`` on its straight line (see :func:`_ends_straight_line`), or None.
    ``unbranched``: no branch of any kind (conditional ones included) lies
    between the two, so the CPU that executed the tlbi executes this dsb next
    on its path, before any call the free could come from."""
    unbranched = True
    for k in range(1, limit + 1):
        at = off + 4 * k
        if at + 4 > len(code):
            return None
        word = int.from_bytes(code[at:at + 4], "little")
        opt = decode_dsb(word)
        if opt in DSB_COMPLETES:
            return at, opt, unbranched
        if _ends_straight_line(word):
            return None
        if is_branch(word):
            unbranched = False
    return None


# B.cond condition codes the loop decoder understands
_COND = {0x3: "lo", 0x8: "hi", 0x1: "ne", 0x2: "hs"}


def tlbi_loop(code: bytes, off: int) -> Optional[tuple]:
    """A ``tlbi`` that is the whole body of a loop stepping its own operand::

        tlbi OP, Xt ; add Xt, Xt, #inc ; cmp Xa, Xb ; b.cond <the tlbi>

    (``flush_tlb_kernel_range()``'s loop, one invalidation per page). Returns
    ``(inc, end_reg, cond, rt_first)``: the loop runs while ``Xa COND Xb``
    holds after the add, ``end_reg`` is the other operand of the ``cmp`` and
    ``rt_first`` says whether Xt is ``Xa``. None for anything else. No store
    lies in such a loop, so the memory every iteration sees is the memory the
    first one saw."""
    if off + 16 > len(code):
        return None
    tlbi, add, cmp_, br = (int.from_bytes(code[off + 4 * k:off + 4 * k + 4], "little")
                           for k in range(4))
    rt = tlbi & 31
    if add & 0xFF800000 != 0x91000000 or (add & 31) != rt or (add >> 5) & 31 != rt:
        return None
    inc = ((add >> 10) & 0xFFF) << (12 if (add >> 22) & 1 else 0)
    if cmp_ & 0xFF20FC1F != 0xEB00001F:            # SUBS XZR, Xn, Xm (LSL #0)
        return None
    rn, rm = (cmp_ >> 5) & 31, (cmp_ >> 16) & 31
    if rt not in (rn, rm) or rn == rm or inc == 0:
        return None
    if br & 0xFF000010 != 0x54000000:
        return None
    target = off + 12 + 4 * _sext((br >> 5) & 0x7FFFF, 19)
    cond = _COND.get(br & 0xF)
    if target != off or cond is None:
        return None
    return inc, (rm if rn == rt else rn), cond, rn == rt


def loop_count(start: int, end: int, inc: int, cond: str, rt_first: bool) -> Optional[int]:
    """How many times the loop of :func:`tlbi_loop` runs its ``tlbi`` when it
    is at the first one with ``Xt = start`` and the other register ``end``;
    None when it cannot be told (it would not end)."""
    u = (1 << 64) - 1
    if cond == "ne":
        diff = (end - start) & u
        return None if diff % inc else max(1, diff // inc)
    # continue while Xt < end: "cmp Xt, end; b.lo" or "cmp end, Xt; b.hi"
    if (cond in ("lo",) and rt_first) or (cond == "hi" and not rt_first):
        return 1 if end <= start else -(-(end - start) // inc)
    return None


def scan_sites(elf_bytes: bytes) -> dict:
    """Every ``tlbi`` and ``dsb`` in vmlinux's executable sections.

    ``{"tlbi": [[addr, op, rt, may_cover_table, dsb_addr|None, dsb_option|None,
    unbranched, loop|None]], "dsb": [[addr, option]]}``; ``dsb_addr`` is the
    tlbi's paired barrier (:func:`paired_dsb`), ``loop`` what :func:`tlbi_loop`
    found."""
    from elftools.elf.elffile import ELFFile
    SHF_EXECINSTR = 0x4
    tlbi_pat = re.compile(rb"[\x00-\xff][\x80-\x9f][\x08-\x0f]\xd5", re.S)
    dsb_pat = re.compile(rb"\x9f[\x30-\x3f]\x03\xd5", re.S)
    tlbis, dsbs = [], []
    elf = ELFFile(io.BytesIO(elf_bytes))
    for sec in elf.iter_sections():
        if not sec["sh_flags"] & SHF_EXECINSTR or sec["sh_type"] != "SHT_PROGBITS":
            continue
        code, base = sec.data(), sec["sh_addr"]
        for m in tlbi_pat.finditer(code):
            off = m.start()
            if off % 4:
                continue
            op = decode_tlbi(int.from_bytes(code[off:off + 4], "little"))
            if op is None:
                continue
            pair = paired_dsb(code, off)
            tlbis.append([base + off, op.name, op.rt, op.may_cover_table,
                          None if pair is None else base + pair[0],
                          None if pair is None else pair[1],
                          pair is not None and pair[2], tlbi_loop(code, off)])
        for m in dsb_pat.finditer(code):
            off = m.start()
            if off % 4:
                continue
            opt = decode_dsb(int.from_bytes(code[off:off + 4], "little"))
            if opt is not None:
                dsbs.append([base + off, opt])
    return {"tlbi": tlbis, "dsb": dsbs}


# ---------------------------------------------------------------- late watch stops
#
# A watchpoint stop is normally reported with the PC right after the store that
# hit it. Under MTTCG with two vCPUs QEMU sometimes reports it later: seen once in
# the false-alarm bench (run --method all --cycles 2, virtio-mem "shrink to 0",
# cycle 2), the stop came at free_empty_tables+0x3b4, five instructions after the
# str xzr at +0x39c, with the "tlbi vaae1is" at +0x3ac already executed; the flush
# check then reported a flush that did happen as missing. So the agent locates the
# store behind every watch stop (below) and accounts for what ran in between.

LATE_SCAN_INSNS = 16     # how far back from a watch stop the store is looked for




def _store_form(word: int, reg: Callable[[int], int]) -> Optional[tuple]:
    """An AArch64 general-purpose register store decoded against ``reg(n)``
    (Xn, 31 = SP): ``(n, base, offset, index, width, rts)``: the base register
    and its value, the immediate or extended register offset, ``index`` one of
    "offset", "pre", "post", "unpriv" (STTR), the bytes per register and the
    registers stored (STR/STUR/STTR of any size, register offset; STP/STNP of
    W or X registers). None for anything else."""
    size, v, n = word >> 30, (word >> 26) & 1, (word >> 5) & 31
    if (word >> 24) & 0x3B == 0x39 and (word >> 22) & 3 == 0 and not v:     # unsigned imm
        return n, reg(n), ((word >> 10) & 0xFFF) << size, "offset", 1 << size, (word & 31,)
    if (word >> 24) & 0x3B == 0x38 and (word >> 22) & 3 == 0 and not v:
        if (word >> 21) & 1 == 0:                                   # imm9 forms
            index = ("offset", "post", "unpriv", "pre")[(word >> 10) & 3]
            return (n, reg(n), _sext((word >> 12) & 0x1FF, 9), index, 1 << size,
                    (word & 31,))
        if (word >> 10) & 3 == 2:                                   # register offset
            m, option, s = (word >> 16) & 31, (word >> 13) & 7, (word >> 12) & 1
            xm = 0 if m == 31 else reg(m)
            if option == 2:
                xm &= 0xFFFFFFFF
            elif option == 6:
                xm = _sext(xm & 0xFFFFFFFF, 32)
            elif option not in (3, 7):
                return None
            return (n, reg(n), xm << (size if s else 0), "offset", 1 << size,
                    (word & 31,))
        return None
    if (word >> 27) & 7 == 0b101 and not v and (word >> 22) & 1 == 0 and size in (0, 2):
        scale = 2 + (size >> 1)                                     # STP/STNP W or X
        index = ("offset", "post", "offset", "pre")[(word >> 23) & 3]
        return (n, reg(n), _sext((word >> 15) & 0x7F, 7) << scale, index, 1 << scale,
                (word & 31, (word >> 10) & 31))
    return None


def store_range(word: int, reg: Callable[[int], int]) -> Optional[tuple]:
    """``(address, size)`` written by an AArch64 general-purpose register store
    (STR/STUR/STTR of any size, pre/post-indexed or register offset; STP/STNP),
    computed from the registers as they are now (``reg(n)``: Xn, 31 = SP);
    None for anything else. A write-back form is undone (post-index) or
    already applied (pre-index), so the address is the one the store used as
    long as the base register was not written again since."""
    form = _store_form(word, reg)
    if form is None:
        return None
    _n, base, offset, index, width, rts = form
    addr = {"pre": base, "post": base - offset}.get(index, base + offset)
    return addr & _U64, width * len(rts)


def store_effect(word: int, reg: Callable[[int], int]) -> Optional[tuple]:
    """What an AArch64 general-purpose register store is about to do, from the
    registers before it runs (``reg(n)``: Xn, 31 = SP):
    ``(address, data, writeback)``, ``data`` the little-endian bytes written,
    ``writeback`` ``(n, value)`` for a pre/post-indexed form, else None. For
    STR/STUR of any size (unsigned offset, pre/post-indexed, register offset)
    and STP/STNP of W or X registers; None for anything else (STTR, atomics,
    exclusives, SIMD), which the caller steps instead of carrying out."""
    form = _store_form(word, reg)
    if form is None or form[3] == "unpriv":
        return None
    n, base, offset, index, width, rts = form
    data = b"".join((0 if t == 31 else reg(t) & ((1 << (8 * width)) - 1)).to_bytes(
        width, "little") for t in rts)
    addr = (base if index == "post" else base + offset) & _U64
    wb = (n, (base + offset) & _U64) if index in ("pre", "post") else None
    return addr, data, wb


def is_branch(word: int) -> bool:
    return (word & 0x7C000000 == 0x14000000 or word & 0xFF000000 == 0x54000000
            or word & 0x7E000000 in (0x34000000, 0x36000000)
            or word & 0xFE000000 == 0xD6000000)


ISB = 0xD5033FDF
ISB_SCAN_INSNS = 8        # how far after a completing dsb its isb is looked for


def isb_follows(words: list) -> Optional[bool]:
    """Whether the instructions after a ``dsb`` (``words``, in order) reach an
    ``isb`` on their straight line: True at an ``isb`` before any branch; False
    at a branch or after :data:`ISB_SCAN_INSNS` words without one; None for no
    words at all. Walk-cache invalidation needs the ``isb`` too: without it, an
    instruction after the barrier may still have been fetched through the old
    entry (upstream d6984c21d815)."""
    if not words:
        return None
    for word in words[:ISB_SCAN_INSNS]:
        if word == ISB:
            return True
        if is_branch(word):
            return False
    return False


def is_barrier_or_hint(word: int) -> bool:
    """DSB/DMB/ISB/SB and the hint space (NOP, BTI, PAC hints): no register written."""
    return word & 0xFFFFF01F in (0xD503201F, 0xD503301F)


def late_window(words: list, base: int, pc: int, entry_va: int,
                reg: Callable[[int], int], sites) -> tuple:
    """Where the store behind a watch stop at ``pc`` is, and which TLBIs ran
    between it and the stop.

    ``words``: the instruction words at ``base``, ``base + 4``... up to ``pc``;
    ``sites``: ``(addr, op, rt)`` of the TLBIs the check follows. Returns
    ``(store_addr, tlbis, why)``: ``store_addr`` is None when no store to
    ``entry_va`` was found before ``pc``; ``tlbis`` are the sites in between,
    each executed on the straight line from the store to the stop; ``why`` is
    empty when that account is complete, else what could not be established
    (a branch in between, a TLBI whose operand may have been overwritten)."""
    n = len(words)
    store = None
    for k in range(n - 1, -1, -1):
        got = store_range(words[k], reg)
        if got is not None and got[0] <= entry_va < got[0] + got[1]:
            store = base + 4 * k
            break
    if store is None:
        return None, [], (f"no store to {entry_va:#x} in the {n} instructions before the "
                          f"stop at {pc:#x}: what ran between the store and the stop "
                          "is unknown")
    between = [(base + 4 * k, words[k]) for k in range((store - base) // 4 + 1, n)]
    if any(is_branch(w) for _a, w in between):
        return store, [], (f"the stop at {pc:#x} came {len(between)} instructions after "
                           f"the store at {store:#x}, with a branch in between")
    tlbis = []
    for addr, op, rt in sites:
        if not store < addr < pc:
            continue
        after = [w for a, w in between if a > addr]
        if rt != 31 and not all(is_barrier_or_hint(w) for w in after):
            return store, [], (f"the tlbi at {addr:#x} ran between the store at {store:#x} "
                               f"and the stop at {pc:#x}, and its operand x{rt} may have "
                               "changed before the stop")
        tlbis.append((addr, op, rt))
    return store, sorted(tlbis), ""


