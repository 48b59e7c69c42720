"""split-leaf: remove one memory block out of a larger linear-map leaf (ACPI boot).

The upstream bug this provokes (unfixed in 6.12; fixed upstream only in 2026,
"arm64/mm: Reject memory removal that splits a kernel leaf mapping"): unless
``can_set_direct_map()`` (no ``rodata=full``, DEBUG_PAGEALLOC or KFENCE),
arm64 maps hot-added memory with the largest leaves its range allows. A 1 GiB,
1 GiB-aligned pc-dimm gets one 1G PUD block with 4K pages (one contiguous run
of 32 PMD blocks with 16K pages). Removing a single 128 MiB block of it makes
``unmap_hotplug_range()`` clear the whole leaf: the other seven blocks are
still online but no longer mapped, and the next kernel access to them faults.

Flow: plug one 1 GiB DIMM (``acpi_dimm.plug``), online its blocks
(``online_movable``), phase ``online``; read from that phase's ptdump the leaf
that maps the target block (the second one, 0x88000000 on ``virt``) and stop
with an error if no leaf reaches beyond the block (nothing to split on this
geometry or with ``rodata=full``: the run would prove nothing); offline the
block through sysfs, then ``echo ADDR > /sys/devices/system/memory/remove``
(a removal step: with the ordering checks on, gdb watches it like the other
methods' removals). Then, by outcome:

* **removed** (the stock 6.12 kernel): ``Removal`` of the block recorded and
  phase ``removed-1`` taken at once, before anything else runs in the guest, so
  ``online-memory-mapped`` names the still-online PA ranges that lost their
  mapping (ptdump and walker) before the kernel trips. The hot-added memory is
  used last by the page allocator (``movablecore`` puts 256 MiB of boot memory
  in ZONE_MOVABLE first; onlined memory goes to the tail of the free lists),
  which is why the phase can still run. Then data is written until it lands in
  the DIMM ("touch memory"): the fault that follows is caught by
  ``no-kernel-splat``. A kernel that survives (one that splits the leaf
  correctly instead of refusing) goes on: the rest of the DIMM is removed block
  by block through ``remove``, phase ``removed-2`` against ``before``. This
  result is **expected-fail** on unfixed kernels (:data:`EXPECTED_FAIL`); it is
  not part of ``run --method all``.
* **refused** (a fixed kernel, e.g. ``patches/fixes/0001``): the refusal *is*
  the expected outcome, and what makes it honest is checked here, in the drive
  (``checks.py`` has no rule for a refused removal): the write must fail with
  an errno of :data:`REFUSALS` (anything else stops the run, blamed on the
  kernel), the block must still be present afterwards. No ``Removal`` is
  recorded for it: nothing was removed, so the removal checks have nothing to
  judge there. Phase ``refused-1`` is taken at once: ``online-memory-mapped``
  verifies that the seven blocks still online are still mapped. The errno, the
  write's stderr, the kernel's console lines and the leaf are kept in the step
  detail and the run's notes. Then the block is onlined again, memory is
  written into the DIMM (it must still work), and the whole DIMM is removed as
  acpi-dimm does (offline all, ``device_del``): a removal that splits nothing
  must still succeed, so phase ``removed-2`` carries a ``Removal`` of the whole
  DIMM against ``before`` and every removal check looks at it.
* **offline refused** (upstream's fix, backported as ``patches/fixes/0002``:
  the memory notifier refuses MEM_GOING_OFFLINE of a block whose linear-map
  or vmemmap edges lie inside a leaf, EPERM and "splits a leaf entry"): the
  block stays online; phase ``refused-1`` must find the whole DIMM mapped and
  memory is written into it. That rule works per block, so no block of the
  PUD-mapped DIMM can be offlined and the DIMM cannot be removed at all: the
  method offlines each block in turn and requires the same refusal (phase
  ``refused-2``), then proves that a removal which splits nothing still works
  by plugging a 128 MiB DIMM (PMD-mapped; phases ``added-2``, ``online-2``)
  and removing it whole (phase ``removed-2``, compared with ``refused-2``).
"""
from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass, replace
from typing import Optional

