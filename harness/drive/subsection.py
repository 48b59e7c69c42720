"""subsection: device memory smaller than a section, added and removed (ACPI boot).

Every other method adds whole sections (128 MiB with 4K pages). Memory added
through memremap_pages() (ZONE_DEVICE: pmem, device-dax) comes in
sub-sections of 2 MiB, and arm64 maps the struct pages of such a range on
their own: at the page level since upstream d4234d131b0a, with a 2 MiB PMD
block, shared by the whole section, before it. Removing one sub-section then
clears the block under its neighbours.

Flow: QEMU's virt machine with ``nvdimm=on`` and two emulated NVDIMMs of
:data:`NVDIMM_MB` MiB each, side by side at the start of the device memory
region, so in one section. Label-less, each gives one raw namespace; an NFIT
region does not let the pmem driver map struct pages for it, so each is given
a pfn device first (fsdax, memmap in RAM, through sysfs as ndctl would), which
the driver maps with struct pages (``memremap_pages()``, FS_DAX type: 62 MiB
after a 2 MiB info block); the kernel needs the ``pmem`` fragment
(ZONE_DEVICE, LIBNVDIMM, ACPI_NFIT, BLK_DEV_PMEM, FS_DAX).

1. phase ``before``: both pfn devices bound; the struct pages of both must be
   in the vmemmap (else the kernel did not map pages for them and nothing
   here would be tested: a harness error, not a PASS);
2. unbind the lower one from ``nd_pmem``: its half is removed
   (``arch_remove_memory()``, ``vmemmap_free()`` of its struct pages);
   phase ``removed-1``; the other half's struct pages must still be mapped
   (``present-struct-pages-mapped``, told by ``Removal.kept``; the note says
   it too);
3. unbind the other: its removal reads its own struct pages first
   (``page_zone()`` in ``pageunmap_range()``): with the block cleared in
   step 2 that is a fault (``no-kernel-splat``); phase ``removed-2``.

The removal checks judge each half (``no-stale-linear-map``,
``no-stale-vmemmap``); there is no memory block and no baseline without the
devices (they are there from boot), so blocks-lifecycle and tables-freed do
not apply.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from harness.drive.common import Recorder
from harness.drive.method import Method, register
from harness.errors import HARNESS, KERNEL, HarnessError
from harness.inspect import ptdump
from harness.session import BootOptions

MODE = "acpi"
NVDIMM_MB = 64          # two of them: one 128 MiB section, half each
NS_ROOT = "/sys/bus/nd/devices"
UNBIND = "/sys/bus/nd/drivers/nd_pmem/unbind"
VMEMMAP = "vmemmap"
CHECKS = ("no-stale-linear-map", "no-stale-vmemmap", "present-struct-pages-mapped",
          "no-kernel-splat")


@dataclass(frozen=True)
class Options:
    nvdimms: int = 2


def devices(count: int = 2, size_mb: int = NVDIMM_MB) -> tuple[str, ...]:
    """QEMU arguments: nvdimm=on (merged into -M) and ``count`` NVDIMMs, each
    backed by a file in the run's folder."""
    out: list[str] = ["-machine", "nvdimm=on"]
    for i in range(count):
        out += ["-object", f"memory-backend-file,id=nvmem{i},size={size_mb}M,"
                           f"mem-path={{run_dir}}/nvdimm{i},share=on",
                "-device", f"nvdimm,id=nvdimm{i},memdev=nvmem{i}"]
    return tuple(out)


def boot_options(base: BootOptions, kconfig: Optional[dict[str, str]] = None) -> BootOptions:
    return replace(base, mode=MODE, devices=tuple(base.devices) + devices())


def parse_namespaces(text: str) -> list[tuple[str, int, int, bool]]:
    """(name, PA start, size, bound) of each namespace, by address, from the
    guest's ``NAME START SIZE DRIVER`` lines (DRIVER ``-`` when unbound)."""
    found = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 4 or not parts[0].startswith(("namespace", "pfn")):
            continue
        try:
            start, size = int(parts[1], 16), int(parts[2])
        except ValueError:
            continue
        found.append((parts[0], start, size, parts[3] == "nd_pmem"))
    return sorted(found, key=lambda n: n[1])


LIST = (f"for n in {NS_ROOT}/namespace* {NS_ROOT}/pfn*; do "
        f"cat $n/resource >/dev/null 2>&1 || continue; "
        f"d=-; [ -e $n/driver ] && d=$(basename $(readlink $n/driver)); "
        f"echo $(basename $n) $(cat $n/resource) $(cat $n/size) $d; done")


def struct_pages(rec: Recorder, pa_start: int, pa_end: int) -> tuple[int, int]:
    """VA range of the struct pages of ``[pa_start, pa_end)``
    (``Geometry.struct_pages``); an error while the geometry does not know it."""
    span = rec.geometry.struct_pages(pa_start, pa_end)
    if span is None:
        raise HarnessError("the vmemmap's geometry is unknown (vmemmap start, "
                           "memstart_addr, struct page size)", step="subsection",
                           blame=HARNESS)
    return span


