"""What a built kernel's own files say about its memory layout, learned once
per artifact (``KernelArtifacts.layout``) and carried to the stages after it.

Takes the final ``.config`` and ``vmlinux``; gives a :class:`KernelLayout`: the
translation :class:`Geometry` (page size, VA bits, levels, PA bits), the memory
block (section) size, and the addresses of the symbols the later stages read
(``swapper_pg_dir``, ``_text``, ``memstart_addr``, ``set_swapper_pgd``). What
only the running kernel knows (the region bounds ptdump prints, ``memstart_addr``'s
value, ``vabits_actual``) is learned by the drive stage on top of this.
"""
from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from harness.errors import HarnessError, ToolMissing

_LEVEL_NAMES = {5: ("PGD", "P4D", "PUD", "PMD", "PTE"), 4: ("PGD", "PUD", "PMD", "PTE"),
                3: ("PGD", "PMD", "PTE"), 2: ("PGD", "PTE")}
_PAGE_SHIFTS = {4096: 12, 16384: 14, 65536: 16}
# the kernel-image symbols the walker, the gdb agent and the Recorder need
# _stext and __init_begin: which symbol /proc/iomem's "Kernel code" starts at
# (drive/phases.kernel_code_va)
LAYOUT_SYMBOLS = ("swapper_pg_dir", "_text", "memstart_addr", "set_swapper_pgd",
                  "_stext", "__init_begin")


class LayoutError(HarnessError):
    """The kernel's config or symbols do not give a usable layout."""


# ---------------------------------------------------------------- geometry

@dataclass(frozen=True)
class Geometry:
    """Translation geometry of the running kernel (TTBR1 half).

    ``va_bits`` is the VA size in effect (``vabits_actual``) and ``levels`` the
    number of levels the kernel walks. ``pa_bits=52`` selects the 52-bit output
    address encodings (64K: FEAT_LPA; 4K/16K: LPA2, only when 52-bit VA is active).
    """

    granule: int
    va_bits: int
    levels: int
    pa_bits: int = 48

    def __post_init__(self) -> None:
        if self.granule not in _PAGE_SHIFTS:
            raise LayoutError(f"granule must be 4096, 16384 or 65536, not {self.granule}")
        if self.pa_bits not in (48, 52):
            raise LayoutError(f"pa_bits must be 48 or 52, not {self.pa_bits}")
        expected = (self.va_bits - 4) // (self.page_shift - 3)   # ARM64_HW_PGTABLE_LEVELS
        if self.levels != expected or self.levels not in _LEVEL_NAMES:
            raise LayoutError(f"{self.granule // 1024}K pages with {self.va_bits}-bit VA "
                            f"need {expected} levels, not {self.levels}")

    @classmethod
    def from_kconfig(cls, config: Mapping[str, object],
                     va_bits_actual: int | None = None) -> Geometry:
        """From ``.config`` values (``CONFIG_ARM64_4K_PAGES=y`` ...).

        ``va_bits_actual``: pass 48 (47 for 16K) when a 52-bit-VA kernel with 4K
        or 16K pages runs on a CPU without LPA2: the kernel then folds the top
        level and uses ``swapper_pg_dir`` as the next level's table. With 64K
        pages it changes nothing: the kernel keeps indexing ``swapper_pg_dir``
        with 52 bits (only the hardware TTBR1 gets ``TTBR1_BADDR_4852_OFFSET``).
        The root to walk is ``swapper_pg_dir`` in every case.
        """
        granule = _granule(config)
        va_bits = int(str(_option(config, "CONFIG_ARM64_VA_BITS")))
        levels = int(str(_option(config, "CONFIG_PGTABLE_LEVELS")))
        pa_bits = 52 if _is_set(config, "CONFIG_ARM64_PA_BITS_52") else 48
        if va_bits_actual is not None and va_bits_actual != va_bits and granule != 65536:
            va_bits = va_bits_actual
            levels = (va_bits - 4) // (_PAGE_SHIFTS[granule] - 3)
            pa_bits = 48                  # LPA2 comes only with 52-bit VA
        return cls(granule, va_bits, levels, pa_bits)

    @property
    def page_shift(self) -> int:
        return _PAGE_SHIFTS[self.granule]

    @property
    def level_names(self) -> tuple[str, ...]:
        """Linux names, top first; folded levels vanish as in ptdump (3 levels: PGD PMD PTE)."""
        return _LEVEL_NAMES[self.levels]

    @property
    def shifts(self) -> tuple[int, ...]:
        """VA shift of each level, top first (``ARM64_HW_PGTABLE_LEVEL_SHIFT``)."""
        return tuple((self.page_shift - 3) * (4 - hw) + 3 for hw in self.hw_levels)

    @property
    def hw_levels(self) -> tuple[int, ...]:
        """Architectural level numbers, top first (-1 is the LPA2 extra level)."""
        return tuple(range(4 - self.levels, 4))

    def entries(self, pos: int) -> int:
        """Number of descriptors in a table at position ``pos`` (the top may be partial)."""
        bits = self.va_bits - self.shifts[0] if pos == 0 else self.page_shift - 3
        return 1 << bits

    def block_allowed(self, pos: int) -> bool:
        hw = self.hw_levels[pos]
        if self.granule == 4096:
            return hw in (1, 2) or (hw == 0 and self.lpa2)
        return hw == 2 or (hw == 1 and self.pa_bits == 52)

    @property
    def lpa2(self) -> bool:
        return self.pa_bits == 52 and self.granule != 65536

    @property
    def va_base(self) -> int:
        """Lowest TTBR1 address."""
        return (1 << 64) - (1 << self.va_bits)

    def linear_map_range(self) -> tuple[int, int]:
        """``[PAGE_OFFSET, PAGE_END)`` without KASAN (KASAN moves PAGE_END down)."""
        if self.va_bits > 48:
            va_min = 47 if self.granule == 16384 else 48
        else:
            va_min = self.va_bits
        return self.va_base, (1 << 64) - (1 << (va_min - 1))