from harness.drive import acpi_dimm
from harness.drive.common import (
    BOOTMEM_MOVABLE,
    MEMROOT,
    REMOVAL_CHECKS,
    Recorder,
    blocks_in,
    set_state,
)
from harness.drive.method import Method, register
from harness.errors import HARNESS, KERNEL, HarnessError
from harness.inspect import ptdump
from harness.session import BootOptions

DIMM_MB = 1024
REFUSALS = ("EINVAL", "EBUSY", "EPERM")   # a refusal of the removal as such
EXPECTED_FAIL = ("unfixed kernels (stock 6.12.117): online-memory-mapped FAILs at "
                 "removed-1 (the still-online rest of the leaf is unmapped), then "
                 "no-kernel-splat (the fault when that memory is used); passes with "
                 "patches/fixes/0001-arm64-mm-reject-memory-removal-that-splits-a-leaf"
                 ".patch")
LINEAR = "Linear Mapping"
REFUSAL_TEXT = "removal refused"   # patches/fixes/0001's console line
OFFLINE_REFUSAL_TEXT = "splits a leaf entry"   # upstream's (patches/fixes/0002)
SMALL_DIMM_MB = 128                # removable whole under upstream's rule
FILL = "/tmp/harness-fill"
# arm64 CONT_PTES / CONT_PMDS per granule (arch/arm64/include/asm/pgtable-hwdef.h)
CONT_ENTRIES = {4096: {"PTE": 16, "PMD": 16}, 16384: {"PTE": 128, "PMD": 32},
                65536: {"PTE": 32, "PMD": 32}}


@dataclass(frozen=True)
class Options:
    dimm_mb: int = DIMM_MB
    block: int = 1               # which block of the DIMM to remove (not an end one)
    online_type: str = "online_movable"
    fill_mb: int = 384           # written after the remove: > the boot ZONE_MOVABLE


def boot_options(base: BootOptions, kconfig: Optional[dict] = None) -> BootOptions:
    return replace(base, slots=max(base.slots, 2),
                   maxmem_mb=max(base.maxmem_mb, base.mem_mb + DIMM_MB + SMALL_DIMM_MB),
                   cmdline=base.cmdline + (BOOTMEM_MOVABLE,))


# ---------------------------------------------------------------- pure logic

def leaf_size(level: str, granule: int, cont: bool = False) -> int:
    """Bytes mapped by one leaf at ``level`` (ptdump's level name); a
    contiguous run (``CON``) counts as one leaf: its entries change together."""
    per_table = granule // 8
    size = granule * per_table ** (len(ptdump.LEVELS) - 1 - ptdump.LEVELS.index(level))
    if cont:
        size *= CONT_ENTRIES[granule][level]
    return size


@dataclass(frozen=True)
class SplitLeaf:
    """A leaf that maps one edge of the range and reaches beyond it."""
    edge: int            # VA of the range's start or end
    leaf_start: int      # the leaf's VA range
    leaf_end: int
    entry: ptdump.Entry  # the ptdump line it belongs to (lines merge leaves)

    def text(self, off: int) -> str:
        size = ptdump.format_size(self.leaf_start, self.leaf_end)
        return (f"PA {self.leaf_start - off:#x}-{self.leaf_end - off:#x} is one "
                f"{size.strip()} {self.entry.level}"
                f"{' CON' if 'CON' in self.entry.attrs else ''} leaf "
                f"(ptdump: {ptdump.format_entry(self.entry).strip()})")


def split_leaves(snap: ptdump.Snapshot, granule: int, va_start: int,
                 va_end: int) -> list[SplitLeaf]:
    """The linear-map leaves that map the first or the last byte of
    ``[va_start, va_end)`` and reach beyond it: what removing exactly that
    range would split. ptdump merges equal neighbouring leaves into one line,
    so the leaf is found from the line's level (and CON) and the edge's
    alignment, not from the line's extent."""
    out = []
    for edge, inside in ((va_start, va_start), (va_end, va_end - 1)):
        entry = next((e for e in snap.region(LINEAR).entries
                      if e.start <= inside < e.end and e.is_valid), None)
        if entry is None or entry.level not in ptdump.LEVELS:
            continue
        size = leaf_size(entry.level, granule, "CON" in entry.attrs)
        if edge % size:
            start = inside - inside % size
            out.append(SplitLeaf(edge, start, start + size, entry))
    return out


