"""sizeof(struct page) from the kernel's own layout (hotplug.common.struct_page_geometry),
on the region bounds of recorded 4k-48 and 64k-42 runs (tests/data/README)."""
import json
from pathlib import Path

import pytest

from harness.drive.common import STRUCT_PAGE_SIZE, struct_page_geometry

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
