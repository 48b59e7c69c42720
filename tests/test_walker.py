"""Tests for harness.inspect.walker on synthetic translation tables.

The builder below writes descriptors with its own encoder (the kernel's
``__phys_to_pte_val``), so the walker's decoder is checked against an
independent implementation for 4K/4-level, 4K/3-level, 64K/2-level,
16K/3-level, 4K/5-level LPA2 and 64K 52-bit PA.
"""
from __future__ import annotations

import json
import shutil
import struct
import subprocess

import pytest

from harness.inspect.walker import (
    BufferPhysMem,
    FileBackedPhysMem,
    Geometry,
    PhysMemError,
    WalkError,
    kimage_pa,
    leaves_covering_pa,
    leaves_covering_va,
    table_counts,
    walk,
)
from harness.kernel.layout import KernelLayout, LayoutError

AF, SH, RDONLY, PXN, UXN = 1 << 10, 3 << 8, 1 << 7, 1 << 53, 1 << 54
RAM = 0x4000_0000
M, G = 1 << 20, 1 << 30


def kernel_attrs(geo: Geometry, readonly: bool = False) -> int:
    """PAGE_KERNEL(_RO); LPA2 drops the shareability bits (they hold PA[51:50])."""
    attrs = AF | PXN | UXN | (0 if geo.lpa2 else SH)
    return attrs | (RDONLY if readonly else 0)


class Tables:
    """Guest RAM in a bytearray, with page tables written for one geometry."""

    def __init__(self, geo: Geometry, pages: int = 64, base: int = RAM):
        self.geo, self.base = geo, base
        self.ram = bytearray(pages * geo.granule)
        self.next = base
        self.children: dict[tuple[int, int], int] = {}
        self.root = self.alloc()

    def alloc(self) -> int:
        pa, self.next = self.next, self.next + self.geo.granule
        return pa

    def mem(self) -> BufferPhysMem:
        return BufferPhysMem([(self.base, self.ram)])

    def write(self, table: int, index: int, desc: int) -> None:
        struct.pack_into("<Q", self.ram, table - self.base + 8 * index, desc)

    def index(self, va: int, pos: int) -> int:
        entries = self.geo.entries(0) if pos == 0 else 1 << (self.geo.page_shift - 3)
        return (va >> self.geo.shifts[pos]) & (entries - 1)

    def encode(self, pa: int) -> int:
        if self.geo.pa_bits == 52 and self.geo.granule == 65536:
            return (pa & ((1 << 48) - 1)) | ((pa >> 48) << 12)
        if self.geo.pa_bits == 52:
            return (pa & ((1 << 50) - 1)) | ((pa >> 50) << 8)
        return pa

    def table_for(self, va: int, pos: int) -> int:
        table = self.root
        for p in range(pos):
            key = (table, self.index(va, p))
            if key not in self.children:
                self.children[key] = self.alloc()
                self.write(table, key[1], self.encode(self.children[key]) | 3)
            table = self.children[key]
        return table

    def map(self, va: int, pa: int, level: str, attrs: int) -> None:
        pos = self.geo.level_names.index(level)
        kind = 3 if pos == self.geo.levels - 1 else 1
        self.write(self.table_for(va, pos), self.index(va, pos),
                   self.encode(pa) | attrs | kind)

    def map_range(self, va: int, pa: int, size: int, level: str, attrs: int) -> None:
        step = 1 << self.geo.shifts[self.geo.level_names.index(level)]
        for off in range(0, size, step):
            self.map(va + off, pa + off, level, attrs)


def linear(geo: Geometry, pa: int) -> int:
    return geo.linear_map_range()[0] + pa          # PHYS_OFFSET 0, as on QEMU virt


def spans(result):
    return [(x.va_start, x.va_end, x.pa, x.level) for x in result.leaves]


# ---------------------------------------------------------------- geometry