def _option(config: Mapping[str, object], name: str) -> object:
    for key in (name, name.removeprefix("CONFIG_")):
        if key in config:
            return config[key]
    raise LayoutError(f"kernel config lacks {name}")


def _is_set(config: Mapping[str, object], name: str) -> bool:
    value = config.get(name, config.get(name.removeprefix("CONFIG_")))
    return value is True or value == "y"


def _granule(config: Mapping[str, object]) -> int:
    found = [size for size, name in ((4096, "4K"), (16384, "16K"), (65536, "64K"))
             if _is_set(config, f"CONFIG_ARM64_{name}_PAGES")]
    if len(found) != 1:
        raise LayoutError("kernel config must set exactly one of CONFIG_ARM64_{4K,16K,64K}"
                        "_PAGES")
    return found[0]


# ---------------------------------------------------------------- symbols

SymbolTable = dict[str, list[tuple[int, int]]]   # name -> [(address, size)]


def read_symtab(elf_path: Union[str, os.PathLike[str]], names: Iterable[str] | None = None,
                types: Iterable[str] | None = None) -> SymbolTable:
    """name -> [(address, size), ...] from an ELF's ``.symtab``, in symbol-table
    order; only ``names`` (default all) of the symbol ``types`` (e.g.
    ``STT_FUNC``; default all). The one ELF symbol reader of the harness (the
    walker's kernel symbols here, crash symbolisation in harness.machine.crashwatch)."""
    try:
        from elftools.elf.elffile import ELFFile
        from elftools.elf.enums import ENUM_ST_INFO_TYPE
    except ImportError:
        raise ToolMissing("pyelftools (python module)", "python3-pyelftools") from None
    wanted = None if names is None else set(names)
    kinds = None if types is None else {ENUM_ST_INFO_TYPE[t] for t in types}
    table: SymbolTable = {}
    with open(elf_path, "rb") as f:
        elf = ELFFile(f)
        symtab: Any = elf.get_section_by_name(".symtab")   # a SymbolTableSection
        if symtab is None:
            raise LayoutError(f"{elf_path} has no .symtab (stripped?)")
        # the raw entries, unpacked in bulk: pyelftools' iter_symbols() builds an
        # object per symbol (0.6 s for a kernel's ~40k, on every run's first phase)
        strs = elf.get_section(symtab["sh_link"]).data()
        fmt = ("<" if elf.little_endian else ">") + (
            "IBBHQQ" if elf.elfclass == 64 else "IIIBBH")
        entries = struct.iter_unpack(fmt, symtab.data())
        offsets = None if wanted is None else _string_offsets(strs, wanted)
        for entry in entries:
            if elf.elfclass == 64:
                name_off, info, _other, _shndx, value, size = entry
            else:
                name_off, value, size, info, _other, _shndx = entry
            if not name_off or (offsets is not None and name_off not in offsets):
                continue
            if kinds is not None and info & 0xF not in kinds:
                continue
            name = strs[name_off:strs.index(b"\0", name_off)].decode("utf-8", "replace")
            table.setdefault(name, []).append((value, size))
    return table


def _string_offsets(strs: bytes, names: set[str]) -> set[int]:
    """Every offset in a string table at which one of ``names`` can be read (a
    symbol's name may be the tail of a longer string: linkers merge them)."""
    found = set()
    for name in names:
        needle = name.encode() + b"\0"
        at = strs.find(needle)
        while at >= 0:
            found.add(at)
            at = strs.find(needle, at + 1)
    return found


# ---------------------------------------------------------------- block size

def section_mb(kconfig: Mapping[str, object]) -> int:
    """The memory block (= section) size the kernel will use, from its config,
    as arch/arm64/include/asm/sparsemem.h sets it in 6.12: SECTION_SIZE_BITS 29
    (512 MiB) with 64K pages, 27 (128 MiB) with 4K and 16K. What a method must
    know before boot (memory layout); the booted kernel's block_size_bytes is
    checked against it (hotplug.common.check_section_size)."""
    return 512 if _is_set(kconfig or {}, "CONFIG_ARM64_64K_PAGES") else 128


# ---------------------------------------------------------------- the record

@dataclass(frozen=True)
class KernelLayout:
    """One kernel's layout from its files (see the module docstring)."""

    geometry: Geometry
    section_mb: int
    symbols: dict[str, Optional[int]] = field(default_factory=dict)  # name -> VA
    symbols_error: str = ""          # why symbols are missing, if they are

    @classmethod
    def from_files(cls, kconfig: Mapping[str, object],
                   vmlinux: Union[str, os.PathLike[str]]) -> KernelLayout:
        geo = Geometry.from_kconfig(kconfig)
        try:
            found = read_symtab(vmlinux, LAYOUT_SYMBOLS)
            symbols = {n: (found[n][0][0] if n in found else None) for n in LAYOUT_SYMBOLS}
            error = ""
        except (LayoutError, OSError) as e:
            symbols, error = {n: None for n in LAYOUT_SYMBOLS}, str(e)
        return cls(geo, section_mb(kconfig), symbols, error)

    def symbol(self, name: str) -> int:
        """A symbol's address; LayoutError naming it (and why) when unknown."""
        value = self.symbols.get(name)
        if value is None:
            why = f" ({self.symbols_error})" if self.symbols_error else ""
            raise LayoutError(f"vmlinux has no symbol {name}{why}")
        return value
