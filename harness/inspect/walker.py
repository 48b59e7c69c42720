"""Walk the arm64 kernel (TTBR1) translation tables from the host.

QEMU backs guest RAM with files (``memory-backend-file,share=on``); the host
mmaps them (:class:`FileBackedPhysMem`) and reads tables by guest physical
address, starting at ``swapper_pg_dir``. This is the kernel's real state, not
what the kernel chooses to report. Pause the guest (QMP ``stop``) around a walk:
the files change under the reader while it runs.

Descriptor formats (``arch/arm64/include/asm/pgtable-hwdef.h``, ``pgtable.h``):

* bit 0 valid; at every level but the last, bit 1 set = table, clear = block;
  at the last level bit 1 must be set (page), clear is reserved.
* output/next-table address: bits [49:page_shift] (``PTE_ADDR_LOW``), plus with
  52-bit PA: 64K pages (FEAT_LPA) PA[51:48] in bits [15:12]; 4K/16K with LPA2
  (``TCR.DS``) PA[51:50] in bits [9:8], which are then no shareability bits.
* blocks exist at hardware level 1 and 2 with 4K pages (level 0 too with LPA2),
  level 2 with 16K (level 1 too with LPA2), level 2 with 64K (level 1 too with
  52-bit PA).

Only entries that overlap the requested VA range are visited, and each is
reported whole (a 1 GiB block overlapping the range is not clipped). Adjacent
leaves of one level with the same attributes and contiguous output addresses
are coalesced (as ptdump does, plus the PA check). Tables shared by several
entries (KASAN's zero shadow) are walked once per reference. Little-endian
descriptors only (no ``CPU_BIG_ENDIAN`` kernels).
"""
from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, TypeVar, Union

from harness.inspect import InspectError
from harness.kernel.layout import Geometry

_U64 = (1 << 64) - 1


class WalkError(InspectError):
    """The walk cannot proceed: bad geometry, unreadable root table."""


class PhysMemError(WalkError):
    """A guest physical address is outside every backing buffer."""


# ---------------------------------------------------------------- geometry

# ---------------------------------------------------------------- physical memory

class PhysMem(Protocol):
    def read(self, pa: int, size: int) -> bytes: ...


Buffer = Union[bytes, bytearray, memoryview, mmap.mmap]


class BufferPhysMem:
    """Guest physical memory from in-memory buffers: ``[(guest_pa_base, buffer)]``."""

    def __init__(self, regions: Iterable[tuple[int, Buffer]]):
        self._regions = sorted(((base, base + len(buf), buf) for base, buf in regions),
                               key=lambda r: r[0])
        for (_, end, _), (base, _, _) in zip(self._regions, self._regions[1:]):
            if base < end:
                raise PhysMemError(f"backings overlap at PA 0x{base:x}")

    def ranges(self) -> list[tuple[int, int]]:
        return [(base, end) for base, end, _ in self._regions]

    def read(self, pa: int, size: int) -> bytes:
        for base, end, buf in self._regions:
            if base <= pa and pa + size <= end:
                return bytes(buf[pa - base:pa - base + size])
        have = ", ".join(f"0x{b:x}-0x{e:x}" for b, e in self.ranges())
        raise PhysMemError(f"guest PA 0x{pa:x}+0x{size:x} is outside every backing "
                           f"({have})")


class FileBackedPhysMem(BufferPhysMem):
    """Guest RAM from QEMU memory-backend files: ``[(guest_pa_base, path)]``.

    E.g. ``[(0x40000000, "/dev/shm/ram0"), (0x80000000, "/dev/shm/dimm1")]``.
    Read-only shared mappings; use as a context manager or call :meth:`close`.
    """

    def __init__(self, backings: Iterable[tuple[int, Union[str, os.PathLike[str]]]]):
        self._maps = []
        try:
            for base, path in backings:
                self._maps.append((base, _map_file(path)))
        except BaseException:
            self.close()
            raise
        super().__init__(self._maps)

    def close(self) -> None:
        for _, m in self._maps:
            m.close()
        self._maps = []

    def __enter__(self) -> FileBackedPhysMem:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _map_file(path: Union[str, os.PathLike[str]]) -> mmap.mmap:
    try:
        with open(path, "rb") as f:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as e:
        raise PhysMemError(f"cannot map guest RAM file {path}: {e}") from e


# ---------------------------------------------------------------- records

@dataclass(frozen=True)
class Leaf:
    """A (coalesced) valid mapping ``[va_start, va_end)`` -> ``pa``.

    ``attrs_raw`` is the descriptor with its output-address bits cleared.
    """

    va_start: int
    va_end: int
    pa: int
    level: str
    attrs_raw: int

    @property
    def size(self) -> int:
        return self.va_end - self.va_start

    @property
    def pa_end(self) -> int:
        return self.pa + self.size

    def to_dict(self) -> dict[str, Any]:
        return {"va_start": hex(self.va_start), "va_end": hex(self.va_end),
                "pa": hex(self.pa), "level": self.level, "attrs_raw": hex(self.attrs_raw)}


