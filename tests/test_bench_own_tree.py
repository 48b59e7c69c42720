"""bench/bench_own_tree.py: the edit it makes to mmu.c and the ccache counts it
reports, on a synthetic file (no kernel, no build)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import bench_own_tree as bo  # noqa: E402

MMU = """void arch_remove_memory(u64 start, u64 size, struct vmem_altmap *altmap,
\t\t\tstruct dev_pagemap *pgmap)
{
\tunsigned long start_pfn = start >> PAGE_SHIFT;
\tunsigned long nr_pages = size >> PAGE_SHIFT;

\t__remove_pages(start_pfn, nr_pages, altmap, pgmap);
\t__remove_pgd_mapping(swapper_pg_dir, __phys_to_virt(start), size);
}
"""


def test_edit_puts_one_line_and_replaces_its_own(tmp_path):
    path = tmp_path / bo.MMU_C
    path.parent.mkdir(parents=True)
    path.write_text(MMU)
    assert bo.edit(tmp_path, 1) == 'asm volatile("nop"); /* bench */'
    assert bo.edit(tmp_path, 2) == 'asm volatile("nop; nop"); /* bench */'
    text = path.read_text()
    assert text.count("/* bench */") == 1
    assert text.replace('\tasm volatile("nop; nop"); /* bench */\n', "") == MMU
    assert text.index("nop; nop") < text.index("__remove_pages")


def test_edit_without_its_anchor_fails(tmp_path):
    path = tmp_path / bo.MMU_C
    path.parent.mkdir(parents=True)
    path.write_text("int x;\n")
    with pytest.raises(SystemExit):
        bo.edit(tmp_path, 1)


def test_hits_text_counts_the_step_only():
    before = {"direct_cache_hit": 10, "preprocessed_cache_hit": 1, "cache_miss": 5}
    after = {"direct_cache_hit": 1190, "preprocessed_cache_hit": 6, "cache_miss": 9}
    assert bo.hits_text(before, after) == "ccache 1185 hits / 4 misses"