@pytest.mark.parametrize("granule,va,levels,shifts,top", [
    (4096, 39, 3, (30, 21, 12), 512),
    (4096, 48, 4, (39, 30, 21, 12), 512),
    (4096, 52, 5, (48, 39, 30, 21, 12), 16),
    (16384, 47, 3, (36, 25, 14), 2048),
    (16384, 48, 4, (47, 36, 25, 14), 2),
    (65536, 42, 2, (29, 16), 8192),
    (65536, 48, 3, (42, 29, 16), 64),
    (65536, 52, 3, (42, 29, 16), 1024),
])
def test_geometry_shifts_and_top_table(granule, va, levels, shifts, top):
    geo = Geometry(granule, va, levels)
    assert geo.shifts == shifts
    assert geo.entries(0) == top
    assert geo.entries(1) == granule // 8
    assert len(geo.level_names) == levels and geo.level_names[-1] == "PTE"


def test_geometry_rejects_wrong_levels_and_granule():
    with pytest.raises(LayoutError, match="need 4 levels"):
        Geometry(4096, 48, 3)
    with pytest.raises(LayoutError, match="granule"):
        Geometry(8192, 48, 4)


def test_geometry_from_kconfig():
    cfg = {"CONFIG_ARM64_4K_PAGES": "y", "CONFIG_ARM64_VA_BITS": "48",
           "CONFIG_PGTABLE_LEVELS": "4", "CONFIG_ARM64_PA_BITS_48": "y"}
    assert Geometry.from_kconfig(cfg) == Geometry(4096, 48, 4, 48)
    lpa2 = {"CONFIG_ARM64_4K_PAGES": "y", "CONFIG_ARM64_VA_BITS": 52,
            "CONFIG_PGTABLE_LEVELS": 5, "CONFIG_ARM64_PA_BITS_52": "y"}
    assert Geometry.from_kconfig(lpa2) == Geometry(4096, 52, 5, 52)
    assert Geometry.from_kconfig(lpa2).lpa2
    assert Geometry.from_kconfig(lpa2, va_bits_actual=48) == Geometry(4096, 48, 4, 48)
    k64 = {"CONFIG_ARM64_64K_PAGES": "y", "CONFIG_ARM64_VA_BITS": "52",
           "CONFIG_PGTABLE_LEVELS": "3", "CONFIG_ARM64_PA_BITS_52": "y"}
    assert Geometry.from_kconfig(k64, va_bits_actual=48) == Geometry(65536, 52, 3, 52)


def test_geometry_from_kconfig_names_what_is_missing():
    with pytest.raises(LayoutError, match="exactly one"):
        Geometry.from_kconfig({"CONFIG_ARM64_VA_BITS": "48"})
    with pytest.raises(LayoutError, match="CONFIG_PGTABLE_LEVELS"):
        Geometry.from_kconfig({"CONFIG_ARM64_4K_PAGES": "y", "CONFIG_ARM64_VA_BITS": "48"})


@pytest.mark.parametrize("geo,expected", [
    (Geometry(4096, 48, 4), (0xffff000000000000, 0xffff800000000000)),
    (Geometry(4096, 52, 5, 52), (0xfff0000000000000, 0xffff800000000000)),
    (Geometry(4096, 39, 3), (0xffffff8000000000, 0xffffffc000000000)),
    (Geometry(16384, 52, 4, 52), (0xfff0000000000000, 0xffffc00000000000)),
])
def test_linear_map_range(geo, expected):
    assert geo.linear_map_range() == expected


# ---------------------------------------------------------------- walks

