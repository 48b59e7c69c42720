"""Time the host page-table walker on a synthetic arm64 linear map.

4K pages, 48-bit VA, 4 levels; guest RAM at PA 0x40000000:
* 1 GiB mapped with PMD blocks (one PMD table),
* 512 MiB mapped with PTEs (256 PTE tables), as with rodata=full,
walked over the whole linear map [PAGE_OFFSET, PAGE_END). Then the worst case:
the same PTEs with alternating attributes, so nothing coalesces.

Run: python bench/bench_walker.py   (target: < 0.2 s per linear-map walk)
     --json-out FILE also writes the worst walk of each as JSON (run_all.py).
"""
from __future__ import annotations

import argparse
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchlib as bl  # noqa: E402

from harness.inspect.walker import BufferPhysMem, Geometry, table_counts, walk  # noqa: E402

GEO = Geometry(4096, 48, 4)
RAM, TABLE_RAM = 0x4000_0000, 0x4000_0000   # tables live at the start of RAM
KERNEL = (1 << 10) | (3 << 8) | (1 << 53) | (1 << 54)    # AF SH PXN UXN
RDONLY = 1 << 7
MiB, GiB = 1 << 20, 1 << 30


class Builder:
    def __init__(self, pages: int):
        self.ram = bytearray(pages * 4096)
        self.next = TABLE_RAM
        self.root = self.alloc()
        self.children: dict[tuple[int, int], int] = {}

    def alloc(self) -> int:
        pa, self.next = self.next, self.next + 4096
        return pa

    def put(self, table: int, index: int, desc: int) -> None:
        struct.pack_into("<Q", self.ram, table - RAM + 8 * index, desc)

    def table(self, va: int, depth: int) -> int:
        table = self.root
        for pos in range(depth):
            key = (table, (va >> GEO.shifts[pos]) & 511)
            if key not in self.children:
                self.children[key] = self.alloc()
                self.put(table, key[1], self.children[key] | 3)
            table = self.children[key]
        return table

    def map(self, va: int, pa: int, size: int, pos: int, attrs) -> None:
        step = 1 << GEO.shifts[pos]
        for i, off in enumerate(range(0, size, step)):
            kind = 3 if pos == 3 else 1
            self.put(self.table(va + off, pos), ((va + off) >> GEO.shifts[pos]) & 511,
                     (pa + off) | attrs(i) | kind)


def build(alternate: bool) -> Builder:
    b = Builder(pages=512)
    page_offset = GEO.linear_map_range()[0]
    b.map(page_offset + 0x4000_0000, 0x4000_0000, 1 * GiB, 2, lambda i: KERNEL)
    pte_attrs = (lambda i: KERNEL | (RDONLY if i % 2 else 0)) if alternate else \
        (lambda i: KERNEL)
    b.map(page_offset + 0x8000_0000, 0x8000_0000, 512 * MiB, 3, pte_attrs)
    return b


def bench(name: str, alternate: bool, key: str, rounds: int = 5) -> None:
    b = build(alternate)
    mem = BufferPhysMem([(RAM, b.ram)])
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        result = walk(mem, GEO, b.root, *GEO.linear_map_range())
        times.append(time.perf_counter() - t0)
    print(f"{name}: best {min(times) * 1000:.1f} ms, worst {max(times) * 1000:.1f} ms "
          f"over {rounds} walks; {len(result.leaves)} leaves, tables {table_counts(result)}")
    bl.record(key, f"host walker, {name} (worst of {rounds})", max(times), "s",
              target=0.2, command=bl.command_text([sys.executable, "bench/bench_walker.py"]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json-out", type=Path, default=None, metavar="FILE",
                   help="also write the figures as JSON to FILE")
    args = p.parse_args(argv)
    bl.start_results_for(args, __file__, argv)
    bench("1 GiB PMD blocks + 512 MiB PTEs", alternate=False, key="walker_blocks")
    bench("same, PTE attributes alternating (no coalescing)", alternate=True,
          key="walker_no_coalescing")
    return 0


if __name__ == "__main__":
    bl.entry(main)
