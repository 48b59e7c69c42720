"""sizeof(struct page) from the kernel's own layout (hotplug.common.struct_page_geometry),
on the region bounds of recorded 4k-48 and 64k-42 runs (tests/data/README)."""
import json
from pathlib import Path

import pytest

from harness.drive.common import STRUCT_PAGE_SIZE, struct_page_geometry
from harness.drive.phases import vmemmap_start

DATA = Path(__file__).resolve().parent / "data"


@pytest.mark.parametrize("name", ["recorded-4k-48-probe/probe.json",
                                  "recorded-64k-42/probe.json"])
def test_recorded_layouts_give_64_bytes(name):
    g = json.loads((DATA / name).read_text())["geometry"]
    got = struct_page_geometry((g["page_offset"], g["linear_end"]),
                               (g["vmemmap_start"], g["vmemmap_end"]), g["granule"])
    assert got == {"struct_page_size": 64,
                   "struct_page_size_from": "ptdump: Linear Mapping / vmemmap region sizes"}


def test_a_larger_struct_page_halves_the_ratio():
    linear = (0xffff000000000000, 0xffff800000000000)          # 2^47
    vmemmap = (0xfffffc0000000000, 0xfffffc0000000000 + (1 << 42))
    assert struct_page_geometry(linear, vmemmap, 4096)["struct_page_size"] == 128


@pytest.mark.parametrize("linear,vmemmap", [
    (None, None),
    ((0, 3 << 40), (0, 1 << 35)),          # not a power of two
])
def test_no_usable_layout_says_it_assumed(linear, vmemmap):
    got = struct_page_geometry(linear, vmemmap, 4096)
    assert got["struct_page_size"] == STRUCT_PAGE_SIZE
    assert got["struct_page_size_from"].startswith("assumed 64")


@pytest.mark.parametrize("name", ["recorded-4k-48-probe/probe.json",
                                  "recorded-64k-42/probe.json"])
def test_vmemmap_start_from_the_regions_end_agrees_where_the_dump_starts_it(name):
    g = json.loads((DATA / name).read_text())["geometry"]
    got = vmemmap_start((g["vmemmap_start"], g["vmemmap_end"]), g["granule"],
                        g["va_bits"], 64)
    assert got == g["vmemmap_start"]


def test_vmemmap_start_where_the_dump_starts_the_region_late():
    """A randomised linear region (kaslr on cortex-a57, 4k-48): the vmemmap's
    first entry in the dump is at 0xfffffe0000000000, a table boundary 1 GiB
    past VMEMMAP_START (6.12: -1 GiB less 2 TiB); 6.1's region, unaffected; a
    KASAN kernel's linear region ends at its shadow (0xffff600000000000 in
    the dump), which does not change the vmemmap's size."""
    assert vmemmap_start((0xfffffe0000000000, 0xffffffffc0000000), 4096, 48,
                         64) == 0xfffffdffc0000000
    assert vmemmap_start((0xfffffc0000000000, 0xfffffe0000000000), 4096, 48,
                         64) == 0xfffffc0000000000
    assert vmemmap_start((0xfffffdffc0000000, 0xffffffffc0000000), 4096, 48,
                         64) == 0xfffffdffc0000000
    assert vmemmap_start((1, 2), 4096, None, 64) == 1
    assert vmemmap_start(None, 4096, 48, 64) is None
    # 52 bits: VA_BITS_MIN 48 (4K, 64K) or 47 (16K): the range from PAGE_OFFSET(52)
    assert vmemmap_start((0xffffc20000000000, 0xffffffffc0000000), 4096, 52,
                         64) == 0xffffffffc0000000 - ((0xffff800000000000 - 0xfff0000000000000)
                                                      >> 12) * 64
    # never past the dump's own first entry (a region the formula does not fit)
    assert vmemmap_start((0xfffff00000000000, 0xffffffffc0000000), 4096, 48,
                         64) == 0xfffff00000000000