def test_4k_48_linear_map_blocks_pages_and_coalescing():
    geo = Geometry(4096, 48, 4)
    t = Tables(geo)
    rw, ro = kernel_attrs(geo), kernel_attrs(geo, readonly=True)
    t.map_range(linear(geo, 0x4000_0000), 0x4000_0000, 2 * M, "PMD", rw)
    t.map_range(linear(geo, 0x4020_0000), 0x4020_0000, 2 * M, "PTE", ro)
    t.map_range(linear(geo, 0x4040_0000), 0x4040_0000, 0x3fc0_0000, "PMD", rw)
    t.map_range(linear(geo, 0x8000_0000), 0x8000_0000, 512 * M, "PMD", rw)  # next PUD
    result = walk(t.mem(), geo, t.root, *geo.linear_map_range())
    assert spans(result) == [
        (linear(geo, 0x4000_0000), linear(geo, 0x4020_0000), 0x4000_0000, "PMD"),
        (linear(geo, 0x4020_0000), linear(geo, 0x4040_0000), 0x4020_0000, "PTE"),
        (linear(geo, 0x4040_0000), linear(geo, 0xa000_0000), 0x4040_0000, "PMD"),
    ]
    assert table_counts(result) == {"PGD": 1, "PUD": 1, "PMD": 2, "PTE": 1}
    assert result.tables["PGD"] == {t.root}
    assert result.leaves[1].attrs_raw == ro | 3
    assert not result.bad and not any(result.empty_tables.values())


def test_coalescing_needs_contiguous_pa_and_equal_attrs():
    geo = Geometry(4096, 48, 4)
    t = Tables(geo)
    va = linear(geo, 0x4000_0000)
    t.map(va, 0x4000_0000, "PTE", kernel_attrs(geo))
    t.map(va + 0x1000, 0x5000_0000, "PTE", kernel_attrs(geo))          # PA jumps
    t.map(va + 0x2000, 0x5000_1000, "PTE", kernel_attrs(geo, True))    # attrs differ
    t.map(va + 0x3000, 0x5000_2000, "PTE", kernel_attrs(geo, True))    # joins previous
    assert [(x.va_end - x.va_start, x.pa) for x in walk(t.mem(), geo, t.root).leaves] == [
        (0x1000, 0x4000_0000), (0x1000, 0x5000_0000), (0x2000, 0x5000_1000)]


def test_full_uniform_table_and_a_broken_one_agree():
    geo = Geometry(4096, 48, 4)
    t = Tables(geo)
    va = linear(geo, 0x4000_0000)
    t.map_range(va, 0x4000_0000, 2 * M, "PTE", kernel_attrs(geo))
    assert spans(walk(t.mem(), geo, t.root)) == [(va, va + 2 * M, 0x4000_0000, "PTE")]
    t.map(va + 0x10_0000, 0x4010_0000, "PTE", kernel_attrs(geo, True))
    assert [x.size for x in walk(t.mem(), geo, t.root).leaves] == [0x10_0000, 0x1000,
                                                                   0xff000]


def test_run_whose_address_field_carries_into_bit_50_is_not_one_leaf():
    geo = Geometry(4096, 48, 4)
    t = Tables(geo)
    va = linear(geo, 0x4000_0000)
    t.map(va, (1 << 50) - 0x1000, "PTE", kernel_attrs(geo))
    table = t.table_for(va, 3)
    t.write(table, 1, ((1 << 50) - 0x1000 | kernel_attrs(geo) | 3) + 0x1000)  # GP bit, PA 0
    leaves = walk(t.mem(), geo, t.root, va, va + 0x2000).leaves
    assert [(x.pa, x.attrs_raw >> 50 & 1) for x in leaves] == [((1 << 50) - 0x1000, 0),
                                                               (0, 1)]


def test_4k_39_three_levels_with_gigabyte_block_at_pgd():
    geo = Geometry(4096, 39, 3)
    t = Tables(geo)
    t.map(linear(geo, 0x4000_0000), 0x4000_0000, "PGD", kernel_attrs(geo))
    t.map_range(linear(geo, 0x8000_0000), 0x8000_0000, 8192, "PTE", kernel_attrs(geo))
    result = walk(t.mem(), geo, t.root)
    assert spans(result) == [
        (linear(geo, 0x4000_0000), linear(geo, 0x8000_0000), 0x4000_0000, "PGD"),
        (linear(geo, 0x8000_0000), linear(geo, 0x8000_2000), 0x8000_0000, "PTE")]
    assert table_counts(result) == {"PGD": 1, "PMD": 1, "PTE": 1}


