"""reach: hot-adds at the edges of what the linear map can hold (DT boot).

Three blocks are added through ``/sys/devices/system/memory/probe``
(patches/0001), each at an address chosen from the kernel's own layout:

* ``top-of-reach``: the last block below PHYS_OFFSET + the linear region's
  size (``linear_end - page_offset`` from ptdump's markers), PHYS_OFFSET as
  the boot memory gives it (its first System RAM address, rounded down to
  1 GiB: 0x40000000 on ``virt``), and below the end of the CPU's physical
  address range when that comes first (:data:`CPU_PA_BITS`: a Cortex-A57's
  44 bits end before a 47-bit linear region does). The platform may put
  memory there, so the kernel must accept it; it is never onlined (no RAM
  behind it), only removed again. A linear region randomised for the boot
  memory only (upstream 97d6786e0669 undone) or a range check that wraps
  (ee7febce0519 undone) refuses it;
* ``beyond-reach``: the first block past the linear map's actual reach
  (PHYS_OFFSET as ``memstart_addr`` says, read from guest RAM: randomised
  with KASLR when the linear region exceeds the CPU's PA range; else as the
  boot memory gives it): arm64 must refuse it (``arch_get_mappable_range()``;
  mhp_range_allowed()'s "exceeds maximum addressable range", E2BIG), or it
  would be mapped past PAGE_END (upstream 58284a901b42 undone). Accepted
  anyway, it is removed again at once;
* ``after-boot-memory``: the block right after the boot memory (RAM hidden
  with ``mem=``, as the probe method does), onlined, offlined and removed: a
  whole cycle the removal checks judge against ``before``.

For each accepted block the last frame's entry of ``/proc/kpageflags`` is read
(8 bytes below ``max_pfn``, none beyond it: upstream 8fac67ca236b undone). Each
attempt is a :class:`HotAddAttempt` (exit code, output, whether a block
appeared, the console lines printed meanwhile), judged by the
``hotadd-*`` checks. No gdb: the adds are what this method is about, and
with KASLR (the kaslr fragment, how the linear region is randomised) the
ordering agent's breakpoints would not match the image.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Optional

from harness.drive import probe
from harness.drive.common import (
    MEMROOT,
    REMOVAL_CHECKS,
    HotAddAttempt,
    Recorder,
    blocks_in,
    check_section_size,
    offline,
    online,
)
from harness.drive.method import Method, register
from harness.errors import HARNESS, KERNEL, HarnessError
from harness.session import BootOptions

MODE = "dt"
GIB = 1 << 30
U64 = (1 << 64) - 1
# The physical address bits (ID_AA64MMFR0_EL1.PARange) of QEMU's CPU models
# with fewer than 48, by the part number /proc/cpuinfo shows ("CPU part"):
# cortex-a53 40, cortex-a57 and cortex-a72 44 (QEMU target/arm/cpu64.c).
# 'max' (48 bits or more) and any other part: no bound below the linear
# region's own (47 bits at most here).
CPU_PA_BITS = {0xd03: 40, 0xd07: 44, 0xd08: 44}
CHECKS = ("hotadd-frames-visible", "hotadd-within-reach-accepted",
          "hotadd-beyond-reach-refused")


@dataclass(frozen=True)
class Options:
    online_type: str = "online_movable"


def boot_options(base: BootOptions, kconfig: Optional[dict] = None) -> BootOptions:
    visible, _movable, _block = probe.layout(kconfig)
    return replace(base, mode=MODE, mem_mb=visible + probe.HIDDEN_MB,
                   cmdline=base.cmdline + (f"mem={visible}M",))


def reach_of(phase, page_offset: int, linear_end: int) -> tuple[int, int]:
    """[PHYS_OFFSET, PHYS_OFFSET + linear region size): the PA range the linear
    map covers when it is not randomised, PHYS_OFFSET from the boot memory."""
    ram = min(start for start, _end in phase.system_ram)
    base = ram - ram % GIB
    return base, base + (linear_end - page_offset)


def targets(reach: tuple[int, int], linear_size: int, memstart: Optional[int],
            pa_bits: Optional[int], bs: int) -> tuple[int, int, tuple[int, int]]:
    """(top-of-reach PA, beyond-reach PA, the linear map's actual reach).
    ``reach`` is what the platform is owed from the boot memory's start
    (:func:`reach_of`), cut at the CPU's PA range; the actual reach starts at
    ``memstart`` (PHYS_OFFSET; a randomised one lies below zero and wraps, as
    the kernel's own u64 arithmetic does) when it is known."""
    owed_end = min(reach[1], 1 << pa_bits) if pa_bits else reach[1]
    start = reach[0] if memstart is None else memstart & U64
    actual = (start, (start + linear_size) & U64)
    return owed_end - bs, actual[1], actual


def cpu_pa_bits(cpuinfo: str) -> tuple[Optional[int], str]:
    """(PA bits or None, the part as read) from /proc/cpuinfo's text."""
    parts = {p.strip() for line in cpuinfo.splitlines() if line.startswith("CPU part")
             for p in line.split(":", 1)[1:]}
    if len(parts) != 1:
        return None, "/".join(sorted(parts)) or "?"
    part = parts.pop()
    try:
        return CPU_PA_BITS.get(int(part, 16)), part
    except ValueError:
        return None, part


def try_probe(rec: Recorder, kind: str, pa: int, size: int,
              reach: tuple[int, int]) -> HotAddAttempt:
    """Write ``pa`` to the probe file as step ``probe KIND PA``; record the
    outcome, the console lines meanwhile and, when a block appeared, the bytes
    /proc/kpageflags gives for its last frame."""
    lines: list[str] = []
    reader, listener = rec.guest.reader, lines.append
    res = None

    def attempt() -> None:
        nonlocal res
        reader.listeners.append(listener)
        try:
            res = rec.guest.run(f"echo {pa:#x} > {MEMROOT}/probe", 60)
            end = time.monotonic() + (2.0 if res.exit_code else 0.3)
            while time.monotonic() < end and not any("Hotplug memory" in l for l in lines):
                time.sleep(0.05)
        finally:
            reader.listeners.remove(listener)
    stopped: Optional[HarnessError] = None
    try:
        rec.step(f"probe {kind} {pa:#x}", attempt)
    except HarnessError as e:     # a kernel report ended the step: record what it did
        if e.blame != KERNEL:
            raise
        stopped = e
    try:
        present = bool(blocks_in(rec, pa, pa + size))
    except HarnessError:
        if stopped is None:
            raise
        present = None
    if stopped is not None:
        said = [l.strip() for l in lines if "harness: step" not in l and l.strip()]
        rec.hotadds.append(HotAddAttempt(
            kind=kind, pa=pa, size=size, reach=reach,
            exit_code=None if res is None else res.exit_code,
            output="" if res is None else (res.stdout + res.stderr).strip()[-300:],
            present=present, console=tuple(said[-10:])))
        raise stopped
    assert res is not None
    read = None
    if present:
        pfn = (pa + size) // (rec.geometry.granule or 4096) - 1
        out = rec.step(f"read kpageflags {pfn:#x}", lambda: rec.sh(
            f"dd if=/proc/kpageflags bs=8 skip={pfn} count=1 2>/dev/null | wc -c"))
        read = int(out.strip() or 0)
    said = [l.strip() for l in lines if "harness: step" not in l and l.strip()]
    h = HotAddAttempt(kind=kind, pa=pa, size=size, reach=reach, exit_code=res.exit_code,
                      output=(res.stdout + res.stderr).strip()[-300:], present=present,
                      console=tuple(said[-10:]), kpageflags_bytes=read)
    rec.hotadds.append(h)
    return h


def drive(rec: Recorder, opts: Options) -> None:
    have = rec.guest.run(f"test -e {MEMROOT}/probe && test -e {MEMROOT}/remove", 10)
    if not have.ok:
        probe.raise_missing(rec)
    before = rec.phase("before")
    bs = check_section_size(rec, probe.layout(rec.art.kconfig)[2])
    geo = rec.geometry
    if geo.page_offset is None or geo.linear_end is None:
        raise HarnessError("the linear map's bounds are unknown (no ptdump markers)",
                           step="reach", blame=HARNESS)
    reach = reach_of(before, geo.page_offset, geo.linear_end)
    pa_bits, part = cpu_pa_bits(rec.sh("cat /proc/cpuinfo"))
    top, beyond, actual = targets(reach, geo.linear_end - geo.page_offset, geo.memstart,
                                  pa_bits, bs)
    if geo.memstart is not None and geo.memstart != reach[0]:
        rec.notes.append(f"reach: PHYS_OFFSET (memstart_addr) is {geo.memstart & U64:#x}, "
                         f"not {reach[0]:#x}: the linear region was randomised; it reaches "
                         f"PA {actual[1]:#x}")
    if pa_bits and (1 << pa_bits) < reach[1]:
        rec.notes.append(f"reach: the CPU (part {part}) addresses {pa_bits} bits of PA, "
                         f"less than the linear region: what it is owed ends at "
                         f"{1 << pa_bits:#x}")
        reach = (reach[0], 1 << pa_bits)
    rec.notes.append(f"reach: the linear map must cover PA {reach[0]:#x}-{reach[1]:#x} "
                     f"({(reach[1] - reach[0]) >> 30} GiB from the boot memory's start)")
    for kind, pa, span in (("top-of-reach", top, reach), ("beyond-reach", beyond, actual)):
        h = try_probe(rec, kind, pa, bs, span)
        if h.present:      # never onlined: nothing behind it; removed as it came
            rec.step(f"remove {kind} {pa:#x}", lambda pa=pa: rec.sh(
                f"echo {pa:#x} > {MEMROOT}/remove", 60, blame=KERNEL))
    base = probe.hidden_base(before)
    h = try_probe(rec, "after-boot-memory", base, bs, reach)
    if not h.present:
        raise HarnessError(f"probe of {base:#x}, right after the boot memory, was refused "
                           f"(exit code {h.exit_code}: {h.output or '-'})",
                           step=f"probe after-boot-memory {base:#x}", blame=KERNEL)
    rec.phase("added")
    online(rec, f"{base:#x}", base, base + bs, opts.online_type)
    rec.phase("online")
    offline(rec, f"{base:#x}", base, base + bs)
    probe.remove_block(rec, base, bs, "removed-1", baseline="before")


METHOD = register(Method(
    name="reach", mode=MODE, options=Options, drive=drive, boot_options=boot_options,
    summary="not in all: hot-adds at the linear map's edges through the probe file: the "
            "last block inside its reach (accepted), the first beyond (refused), the "
            "block after boot memory (its frames in /proc/kpageflags, removed again)",
    required_checks=REMOVAL_CHECKS + CHECKS,
    order_checks=False,
    honours=frozenset({"online_type"}),
    own_memory=f"mem= hides {probe.HIDDEN_MB} MiB above the boot RAM, as probe does",
    rank=60))
