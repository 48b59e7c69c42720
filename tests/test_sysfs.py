"""Tests for harness.inspect.sysfs.

Provenance: tests/data/synthetic-{sysfs,iomem,meminfo}-* are *synthesised* for a
QEMU virt guest with 1 GiB at PA 0x40000000 and a 512 MiB pc-dimm at 0x80000000
(128 MiB blocks, MemTotal figures from FACTS.md); the sysfs files list blocks
in the shell's glob order, as MEMORY_BLOCKS_CMD prints them. Zone names are a
guess (all RAM below 4 GiB in ZONE_DMA). Replace with recordings from a real
boot. MEMORY_BLOCKS_CMD itself is run here under the host's ``sh`` (and busybox
when installed) against a fake sysfs tree.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.inspect import ParseError
from harness.inspect.sysfs import (
    MEMORY_BLOCKS_CMD,
    BlockTable,
    MemoryBlock,
    kernel_code,
    memory_blocks_cmd,
    parse_block_size,
    parse_iomem,
    parse_meminfo,
    parse_memory_blocks,
    system_ram,
)

DATA = Path(__file__).parent / "data"
MiB = 1 << 20


def read(name: str) -> str:
    return (DATA / f"synthetic-{name}").read_text()


# ---------------------------------------------------------------- memory blocks

def fake_sysfs(root: Path) -> None:
    files = {
        "block_size_bytes": "8000000\n", "auto_online_blocks": "offline\n",
        "memory8/state": "online\n", "memory8/phys_index": "00000008\n",
        "memory8/valid_zones": "DMA\n", "memory8/removable": "1\n",
        "memory16/state": "offline\n", "memory16/phys_index": "00000010\n",
        "memory16/valid_zones": "DMA Movable\n", "memory16/removable": "1\n",
        "memory17/state": "going-offline\n",             # the rest vanished mid-listing
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "power").mkdir()                              # not a memory block


SHELLS = [["sh", "-c"]] + ([["busybox", "sh", "-c"]] if shutil.which("busybox") else [])


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_memory_blocks_cmd_runs_in_a_shell(tmp_path, shell):
    fake_sysfs(tmp_path)
    out = subprocess.run(shell + [memory_blocks_cmd(str(tmp_path))], capture_output=True,
                         text=True, check=True).stdout
    table = parse_memory_blocks(out)
    assert table.block_size == 128 * MiB and table.auto_online == "offline"
    assert table.blocks == (
        MemoryBlock(8, "online", 8, ("DMA",), True),
        MemoryBlock(16, "offline", 16, ("DMA", "Movable"), True),
        MemoryBlock(17, "going-offline", 17, (), None))


def test_memory_blocks_cmd_without_sysfs(tmp_path):
    out = subprocess.run(["sh", "-c", memory_blocks_cmd(str(tmp_path / "absent"))],
                         capture_output=True, text=True, check=True).stdout
    table = parse_memory_blocks(out)
    assert table == BlockTable((), None, None)


def test_default_command_targets_sysfs():
    assert MEMORY_BLOCKS_CMD.startswith("(d=/sys/devices/system/memory;")
    assert MEMORY_BLOCKS_CMD.endswith("done)") and "\n" not in MEMORY_BLOCKS_CMD


def test_sample_listing_is_sorted_by_index():
    table = parse_memory_blocks(read("sysfs-memory-blocks-added.txt"))
    assert table.indices == tuple(range(8, 20))
    assert [b.index for b in table.with_state("offline")] == [16, 17, 18, 19]
    assert table.by_index[16].valid_zones == ("DMA", "Movable")
    assert table.by_index[16].phys_start(table.block_size) == 0x8000_0000


def test_blocks_in_a_physical_range():
    table = parse_memory_blocks(read("sysfs-memory-blocks-online.txt"))
    dimm = table.in_range(0x8000_0000, 0xa000_0000)
    assert [(b.index, b.state, b.valid_zones) for b in dimm] == [
        (i, "online", ("Movable",)) for i in range(16, 20)]
    with pytest.raises(ParseError, match="block size unknown"):
        BlockTable(table.blocks).in_range(0, 1)


def test_block_size_argument_wins_and_noise_is_ignored():
    text = "[  12.3] random kernel line\nmemory3 state=online phys_index=3 " \
           "valid_zones=Normal removable=0\n"
    table = parse_memory_blocks(text, block_size=512 * MiB)
    assert table.block_size == 512 * MiB
    assert table.blocks[0].removable is False and table.blocks[0].state == "online"


def test_malformed_block_line_raises():
    with pytest.raises(ParseError, match="malformed memory block line"):
        parse_memory_blocks("memory3 state=online phys_index=3\n")


def test_missing_state_is_marked():
    line = "memory5 state=- phys_index=- valid_zones=- removable=-"
    assert parse_memory_blocks(line).blocks == (MemoryBlock(5, "missing", 5, (), None),)


def test_block_table_round_trips_through_json():
    table = parse_memory_blocks(read("sysfs-memory-blocks-added.txt"))
    assert BlockTable.from_dict(json.loads(json.dumps(table.to_dict()))) == table


def test_parse_block_size():
    assert parse_block_size("8000000\n") == 128 * MiB
    assert parse_block_size("20000000") == 512 * MiB
    with pytest.raises(ParseError, match="not hex"):
        parse_block_size("cat: can't open")


# ---------------------------------------------------------------- /proc/iomem

def test_iomem_nesting():
    top = parse_iomem(read("iomem-virt-acpi-before.txt"))
    ram = next(r for r in top if r.name == "System RAM")
    assert (ram.start, ram.last, ram.end) == (0x4000_0000, 0x7ff2_ffff, 0x7ff3_0000)
    assert [c.name for c in ram.children][:3] == ["Kernel code", "reserved", "Kernel data"]
    pci = top[-1]
    assert pci.children[0].children[0].name == "virtio-pci-modern"
    assert pci.start == 0x80_0000_0000


def test_system_ram_and_hot_added_range():
    assert system_ram(read("iomem-virt-acpi-before.txt")) == [
        (0x4000_0000, 0x7ff3_0000), (0x7ff5_0000, 0x8000_0000)]
    added = system_ram(parse_iomem(read("iomem-virt-acpi-added.txt")))
    assert added[-1] == (0x8000_0000, 0xa000_0000)


def test_system_ram_includes_driver_managed_memory():
    text = "40000000-7fffffff : System RAM\n80000000-bfffffff : virtio0\n" \
           "  80000000-87ffffff : System RAM (virtio_mem)\n"
    assert system_ram(text) == [(0x4000_0000, 0x8000_0000), (0x8000_0000, 0x8800_0000)]


def test_kernel_code():
    assert kernel_code(read("iomem-virt-acpi-before.txt")) == (0x4020_0000, 0x408b_0000)
    with pytest.raises(ParseError, match="root"):
        kernel_code("00000000-00000000 : System RAM\n  00000000-00000000 : Kernel code\n")
    with pytest.raises(ParseError, match="no 'Kernel code'"):
        kernel_code("40000000-7fffffff : System RAM\n")


def test_iomem_garbage_raises():
    with pytest.raises(ParseError, match="iomem"):
        parse_iomem("Permission denied\n")


# ---------------------------------------------------------------- /proc/meminfo

def test_meminfo():
    before = parse_meminfo(read("meminfo-virt-before.txt"))
    online = parse_meminfo(read("meminfo-virt-online.txt"))
    assert before["MemTotal"] == 1011164
    assert online["MemTotal"] - before["MemTotal"] == 512 * 1024
    assert before["Active(anon)"] == 0


def test_meminfo_counts_without_unit_and_garbage():
    assert parse_meminfo("HugePages_Total:       0\nHugepagesize:    2048 kB\n") == {
        "HugePages_Total": 0, "Hugepagesize": 2048}
    with pytest.raises(ParseError):
        parse_meminfo("MemTotal: lots\n")