def test_64k_42_two_levels():
    geo = Geometry(65536, 42, 2)
    t = Tables(geo, pages=8)
    t.map_range(linear(geo, 0x4000_0000), 0x4000_0000, 1 * G, "PGD", kernel_attrs(geo))
    t.map_range(linear(geo, 0x8000_0000), 0x8000_0000, 4 * 65536, "PTE", kernel_attrs(geo))
    result = walk(t.mem(), geo, t.root)
    assert spans(result) == [
        (linear(geo, 0x4000_0000), linear(geo, 0x8000_0000), 0x4000_0000, "PGD"),
        (linear(geo, 0x8000_0000), linear(geo, 0x8004_0000), 0x8000_0000, "PTE")]
    assert table_counts(result) == {"PGD": 1, "PTE": 1}


def test_16k_47_three_levels_rejects_block_at_pgd():
    geo = Geometry(16384, 47, 3)
    t = Tables(geo, pages=8)
    t.map_range(linear(geo, 0x4000_0000), 0x4000_0000, 64 * M, "PMD", kernel_attrs(geo))
    t.map(linear(geo, 0x10_0000_0000), 0x10_0000_0000, "PGD", kernel_attrs(geo))  # 64G
    result = walk(t.mem(), geo, t.root)
    assert spans(result) == [
        (linear(geo, 0x4000_0000), linear(geo, 0x4400_0000), 0x4000_0000, "PMD")]
    assert [(b.level, b.reason) for b in result.bad] == [
        ("PGD", "block descriptor at a level that allows none")]


def test_4k_52_lpa2_five_levels_decodes_pa_51_50():
    geo = Geometry(4096, 52, 5, pa_bits=52)
    t = Tables(geo)
    high = 0xC_0000_4000_0000                       # PA bits 51 and 50 set
    va = linear(geo, 0x4000_0000)
    t.map_range(va, high, 4 * M, "PMD", kernel_attrs(geo))
    result = walk(t.mem(), geo, t.root)
    assert spans(result) == [(va, va + 4 * M, high, "PMD")]
    assert result.leaves[0].attrs_raw == kernel_attrs(geo) | 1      # bits 9:8 masked
    assert table_counts(result) == {"PGD": 1, "P4D": 1, "PUD": 1, "PMD": 1, "PTE": 0}


def test_64k_52_bit_pa_decodes_pa_51_48():
    geo = Geometry(65536, 52, 3, pa_bits=52)
    t = Tables(geo, pages=8)
    high = 0xF_0000_8000_0000 | 0x2_0000_0000      # PA bits 51:48 and 33
    va = linear(geo, 0x4000_0000)
    t.map_range(va, high, 2 * 65536, "PTE", kernel_attrs(geo))
    t.map(va + 512 * M, 0x8_0000_0000_0000, "PMD", kernel_attrs(geo))
    leaves = walk(t.mem(), geo, t.root).leaves
    assert [(x.pa, x.size) for x in leaves] == [(high, 2 * 65536),
                                                (0x8_0000_0000_0000, 512 * M)]


def test_restricted_range_walks_only_that_subtree():
    geo = Geometry(4096, 48, 4)
    t = Tables(geo)
    t.map_range(linear(geo, 0x4000_0000), 0x4000_0000, 4 * M, "PMD", kernel_attrs(geo))
    t.map_range(linear(geo, 0x8000_0000), 0x8000_0000, 4 * M, "PMD", kernel_attrs(geo))
    result = walk(t.mem(), geo, t.root, linear(geo, 0x8000_0000), linear(geo, 0xc000_0000))
    assert spans(result) == [
        (linear(geo, 0x8000_0000), linear(geo, 0x8040_0000), 0x8000_0000, "PMD")]
    assert table_counts(result)["PMD"] == 1