_ERRNO_BY_TEXT = {os.strerror(n): name for n, name in errno.errorcode.items()}


def errno_name(text: str) -> Optional[str]:
    """The errno named by a failed write's message (busybox sh: ``sh: write
    error: Invalid argument``), else None."""
    for line in reversed(text.strip().splitlines()):
        tail = line.rsplit(":", 1)[-1].strip()
        if tail in _ERRNO_BY_TEXT:
            return _ERRNO_BY_TEXT[tail]
    return None


def outcome(exit_code: int, output: str) -> tuple[str, Optional[str]]:
    """("removed", None), ("refused", ERRNO) for an errno of REFUSALS, else
    ("failed", ERRNO or None)."""
    if exit_code == 0:
        return "removed", None
    name = errno_name(output)
    return ("refused" if name in REFUSALS else "failed"), name


# ---------------------------------------------------------------- the drive

def drive(rec: Recorder, opts: Options) -> None:
    have = rec.guest.run(f"test -e {MEMROOT}/remove", 10)
    if not have.ok:
        raise HarnessError(f"{MEMROOT}/remove is missing: this kernel lacks patches/0002",
                           step="split-leaf", blame=HARNESS)
    rec.phase("before")
    dimm = acpi_dimm.plug(rec, 1, opts, "")
    name, addr, size = dimm.name, dimm.addr, dimm.size
    rec.phase("added")
    blocks = blocks_in(rec, addr, addr + size)
    rec.step(f"online {name}", lambda: set_state(rec, blocks, opts.online_type))
    online = rec.phase("online")
    bs = online.blocks.block_size
    if not 0 < opts.block < len(blocks) - 1:
        raise HarnessError(f"block {opts.block} of {name} is not an inner one "
                           f"({len(blocks)} blocks)", step="split-leaf", blame=HARNESS)
    target = addr + opts.block * bs
    leaves = _leaves_to_split(rec, online, target, target + bs)
    rec.notes.append(f"split-leaf: block {target:#x}-{target + bs:#x} of {name} "
                     f"({addr:#x}-{addr + size:#x}) lies inside a larger linear-map "
                     f"leaf: {leaves}")
    victim = blocks_in(rec, target, target + bs)
    refused = rec.step(f"offline {target:#x}", lambda: _try_offline(rec, victim[0].index))
    if refused:
        _after_offline_refusal(rec, opts, dimm, target, bs, refused)
        return
    attempt = rec.removal_step(f"remove {target:#x}", target, target + bs,
                               lambda: _try_remove(rec, target))
    if attempt["outcome"] == "removed":
        _after_removal(rec, opts, name, addr, size, target, bs)
    elif attempt["outcome"] == "refused":
        _after_refusal(rec, opts, dimm, target, bs, attempt)
    else:
        raise HarnessError(
            f"echo {target:#x} > {MEMROOT}/remove failed with "
            f"{attempt['errno'] or 'exit code ' + str(attempt['exit_code'])}: neither "
            f"a removal nor a refusal ({'/'.join(REFUSALS)})", step=f"remove {target:#x}",
            evidence=_attempt_text(attempt), blame=KERNEL)


def _leaves_to_split(rec: Recorder, online, start: int, end: int) -> str:
    off, granule = rec.geometry.linear_offset, rec.geometry.granule
    if online.ptdump is None or off is None or not granule:
        raise HarnessError("cannot tell which leaf maps the block: no ptdump, linear "
                           "offset or granule", step="split-leaf", blame=HARNESS)
    found = split_leaves(online.ptdump, granule, start + off, end + off)
    if not found:
        entry = ptdump.entry_at(online.ptdump, start + off)
        raise HarnessError(
            f"nothing to split: the leaves mapping PA {start:#x}-{end:#x} do not reach "
            f"beyond it on this kernel ({granule >> 10}K pages, or block mappings off: "
            f"rodata=full); split-leaf needs a leaf larger than a memory block",
            step="split-leaf", blame=HARNESS,
            evidence=f"ptdump: {ptdump.format_entry(entry)}" if entry else "")
    return "; ".join(dict.fromkeys(leaf.text(off) for leaf in found))


