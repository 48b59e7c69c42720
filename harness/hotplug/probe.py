"""probe: the 2017 series' flow, on a device-tree boot.

RAM above ``mem=`` is hidden from the kernel at boot; the harness adds it block
by block through ``/sys/devices/system/memory/probe``, onlines, offlines and
removes it through ``/sys/devices/system/memory/remove`` (patches/0002).
Two adjacent blocks are probed; the first is removed while the second is still
online, then the second. The kernel boots with ``rodata=full`` (the linear map
in pages: the shape whose removals free PTE tables) and ``movablecore=`` (a
hole-free boot block in ZONE_MOVABLE, so that only arm64's boot-memory rule can
refuse to offline it).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..session import BootOptions
from .common import (
    MEMROOT,
    REMOVAL_CHECKS,
    Recorder,
    block_size,
    blocks_in,
    set_state,
    try_bootmem_offline,
)

NAME = "probe"
MODE = "dt"
REQUIRED_CHECKS = REMOVAL_CHECKS + ("bootmem-not-removable",)
VISIBLE_MB = 1024       # what mem= leaves to the kernel at boot
HIDDEN_MB = 1024        # RAM beyond it, probed at run time (2 blocks of 512 MiB with 64K pages)
RAM_BASE = 0x40000000
# the other linear-map shape: with rodata=full the linear map (hot-added memory
# included) is mapped with pages, so a removal frees PTE tables (64 per 128 MiB
# block), where the other methods' block-mapped removals free a PMD table at most
PAGE_MAPPED = "rodata=full"
# arm64's boot-memory rule is reached only by offlining a whole boot block in
# ZONE_MOVABLE: 512 MiB is one block with 64K pages (SECTION_SIZE_BITS 29), four
# with 4K or 16K (27); common.BOOTMEM_MOVABLE's 256 MiB covers no 64K block
BOOTMEM_MOVABLE_PROBE = "movablecore=512M"


@dataclass(frozen=True)
class Options:
    blocks: int = 2
    cycles: int = 1
    online_type: str = "online_movable"


def boot_options(base: BootOptions) -> BootOptions:
    from dataclasses import replace
    return replace(base, mode=MODE, mem_mb=VISIBLE_MB + HIDDEN_MB,
                   cmdline=base.cmdline + (f"mem={VISIBLE_MB}M", BOOTMEM_MOVABLE_PROBE,
                                           PAGE_MAPPED))


def drive(rec: Recorder, opts: Options) -> None:
    have = rec.guest.run(f"test -e {MEMROOT}/probe && test -e {MEMROOT}/remove", 10)
    if not have.ok:
        raise_missing(rec)
    before = rec.phase("before", leak=opts.cycles > 1)
    bs = block_size(rec)
    if opts.blocks * bs > HIDDEN_MB << 20:
        from ..errors import HarnessError
        raise HarnessError(f"{opts.blocks} blocks of {bs >> 20} MiB do not fit in the "
                           f"{HIDDEN_MB} MiB hidden with mem=", step="probe")
    base = RAM_BASE + (VISIBLE_MB << 20)
    addrs = [base + i * bs for i in range(opts.blocks)]
    for cycle in range(1, opts.cycles + 1):
        suffix = "" if cycle == 1 else f"@{cycle}"
        for a in addrs:
            rec.step(f"probe {a:#x}", lambda a=a: rec.sh(f"echo {a:#x} > {MEMROOT}/probe",
                                                        blame="kernel"))
        rec.phase("added" + suffix)
        for a in addrs:
            rec.step(f"online {a:#x}", lambda a=a: set_state(
                rec, blocks_in(rec, a, a + bs), opts.online_type))
        rec.phase("online" + suffix)
        for n, a in enumerate(addrs, 1):
            rec.step(f"offline {a:#x}", lambda a=a: set_state(
                rec, blocks_in(rec, a, a + bs), "offline"))
            rec.removal_step(f"remove {a:#x}", a, a + bs,
                             lambda a=a: rec.sh(f"echo {a:#x} > {MEMROOT}/remove",
                                                blame="kernel"))
            phase = f"removed-{n}{suffix}"
            rec.phase(phase)
            rec.removed(phase, a, a + bs, baseline="before" if n == len(addrs) else "")
        if opts.cycles > 1:
            rec.phase(f"cycle-{cycle}", leak=True)
    rec.bootmem = rec.step("offline boot memory (must fail)",
                           lambda: try_bootmem_offline(rec, before))


def raise_missing(rec: Recorder) -> None:
    from ..errors import HarnessError
    raise HarnessError(
        f"{MEMROOT}/probe or remove is missing: this kernel lacks "
        "patches/0001 (ARCH_MEMORY_PROBE) or 0002 (memory/remove)",
        step="probe", evidence=rec.guest.run(f"ls {MEMROOT}", 10).stdout)
