"""Tests for harness.verdict.checks, on MethodRuns built from the synthetic samples in
tests/data (synthetic-ptdump-4k-48-*, synthetic-sysfs-memory-blocks-*,
synthetic-meminfo-virt-*, synthetic-iomem-virt-*;
see test_ptdump.py for their provenance). Walker summaries are derived from the
same dumps, so walker and ptdump agree unless a test makes them differ.

The scenario: 1 GiB boot RAM at PA 0x40000000 (blocks memory8-15), a 512 MiB
DIMM at 0x80000000 (memory16-19), 4K pages, 48-bit VA.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from harness.inspect import leakcheck, ptdump, ranges, selftest, sysfs
from harness.machine.crashwatch import classify_file
from harness.records import (
    ERROR,
    FAIL,
    PASS,
    SKIP,
    Check,
    MethodRun,
    Phase,
    Removal,
    Step,
    WalkSummary,
)
from harness.verdict import checks

DATA = Path(__file__).parent / "data"
OFF = 0xffff_0000_0000_0000
VMEMMAP_START = 0xffff_fdff_c000_0000
LINEAR_WALK = (OFF, 0xffff_8000_0000_0000)
VMEMMAP_WALK = (VMEMMAP_START, VMEMMAP_START + (1 << 30))
DIMM = (0x8000_0000, 0xa000_0000)
REMOVED = "removed-dimm1"
GEOMETRY = {"granule": 4096, "va_bits": 48, "levels": 4, "page_offset": OFF,
            "linear_offset": OFF, "vmemmap_start": VMEMMAP_START, "memstart": 0,
            "struct_page_size": 64}
TABLES = {"before": {"PGD": 1, "PUD": 1, "PMD": 1, "PTE": 3},
          "added": {"PGD": 1, "PUD": 1, "PMD": 2, "PTE": 3}}

KSELFTEST_OUTPUT = """\
Test scope: 100% hotplug memory
\t online all hot-pluggable memory in offline state:
\t\t SKIPPED - no hot-pluggable memory in offline state
\t offline 100% hot-pluggable memory in online state
\t trying to offline 12 out of 12 memory block(s):
{offline}
\t\t FAILED - unable to offline some memory blocks, device busy?
\t online all hot-pluggable memory in offline state:
{online}
\t Test with memory notifier error injection
skip extra tests: memory-notifier-error-inject module is not available
"""
GLOB_ORDER = [10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 8, 9]


# ---------------------------------------------------------------- builders

def snap(name: str) -> ptdump.Snapshot:
    return ptdump.parse((DATA / f"synthetic-ptdump-4k-48-{name}.txt").read_text())


def blocks(name: str) -> sysfs.BlockTable:
    path = DATA / f"synthetic-sysfs-memory-blocks-{name}.txt"
    return sysfs.parse_memory_blocks(path.read_text())


def meminfo(name: str) -> dict:
    return sysfs.parse_meminfo((DATA / f"synthetic-meminfo-virt-{name}.txt").read_text())


def system_ram(name: str) -> tuple:
    """As records.Phase documents it: (start, end_inclusive)."""
    top = sysfs.parse_iomem((DATA / f"synthetic-iomem-virt-acpi-{name}.txt").read_text())
    return tuple((r.start, r.last) for t in top for r in t.walk()
                 if r.name.startswith("System RAM"))


def walk_of(snapshot: ptdump.Snapshot, region: str, tables: dict) -> WalkSummary:
    """What the walker would report for the valid entries of ``snapshot``."""
    lo, hi = LINEAR_WALK if region == checks.LINEAR else VMEMMAP_WALK
    if region == checks.LINEAR:
        pa_of = lambda va: va - OFF  # noqa: E731
    else:
        pa_of = lambda va: 0x7e00_0000 + va - VMEMMAP_START  # noqa: E731
    leaves = tuple((e.start, e.end, pa_of(e.start), e.level) for e in snapshot.entries()
                   if e.is_valid and e.overlaps(lo, hi))
    return WalkSummary(region, lo, hi, leaves, dict(tables))


def walks_of(snapshot: ptdump.Snapshot, tables: dict) -> tuple:
    return tuple(walk_of(snapshot, r, tables) for r in checks.REGIONS)


def phase(name: str, sysfs_name: str, mem: str, ram: str, dump: str | None,
          tables: dict | None = None) -> Phase:
    snapshot = snap(dump) if dump else None
    walks = walks_of(snapshot, tables) if snapshot and tables else ()
    return Phase(name, blocks(sysfs_name), meminfo(mem), system_ram(ram), snapshot, walks)


def good_phases(removed_dump: str = "removed", removed_tables: dict | None = None) -> tuple:
    return (phase("before", "before", "before", "before", "before", TABLES["before"]),
            phase("added", "added", "before", "added", "added", TABLES["added"]),
            phase("online", "online", "online", "added", "added", TABLES["added"]),
            phase(REMOVED, "before", "before", "before", removed_dump,
                  removed_tables or TABLES["before"]))


def make_run(removed_dump: str = "removed", removed_tables: dict | None = None,
             **changes) -> MethodRun:
    steps = (Step("boot", 1.5, "serial"), Step("inspect before", 0.4, "ssh"),
             Step("add dimm1", 0.6, "qmp"), Step("inspect added", 0.4, "ssh"),
             Step("online dimm1", 0.2, "ssh"), Step("inspect online", 0.4, "ssh"),
             Step("offline dimm1", 0.3, "ssh"), Step("remove dimm1", 0.5, "qmp"),
             Step(f"inspect {REMOVED}", 0.4, "ssh"))
    run = MethodRun("acpi-dimm", dict(GEOMETRY), steps,
                    good_phases(removed_dump, removed_tables),
                    (Removal(REMOVED, *DIMM, baseline="before"),))
    return dataclasses.replace(run, **changes)


def replace_phase(run: MethodRun, name: str, **changes) -> MethodRun:
    phases = tuple(dataclasses.replace(p, **changes) if p.name == name else p
                   for p in run.phases)
    return dataclasses.replace(run, phases=phases)


def could_not_look(check: Check) -> bool:
    """A required check that could not look is an ERROR, never a SKIP or PASS."""
    return check.verdict == ERROR and "could not look" in check.evidence


def by_name(run: MethodRun) -> dict[str, Check]:
    return {c.name: c for c in checks.judge(run)}


def kselftest_output(offline: dict, online=(16, 17, 18, 19), one_line=False) -> str:
    sep = " " if one_line else "\n"
    lines = [f"online->offline memory{b}{sep}-> {offline[b]}" for b in GLOB_ORDER
             if b in offline]
    return KSELFTEST_OUTPUT.format(offline="\n".join(lines),
                                   online="\n".join(f"offline->online memory{b}"
                                                    for b in online))


def boot_refused_hot_ok() -> dict:
    return {b: "Success" if b >= 16 else "Failure" for b in GLOB_ORDER}


# ---------------------------------------------------------------- the good run

def test_good_run_passes_every_check():
    found = by_name(make_run())
    assert list(found) == [n for n, _ in checks.RULES
                           if n not in ("kselftest", "isb-after-table-flush",
                                        "contiguous-flushed-whole")
                           + checks._ORDER_CHECKS and not n.startswith("hotadd-")]
    verdicts = {n: c.verdict for n, c in found.items()}
    assert verdicts == {"blocks-lifecycle": PASS, "no-stale-linear-map": PASS,
                        "contiguous-groups-whole": PASS,
                        "no-stale-vmemmap": PASS, "tables-freed": PASS,
                        "online-memory-mapped": PASS, "bootmem-not-removable": SKIP,
                        "present-struct-pages-mapped": PASS, "no-kernel-splat": PASS,
                        "no-leak-across-cycles": SKIP,
                        "walker-agrees-with-ptdump": PASS, "walker-no-bad-entries": PASS}
    assert checks.method_verdict(make_run(), found.values()) == PASS


def test_struct_page_range_matches_the_dumped_vmemmap():
    # FACTS.md: the DIMM's struct pages extend the vmemmap block from 16M to 24M
    assert checks.struct_page_range(make_run(), *DIMM) == (0xfffffdffc2000000,
                                                            0xfffffdffc2800000)


def test_phase_step_names_the_step_that_led_to_the_phase():
    run = make_run()
    assert checks.phase_step(run, REMOVED) == "remove dimm1"
    assert checks.phase_step(run, "online") == "online dimm1"
    assert checks.phase_step(run, "before") == "boot"
    assert checks.phase_step(run, "cycle-1") == "cycle-1"
    first = dataclasses.replace(run, steps=run.steps[1:])
    assert checks.phase_step(first, "before") == "inspect before"


def test_range_helpers():
    assert ranges.coalesce([(5, 9), (0, 3), (3, 4), (8, 12)]) == [(0, 4), (5, 12)]
    assert ranges.subtract([(0, 10)], [(2, 3), (5, 20)]) == [(0, 2), (3, 5)]
    assert ranges.clip([(0, 10), (20, 30)], 5, 25) == [(5, 10), (20, 25)]


def test_system_ram_inclusive_and_half_open_ends_agree():
    p = make_run().phase("before")
    half_open = dataclasses.replace(p, system_ram=tuple(
        (s, e + 1) for s, e in p.system_ram))
    assert checks.ram_ranges(p) == checks.ram_ranges(half_open) == [
        (0x40000000, 0x7ff30000), (0x7ff50000, 0x80000000)]


# ---------------------------------------------------------------- blocks-lifecycle

def test_blocks_lifecycle_pass_evidence():
    c = by_name(make_run())["blocks-lifecycle"]
    assert c.verdict == PASS
    assert "memory16-memory19 (0x80000000-0xa0000000): absent before, offline after add" \
        in c.evidence
    assert "8 blocks present before the add unchanged in 3 later phase(s)" in c.evidence


def test_blocks_lifecycle_fails_when_removed_blocks_remain():
    run = replace_phase(make_run(), REMOVED, blocks=blocks("online"))
    c = by_name(run)["blocks-lifecycle"]
    assert c.verdict == FAIL and c.step == "remove dimm1"
    assert f"{REMOVED}: memory16-memory19 present" in c.evidence


def test_blocks_lifecycle_fails_when_added_blocks_are_not_offline():
    run = replace_phase(make_run(), "added", blocks=blocks("online"))
    c = by_name(run)["blocks-lifecycle"]
    assert c.verdict == FAIL
    assert "added: memory16 is online, expected offline" in c.evidence


def test_blocks_lifecycle_fails_when_a_boot_block_changes():
    table = blocks("before")
    changed = sysfs.BlockTable(tuple(dataclasses.replace(b, state="offline")
                                     if b.index == 9 else b for b in table.blocks),
                               table.block_size, table.auto_online)
    run = replace_phase(make_run(), REMOVED, blocks=changed)
    c = by_name(run)["blocks-lifecycle"]
    assert c.verdict == FAIL and c.step == "remove dimm1"
    assert f"{REMOVED}: memory9 online -> offline" in c.evidence


def test_blocks_lifecycle_skips_without_block_size():
    run = make_run()
    no_size = [dataclasses.replace(p, blocks=dataclasses.replace(p.blocks, block_size=None))
               for p in run.phases]
    c = by_name(dataclasses.replace(run, phases=tuple(no_size)))["blocks-lifecycle"]
    assert could_not_look(c) and "block_size_bytes" in c.evidence


# ---------------------------------------------------------------- stale mappings

def test_no_stale_linear_map_fails_on_a_stale_dump():
    c = by_name(make_run("removed-stale", TABLES["added"]))["no-stale-linear-map"]
    assert c.verdict == FAIL and c.step == "remove dimm1"
    assert ("ptdump: 0xffff000080000000-0xffff0000a0000000         512M PMD       "
            "RW NX SHD AF    CON BLK UXN    MEM/NORMAL-TAGGED") in c.evidence
    assert ("walker PMD leaf VA 0xffff000080000000-0xffff0000a0000000 -> "
            "PA 0x80000000-0xa0000000") in c.evidence


def test_no_stale_linear_map_walker_alone_can_fail():
    run = make_run()
    stale = walk_of(snap("added"), checks.LINEAR, TABLES["added"])
    run = replace_phase(run, REMOVED, ptdump=None, walks=(stale,))
    c = by_name(run)["no-stale-linear-map"]
    assert c.verdict == FAIL and "ptdump:" not in c.evidence and "walker PMD" in c.evidence


def test_no_stale_linear_map_pass_and_skips():
    assert by_name(make_run())["no-stale-linear-map"].evidence.startswith(
        f"{REMOVED}: removed PA 0x80000000-0xa0000000: no valid mapping")
    blind = replace_phase(make_run(), REMOVED, ptdump=None, walks=())
    c = by_name(blind)["no-stale-linear-map"]
    assert could_not_look(c) and "no ptdump and no walker output" in c.evidence
    geo = dict(GEOMETRY, linear_offset=None)
    c = by_name(make_run(geometry=geo))["no-stale-linear-map"]
    assert could_not_look(c) and "geometry lacks linear_offset" in c.evidence


def test_missing_removal_phase_skips():
    run = dataclasses.replace(make_run(), removals=(Removal("removed-dimm2", *DIMM),))
    c = by_name(run)["no-stale-linear-map"]
    assert could_not_look(c) and "'removed-dimm2' was not recorded" in c.evidence


def test_no_stale_vmemmap_fails_when_struct_pages_stay_mapped():
    c = by_name(make_run("added", TABLES["added"]))["no-stale-vmemmap"]
    assert c.verdict == FAIL
    assert "struct pages VA 0xfffffdffc2000000-0xfffffdffc2800000" in c.evidence
    assert "ptdump: 0xfffffdffc1000000-0xfffffdffc2800000          24M PMD" in c.evidence
    assert "walker PMD leaf VA 0xfffffdffc1000000-0xfffffdffc2800000" in c.evidence


def test_no_stale_vmemmap_pass_and_skip():
    assert by_name(make_run("removed-stale"))["no-stale-vmemmap"].verdict == PASS
    c = by_name(make_run(geometry=dict(GEOMETRY, memstart=None)))["no-stale-vmemmap"]
    assert could_not_look(c) and "geometry lacks memstart" in c.evidence


# ------------------------------------------------------ present-struct-pages-mapped

def test_present_struct_pages_fail_where_a_present_block_lost_them():
    """SYNTHETIC: the DIMM's blocks are present (online) but the dump is the
    one from before the add: their struct pages are not in the vmemmap."""
    run = replace_phase(make_run(), "online", ptdump=snap("before"), walks=())
    c = by_name(run)["present-struct-pages-mapped"]
    assert c.verdict == FAIL and c.evidence.startswith(
        "online: struct pages of memory still there are not in the vmemmap "
        "(12 present block(s)): VA 0xfffffdffc2000000-")
    assert "(struct pages of PA 0x80000000-" in c.evidence and c.step == "online dimm1"


def test_present_struct_pages_follow_the_device_memory_a_removal_kept():
    """A removal that says device memory stayed (Removal.kept): its struct
    pages must be mapped in that removal's phase; the stock dump after the
    DIMM's removal has none for the DIMM's range, the one from before has."""
    kept = (Removal(REMOVED, *DIMM, baseline="before", kept=(DIMM,)),)
    c = by_name(make_run(removals=kept))["present-struct-pages-mapped"]
    assert c.verdict == FAIL and f"1 device range(s) still there ({DIMM[0]:#x}-" in c.evidence
    ok = by_name(make_run("added", TABLES["added"], removals=kept))
    assert ok["present-struct-pages-mapped"].verdict == PASS
    assert Removal.from_dict(kept[0].to_dict()) == kept[0]
    assert "kept" not in Removal(REMOVED, *DIMM).to_dict()   # runs saved before: unchanged


def test_present_struct_pages_cannot_look_without_a_dump():
    run = make_run()
    run = dataclasses.replace(run, phases=tuple(dataclasses.replace(p, ptdump=None)
                                                for p in run.phases))
    c = by_name(run)["present-struct-pages-mapped"]      # a removal check: required
    assert could_not_look(c) and "no ptdump of the vmemmap" in c.evidence


# ---------------------------------------------------------------- tables-freed

def test_tables_freed_fails_when_a_table_is_kept():
    c = by_name(make_run("removed-table-kept", TABLES["added"]))["tables-freed"]
    assert c.verdict == FAIL and c.step == "remove dimm1"
    assert ("hole at VA 0xffff000080000000-0xffff0000c0000000 is at PMD level, PUD in "
            "before: a PMD table was kept alive (not freed)") in c.evidence
    assert "-0xffff000080000000-0xffff008000000000         510G PUD" in c.evidence
    assert "walker Linear Mapping PMD tables: 1 -> 2" in c.evidence
    assert "vmemmap differs" not in c.evidence


def test_tables_freed_pass_and_no_baseline():
    c = by_name(make_run())["tables-freed"]
    assert c.verdict == PASS
    assert "ptdump Linear Mapping and vmemmap identical, walker table counts equal" \
        in c.evidence
    run = dataclasses.replace(make_run(), removals=(Removal(REMOVED, *DIMM, baseline=""),))
    c = by_name(run)["tables-freed"]
    assert could_not_look(c) and "no baseline" in c.evidence


def test_tables_freed_fails_on_a_stale_mapping():
    c = by_name(make_run("removed-stale"))["tables-freed"]
    assert c.verdict == FAIL
    assert "+0xffff000080000000-0xffff0000a0000000         512M PMD" in c.evidence


# ---------------------------------------------------------------- online-memory-mapped

def test_online_memory_mapped_ignores_reserved_holes():
    # boot block memory15 holds the unmapped 0x7ff30000-0x7ff50000 (not System RAM)
    c = by_name(make_run())["online-memory-mapped"]
    assert c.verdict == PASS
    assert "online: 12 online blocks mapped" in c.evidence


def test_without_system_ram_only_hot_added_blocks_count():
    run = dataclasses.replace(make_run(), phases=tuple(
        dataclasses.replace(p, system_ram=()) for p in make_run().phases))
    c = by_name(run)["online-memory-mapped"]
    assert c.verdict == PASS
    assert "online: 12 online blocks mapped (no System RAM list: hot-added blocks only)" \
        in c.evidence
    run = replace_phase(run, "online", ptdump=snap("before"), walks=())
    c = by_name(run)["online-memory-mapped"]
    assert c.verdict == FAIL and "PA 0x80000000-0xa0000000" in c.evidence


def test_online_block_left_unmapped_fails():
    snapshot = snap("before")
    run = replace_phase(make_run(), "online", ptdump=snapshot,
                        walks=walks_of(snapshot, TABLES["before"]))
    c = by_name(run)["online-memory-mapped"]
    assert c.verdict == FAIL and c.step == "online dimm1"
    assert ("ptdump: PA 0x80000000-0xa0000000 (VA 0xffff000080000000-0xffff0000a0000000) "
            "not mapped") in c.evidence
    assert "walker: PA 0x80000000-0xa0000000" in c.evidence


def test_removing_one_block_of_a_block_mapping_unmaps_its_neighbours():
    """The upstream PUD-split bug: memory17 removed, 16, 18 and 19 stay online,
    but the whole block mapping is gone."""
    online = blocks("online")
    left = dataclasses.replace(online, blocks=tuple(b for b in online.blocks
                                                    if b.index != 17))
    run = replace_phase(make_run(), REMOVED, blocks=left, system_ram=system_ram("added"))
    run = dataclasses.replace(run, removals=(Removal(REMOVED, 0x8800_0000, 0x9000_0000,
                                                     baseline=""),))
    c = by_name(run)["online-memory-mapped"]
    assert c.verdict == FAIL
    assert "ptdump: PA 0x80000000-0x88000000" in c.evidence
    assert "ptdump: PA 0x90000000-0xa0000000" in c.evidence


# ---------------------------------------------------------------- bootmem, splats

RULE_LINE = "[   12.345678] Boot memory [70000000 78000000] offlining attempted"


def test_bootmem_refused_by_the_rule_passes():
    refused = {"block": 14, "exit_code": 1, "state_after": "online", "zones": ["Movable"],
               "hole_free": True, "output": "sh: write error: Operation not permitted",
               "console": [RULE_LINE]}
    c = checks.check_bootmem_not_removable(make_run(bootmem_offline=refused))
    assert c.verdict == PASS and "memory14" in c.evidence
    assert "refused by arm64's boot-memory rule" in c.evidence
    assert "Boot memory [70000000 78000000] offlining attempted" in c.evidence


def test_bootmem_refused_for_another_reason_is_not_exercised():
    busy = {"block": 8, "exit_code": 1, "state_after": "online", "zones": ["Normal"],
            "hole_free": True, "output": "sh: write error: Device or resource busy",
            "console": []}
    c = checks.check_bootmem_not_removable(make_run(bootmem_offline=busy))
    assert c.verdict == SKIP and c.evidence.startswith("not exercised: memory8")
    assert "not in ZONE_MOVABLE" in c.evidence and "Device or resource busy" in c.evidence
    holes = dict(busy, block=15, zones=["Movable"], hole_free=False,
                 output="sh: write error: Invalid argument")
    c = checks.check_bootmem_not_removable(make_run(bootmem_offline=holes))
    assert c.verdict == SKIP and "firmware holes" in c.evidence
    # a method that requires the check: the run is an error (exit 2), not a PASS
    run = make_run(bootmem_offline=busy, required=("bootmem-not-removable",))
    c = by_name(run)["bootmem-not-removable"]
    assert could_not_look(c) and "not exercised" in c.evidence
    assert checks.method_verdict(run, by_name(run).values()) == ERROR
    # an old record without console lines is not a PASS either
    old = {"block": 8, "exit_code": 1, "state_after": "online", "output": ""}
    c = checks.check_bootmem_not_removable(make_run(bootmem_offline=old))
    assert c.verdict == SKIP and "no console record" in c.evidence


def test_bootmem_offlined_fails():
    offlined = {"block": 8, "exit_code": 0, "state_after": "offline", "output": "",
                "console": []}
    c = checks.check_bootmem_not_removable(make_run(bootmem_offline=offlined))
    assert c.verdict == FAIL and c.step == "offline memory8"
    assert "exit code 0, state after: offline" in c.evidence
    assert checks.check_bootmem_not_removable(make_run()).verdict == SKIP


def test_no_kernel_splat_lists_each_crash_with_its_step():
    crashes = [dict(r.to_dict(), step="remove memory17")
               for r in classify_file(DATA / "console-oops-copy-page.log")]
    run = make_run(crashes=tuple(crashes))
    c = by_name(run)["no-kernel-splat"]
    assert c.verdict == FAIL and c.step == "remove memory17"
    assert ("oops: Unable to handle kernel paging request at virtual address "
            "ffff00008ff8c000 (pc copy_page+0x4/0xd0), step remove memory17") in c.evidence
    assert "    folio_mc_copy+0x48/0x6c" in c.evidence
    assert checks.method_verdict(run, [Check("x", PASS)]) == FAIL


def test_no_kernel_splat_names_the_range_its_removal_step_was_removing():
    """A WARNING carries no address; the step it happened in says what was
    being removed (from the step that led to the removal's phase)."""
    crashes = [dict(r.to_dict(), step="remove dimm1")
               for r in classify_file(DATA / "console-warn-hotplug.log")]
    c = checks.check_no_kernel_splat(make_run(crashes=tuple(crashes)))
    assert c.evidence.endswith("step 'remove dimm1' was removing PA 0x80000000-0xa0000000")
    other = [dict(r, step="online dimm1") for r in crashes]
    assert "was removing" not in checks.check_no_kernel_splat(
        make_run(crashes=tuple(other))).evidence


def test_a_report_the_stock_kernel_makes_too_is_said_and_still_fails():
    """SYNTHETIC (the title and pc CI's clean race row showed): free_pages()'s
    VM_BUG_ON under hot-remove is a race of the stock kernel; the evidence
    says so, the verdict stays FAIL; another BUG in page_alloc.c gets no note."""
    bug = {"kind": "bug", "title": "kernel BUG at mm/page_alloc.c:4958!",
           "pc_symbol": "free_pages.part.0+0x24/0xa0", "step": "add/remove loop",
           "call_trace": ["free_pages.part.0+0x24/0xa0", "free_pages+0x1c/0x28"]}
    c = checks.check_no_kernel_splat(make_run(crashes=(bug,)))
    assert c.verdict == FAIL
    assert "    note: the stock kernel makes this report too: free_pages()'s VM_BUG_ON(" \
        in c.evidence and "'A race of the stock kernel'" in c.evidence
    other = dict(bug, pc_symbol="__free_one_page+0x1c0/0x3a0")
    assert "note:" not in checks.check_no_kernel_splat(make_run(crashes=(other,))).evidence


# ---------------------------------------------------------------- cycles

def owners(name: str) -> dict:
    """A recorded page_owner read (tests/data/page-owner-*.txt, see
    tests/test_page_owner.py) as the Phase.page_owner the Recorder keeps."""
    text = (Path(__file__).resolve().parent / "data" / f"page-owner-{name}.txt").read_text()
    return leakcheck.snapshot(text).to_dict()


CLEAN_OWNERS = ("before", "cycle-1", "cycle-2")
LEAK_OWNERS = ("leak-before", "leak-cycle-1", "leak-cycle-2")


def cycle_run(memtotal=(1011164,) * 2, memfree=(972548,) * 2, tables=None,
              page_owner=CLEAN_OWNERS) -> MethodRun:
    run = make_run()
    base = run.phase(REMOVED)
    snaps = [owners(n) if isinstance(n, str) else n for n in page_owner]
    phases = [dataclasses.replace(p, page_owner=snaps[0]) if p.name == "before" else p
              for p in run.phases]
    for n, (total, free) in enumerate(zip(memtotal, memfree), 1):
        info = dict(base.meminfo, MemTotal=total, MemFree=free)
        walks = walks_of(base.ptdump, (tables or {}).get(n, TABLES["before"]))
        phases.append(dataclasses.replace(base, name=f"cycle-{n}", meminfo=info,
                                          walks=walks, page_owner=snaps[min(n, 2)]))
    return dataclasses.replace(run, phases=tuple(phases),
                               options={"walker": True, "cycles": len(memtotal)})


def test_cycles_skip_below_two():
    c = by_name(cycle_run(memtotal=(1011164,), memfree=(972548,)))["no-leak-across-cycles"]
    assert c.verdict == SKIP and "1 cycle phase(s)" in c.evidence


def test_cycles_pass_on_page_owner_and_memfree_is_context_only():
    # MemFree moving by 2 MB per cycle is noise on the clean kernel: not judged
    c = by_name(cycle_run(memfree=(972548, 970500)))["no-leak-across-cycles"]
    assert c.verdict == PASS, c.evidence
    assert "page_owner: cycle-1: no vmemmap or linear-map table stack" in c.evidence
    assert "context, not judged: MemFree 972548 kB at cycle-1 -> 970500 kB at cycle-2 " \
           "(+2048 kB per cycle)" in c.evidence
    assert "MemTotal 1011164 kB in all 2 cycles" in c.evidence


def test_cycles_fail_on_a_page_owner_leak_with_its_stack():
    c = by_name(cycle_run(page_owner=LEAK_OWNERS))["no-leak-across-cycles"]
    assert c.verdict == FAIL and c.step == "cycle-1"
    assert "leaked pages by cycle: cycle-1 +" in c.evidence
    assert "vmemmap_populate" in c.evidence or "vmemmap" in c.evidence


def test_cycles_cannot_pass_without_page_owner():
    off = {"unavailable": leakcheck.NOT_ENABLED}
    c = checks.check_no_leak_across_cycles(cycle_run(page_owner=(off, off, off)))
    assert c.verdict == SKIP and "page_owner: could not look" in c.evidence
    assert "--config leak" in c.evidence
    # needed with --cycles 2: a check that could not look is an ERROR, not a PASS
    judged = by_name(cycle_run(page_owner=(off, off, off)))["no-leak-across-cycles"]
    assert judged.verdict == ERROR


def test_cycles_fail_on_drifting_memtotal():
    c = by_name(cycle_run(memtotal=(1011164, 1011036, 1010908),
                          memfree=(972548,) * 3))["no-leak-across-cycles"]
    assert c.verdict == FAIL and c.step == "cycle-2"     # no 'inspect cycle-2' step
    assert "cycle-3: MemTotal 1010908 kB, before 1011164 kB" in c.evidence


def test_cycles_fail_on_table_growth():
    run = cycle_run(memtotal=(1011164,) * 3, memfree=(972548,) * 3,
                    tables={3: dict(TABLES["before"], PTE=4)})
    c = by_name(run)["no-leak-across-cycles"]
    assert c.verdict == FAIL
    assert "cycle-3 vs cycle-1, Linear Mapping PTE tables: 3 -> 4" in c.evidence


# ---------------------------------------------------------------- contiguous groups

def _recorded_16k(phase: str):
    text = (Path(__file__).resolve().parent / "data"
            / f"recorded-16k-47-split-leaf-ptdump-{phase}.txt").read_text()
    return dataclasses.replace(make_run().phase("before"), name=phase,
                               ptdump=ptdump.parse(text))


def test_contiguous_groups_whole_on_a_real_16k_split():
    """Recorded on 16k-47: stock 6.12 removes one 128 MiB block out of a 1G run
    of CON PMDs and leaves two partial groups mapped (TCG does not fault)."""
    online, removed = _recorded_16k("online"), _recorded_16k("removed-1")
    run = dataclasses.replace(make_run(), phases=(online, removed),
                              geometry=dict(GEOMETRY, granule=16384))
    c = checks.check_contiguous_groups_whole(run)
    assert c.verdict == FAIL and c.step == "removed-1"     # no such step in make_run
    assert c.evidence.startswith(
        "removed-1: a contiguous (CON) group is only partly mapped: Linear Mapping VA "
        "0xffff800080000000-0xffff800088000000 (128M PMD CON) is not whole 1G-aligned "
        "contiguous groups")
    assert "0xffff800090000000-0xffff8000c0000000 (768M PMD CON)" in c.evidence
    ok = checks.check_contiguous_groups_whole(dataclasses.replace(run, phases=(online,)))
    assert ok.verdict == PASS and "every CON range is whole groups" in ok.evidence


def test_contiguous_groups_skip_an_unknown_granule():
    run = dataclasses.replace(make_run(), geometry=dict(GEOMETRY, granule=8192))
    assert checks.check_contiguous_groups_whole(run).verdict == SKIP


# ---------------------------------------------------------------- walker vs ptdump

def test_walker_disagreeing_with_ptdump_fails():
    walks = walks_of(snap("added"), TABLES["added"])
    run = replace_phase(make_run(), REMOVED, walks=walks)
    c = by_name(run)["walker-agrees-with-ptdump"]
    assert c.verdict == FAIL and c.step == "remove dimm1"
    assert "only in walker: 0xffff000080000000-0xffff0000a0000000" in c.evidence
    assert "only in walker: 0xfffffdffc2000000-0xfffffdffc2800000" in c.evidence


def test_walker_agreement_skips_without_walks():
    run = dataclasses.replace(make_run(), phases=tuple(
        dataclasses.replace(p, walks=()) for p in make_run().phases))
    assert by_name(run)["walker-agrees-with-ptdump"].verdict == SKIP


# ---------------------------------------------------------------- kselftest

@pytest.mark.parametrize("one_line", [False, True])
def test_kselftest_passes_despite_exit_code(one_line):
    ks = {"exit_code": 1, "hotplugged_blocks": [16, 17, 18, 19],
          "output": kselftest_output(boot_refused_hot_ok(), one_line=one_line)}
    c = by_name(make_run(kselftest=ks))["kselftest"]
    assert c.verdict == PASS, c.evidence
    assert "memory16-memory19 exercised" in c.evidence
    assert "8 boot-memory block(s) failed to offline, expected on arm64" in c.evidence


def test_kselftest_accepts_output_as_lines():
    ks = {"exit_code": 1, "hotplugged_blocks": [16, 17, 18, 19],
          "lines": kselftest_output(boot_refused_hot_ok()).splitlines()}
    assert checks.check_kselftest(make_run(kselftest=ks)).verdict == PASS


def test_kselftest_fails_on_a_hot_plugged_block():
    results = {**boot_refused_hot_ok(), 17: "Failure"}
    output = kselftest_output(results, online=(16, 18, 19))
    output += "online_memory_expect_success 18: unexpected fail\n"
    ks = {"exit_code": 1, "hotplugged_blocks": [16, 17, 18, 19], "output": output}
    c = by_name(make_run(kselftest=ks))["kselftest"]
    assert c.verdict == FAIL
    assert "hot-plugged memory17: online->offline -> Failure" in c.evidence
    assert "memory18: online_memory_expect_success: unexpected fail" in c.evidence


def test_kselftest_judges_every_cycle():
    ok = {"cycle": 1, "exit_code": 1, "hotplugged_blocks": [16, 17, 18, 19],
          "output": kselftest_output(boot_refused_hot_ok())}
    bad = dict(ok, cycle=2, output=kselftest_output({**boot_refused_hot_ok(),
                                                     17: "Failure"}, online=(16, 18, 19)))
    steps = (Step("run mem-on-off-test.sh", 9.0, "ssh"),
             Step("run mem-on-off-test.sh@2", 9.0, "ssh"))
    run = make_run(kselftest=dict(ok, cycles=[ok, bad]), steps=steps)
    c = checks.check_kselftest(run)
    assert c.verdict == FAIL and c.step == "run mem-on-off-test.sh@2"
    assert c.evidence.startswith("cycle 2: mem-on-off-test.sh: hot-plugged memory17")
    assert "\ncycle 1: hot-plugged memory16-memory19 exercised" in c.evidence
    both_ok = checks.check_kselftest(make_run(kselftest=dict(ok, cycles=[ok, dict(ok, cycle=2)]),
                                              steps=steps))
    assert both_ok.verdict == PASS and both_ok.evidence.count("exercised") == 2


def test_kselftest_fails_when_an_offlined_block_never_comes_back():
    ks = {"exit_code": 1, "hotplugged_blocks": [16, 17, 18, 19],
          "output": kselftest_output(boot_refused_hot_ok(), online=(16, 17, 18))}
    c = checks.check_kselftest(make_run(kselftest=ks))
    assert c.verdict == FAIL
    assert "hot-plugged memory19 was offlined and never onlined again" in c.evidence


def test_kselftest_fails_when_boot_memory_goes_offline():
    ks = {"exit_code": 0, "hotplugged_blocks": [16, 17, 18, 19],
          "output": kselftest_output({b: "Success" for b in GLOB_ORDER})}
    c = checks.check_kselftest(make_run(kselftest=ks))
    assert c.verdict == FAIL and "boot-memory memory8 was offlined" in c.evidence


def test_kselftest_that_touched_no_hot_block_is_an_error():
    ks = {"exit_code": 1, "hotplugged_blocks": [16, 17, 18, 19],
          "output": kselftest_output({10: "Failure"}, online=())}
    c = checks.check_kselftest(make_run(kselftest=ks))
    assert c.verdict == ERROR and "exercised no hot-plugged block" in c.evidence


def test_parse_mem_on_off():
    log = selftest.parse_mem_on_off(kselftest_output(boot_refused_hot_ok()))
    assert log.touched == frozenset(GLOB_ORDER)
    assert log.offlined == frozenset({16, 17, 18, 19})
    assert log.offline_failed == frozenset({8, 9, 10, 11, 12, 13, 14, 15})


# ---------------------------------------------------------------- verdicts

def test_method_verdict_rules():
    run = make_run()
    ok, bad, err = Check("a", PASS), Check("b", FAIL), Check("c", ERROR)
    assert checks.method_verdict(run, [ok, Check("s", SKIP)]) == PASS
    assert checks.method_verdict(run, [ok, err]) == ERROR
    assert checks.method_verdict(run, [bad, err]) == FAIL
    infra = make_run(error={"message": "QEMU died", "step": "boot", "blame": "infra"})
    assert checks.method_verdict(infra, [ok]) == ERROR
    assert checks.method_verdict(infra, [bad]) == FAIL
    kernel = make_run(error={"message": "remove failed", "step": "x", "blame": "kernel"})
    assert checks.method_verdict(kernel, [ok]) == FAIL


def test_overall_verdict():
    assert checks.overall_verdict([PASS, PASS]) == (PASS, 0)
    assert checks.overall_verdict([PASS, ERROR]) == (ERROR, 2)
    assert checks.overall_verdict([ERROR, FAIL]) == (FAIL, 1)
    assert checks.overall_verdict({"acpi-dimm": PASS}) == (PASS, 0)
    assert checks.overall_verdict([]) == (ERROR, 2)


def test_checks_still_run_on_a_run_cut_short():
    run = dataclasses.replace(make_run(), phases=make_run().phases[:1], removals=(
        Removal(REMOVED, *DIMM),), error={"message": "QEMU died", "step": "add dimm1",
                                          "blame": "infra", "evidence": ""})
    found = by_name(run)
    assert found["online-memory-mapped"].verdict == PASS
    assert found["no-stale-linear-map"].verdict == SKIP
    lifecycle = found["blocks-lifecycle"]
    assert lifecycle.verdict == SKIP
    assert "phase(s) online, removed-dimm1 not recorded" in lifecycle.evidence
    assert checks.method_verdict(run, found.values()) == ERROR   # not the kernel's fault


def test_a_broken_rule_is_an_error_not_a_crash(monkeypatch):
    def broken(run):
        raise KeyError("granule")
    monkeypatch.setattr(checks, "RULES", (("tables-freed", broken),))
    (c,) = checks.judge(make_run())
    assert c == Check("tables-freed", ERROR, "check raised KeyError: 'granule'")


def test_ptdump_without_the_region_is_an_error_part():
    dump = snap("removed")
    regions = {k: v for k, v in dump.regions.items() if k != checks.LINEAR}
    run = replace_phase(make_run(), REMOVED, ptdump=ptdump.Snapshot(regions), walks=())
    c = by_name(run)["no-stale-linear-map"]
    assert c.verdict == ERROR and "no region 'Linear Mapping'" in c.evidence


def test_round_trip_gives_the_same_checks():
    run = make_run("removed-table-kept", TABLES["added"], crashes=tuple(
        r.to_dict() for r in classify_file(DATA / "console-oops-copy-page.log")),
        kselftest={"exit_code": 1, "hotplugged_blocks": [16, 17, 18, 19],
                   "output": kselftest_output(boot_refused_hot_ok())},
        bootmem_offline={"block": 8, "exit_code": 1, "state_after": "online",
                         "output": ""})
    again = MethodRun.from_dict(json.loads(json.dumps(run.to_dict())))
    assert checks.judge(again) == checks.judge(run)


# ---------------------------------------------------------------- recorded runs

RECORDED = sorted([*DATA.glob("recorded-[0-9]*k-*.json"), *DATA.glob("recorded-[0-9]*k-*/*.json")])
REPROS = sorted(DATA.glob("recorded-repro/*.json"))     # kernels with an injected bug


def _id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


@pytest.mark.parametrize("path", RECORDED, ids=_id)
def test_recorded_runs_from_real_guests_pass(path):
    run = MethodRun.from_dict(json.loads(path.read_text()))
    found = checks.judge(run)
    bad = [c for c in found if c.verdict in (FAIL, ERROR)]
    assert not bad, "\n".join(f"{c.verdict} {c.name}: {c.evidence}" for c in bad)
    assert checks.method_verdict(run, found) == PASS


def test_recorded_run_with_a_stale_dump_fails():
    path = DATA / "recorded-4k-48-acpi-dimm" / "methodrun.json"
    if not path.exists():
        pytest.skip("no recorded acpi-dimm run")
    run = MethodRun.from_dict(json.loads(path.read_text()))
    run = replace_phase(run, "removed-2", ptdump=run.phase("online").ptdump)
    found = by_name(run)
    assert found["no-stale-linear-map"].verdict == FAIL
    assert found["no-stale-linear-map"].step == "remove dimm2"
    assert found["tables-freed"].verdict == FAIL
    assert found["walker-agrees-with-ptdump"].verdict == FAIL


@pytest.mark.parametrize("path", REPROS, ids=_id)
def test_recorded_runs_of_buggy_kernels_fail(path):
    run = MethodRun.from_dict(json.loads(path.read_text()))
    found = checks.judge(run)
    assert checks.method_verdict(run, found) == FAIL
    assert not [c for c in found if c.verdict == ERROR]


# ---------------------------------------------------------------- no silent PASS

def test_a_part_that_could_not_look_outranks_the_passes():
    run = make_run()
    parts = [checks.Part(PASS, "removed-1: fine", "removed-1"),
             checks.Part(SKIP, "removed-2: geometry lacks memstart", "removed-2")]
    assert checks.combine(run, "x", parts, "").verdict == SKIP
    na = [parts[0], checks.Part(SKIP, "removed-2: no baseline", "removed-2", looked=False)]
    c = checks.combine(run, "x", na, "")
    assert c.verdict == PASS and "no baseline" in c.evidence


def test_a_neighbour_without_baseline_does_not_spoil_tables_freed():
    first = Removal("removed-1", *DIMM, baseline="")
    run = dataclasses.replace(make_run(), removals=(first, Removal(REMOVED, *DIMM)))
    run = dataclasses.replace(run, phases=run.phases + (
        dataclasses.replace(run.phase(REMOVED), name="removed-1"),))
    assert by_name(run)["tables-freed"].verdict == PASS


def test_required_checks_follow_the_method_and_the_walker_option():
    run = make_run(required=("blocks-lifecycle",), options={"walker": True, "cycles": 1})
    assert checks.required_checks(run) == ("blocks-lifecycle", "walker-agrees-with-ptdump",
                                           "walker-no-bad-entries")
    off = dataclasses.replace(run, options={"walker": False})
    assert checks.required_checks(off) == ("blocks-lifecycle",)
    cycles = dataclasses.replace(run, options={"walker": False, "cycles": 3})
    assert "no-leak-across-cycles" in checks.required_checks(cycles)


def test_walker_that_turned_itself_off_is_an_error_not_a_pass():
    unwalked = tuple(dataclasses.replace(p, walks=()) for p in make_run().phases)
    asked = make_run(phases=unwalked, options={"walker": True})
    found = by_name(asked)
    assert could_not_look(found["walker-agrees-with-ptdump"])
    assert checks.method_verdict(asked, found.values()) == ERROR
    declined = make_run(phases=unwalked, options={"walker": False})
    found = by_name(declined)
    assert found["walker-agrees-with-ptdump"].verdict == SKIP
    assert found["no-stale-linear-map"].verdict == PASS   # ptdump alone judges
    assert checks.method_verdict(declined, found.values()) == PASS


def test_a_stopped_run_keeps_its_skips():
    run = make_run(phases=make_run().phases[:1], required=("bootmem-not-removable",),
                   error={"message": "QEMU died", "step": "add dimm1", "blame": "infra",
                          "evidence": ""})
    assert by_name(run)["bootmem-not-removable"].verdict == SKIP


def test_walker_bad_entries_are_evidence():
    run = make_run()
    phase = run.phase(REMOVED)
    bad = dataclasses.replace(phase.walks[0], bad=(
        (0xffff000080000000, "PMD", 0x80000f00, "valid bit clear"),))
    run = replace_phase(run, REMOVED, walks=(bad,) + phase.walks[1:])
    c = by_name(run)["walker-no-bad-entries"]
    assert c.verdict == FAIL and c.step == "remove dimm1"
    assert ("removed-dimm1: Linear Mapping PMD entry for VA 0xffff000080000000: "
            "descriptor 0x80000f00: valid bit clear") in c.evidence


# ---------------------------------------------------------------- ordering (gdb)

def order_record(name: str, step: str = "remove 0x80000000", flush=True) -> dict:
    """A watched removal from a recorded stop sequence (tests/data/order-*.jsonl)."""
    lines = [json.loads(l) for l in (DATA / name).read_text().splitlines() if l.strip()]
    from harness.inspect import order
    events = [d for d in lines if order.event_from_dict(d) is not None]
    return {"step": step, "pa_start": 0x80000000, "pa_end": 0x88000000,
            "flush_check": flush, "events": events, "stats": {}, "error": ""}


def test_order_checks_on_recorded_removals():
    clean = make_run(order=(order_record("order-clean-rodata-full.jsonl"),),
                     options={"order_check": "on"})
    found = by_name(clean)
    assert found["no-table-freed-while-linked"].verdict == PASS
    assert found["tlb-flushed-before-free"].verdict == PASS
    assert found["leaf-flushed-before-free"].verdict == PASS
    assert found["unlinked-tables-freed"].verdict == PASS
    # the report lists what was followed of each removal
    assert "remove 0x80000000: followed in full" in found["tlb-flushed-before-free"].evidence
    early = make_run(order=(order_record("order-free-before-clear-rodata-full.jsonl"),))
    c = by_name(early)["no-table-freed-while-linked"]
    assert c.verdict == FAIL and c.step == "remove 0x80000000"
    assert "still linked from PMD entry at VA 0xffff0000" in c.evidence
    late = by_name(make_run(order=(order_record("order-no-flush-rodata-full.jsonl"),)))
    assert late["no-table-freed-while-linked"].verdict == PASS
    assert late["tlb-flushed-before-free"].verdict == FAIL
    assert "no covering TLB invalidation" in late["tlb-flushed-before-free"].evidence


def test_order_checks_are_required_when_on_and_say_what_was_not_watched():
    unwatched = {"step": "remove dimm1", "pa_start": 0, "pa_end": 1, "flush_check": False,
                 "events": [], "stats": {}, "error": "not watched: QEMU has no gdbstub"}
    run = make_run(order=(unwatched,), options={"order_check": "on"})
    found = by_name(run)
    assert could_not_look(found["no-table-freed-while-linked"])
    assert "QEMU has no gdbstub" in found["no-table-freed-while-linked"].evidence
    assert checks.method_verdict(run, found.values()) == ERROR
    off = make_run(options={"order_check": "off"})
    assert "no-table-freed-while-linked" not in by_name(off)


def test_a_removal_that_frees_no_table_does_not_spoil_the_flush_check():
    neighbour = order_record("order-clean-block.jsonl", "remove dimm1")
    neighbour["events"] = [e for e in neighbour["events"] if e["kind"] != "watch"]
    run = make_run(order=(neighbour, order_record("order-clean-block.jsonl")),
                   options={"order_check": "on"})
    assert by_name(run)["tlb-flushed-before-free"].verdict == PASS


def test_watched_removals_that_free_no_table_are_not_applicable():
    leaf = order_record("order-clean-block.jsonl", "remove 0x88000000")
    leaf["events"] = [e for e in leaf["events"] if e["kind"] == "free" and not e.get("was_table")]
    run = make_run(order=(leaf,), options={"order_check": "on"})
    c = by_name(run)["tlb-flushed-before-free"]
    assert c.verdict == SKIP and c.evidence.startswith(checks.NOT_APPLICABLE)
    assert by_name(run)["unlinked-tables-freed"].verdict == SKIP
    # frees were seen but neither a vmemmap leaf nor arch_remove_memory(): the
    # leaf rule could not look (a recording made before it existed), which a
    # required check turns into ERROR, never a PASS
    leafc = by_name(run)["leaf-flushed-before-free"]
    assert leafc.verdict == ERROR and "no arch_remove_memory() call" in leafc.evidence
    others = [c for c in by_name(run).values() if c.name != "leaf-flushed-before-free"]
    assert checks.method_verdict(run, others) == PASS


def test_sampled_removals_are_said_not_followed_and_not_an_error():
    """--order-check sampled: the removals not followed make the flush checks
    SKIP with 'not followed: N of M removals', which is no ERROR (asked for)
    and no PASS; without sampling the same record is an ERROR."""
    first = order_record("order-clean-rodata-full.jsonl")
    second = dict(order_record("order-clean-block.jsonl", "remove 0x88000000", flush=False))
    second["events"] = [e for e in second["events"] if e["kind"] == "free"]
    run = make_run(order=(first, second), options={"order_check": "sampled"})
    found = by_name(run)
    for name in ("tlb-flushed-before-free", "leaf-flushed-before-free",
                 "unlinked-tables-freed"):
        c = found[name]
        assert c.verdict == SKIP and c.evidence.startswith(checks.SAMPLED), c.evidence
        assert "not followed: 1 of 2 removals" in c.evidence
        assert "remove 0x80000000: followed in full" in c.evidence
    assert found["no-table-freed-while-linked"].verdict == PASS
    assert checks.method_verdict(run, found.values()) == PASS
    full = by_name(make_run(order=(first, second), options={"order_check": "on"}))
    assert full["tlb-flushed-before-free"].verdict == ERROR
    assert "not followed: 1 of 2 removals" in full["tlb-flushed-before-free"].evidence


def test_a_kasan_report_line_names_the_address_it_is_about():
    crash = {"kind": "kasan", "title": "BUG: KASAN: use-after-free in ptdump_pte_entry+0xe8/0xec",
             "lines": ["BUG: KASAN: use-after-free in ptdump_pte_entry+0xe8/0xec",
                       "Read of size 8 at addr ffff000001e84c08 by task cat/123"],
             "step": "add/remove loop (45 s)", "first_line_no": 812}
    line = checks.crash_line(crash)
    assert "(Read of size 8 at addr ffff000001e84c08)" in line and "step add/remove" in line


def test_bootmem_vetoed_without_the_rules_report_fails():
    """The kernel before upstream 9fb3d4a30338 (patches/history): the notifier
    still refuses (EPERM) but prints nothing; with the console watched, that
    silence is the bug. Without a console record it stays not exercised."""
    silent = {"block": 14, "exit_code": 1, "state_after": "online", "zones": ["Movable"],
              "hole_free": True, "output": "sh: write error: Operation not permitted",
              "console": [], "range": [0x70000000, 0x78000000]}
    c = checks.check_bootmem_not_removable(make_run(bootmem_offline=silent))
    assert c.verdict == FAIL and "memory notifier's veto (EPERM" in c.evidence
    assert "no 'Boot memory [...] offlining attempted' line" in c.evidence
    assert "memory14" in c.evidence and "0x70000000-0x78000000" in c.evidence
    unwatched = {k: v for k, v in silent.items() if k != "console"}
    c = checks.check_bootmem_not_removable(make_run(bootmem_offline=unwatched))
    assert c.verdict == SKIP and "no console record" in c.evidence
