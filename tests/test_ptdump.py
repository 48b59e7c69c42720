"""Tests for harness.inspect.ptdump.

Provenance of tests/data/synthetic-ptdump-*.txt: *synthesised*, not recorded. They were
produced by simulating ``note_page()`` of arch/arm64/mm/ptdump.c (6.12) over a
model of a QEMU virt guest (1 GiB RAM at PA 0x40000000, 512 MiB pc-dimm at
0x80000000, 4K pages, 52-bit VA/5 levels/LPA2 and 48-bit VA/4 levels), and
reproduce byte for byte the lines recorded in FACTS.md. Replace them with
recordings from a real boot when the harness can make them:

* ``*-before``: boot; ``*-added``: DIMM plugged and its blocks online_movable;
* ``*-removed``: DIMM removed (only the vmalloc area differs from before);
* ``4k-48-removed-table-kept``: as removed, but the PMD table of the DIMM's
  range not freed (its hole shows at PMD level, not PUD);
* ``4k-48-removed-stale``: as removed, but the DIMM still mapped.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.inspect import ParseError
from harness.inspect.ptdump import (
    Entry,
    Snapshot,
    changed_regions,
    covering,
    diff,
    entry_at,
    format_attrs,
    format_entry,
    format_size,
    format_snapshot,
    holes,
    mapped,
    parse,
    parse_entry,
)

DATA = Path(__file__).parent / "data"
LM48, LM52 = 0xffff000000000000, 0xfff0000000000000
DIMM = (0x8000_0000, 0xa000_0000)

# FACTS.md, "What the kernel page-table dump showed": recorded on 6.12.117
FACTS_DIFF_LINEAR = [
    "-0xfff0000080000000-0xfff0008000000000         510G PUD",
    "+0xfff0000080000000-0xfff00000a0000000         512M PMD       RW NX     AF    CON BLK UXN    MEM/NORMAL-TAGGED",  # noqa: E501
    "+0xfff00000a0000000-0xfff00000c0000000         512M PMD",
    "+0xfff00000c0000000-0xfff0008000000000         509G PUD",
]
FACTS_DIFF_VMEMMAP = [
    "-0xffffc1ffc1000000-0xffffc1ffc2000000          16M PMD       RW NX     AF        BLK UXN    MEM/NORMAL",  # noqa: E501
    "-0xffffc1ffc2000000-0xffffc20000000000         992M PMD",
    "+0xffffc1ffc1000000-0xffffc1ffc2800000          24M PMD       RW NX     AF        BLK UXN    MEM/NORMAL",  # noqa: E501
    "+0xffffc1ffc2800000-0xffffc20000000000         984M PMD",
]
REGIONS = ["Linear Mapping", "Linear Mapping end", "Modules", "Modules end",
           "vmalloc() area", "vmalloc() end", "vmemmap", "vmemmap end", "PCI I/O",
           "PCI I/O end", "Fixmap", "Fixmap end"]


def load(name: str) -> Snapshot:
    return parse((DATA / f"synthetic-ptdump-{name}.txt").read_text())


@pytest.mark.parametrize("line", [ln[1:] for ln in FACTS_DIFF_LINEAR + FACTS_DIFF_VMEMMAP])
def test_recorded_lines_parse_and_format_back(line):
    entry = parse_entry(line)
    assert format_entry(entry) == line
    assert format_size(entry.start, entry.end) == entry.size


def test_entry_fields():
    e = parse_entry(FACTS_DIFF_LINEAR[1][1:])
    assert (e.start, e.end, e.size, e.level) == (LM52 + 0x8000_0000, LM52 + 0xa000_0000,
                                                 "512M", "PMD")
    assert e.attrs == ("RW", "NX", "AF", "CON", "BLK", "UXN", "MEM/NORMAL-TAGGED")
    assert e.is_valid and not e.is_hole and e.size_bytes == 512 << 20
    hole = parse_entry(FACTS_DIFF_LINEAR[0][1:])
    assert hole.is_hole and not hole.is_valid and hole.attrs == ()


def test_invalid_but_nonzero_entry_shows_f():
    attrs = ("F", "RW", "NX", "SHD", "AF", "UXN", "MEM/NORMAL")
    line = format_entry(Entry(LM48, LM48 + 4096, "4K", "PTE", attrs))
    assert line.endswith("4K PTE F     RW NX SHD AF            UXN    MEM/NORMAL")
    e = parse_entry(line)
    assert e.attrs == attrs and not e.is_hole and not e.is_valid


def test_unknown_tokens_are_kept():
    assert format_attrs(("RW", "XYZ")).split() == ["RW", "XYZ"]


@pytest.mark.parametrize("name", sorted(p.stem[len("synthetic-ptdump-"):]
                                        for p in DATA.glob("synthetic-ptdump-*.txt")))
def test_samples_parse_and_format_back_exactly(name):
    text = (DATA / f"synthetic-ptdump-{name}.txt").read_text()
    snap = parse(text)
    assert list(snap.regions) == REGIONS
    assert format_snapshot(snap) == text


def test_regions_by_marker_name_and_wrapping_last_entry():
    snap = load("4k-48-before")
    assert snap.regions["vmalloc() area"].marker == "vmalloc() area"
    assert snap.regions["Linear Mapping"].marker == "Linear Mapping start"
    assert snap.region("Linear Mapping end").entries == ()
    last = snap.region("Fixmap end").entries[-1]
    assert last.end == 1 << 64 and last.size == "8M"


def test_diff_reproduces_the_recorded_diff():
    before, added = load("4k-52-before"), load("4k-52-added")
    assert diff(before, added, "Linear Mapping") == FACTS_DIFF_LINEAR
    assert diff(before, added, "vmemmap") == FACTS_DIFF_VMEMMAP
    assert diff(before, added, "Modules") == []
    assert changed_regions(before, added) == ["Linear Mapping", "vmemmap"]


@pytest.mark.parametrize("va", ["48", "52"])
def test_removal_restores_linear_map_and_vmemmap(va):
    before, removed = load(f"4k-{va}-before"), load(f"4k-{va}-removed")
    assert changed_regions(before, removed) == ["vmalloc() area"]


def test_covering_finds_dimm_mapping_only_when_mapped():
    lin = (LM48 + DIMM[0], LM48 + DIMM[1])
    assert [e.size for e in covering(load("4k-48-added"), "Linear Mapping", *lin)] == ["512M"]
    assert covering(load("4k-48-removed"), "Linear Mapping", *lin) == []
    assert covering(load("4k-48-removed-stale"), "Linear Mapping", *lin) != []


def test_kept_table_shows_as_a_pmd_level_hole():
    lin = (LM48 + DIMM[0], LM48 + DIMM[1])
    assert [e.level for e in holes(load("4k-48-removed"), "Linear Mapping", *lin)] == ["PUD"]
    kept = load("4k-48-removed-table-kept")
    assert [e.level for e in holes(kept, "Linear Mapping", *lin)] == ["PMD"]
    assert entry_at(kept, lin[0]).level == "PMD"
    assert covering(kept, "Linear Mapping", *lin) == []


def test_mapped_skips_holes():
    entries = mapped(load("4k-48-before"), "vmemmap")
    assert [(e.size, e.level) for e in entries] == [("16M", "PMD")]


def test_snapshot_round_trips_through_json():
    snap = load("4k-52-added")
    again = Snapshot.from_dict(json.loads(json.dumps(snap.to_dict())))
    assert again == snap
    assert format_snapshot(again) == format_snapshot(snap)


def test_unknown_region_is_named():
    with pytest.raises(ParseError, match="no region 'Kasan shadow'.*Linear Mapping"):
        load("4k-48-before").region("Kasan shadow")
    with pytest.raises(ParseError):
        diff(load("4k-48-before"), load("4k-48-added"), "Kasan shadow")


@pytest.mark.parametrize("text,message", [
    ("0xffff000000000000-0xffff000040000000           1G PUD\n", "before the first"),
    ("---[ Modules start ]---\nsh: cat: not found\n", "line 2: not a page-table dump"),
    ("---[ Modules start ]---\n---[ Modules start ]---\n", "seen twice"),
    ("---[ Modules start ]---\n"
     "0xffff800000000000-0xffff800040000000           1G PUD\n"
     "0xffff800080000000-0xffff8000c0000000           1G PUD\n", "truncated"),
])
def test_parse_errors(text, message):
    with pytest.raises(ParseError, match=message):
        parse(text)


def test_non_strict_parse_accepts_excerpts():
    text = ("---[ Modules start ]---\n"
            "0xffff800000000000-0xffff800040000000           1G PUD\n"
            "0xffff800080000000-0xffff8000c0000000           1G PUD\r\n")
    assert len(parse(text, strict=False).region("Modules").entries) == 2