def unmapped(dump: Optional[ptdump.Snapshot], va: tuple[int, int]) -> Optional[int]:
    """Bytes of ``va`` no valid vmemmap entry covers (None without a dump)."""
    if dump is None or VMEMMAP not in dump.regions:
        return None
    covered = sum(min(e.end, va[1]) - max(e.start, va[0])
                  for e in ptdump.covering(dump, VMEMMAP, *va))
    return (va[1] - va[0]) - covered


def unbind(rec: Recorder, name: str) -> None:
    """Unbind namespace ``name`` from nd_pmem: the driver's release removes
    its memory (memunmap_pages())."""
    rec.step(f"unbind {name}", lambda: rec.sh(f"echo {name} > {UNBIND}", 60, blame=KERNEL))


# An NFIT region does not let the pmem driver map struct pages for a raw
# namespace (no ND_REGION_PAGEMAP): each namespace is given a pfn device
# (fsdax, the memmap in RAM), which does, through sysfs as ndctl would
FSDAX = (f"for n in {NS_ROOT}/namespace*.0; do ns=$(basename $n); "
         f"r=$(basename $(dirname $(readlink -f $n))); "
         f"p=$(cat {NS_ROOT}/$r/pfn_seed); "
         f"echo $ns > {UNBIND} && echo $ns > {NS_ROOT}/$p/namespace && "
         f"echo ram > {NS_ROOT}/$p/mode && "
         f"cat /proc/sys/kernel/random/uuid > {NS_ROOT}/$p/uuid && "
         f"echo $p > /sys/bus/nd/drivers/nd_pmem/bind || exit 1; done")


def drive(rec: Recorder, opts: Options) -> None:
    rec.step("fsdax namespaces", lambda: rec.sh(FSDAX, 60, blame=KERNEL))
    found = parse_namespaces(rec.sh(LIST))
    bound = [n for n in found if n[3]]
    if len(bound) < opts.nvdimms:
        raise HarnessError(f"{len(bound)} pmem namespace(s) bound to nd_pmem, "
                           f"{opts.nvdimms} wanted (the pmem fragment: --config pmem; "
                           f"found: {found or 'none'})", step="subsection", blame=HARNESS)
    first, second = bound[0], bound[1]
    if first[1] >> 27 != (second[1] + second[2] - 1) >> 27:
        raise HarnessError(f"{first[0]} and {second[0]} are not in one section "
                           f"(PA {first[1]:#x}, {second[1]:#x})", step="subsection",
                           blame=HARNESS)
    before = rec.phase("before")
    pages = [struct_pages(rec, ns[1], ns[1] + ns[2]) for ns in (first, second)]
    missing = [unmapped(before.ptdump, va) for va in pages]
    if any(m is None or m for m in missing):
        iomem = rec.sh("grep -i -e persistent -e pmem -e namespace /proc/iomem || true")
        raise HarnessError("not exercised: the struct pages of the pmem namespaces are "
                           f"not in the vmemmap ({missing[0]} and {missing[1]} bytes of VA "
                           f"{pages[0][0]:#x}, {pages[1][0]:#x} unmapped): the pmem driver "
                           f"did not map pages for them (FS_DAX, ZONE_DEVICE); namespaces: "
                           f"{found}; /proc/iomem: {' | '.join(iomem.split(chr(10)))}",
                           step="subsection", blame=HARNESS)
    rec.notes.append(f"subsection: {first[0]} PA {first[1]:#x}+{first[2] >> 20} MiB and "
                     f"{second[0]} PA {second[1]:#x}+{second[2] >> 20} MiB share a "
                     f"section; struct pages VA {pages[0][0]:#x} and {pages[1][0]:#x}")
    for n, ns in enumerate((first, second), 1):
        unbind(rec, ns[0])
        phase = rec.phase(f"removed-{n}")
        # the other half is still there after the first removal: its struct
        # pages must stay mapped (present-struct-pages-mapped)
        rec.removed(f"removed-{n}", ns[1], ns[1] + ns[2],
                    kept=((second[1], second[1] + second[2]),) if n == 1 else ())
        if n == 1:
            gone = unmapped(phase.ptdump, pages[1])
            rec.notes.append(
                f"subsection: after {first[0]}'s removal the struct pages of {second[0]} "
                + ("could not be looked at (no ptdump)" if gone is None else
                   "are still mapped" if not gone else f"lost {gone} bytes of mapping"))


METHOD = register(Method(
    name="subsection", mode=MODE, options=Options, drive=drive, boot_options=boot_options,
    summary="not in all: two 64 MiB emulated NVDIMMs in one section, mapped with struct "
            "pages by the pmem driver (sub-section hot-add, ZONE_DEVICE), removed one "
            "after the other by unbinding it; build with --config pmem",
    required_checks=CHECKS,
    order_checks=False,
    rank=70))
