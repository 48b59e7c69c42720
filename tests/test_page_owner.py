"""page_owner show_stacks: parser, diff and the leak check (harness.inspect.leakcheck).

The recorded files tests/data/page-owner-*.txt are show_stacks read from real
6.12.117 4k-48 guests (built with ``--config leak``, booted with page_owner=on;
acpi-dimm flow by bench/bench_leak.py: 2 x 512 MiB DIMMs added, onlined, 128 MiB
written, offlined, removed, twice), made with

    .venv/bin/python bench/bench_leak.py --runs 1 \
        --cycles 2 --record DIR \
        [--patch patches/repro/0021-vmemmap-leak-per-cycle.patch --expect-leak]

* clean kernel: ``before`` (before the first add), ``added`` (both DIMMs added,
  cycle 1), ``cycle-1`` / ``cycle-2`` (after each cycle's removals);
* ``leak-*``: the same with repro 0021 (one section's vmemmap leaked per cycle).

``before``, ``cycle-2`` and ``leak-cycle-2`` are the full reads (~155 KiB);
the others are reduced to their hotplug-path records with
``page_owner.render(page_owner.parse(text).hotplug())``, which the diff is
indifferent to (it looks at those records only).
"""
from pathlib import Path

import pytest

from harness.inspect import ParseError, leakcheck
from harness.inspect import page_owner as po
from harness.records import FAIL, PASS, SKIP

DATA = Path(__file__).resolve().parent / "data"


def load(name: str) -> str:
    return (DATA / f"page-owner-{name}.txt").read_text()


@pytest.fixture(scope="module")
def clean():
    return {n: po.parse(load(n)) for n in ("before", "added", "cycle-1", "cycle-2")}


@pytest.fixture(scope="module")
def leaking():
    return {n: po.parse(load(f"leak-{n}")) for n in ("before", "cycle-1", "cycle-2")}


# ------------------------------------------------------------------ parser

def test_parse_recorded_output(clean):
    snap = clean["before"]
    assert len(snap.stacks) > 100
    assert all(1 <= len(s.frames) <= 16 and s.nr_base_pages >= 1 for s in snap.stacks)
    # every frame is "func+0xoff/0xlen" (kallsyms is on)
    assert all("+0x" in f and "/0x" in f for s in snap.stacks for f in s.frames)
    # page_owner saw at least the page cache and the page-table allocator
    assert snap.total_pages > 1000


def test_parse_frame_names():
    assert po.function(" vmemmap_populate+0x50/0x68") == "vmemmap_populate"
    assert po.function("init_pmd.isra.0+0x10/0x20") == "init_pmd"
    assert po.function("foo+0x1/0x2 [virtio_mem]") == "foo"
    assert po.function("0xffff800080123456") == "0xffff800080123456"


def test_parse_errors_name_the_line():
    with pytest.raises(ParseError, match="truncated"):
        po.parse(" a+0x1/0x2\n b+0x1/0x2\n")
    with pytest.raises(ParseError, match="line 1"):
        po.parse("nr_base_pages: 3\n")
    with pytest.raises(ParseError, match="line 2"):
        po.parse(" a+0x1/0x2\ngarbage\nnr_base_pages: 1\n")
    assert po.parse("").stacks == ()


def test_snapshot_round_trips_and_hotplug_filter(clean):
    snap = clean["cycle-2"]
    small = snap.hotplug()
    assert 0 < len(small.stacks) < len(snap.stacks) / 10
    assert po.Snapshot.from_dict(small.to_dict()) == small
    assert any(po.category(s) == "linear-map tables" for s in small.stacks)
    assert po.parse(po.render(snap)) == snap
    # the reduced files in tests/data are exactly this filter of a full read
    assert po.parse(load("added")) == po.parse(load("added")).hotplug()


# ------------------------------------------------------------------ categories

def test_added_memory_holds_vmemmap_pages(clean):
    """The positive control on a real kernel: right after the add, the vmemmap
    of 2 x 512 MiB (8 sections x 512 pages on 4K) is held by a vmemmap stack."""
    grown = po.diff(clean["before"], clean["added"])
    vmemmap = [g for g in grown if g.category == "vmemmap"]
    assert sum(g.pages for g in vmemmap) >= 8 * 512
    top = vmemmap[0].stack().top(6)
    assert any(po.function(f) == "vmemmap_alloc_block" for f in top)


def test_slab_pages_are_never_judged():
    slab = po.Stack(("post_alloc_hook+0x1/0x2", "allocate_slab+0x1/0x2",
                     "__kmalloc_noprof+0x1/0x2", "sparse_add_section+0x1/0x2",
                     "vmemmap_populate+0x1/0x2"), 1)
    assert po.category(slab) is None
    table = po.Stack(("post_alloc_hook+0x1/0x2", "__get_free_pages_noprof+0x1/0x2",
                      "__pgd_pgtable_alloc+0x1/0x2", "alloc_init_pud+0x1/0x2",
                      "__create_pgd_mapping+0x1/0x2", "arch_add_memory+0x1/0x2"), 1)
    assert po.category(table) == "linear-map tables"
    assert table.top(2) == ("__pgd_pgtable_alloc+0x1/0x2", "alloc_init_pud+0x1/0x2")


