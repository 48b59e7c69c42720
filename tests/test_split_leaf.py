"""split-leaf: the 6.12 bug that removing one block of a 1 GiB PUD-mapped DIMM
unmaps the rest of it, and patches/fixes/0001 that refuses such a removal.

Unit tests for the method's pure logic (leaf sizes, which leaves a removal
splits, the refusal's errno), then real runs under QEMU: the stock kernel must
FAIL online-memory-mapped at removed-1 (before its Oops), the fixed one PASS
with the removal refused.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness import runner
from harness.drive import split_leaf
from harness.inspect import ptdump
from harness.kernel import kernel as build
from harness.session import BootOptions

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "patches" / "fixes" / "0001-arm64-mm-reject-memory-removal-that-splits-a-leaf.patch"
OFF = 0xffff000000000000        # linear offset of the recorded 4k-48 guest (memstart 0)
G = 1 << 30
M = 1 << 20

# Linear Mapping of a stock 6.12.117 guest with a 1 GiB pc-dimm at 0x80000000
# online (excerpt of ptdump-online.txt from `run --method split-leaf`)
ONLINE = """\
---[ Linear Mapping start ]---
0xffff000000000000-0xffff000040000000           1G PUD
0xffff000040000000-0xffff00007a000000         928M PMD       RW NX SHD AF    CON BLK UXN    MEM/NORMAL-TAGGED
0xffff00007a000000-0xffff00007b400000          20M PMD       RW NX SHD AF        BLK UXN    MEM/NORMAL-TAGGED
0xffff00007b400000-0xffff00007b800000           4M PMD       ro NX SHD AF        BLK UXN    MEM/NORMAL
0xffff00007b800000-0xffff00007b8d0000         832K PTE       ro NX SHD AF            UXN    MEM/NORMAL
0xffff00007b8d0000-0xffff00007ba00000        1216K PTE       RW NX SHD AF    CON     UXN    MEM/NORMAL-TAGGED
0xffff00007ba00000-0xffff000080000000          70M PMD       RW NX SHD AF        BLK UXN    MEM/NORMAL-TAGGED
0xffff000080000000-0xffff0000c0000000           1G PUD       RW NX SHD AF        BLK UXN    MEM/NORMAL-TAGGED
0xffff0000c0000000-0xffff008000000000         509G PUD
0xffff008000000000-0xffff800000000000      130560G PGD
---[ Linear Mapping end ]---
"""


def snap(text=ONLINE):
    return ptdump.parse(text)


def one_line(start, end, size, level, attrs="RW NX SHD AF        BLK UXN    MEM/NORMAL"):
    return ("---[ Linear Mapping start ]---\n"
            f"0x{start:016x}-0x{end:016x} {size:>16} {level}       {attrs}\n"
            "---[ Linear Mapping end ]---\n")


# ---------------------------------------------------------------- unit

@pytest.mark.parametrize("granule,level,cont,size", [
    (4096, "PTE", False, 4096), (4096, "PTE", True, 64 << 10),
    (4096, "PMD", False, 2 * M), (4096, "PMD", True, 32 * M), (4096, "PUD", False, G),
    (16384, "PTE", True, 2 * M), (16384, "PMD", False, 32 * M), (16384, "PMD", True, G),
    (65536, "PTE", True, 2 * M), (65536, "PMD", False, 512 * M),
    (65536, "PMD", True, 16 * G),
])
def test_leaf_size_per_granule_level_and_contiguous_run(granule, level, cont, size):
    assert split_leaf.leaf_size(level, granule, cont) == size


def test_one_block_of_a_pud_mapped_dimm_splits_the_pud_at_both_edges():
    found = split_leaf.split_leaves(snap(), 4096, OFF + 0x88000000, OFF + 0x90000000)
    assert [f.edge - OFF for f in found] == [0x88000000, 0x90000000]
    assert {(f.leaf_start - OFF, f.leaf_end - OFF) for f in found} == {
        (0x80000000, 0xc0000000)}
    text = found[0].text(OFF)
    assert text.startswith("PA 0x80000000-0xc0000000 is one 1G PUD leaf")
    assert "0xffff000080000000-0xffff0000c0000000" in text and "BLK" in text


def test_the_whole_dimm_or_an_end_block_only_split_where_an_edge_is_inside():
    assert split_leaf.split_leaves(snap(), 4096, OFF + 0x80000000, OFF + 0xc0000000) == []
    first = split_leaf.split_leaves(snap(), 4096, OFF + 0x80000000, OFF + 0x88000000)
    assert [f.edge - OFF for f in first] == [0x88000000]


def test_merged_pmd_blocks_and_contiguous_runs_inside_a_block_split_nothing():
    # the boot memory's "928M PMD ... CON BLK" line is 29 runs of 32 MiB
    assert split_leaf.split_leaves(snap(), 4096, OFF + 0x48000000, OFF + 0x50000000) == []
    # 512 PMD blocks printed as one 1G line: 2 MiB leaves, no split
    pmds = snap(one_line(OFF + 0x80000000, OFF + 0xc0000000, "1G", "PMD"))
    assert split_leaf.split_leaves(pmds, 4096, OFF + 0x88000000, OFF + 0x90000000) == []
    # not block-aligned: cuts a 2 MiB PMD block
    cut = split_leaf.split_leaves(pmds, 4096, OFF + 0x88100000, OFF + 0x90000000)
    assert [(f.leaf_start - OFF, f.leaf_end - OFF) for f in cut] == [(0x88000000, 0x88200000)]


def test_16k_contiguous_pmd_run_of_1g_is_split_by_one_block():
    cont = snap(one_line(OFF + 0x80000000, OFF + 0xc0000000, "1G", "PMD",
                         "RW NX SHD AF    CON BLK UXN    MEM/NORMAL"))
    found = split_leaf.split_leaves(cont, 16384, OFF + 0x88000000, OFF + 0x90000000)
    assert len(found) == 2 and "1G PMD CON leaf" in found[0].text(OFF)
    assert split_leaf.split_leaves(cont, 4096, OFF + 0x88000000, OFF + 0x90000000) == []


def test_holes_and_unmapped_edges_split_nothing():
    hole = snap(one_line(OFF + 0x80000000, OFF + 0xc0000000, "1G", "PUD", "")
                .replace("PUD       \n", "PUD\n"))
    assert split_leaf.split_leaves(hole, 4096, OFF + 0x88000000, OFF + 0x90000000) == []


@pytest.mark.parametrize("code,output,want", [
    (0, "", ("removed", None)),
    (1, "sh: write error: Invalid argument", ("refused", "EINVAL")),
    (1, "sh: write error: Device or resource busy", ("refused", "EBUSY")),
    (1, "sh: write error: Operation not permitted", ("refused", "EPERM")),
    (1, "sh: write error: No such device", ("failed", "ENODEV")),
    (2, "sh: can't create /sys/devices/system/memory/remove: nonexistent", ("failed", None)),
])
def test_outcome_of_the_remove_write(code, output, want):
    assert split_leaf.outcome(code, output) == want


def test_registered_as_a_method_with_room_for_one_1g_dimm():
    assert runner.METHODS["split-leaf"] is split_leaf.METHOD
    assert split_leaf.METHOD.mode == "acpi"
    opts = split_leaf.boot_options(BootOptions(mem_mb=1024, slots=0, maxmem_mb=1024))
    assert opts.slots >= 2 and opts.maxmem_mb >= 1024 + split_leaf.DIMM_MB + 128
    assert "movablecore=256M" in opts.cmdline
    assert split_leaf.Options().dimm_mb == 1024 and split_leaf.Options().block == 1


# ---------------------------------------------------------------- real runs

def harness_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "harness.cli", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=timeout)


@pytest.fixture(scope="module")
def kernel():
    return build.build(build.BuildRequest())


def _method(tmp_path):
    report = json.loads((tmp_path / "report.json").read_text())
    [method] = report["methods"]
    return method, {c["name"]: c for c in method["checks"]}


@pytest.mark.kernel
@pytest.mark.qemu
def test_stock_kernel_unmaps_online_memory_and_fails_before_its_oops(kernel, tmp_path):
    proc = harness_cli("run", "--method", "split-leaf", "--report", str(tmp_path))
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-3000:]
    method, checks = _method(tmp_path)
    assert method["verdict"] == "FAIL"
    online = checks["online-memory-mapped"]
    assert online["verdict"] == "FAIL" and online["step"] == "remove 0x88000000"
    first = online["evidence"].splitlines()[0]
    assert first.startswith("removed-1: online memory not in the linear map:")
    assert "PA 0x80000000-0x88000000" in online["evidence"]
    assert "PA 0x90000000-0xc0000000" in online["evidence"]
    # the phase was taken right after the remove, before anything else ran
    names = [s["name"] for s in method["steps"]]
    assert names.index("inspect removed-1") == names.index("remove 0x88000000") + 1
    notes = "\n".join(method["run"]["notes"])
    assert "1G PUD leaf" in notes and "expected-fail" in notes
    if method["run"]["crashes"]:
        splat = checks["no-kernel-splat"]
        assert splat["verdict"] == "FAIL" and "ffff0000" in splat["evidence"]
        assert names.index("inspect removed-1") < names.index(splat["step"])


@pytest.mark.kernel
@pytest.mark.qemu
def test_fixed_kernel_refuses_the_removal_and_passes(kernel, tmp_path):
    # with the ordering checks on: the removals free no table page (a PUD block
    # is a leaf), which makes tlb-flushed-before-free "not applicable"
    proc = harness_cli("run", "--method", "split-leaf", "--patch", str(FIX),
                       "--report", str(tmp_path), timeout=2400)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    method, checks = _method(tmp_path)
    assert method["verdict"] == "PASS" and not method["run"]["crashes"]
    notes = "\n".join(method["run"]["notes"])
    assert "refused with EINVAL" in notes
    assert "Memory [88000000 90000000] removal refused: it splits the linear map block " \
           "[80000000 c0000000]" in notes
    phases = {p["name"]: p for p in method["run"]["phases"]}
    refused = {b["index"]: b["state"] for b in phases["refused-1"]["blocks"]["blocks"]}
    assert refused[17] == "offline"
    assert all(refused[i] == "online" for i in (16, 18, 19, 20, 21, 22, 23))
    assert "refused-1: 16 online blocks mapped" in checks["online-memory-mapped"]["evidence"]
    # nothing was removed at refused-1; the whole DIMM then goes, and is judged
    assert [(r["phase"], r["pa_start"], r["pa_end"]) for r in method["run"]["removals"]] \
        == [("removed-2", 0x80000000, 0xc0000000)]
    for name in ("blocks-lifecycle", "no-stale-linear-map", "no-stale-vmemmap",
                 "tables-freed", "online-memory-mapped", "no-kernel-splat"):
        assert checks[name]["verdict"] == "PASS", checks[name]


UPSTREAM_FIX = ROOT / "patches" / "fixes" / \
    "0002-arm64-mm-reject-memory-removal-that-splits-a-kernel-leaf-mapping.patch"


@pytest.mark.kernel
@pytest.mark.qemu
def test_upstream_fix_refuses_the_offline_and_passes(kernel, tmp_path):
    """Upstream's rule (95a58852b0e5, backported as patches/fixes/0002) refuses
    at offline time, per block: the block stays online, every block of the
    PUD-mapped DIMM refuses, and a 128 MiB DIMM that splits nothing goes."""
    proc = harness_cli("run", "--method", "split-leaf", "--patch", str(UPSTREAM_FIX),
                       "--report", str(tmp_path), timeout=2400)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    method, checks = _method(tmp_path)
    assert method["verdict"] == "PASS" and not method["run"]["crashes"]
    notes = "\n".join(method["run"]["notes"])
    assert "offlining 0x88000000-0x90000000 refused with EPERM" in notes
    assert "[88000000 90000000] splits a leaf entry in linear map" in notes
    assert "every block of dimm1 refused to go offline" in notes
    phases = {p["name"]: p for p in method["run"]["phases"]}
    refused = {b["index"]: b["state"] for b in phases["refused-2"]["blocks"]["blocks"]}
    assert all(refused[i] == "online" for i in range(16, 24))
    assert [(r["phase"], r["pa_start"], r["pa_end"], r["baseline"])
            for r in method["run"]["removals"]] == [
        ("removed-2", 0xc0000000, 0xc8000000, "refused-2")]
    for name in ("blocks-lifecycle", "no-stale-linear-map", "no-stale-vmemmap",
                 "tables-freed", "online-memory-mapped", "no-kernel-splat"):
        assert checks[name]["verdict"] == "PASS", checks[name]