def test_range_inside_a_table_visits_only_its_entries():
    geo = Geometry(4096, 48, 4)
    t = Tables(geo)
    va = linear(geo, 0x4000_0000)
    t.map_range(va, 0x4000_0000, 2 * M, "PTE", kernel_attrs(geo))
    result = walk(t.mem(), geo, t.root, va + 0x1800, va + 0x3000)
    assert spans(result) == [(va + 0x1000, va + 0x3000, 0x4000_1000, "PTE")]
    assert leaves_covering_va(result, va, va + 0x2000) == list(result.leaves)


def test_bad_descriptors_are_reported_not_followed():
    geo = Geometry(4096, 48, 4)
    t = Tables(geo)
    va = linear(geo, 0x4000_0000)
    t.map(va, 0x4000_0000, "PTE", kernel_attrs(geo))
    pte_table = t.table_for(va, 3)
    t.write(pte_table, 1, 0x4000_1000 | kernel_attrs(geo) | 1)       # reserved at PTE
    t.write(pte_table, 2, 0x4000_2000 | kernel_attrs(geo))           # valid bit clear
    t.write(t.root, 300, 0x40_0000_0000 | 1)                         # block at level 0
    t.write(t.root, 301, 0x7000_0000 | 3)                            # table not in RAM
    result = walk(t.mem(), geo, t.root)
    assert [(b.level, b.reason.split(":")[0]) for b in result.bad] == [
        ("PTE", "reserved descriptor (bit 1 clear) at page level"),
        ("PTE", "valid bit clear"),
        ("PGD", "block descriptor at a level that allows none"),
        ("PGD", "next-level table unreadable"),
    ]
    assert len(result.leaves) == 1


def test_empty_table_is_reported():
    geo = Geometry(4096, 48, 4)
    t = Tables(geo)
    va = linear(geo, 0x8000_0000)
    t.map(va, 0x8000_0000, "PMD", kernel_attrs(geo))
    pmd_table = t.table_for(va, 2)
    t.write(pmd_table, t.index(va, 2), 0)          # leaf cleared, table not freed
    result = walk(t.mem(), geo, t.root)
    assert result.leaves == ()
    assert result.empty_tables["PMD"] == {pmd_table}
    assert pmd_table in result.tables["PMD"]


def test_root_outside_ram_raises():
    geo = Geometry(4096, 48, 4)
    with pytest.raises(PhysMemError, match="outside every backing"):
        walk(Tables(geo).mem(), geo, 0x1000)


def test_range_outside_ttbr1_raises():
    geo = Geometry(4096, 48, 4)
    t = Tables(geo)
    with pytest.raises(WalkError, match="kernel half"):
        walk(t.mem(), geo, t.root, 0x1000, 0x2000)


def test_leaves_covering_pa_finds_a_stale_mapping():
    geo = Geometry(4096, 48, 4)
    t = Tables(geo)
    t.map_range(linear(geo, 0x4000_0000), 0x4000_0000, 8 * M, "PMD", kernel_attrs(geo))
    t.map(linear(geo, 0x8000_0000), 0x8000_0000, "PUD", kernel_attrs(geo))      # 1G
    result = walk(t.mem(), geo, t.root, *geo.linear_map_range())
    stale = leaves_covering_pa(result, 0x8800_0000, 0x9000_0000)
    assert [(x.pa, x.size, x.level) for x in stale] == [(0x8000_0000, G, "PUD")]
    assert leaves_covering_pa(result, 0x4080_0000, 0x8000_0000) == []


def test_result_to_dict_is_json():
    geo = Geometry(4096, 48, 4)
    t = Tables(geo)
    t.map(linear(geo, 0x4000_0000), 0x4000_0000, "PMD", kernel_attrs(geo))
    data = json.loads(json.dumps(walk(t.mem(), geo, t.root).to_dict()))
    assert data["leaves"][0]["pa"] == "0x40000000"
    assert data["tables"]["PGD"] == [hex(t.root)]


