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

from dataclasses import dataclass, replace
from typing import Optional

from harness.drive.common import (
    MEMROOT,
    REMOVAL_CHECKS,
    Recorder,
    check_section_size,
    offline,
    online,
    removed_phase,
    try_bootmem_offline,
)
from harness.drive.method import Method, register
from harness.errors import HarnessError
from harness.kernel.layout import section_mb
from harness.session import BootOptions

MODE = "dt"
HIDDEN_MB = 1024        # RAM beyond mem=, probed at run time (2 blocks of 512 MiB with 64K pages)
RAM_BASE = 0x40000000
# the other linear-map shape: with rodata=full the linear map (hot-added memory
# included) is mapped with pages, so a removal frees PTE tables (64 per 128 MiB
# block), where the other methods' block-mapped removals free a PMD table at most
PAGE_MAPPED = "rodata=full"


def layout(kconfig: Optional[dict] = None) -> tuple[int, int, int]:
    """(visible MiB, movable MiB, block MiB) for this kernel's memory blocks.

    arm64's boot-memory rule is reached only by offlining a whole boot block in
    ZONE_MOVABLE that holds no memblock reservation (early allocations come
    top-down, the kernel image sits low): ``movablecore=`` covers two blocks,
    and the boot memory holds at least four. 4K/16K (128 MiB blocks): mem=1024M,
    movablecore=256M; 64K (512 MiB blocks): mem=2048M, movablecore=1024M."""
    block = section_mb(kconfig or {})
    return max(1024, 4 * block), 2 * block, block


@dataclass(frozen=True)
class Options:
    blocks: int = 2
    cycles: int = 1
    online_type: str = "online_movable"


def boot_options(base: BootOptions, kconfig: Optional[dict] = None) -> BootOptions:
    visible, movable, _block = layout(kconfig)
    return replace(base, mode=MODE, mem_mb=visible + HIDDEN_MB,
                   cmdline=base.cmdline + (f"mem={visible}M", f"movablecore={movable}M",
                                           PAGE_MAPPED))


def hidden_base(phase) -> int:
    """Where the hidden RAM starts: the end of the boot System RAM."""
    return max(end for _start, end in phase.system_ram)


def drive(rec: Recorder, opts: Options) -> None:
    have = rec.guest.run(f"test -e {MEMROOT}/probe && test -e {MEMROOT}/remove", 10)
    if not have.ok:
        raise_missing(rec)
    before = rec.phase("before", leak=opts.cycles > 1)
    bs = check_section_size(rec, layout(rec.art.kconfig)[2])
    if opts.blocks * bs > HIDDEN_MB << 20:
        raise HarnessError(f"{opts.blocks} blocks of {bs >> 20} MiB do not fit in the "
                           f"{HIDDEN_MB} MiB hidden with mem=", step="probe")
    base = hidden_base(before)
    addrs = [base + i * bs for i in range(opts.blocks)]
    for cycle in range(1, opts.cycles + 1):
        suffix = "" if cycle == 1 else f"@{cycle}"
        for a in addrs:
            probe_block(rec, a)
        rec.phase("added" + suffix)
        for a in addrs:
            online(rec, f"{a:#x}", a, a + bs, opts.online_type)
        rec.phase("online" + suffix)
        for n, a in enumerate(addrs, 1):
            offline(rec, f"{a:#x}", a, a + bs)
            remove_block(rec, a, bs, f"removed-{n}{suffix}",
                         baseline="before" if n == len(addrs) else "")
        if opts.cycles > 1:
            rec.phase(f"cycle-{cycle}", leak=True)
    rec.bootmem = rec.step("offline boot memory (must fail)",
                           lambda: try_bootmem_offline(rec, before))


def probe_block(rec: Recorder, addr: int) -> None:
    """Step ``probe ADDR``: the block at ``addr`` added through the probe file
    (it comes up offline)."""
    rec.step(f"probe {addr:#x}",
             lambda: rec.sh(f"echo {addr:#x} > {MEMROOT}/probe", blame="kernel"))


def remove_block(rec: Recorder, addr: int, size: int, phase: str,
                 baseline: str = "") -> None:
    """Removal step ``remove ADDR`` (``memory/remove``, patches/0002: it offlines
    what is still online first), watched through gdb when the ordering checks
    are on; then phase ``phase`` and the removal of ``[addr, addr + size)``."""
    rec.removal_step(f"remove {addr:#x}", addr, addr + size,
                     lambda: rec.sh(f"echo {addr:#x} > {MEMROOT}/remove", blame="kernel",
                                    console=True), transport="serial")
    removed_phase(rec, phase, addr, addr + size, baseline)


def raise_missing(rec: Recorder) -> None:
    raise HarnessError(
        f"{MEMROOT}/probe or remove is missing: this kernel lacks "
        "patches/0001 (ARCH_MEMORY_PROBE) or 0002 (memory/remove)",
        step="probe", evidence=rec.guest.run(f"ls {MEMROOT}", 10).stdout)


METHOD = register(Method(
    name="probe", mode=MODE, options=Options, drive=drive, boot_options=boot_options,
    summary="the 2017 series' flow (DT boot): memory hidden with mem=, added via "
            "/sys/devices/system/memory/probe, removed via .../remove; rodata=full",
    required_checks=REMOVAL_CHECKS + ("bootmem-not-removable",),
    honours=frozenset({"cycles", "online_type"}),
    own_memory=f"mem= hides {HIDDEN_MB} MiB above the boot RAM for the probe file, "
               "sized by the kernel's block size",
    rank=20, in_all=True))