def _try_offline(rec: Recorder, index: int) -> Optional[dict]:
    """Offline ``memoryINDEX``: None when it went offline; the refusal (errno,
    console lines) when the kernel refused it for splitting a leaf (upstream's
    rule); any other failure stops the run, blamed on the kernel."""
    lines: list = []
    reader, listener = rec.guest.reader, lines.append
    reader.listeners.append(listener)
    try:
        res = rec.guest.run(f"echo offline > {MEMROOT}/memory{index}/state", 120)
        if res.exit_code != 0:
            end = time.monotonic() + 2.0
            while time.monotonic() < end and not any(OFFLINE_REFUSAL_TEXT in l
                                                     for l in lines):
                time.sleep(0.05)
    finally:
        reader.listeners.remove(listener)
    if res.exit_code == 0:
        return None
    text = (res.stdout + res.stderr).strip()
    said = [l.strip() for l in lines if OFFLINE_REFUSAL_TEXT in l]
    name = errno_name(text)
    if name not in REFUSALS or not said:
        raise HarnessError(f"offline of memory{index} failed with {name or 'no errno'} "
                           f"and no '{OFFLINE_REFUSAL_TEXT}' line: neither an offline "
                           f"nor upstream's refusal", step=f"offline memory{index}",
                           evidence=text[-300:], blame=KERNEL)
    return {"outcome": "refused", "errno": name, "exit_code": res.exit_code,
            "output": text[-300:], "console": said[-3:]}


def _after_offline_refusal(rec: Recorder, opts: Options, dimm: acpi_dimm.Dimm,
                           target: int, bs: int, attempt: dict) -> None:
    """Upstream's rule refused to offline the block (see the module's doc)."""
    rec.notes.append(f"split-leaf: offlining {target:#x}-{target + bs:#x} refused with "
                     f"{attempt['errno']} (upstream's rule, at offline time); console: "
                     + " | ".join(attempt["console"]))
    rec.phase("refused-1")
    rec.step("touch memory", lambda: acpi_dimm.fill(rec, opts.fill_mb))
    rec.step("free memory", lambda: rec.sh(f"rm -f {FILL}"))
    refused = []
    for b in blocks_in(rec, dimm.addr, dimm.end):
        got = rec.step(f"offline memory{b.index} (must be refused)",
                       lambda b=b: _try_offline(rec, b.index))
        if got is None:
            raise HarnessError(f"memory{b.index} of {dimm.name} went offline, yet its "
                               f"edges lie inside the DIMM's leaf: upstream's rule "
                               f"refused memory{victim_index(target, bs)} but not this",
                               step=f"offline memory{b.index}", blame=KERNEL)
        refused.append(f"memory{b.index}")
    rec.notes.append(f"split-leaf: every block of {dimm.name} refused to go offline "
                     f"({', '.join(refused)}): under upstream's rule a DIMM mapped by one "
                     f"leaf cannot be removed at all")
    rec.phase("refused-2")
    small = acpi_dimm.plug(rec, 2, replace(opts, dimm_mb=SMALL_DIMM_MB), "")
    rec.phase("added-2")
    blocks = blocks_in(rec, small.addr, small.end)
    rec.step(f"online {small.name}", lambda: set_state(rec, blocks, opts.online_type))
    rec.phase("online-2")
    acpi_dimm.unplug(rec, small, "removed-2", baseline="refused-2")


def victim_index(target: int, bs: int) -> int:
    return target // bs