# ------------------------------------------------------------------ the check

def test_clean_pair_passes(clean):
    for name in ("cycle-1", "cycle-2"):
        verdict, evidence = leakcheck.check(clean["before"], clean[name], name)
        assert verdict == PASS, evidence
    verdict, evidence, step = leakcheck.check_cycles(
        clean["before"], [("cycle-1", clean["cycle-1"]), ("cycle-2", clean["cycle-2"])])
    assert (verdict, step) == (PASS, ""), evidence


def test_leaking_pair_fails_naming_the_stack(leaking):
    verdict, evidence = leakcheck.check(leaking["before"], leaking["cycle-2"], "cycle-2")
    assert verdict == FAIL
    assert "vmemmap" in evidence and "vmemmap_alloc_block+" in evidence
    assert "+1024 pages (4096 kB)" in evidence   # one section (512 pages) per cycle
    verdict, evidence = leakcheck.check(leaking["before"], leaking["cycle-2"], "cycle-2",
                                        removed=[(0x80000000, 0xc0000000)])
    assert "removed: PA 0x80000000-0xc0000000" in evidence
    verdict, evidence, step = leakcheck.check_cycles(
        leaking["before"], [("cycle-1", leaking["cycle-1"]),
                            ("cycle-2", leaking["cycle-2"])])
    assert verdict == FAIL and step == "cycle-1"
    assert "cycle-1 +512, cycle-2 +1024" in evidence


def test_check_takes_text_dicts_and_skips_without_page_owner(clean, leaking):
    before, after = load("leak-before"), load("leak-cycle-2")
    assert leakcheck.check(before, after)[0] == FAIL
    assert leakcheck.check(leaking["before"].hotplug().to_dict(),
                           leakcheck.snapshot(after))[0] == FAIL
    verdict, evidence = leakcheck.check(None, clean["cycle-1"])
    assert verdict == SKIP and "page_owner=on" in evidence and "--config leak" in evidence
    assert leakcheck.check_cycles(clean["before"], [("cycle-1", None)])[0] == SKIP


def test_growth_outside_hotplug_paths_is_ignored(clean):
    """A stack unrelated to hotplug that grows (page cache, slab) is not a leak."""
    before = clean["before"]
    other = po.Stack(("post_alloc_hook+0x1/0x2", "filemap_alloc_folio_noprof+0x1/0x2",
                      "shmem_alloc_folio+0x1/0x2"), 50000)
    after = po.Snapshot(clean["cycle-1"].stacks + (other,))
    assert leakcheck.check(before, after)[0] == PASS


# ------------------------------------------------------------------ a real guest

@pytest.mark.kernel
@pytest.mark.qemu
def test_real_guest_add_holds_vmemmap_and_remove_returns_it(tmp_path):
    """Kernel with --config leak, page_owner=on, one 512 MiB DIMM: right after
    the add the check FAILs naming vmemmap_alloc_block (the signal is real);
    after the remove it PASSes (the clean kernel gives every page back)."""
    from harness.drive import acpi_dimm
    from harness.drive.common import Recorder, blocks_in, set_state
    from harness.kernel import kernel as build
    from harness.session import BootOptions, boot

    art = build.build(build.BuildRequest(configs=(leakcheck.CONFIG,)))
    assert leakcheck.enabled_in(art.kconfig)
    opts = acpi_dimm.boot_options(BootOptions(mode="acpi", cmdline=(leakcheck.CMDLINE,)))
    with boot(art, opts, tmp_path, progress=False) as guest:
        rec = Recorder(guest, art, walk=False)
        before = leakcheck.snapshot(leakcheck.collect(rec))
        dimm = acpi_dimm.plug(rec, 1, acpi_dimm.Options(dimms=1), "")
        added = leakcheck.snapshot(leakcheck.collect(rec))
        set_state(rec, blocks_in(rec, dimm.addr, dimm.end), "online_movable")
        acpi_dimm.unplug(rec, dimm, "removed")
        removed = leakcheck.snapshot(leakcheck.collect(rec))
        assert not guest.watcher.reports
    verdict, evidence = leakcheck.check(before, added, "added")
    assert verdict == FAIL and "vmemmap_alloc_block+" in evidence
    assert "vmemmap: +2048 pages" in evidence        # 4 sections x 2 MiB of struct pages
    verdict, evidence = leakcheck.check(before, removed, "removed")
    assert verdict == PASS, evidence