# ---------------------------------------------------------------- physical memory

def test_file_backed_physmem_reads_ram_and_dimm(tmp_path):
    ram, dimm = tmp_path / "ram0", tmp_path / "dimm1"
    ram.write_bytes(b"\x11" * 8192)
    dimm.write_bytes(b"\x22" * 4096)
    with FileBackedPhysMem([(0x4000_0000, ram), (0x8000_0000, str(dimm))]) as mem:
        assert mem.read(0x4000_1ff8, 8) == b"\x11" * 8
        assert mem.read(0x8000_0000, 4) == b"\x22" * 4
        with pytest.raises(PhysMemError, match="0x40001ffc"):
            mem.read(0x4000_1ffc, 8)                      # runs past the end
        with pytest.raises(PhysMemError):
            mem.read(0x3fff_f000, 8)


def test_file_backed_physmem_walks_tables_from_a_file(tmp_path):
    geo = Geometry(4096, 48, 4)
    t = Tables(geo)
    t.map_range(linear(geo, 0x4000_0000), 0x4000_0000, 4 * M, "PMD", kernel_attrs(geo))
    (tmp_path / "ram0").write_bytes(bytes(t.ram))
    with FileBackedPhysMem([(RAM, tmp_path / "ram0")]) as mem:
        assert len(walk(mem, geo, t.root).leaves) == 1


