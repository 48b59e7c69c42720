"""virtio-mem: a virtio-mem-pci device grown and shrunk through QMP.

The guest's virtio-mem driver plugs (and onlines) blocks when
``requested-size`` grows and unplugs them when it shrinks. Device-tree boot:
verified with QEMU 7.2 (FACTS.md).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from harness import faults
from harness.drive.common import (
    MEMROOT,
    REMOVAL_CHECKS,
    Recorder,
    block_size,
    blocks_in,
    memory_device,
    removed_phase,
    wait_for,
)
from harness.drive.method import Method, register
from harness.drive.steps import doing
from harness.inspect import sysfs
from harness.session import BootOptions

MODE = "dt"
DEVICE = "vm0"
REGION_MB = 1024


@dataclass(frozen=True)
class Options:
    size_mb: int = 512
    cycles: int = 1
    online_type: str = "online_movable"


def boot_options(base: BootOptions, kconfig: Optional[dict] = None) -> BootOptions:
    path = "{run_dir}/vmem0"
    devices = ("-object", f"memory-backend-file,id=vmem0,size={REGION_MB}M,"
                          f"mem-path={path},share=on",
               "-device", f"virtio-mem-pci,id={DEVICE},memdev=vmem0,node=0,"
                          "requested-size=0")
    return replace(base, mode=MODE, devices=base.devices + devices)


def drive(rec: Recorder, opts: Options) -> None:
    rec.phase("before", leak=opts.cycles > 1)
    addr = region(rec)
    size = opts.size_mb << 20
    auto_online(rec, opts.online_type)
    for cycle in range(1, opts.cycles + 1):
        suffix = "" if cycle == 1 else f"@{cycle}"
        grow(rec, addr, 0, size)
        rec.phase("online" + suffix)
        shrink_to(rec, addr, size, 0, f"removed-1{suffix}", baseline="before")
        if opts.cycles > 1:
            rec.phase(f"cycle-{cycle}", leak=True)
    rec.notes.append("virtio-mem: blocks are plugged and onlined by the guest "
                     "driver, so there is no separate 'added' (offline) phase")


def region(rec: Recorder, device: str = DEVICE, backend: str = "vmem0") -> int:
    """Where the device's region starts (QMP ``memaddr``); its RAM file
    (``{run_dir}/BACKEND``, boot_options) joins the walker's backings once."""
    machine = rec.guest.machine
    addr = int(memory_device(machine, device)["memaddr"])
    backing = (addr, str(Path(machine.spec.run_dir) / backend))
    if backing not in rec.backings:
        rec.backings.append(backing)
    return addr


def auto_online(rec: Recorder, online_type: str = "online_movable") -> None:
    """Step ``auto-online TYPE``: what the guest's driver onlines plugged blocks as."""
    rec.step(f"auto-online {online_type}",
             lambda: rec.sh(f"echo {online_type} > {MEMROOT}/auto_online_blocks"))


def _mib(size: int) -> str:
    return f"{size >> 20} MiB" if size else "0"


def grow(rec: Recorder, addr: int, old: int, new: int) -> None:
    """Steps ``grow to N MiB`` (QMP ``requested-size``, until ``size`` follows)
    and ``wait for blocks online`` (the blocks of ``[addr + old, addr + new)``,
    onlined by the guest's driver: auto_online first)."""
    rec.step(f"grow to {_mib(new)}", lambda: resize(rec, new), "qmp")
    rec.step("wait for blocks online", lambda: wait_online(rec, addr + old, new - old))


def shrink_to(rec: Recorder, addr: int, old: int, new: int, phase: str,
              baseline: str = "") -> None:
    """Removal step ``shrink to N MiB`` over ``[addr + new, addr + old)`` (the
    driver unplugs from the top), watched through gdb when the ordering checks
    are on; then phase ``phase`` and the removal of that range."""
    start, end = addr + new, addr + old
    rec.removal_step(f"shrink to {_mib(new)}", start, end,
                     lambda: shrink(rec, start, end - start, new), "qmp")
    removed_phase(rec, phase, start, end, baseline)


def resize(rec: Recorder, size: int) -> int:
    machine = rec.guest.machine
    machine.qmp_cmd("qom-set", path=DEVICE, property="requested-size", value=size)
    what = f"virtio-mem {DEVICE} to reach {size >> 20} MiB"
    faults.point("qmp-wait", what, machine=machine, console=rec.guest.reader)
    with doing(machine, f"waiting over QMP for {what}"):
        wait_for(lambda: machine.qmp_cmd("qom-get", path=DEVICE, property="size") == size,
                 60, what)
    return size


def shrink(rec: Recorder, addr: int, size: int, target: int = 0) -> int:
    """requested-size ``target``, then wait until the guest has really removed
    ``[addr, addr + size)``. The device reports its new size as soon as the
    driver has unplugged the last sub-block, which can be before the driver
    removes the memory block (offline_and_remove_memory); /proc/iomem drops the
    System RAM range only after arch_remove_memory() has freed the tables, so
    that is the end."""
    resize(rec, target)

    def gone() -> bool:
        # builtins in the console's shell: no process exits while gdb follows
        ram = sysfs.system_ram(rec.sh(sysfs.IOMEM_BUILTIN_CMD, console=True))
        return not any(s < addr + size and addr < e for s, e in ram)
    wait_for(gone, 30, f"System RAM at {addr:#x} to leave /proc/iomem")
    return target


def wait_online(rec: Recorder, addr: int, size: int) -> int:
    want = size // block_size(rec)
    wait_for(lambda: len([b for b in blocks_in(rec, addr, addr + size)
                          if b.state == "online"]) == want,
             30, f"{want} online blocks of virtio-mem at {addr:#x}")
    return want


METHOD = register(Method(
    name="virtio-mem", mode=MODE, options=Options, drive=drive, boot_options=boot_options,
    summary=f"a virtio-mem-pci device ({REGION_MB} MiB region) grown and shrunk through "
            "QMP requested-size",
    required_checks=REMOVAL_CHECKS,
    honours=frozenset({"cycles", "online_type"}),
    rank=30, in_all=True))