class BadEntry(NamedTuple):
    """A non-zero descriptor that maps nothing, or points where it cannot. A
    tuple, as :class:`harness.records.WalkSummary` keeps and saves it
    (``[va, level, raw, reason]``)."""

    va: int
    level: str
    raw: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"va": hex(self.va), "level": self.level, "raw": hex(self.raw),
                "reason": self.reason}


@dataclass(frozen=True)
class WalkResult:
    """``tables``: PAs of the table pages visited, by the level of their entries
    (the root is ``PGD``). ``empty_tables``: those whose entries are all zero -
    in a hot-removed range, a table the kernel should have freed."""

    va_start: int
    va_end: int
    leaves: tuple[Leaf, ...]
    tables: dict[str, frozenset[int]]
    empty_tables: dict[str, frozenset[int]]
    bad: tuple[BadEntry, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"va_start": hex(self.va_start), "va_end": hex(self.va_end),
                "leaves": [x.to_dict() for x in self.leaves],
                "tables": {k: sorted(hex(p) for p in v) for k, v in self.tables.items()},
                "empty_tables": {k: sorted(hex(p) for p in v)
                                 for k, v in self.empty_tables.items()},
                "bad": [b.to_dict() for b in self.bad]}


# ---------------------------------------------------------------- walk

class _Codec:
    """Output-address encoding of one geometry."""

    def __init__(self, geo: Geometry):
        ps = geo.page_shift
        self.low = ((1 << (50 - ps)) - 1) << ps                  # PTE_ADDR_LOW
        if geo.pa_bits == 52 and geo.granule == 65536:
            self.high, self.high_shift = 0xF << 12, 36           # PA[51:48] in [15:12]
        elif geo.pa_bits == 52:
            self.high, self.high_shift = 0x3 << 8, 42            # PA[51:50] in [9:8]
        else:
            self.high, self.high_shift = 0, 0
        self.attr_mask = _U64 & ~(self.low | self.high)

    def addr(self, d: int) -> int:
        return (d & self.low) | ((d & self.high) << self.high_shift)


def _frozen(d: dict[str, set[int]]) -> dict[str, frozenset[int]]:
    return {k: frozenset(v) for k, v in d.items()}


class _Walker:
    def __init__(self, mem: PhysMem, geo: Geometry, lo: int, hi: int):
        self.mem, self.lo, self.hi = mem, lo, hi
        self.codec = _Codec(geo)
        self.names, self.shifts = geo.level_names, geo.shifts
        self.counts = tuple(geo.entries(pos) for pos in range(geo.levels))
        self.blocks = tuple(geo.block_allowed(pos) for pos in range(geo.levels))
        self.last = geo.levels - 1
        self.leaves: list[Leaf] = []
        self.pending: list[Any] | None = None     # [va, va_end, pa, level, attrs]
        self.tables: dict[str, set[int]] = {n: set() for n in self.names}
        self.empty: dict[str, set[int]] = {n: set() for n in self.names}
        self.bad: list[BadEntry] = []

    def result(self) -> WalkResult:
        self.flush()
        return WalkResult(self.lo, self.hi, tuple(self.leaves), _frozen(self.tables),
                          _frozen(self.empty), tuple(self.bad))

    def table(self, pa: int, pos: int, base: int) -> None:
        n, shift = self.counts[pos], self.shifts[pos]
        raw = self.mem.read(pa, n * 8)
        self.tables[self.names[pos]].add(pa)
        if raw.count(0) == len(raw):
            self.empty[self.names[pos]].add(pa)
            return
        words = struct.unpack(f"<{n}Q", raw)
        first = max(0, (self.lo - base) >> shift)
        stop = min(n, ((self.hi - 1 - base) >> shift) + 1)
        if self.uniform(words, first, stop, pos, base):
            return
        entry = self.entry
        for i in range(first, stop):
            if words[i]:
                entry(words[i], pos, base + (i << shift))

    def uniform(self, words: tuple[int, ...], first: int, stop: int, pos: int,
                base: int) -> bool:
        """One run of leaves with consecutive output addresses: emit it at once."""
        count, d0 = stop - first, words[first]
        if count < 2 or not d0 & 1 or self.leaf_error(d0, pos) is not None:
            return False
        size = 1 << self.shifts[pos]
        if (d0 & self.codec.low) + (count - 1) * size > self.codec.low:
            return False                       # the address field would carry over
        if words[first:stop] != tuple(range(d0, d0 + count * size, size)):
            return False
        self.leaf(base + (first << self.shifts[pos]), count * size, d0, pos)
        return True

    def entry(self, d: int, pos: int, va: int) -> None:
        if not d & 1:
            return self.note_bad(va, pos, d, "valid bit clear")
        if d & 2 and pos != self.last:
            return self.descend(d, pos, va)
        error = self.leaf_error(d, pos)
        if error:
            return self.note_bad(va, pos, d, error)
        self.leaf(va, 1 << self.shifts[pos], d, pos)

    def leaf_error(self, d: int, pos: int) -> str | None:
        if pos == self.last:
            return None if d & 2 else "reserved descriptor (bit 1 clear) at page level"
        if d & 2:
            return "table descriptor"
        if not self.blocks[pos]:
            return "block descriptor at a level that allows none"
        return None

    def descend(self, d: int, pos: int, va: int) -> None:
        try:
            self.table(self.codec.addr(d), pos + 1, va)
        except PhysMemError as e:
            self.note_bad(va, pos, d, f"next-level table unreadable: {e.message}")

    def note_bad(self, va: int, pos: int, d: int, reason: str) -> None:
        self.bad.append(BadEntry(va, self.names[pos], d, reason))

    def leaf(self, va: int, size: int, d: int, pos: int) -> None:
        codec = self.codec
        pa = codec.addr(d) & -(1 << self.shifts[pos])
        attrs, level, p = d & codec.attr_mask, self.names[pos], self.pending
        if p and p[1] == va and p[2] + (va - p[0]) == pa and p[3] == level and p[4] == attrs:
            p[1] = va + size
            return
        self.flush()
        self.pending = [va, va + size, pa, level, attrs]

    def flush(self) -> None:
        if self.pending:
            self.leaves.append(Leaf(*self.pending))
            self.pending = None