def test_file_backed_physmem_missing_or_empty_file(tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(PhysMemError, match="cannot map"):
        FileBackedPhysMem([(RAM, tmp_path / "empty")])
    with pytest.raises(PhysMemError, match="cannot map"):
        FileBackedPhysMem([(RAM, tmp_path / "absent")])


def test_overlapping_backings_rejected():
    with pytest.raises(PhysMemError, match="overlap"):
        BufferPhysMem([(0x1000, bytes(0x2000)), (0x2000, bytes(0x1000))])


# ---------------------------------------------------------------- kernel image

def tiny_elf(symbols: dict[str, int]) -> bytes:
    """A minimal ELF64 little-endian file with .symtab, .strtab and .shstrtab."""
    strtab = b"\0" + b"".join(n.encode() + b"\0" for n in symbols)
    syms, off = [bytes(24)], 1
    for name, value in symbols.items():
        syms.append(struct.pack("<IBBHQQ", off, 0x10, 0, 1, value, 0))   # GLOBAL NOTYPE
        off += len(name) + 1
    symtab = b"".join(syms)
    shstrtab = b"\0.symtab\0.strtab\0.shstrtab\0"
    body_off = 64
    offsets = [body_off, body_off + len(symtab), body_off + len(symtab) + len(strtab)]
    shoff = offsets[2] + len(shstrtab)
    header = (b"\x7fELF\x02\x01\x01" + bytes(9) +
              struct.pack("<HHIQQQIHHHHHH", 2, 183, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 4, 3))

    def sh(name, kind, offset, size, link=0, info=0, entsize=0):
        return struct.pack("<IIQQQQIIQQ", name, kind, 0, 0, offset, size, link, info, 1,
                           entsize)
    sections = (bytes(64) + sh(1, 2, offsets[0], len(symtab), 2, 1, 24)
                + sh(9, 3, offsets[1], len(strtab)) + sh(17, 3, offsets[2], len(shstrtab)))
    return header + symtab + strtab + shstrtab + sections


CFG_4K_48 = {"CONFIG_ARM64_4K_PAGES": "y", "CONFIG_ARM64_VA_BITS": "48",
             "CONFIG_PGTABLE_LEVELS": "4"}


def test_symbol_address_from_elf(tmp_path):
    pytest.importorskip("elftools")
    vmlinux = tmp_path / "vmlinux"
    vmlinux.write_bytes(tiny_elf({"_text": 0xffff800080000000,
                                  "swapper_pg_dir": 0xffff8000805cd000}))
    lay = KernelLayout.from_files(CFG_4K_48, vmlinux)     # the harness's one way in
    assert lay.symbol("swapper_pg_dir") == 0xffff8000805cd000
    assert lay.symbol("_text") == 0xffff800080000000
    with pytest.raises(LayoutError, match="no symbol init_mm"):
        lay.symbol("init_mm")


def test_kernel_layout_from_files(tmp_path):
    """Learned once per artifact: geometry and block size from the config, the
    symbols the later stages read from vmlinux; a missing one is named."""
    pytest.importorskip("elftools")
    vmlinux = tmp_path / "vmlinux"
    vmlinux.write_bytes(tiny_elf({"_text": 0xffff800080000000,
                                  "swapper_pg_dir": 0xffff8000805cd000}))
    cfg = {"CONFIG_ARM64_64K_PAGES": "y", "CONFIG_ARM64_VA_BITS": "42",
           "CONFIG_PGTABLE_LEVELS": "2"}
    lay = KernelLayout.from_files(cfg, vmlinux)
    assert lay.geometry == Geometry(65536, 42, 2, 48) and lay.section_mb == 512
    assert lay.symbol("swapper_pg_dir") == 0xffff8000805cd000
    with pytest.raises(LayoutError, match="no symbol memstart_addr"):
        lay.symbol("memstart_addr")
    gone = KernelLayout.from_files(cfg, tmp_path / "missing")
    with pytest.raises(LayoutError, match="no symbol _text .*missing"):
        gone.symbol("_text")


def test_kimage_pa():
    assert kimage_pa(0xffff8000805cd000, 0xffff800080000000, 0x4020_0000) == 0x407c_d000
    with pytest.raises(WalkError):
        kimage_pa(0xffff000000000000, 0xffff800080000000, 0x4020_0000)


def _elftools_symbols(path, names=None, types=None):
    """read_symtab's answer the slow way: pyelftools' symbol objects."""
    from elftools.elf.elffile import ELFFile
    table: dict = {}
    with open(path, "rb") as f:
        for sym in ELFFile(f).get_section_by_name(".symtab").iter_symbols():
            if not sym.name or (names is not None and sym.name not in names):
                continue
            if types is None or sym["st_info"]["type"] in types:
                table.setdefault(sym.name, []).append((sym["st_value"], sym["st_size"]))
    return table


@pytest.mark.skipif(not shutil.which("aarch64-linux-gnu-gcc"),
                    reason="no aarch64-linux-gnu-gcc (gcc-aarch64-linux-gnu)")
def test_read_symtab_reads_what_pyelftools_reads(tmp_path):
    """The bulk reader of .symtab against pyelftools' own symbol objects, on an
    aarch64 ELF linked here (names that are tails of others included)."""
    from harness.kernel.layout import read_symtab
    src = tmp_path / "s.c"
    src.write_text("unsigned long swapper_pg_dir[512];\nunsigned long my_swapper_pg_dir[4];\n"
                   "static int bar(int x) { return x + 1; }\n"
                   "int foo_bar(int x) { return bar(x); }\n"
                   "long memstart_addr = 7;\nvoid _start(void) { foo_bar(1); }\n")
    elf = tmp_path / "s.elf"
    subprocess.run(["aarch64-linux-gnu-gcc", "-O0", "-nostdlib", "-static", "-o", str(elf),
                    str(src)], check=True)
    assert read_symtab(elf) == _elftools_symbols(elf)
    assert read_symtab(elf, types=["STT_FUNC"]) == _elftools_symbols(elf, types={"STT_FUNC"})
    names = {"swapper_pg_dir", "bar", "memstart_addr", "absent"}
    got = read_symtab(elf, names)
    assert got == _elftools_symbols(elf, names) and set(got) == names - {"absent"}