def _try_remove(rec: Recorder, pa: int) -> dict:
    """Write ``pa`` to the remove file; keep the console lines printed meanwhile
    (the refusal's reason, or the start of the crash)."""
    lines: list = []
    reader, listener = rec.guest.reader, lines.append
    reader.listeners.append(listener)
    try:
        res = rec.guest.run(f"echo {pa:#x} > {MEMROOT}/remove", 120)
        if res.exit_code != 0:       # the console may lag the shell
            end = time.monotonic() + 2.0
            while time.monotonic() < end and not any(REFUSAL_TEXT in l for l in lines):
                time.sleep(0.05)
    finally:
        reader.listeners.remove(listener)
    text = (res.stdout + res.stderr).strip()
    kind, name = outcome(res.exit_code, text)
    console = [l.strip() for l in lines
               if "harness: step" not in l and l.strip()][-10:]
    return {"outcome": kind, "errno": name, "exit_code": res.exit_code,
            "output": text[-300:], "console": console}


def _attempt_text(attempt: dict) -> str:
    lines = [f"exit code {attempt['exit_code']}, errno {attempt['errno']}"]
    if attempt["output"]:
        lines.append(f"output: {attempt['output']}")
    lines += [f"console: {l}" for l in attempt["console"]]
    return "\n".join(lines)


def _after_removal(rec: Recorder, opts: Options, name: str, addr: int, size: int,
                   target: int, bs: int) -> None:
    rec.removed("removed-1", target, target + bs, baseline="")
    rec.notes.append(f"split-leaf: the kernel removed {target:#x}-{target + bs:#x} "
                     f"although it splits a larger leaf; expected-fail on "
                     f"{EXPECTED_FAIL}")
    rec.phase("removed-1")       # first: before anything touches the lost memory
    rec.step("touch memory", lambda: acpi_dimm.fill(rec, opts.fill_mb))
    rec.step("free memory", lambda: rec.sh(f"rm -f {FILL}"))
    rest = [b for b in blocks_in(rec, addr, addr + size)]
    for b in rest:
        pa = b.phys_start(bs)
        rec.step(f"offline {pa:#x}", lambda b=b: set_state(rec, [b], "offline"))
        rec.removal_step(f"remove {pa:#x}", pa, pa + bs, lambda pa=pa: rec.sh(
            f"echo {pa:#x} > {MEMROOT}/remove", 120, blame=KERNEL, console=True),
            transport="serial")
    rec.removed("removed-2", addr, addr + size, baseline="before")
    rec.phase("removed-2")


def _after_refusal(rec: Recorder, opts: Options, dimm: acpi_dimm.Dimm,
                   target: int, bs: int, attempt: dict) -> None:
    still = blocks_in(rec, target, target + bs)
    if not still:
        raise HarnessError(f"remove of {target:#x} failed with {attempt['errno']}, yet "
                           f"the block is gone", step=f"remove {target:#x}",
                           evidence=_attempt_text(attempt), blame=KERNEL)
    said = [l for l in attempt["console"] if REFUSAL_TEXT in l]
    rec.notes.append(f"split-leaf: removal of {target:#x}-{target + bs:#x} refused "
                     f"with {attempt['errno']} (expected: it would split a larger "
                     f"leaf); memory{still[0].index} still present, {still[0].state}; "
                     f"write: {attempt['output'] or '(no output)'}; console: "
                     + (" | ".join(said or attempt["console"]) or "(nothing)"))
    rec.phase("refused-1")       # the rest of the DIMM must still be mapped
    rec.step(f"online {target:#x} again",
             lambda: set_state(rec, still, opts.online_type))
    rec.step("touch memory", lambda: acpi_dimm.fill(rec, opts.fill_mb))
    rec.step("free memory", lambda: rec.sh(f"rm -f {FILL}"))
    acpi_dimm.unplug(rec, dimm, "removed-2", baseline="before")


METHOD = register(Method(
    name="split-leaf", mode="acpi", options=Options, drive=drive, boot_options=boot_options,
    summary=f"remove one 128 MiB block out of a {DIMM_MB // 1024} GiB linear-map leaf "
            "(the upstream PUD-split bug: expected to fail on stock 6.12)",
    required_checks=REMOVAL_CHECKS,
    honours=frozenset({"dimm_mb", "online_type"}),
    rank=50))