def walk(mem: PhysMem, geometry: Geometry, root_pa: int,
         va_start: int | None = None, va_end: int | None = None) -> WalkResult:
    """Walk the tables under ``root_pa`` (``swapper_pg_dir``), only the subtrees
    that overlap ``[va_start, va_end)`` (default: the whole TTBR1 range)."""
    lo = geometry.va_base if va_start is None else va_start
    hi = 1 << 64 if va_end is None else va_end
    if not geometry.va_base <= lo < hi <= 1 << 64:
        raise WalkError(f"VA range 0x{lo:x}-0x{hi:x} is not inside the kernel half "
                        f"0x{geometry.va_base:x}-0x{1 << 64:x}")
    walker = _Walker(mem, geometry, lo, hi)
    walker.table(root_pa, 0, geometry.va_base)
    return walker.result()


class Mapped(Protocol):
    """A leaf as the helpers below need it: this module's :class:`Leaf` or the
    saved form :class:`harness.records.Leaf` (which the checks read)."""

    @property
    def va_start(self) -> int: ...
    @property
    def va_end(self) -> int: ...
    @property
    def pa(self) -> int: ...
    @property
    def pa_end(self) -> int: ...


M_co = TypeVar("M_co", bound=Mapped, covariant=True)
M = TypeVar("M", bound=Mapped)


class Walked(Protocol[M_co]):
    """Anything with ``leaves``: a :class:`WalkResult` or a saved
    :class:`harness.records.WalkSummary`."""

    @property
    def leaves(self) -> Sequence[M_co]: ...


def leaves_covering_pa(walked: Walked[M], pa_start: int, pa_end: int) -> list[M]:
    """Leaves whose output range overlaps physical ``[pa_start, pa_end)``: after a
    hot-remove, any such leaf in the linear map is a stale mapping."""
    return [x for x in walked.leaves if x.pa < pa_end and pa_start < x.pa_end]


def leaves_covering_va(walked: Walked[M], va_start: int, va_end: int) -> list[M]:
    """Leaves whose VA range overlaps ``[va_start, va_end)``."""
    return [x for x in walked.leaves if x.va_start < va_end and va_start < x.va_end]


def table_counts(result: WalkResult) -> dict[str, int]:
    return {level: len(pas) for level, pas in result.tables.items()}


# ---------------------------------------------------------------- kernel image

def kimage_pa(va: int, kernel_va_base: int, kernel_pa_base: int) -> int:
    """PA of a kernel-image symbol: ``va - kimage_voffset``.

    Pair ``_text``'s VA (vmlinux, ``nokaslr``) with the start of ``Kernel code``
    in ``/proc/iomem``, which 6.12 sets to ``__pa_symbol(_text)``.
    """
    if va < kernel_va_base:
        raise WalkError(f"VA 0x{va:x} is below the kernel image base 0x{kernel_va_base:x}")
    return va - kernel_va_base + kernel_pa_base
