"""acpi-dimm: pc-dimm hot-add and hot-remove over ACPI (edk2 boot).

Plugs ``dimms`` DIMMs (default 2, adjacent: they share upper-level tables),
onlines them, puts data in them (``fill_mb`` MiB of a random pattern in tmpfs,
which lands in the movable DIMMs), then removes the first while its neighbour
stays online, then the other, and checks that the data came through both
offlines' page migration unchanged (its md5 before and after); repeats for
``cycles``. Removal follows the
issue's flow: offline through sysfs, ``device_del`` and wait for
``DEVICE_DELETED`` (the guest's ACPI eject removes the memory), ``object-del``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from harness.drive.common import (
    MEMROOT,
    REMOVAL_CHECKS,
    Recorder,
    blocks_in,
    memory_device,
    offline,
    online,
    removed_phase,
    wait_for,
)
from harness.drive.method import Method, register
from harness.errors import HarnessError
from harness.inspect import sysfs
from harness.session import BootOptions


@dataclass(frozen=True)
class Options:
    dimms: int = 2
    dimm_mb: int = 512
    cycles: int = 1
    online_type: str = "online_movable"
    fill_mb: int = 32            # data written into the hot-added memory (offline
    # migrates it: 32 MiB offline in ~0.4 s under TCG, where 128 MiB took 1.5-2 s)


def boot_options(base: BootOptions, kconfig: Optional[dict] = None) -> BootOptions:
    return base


def drive(rec: Recorder, opts: Options) -> None:
    rec.phase("before", leak=opts.cycles > 1)
    for cycle in range(1, opts.cycles + 1):
        suffix = "" if cycle == 1 else f"@{cycle}"
        dimms = [plug(rec, i, opts, suffix) for i in range(1, opts.dimms + 1)]
        rec.phase("added" + suffix)
        for d in dimms:
            online(rec, d.name, d.addr, d.end, opts.online_type)
        rec.phase("online" + suffix)
        digest = rec.step("use memory", lambda: write_data(rec, opts.fill_mb))
        for n, d in enumerate(dimms, 1):
            unplug(rec, d, f"removed-{n}{suffix}",
                   baseline="before" if n == len(dimms) else "")
        rec.step("data intact", lambda d=digest: check_data(rec, d))
        rec.step("free memory", lambda: rec.sh(f"rm -f {DATA}"))
        if opts.cycles > 1:
            rec.phase(f"cycle-{cycle}", leak=True)


@dataclass(frozen=True)
class Dimm:
    """A plugged pc-dimm: its id, its memory backend's id, where QEMU put it."""
    name: str
    memdev: str
    addr: int
    size: int

    @property
    def end(self) -> int:
        return self.addr + self.size


def plug(rec: Recorder, index: int, opts: Options, suffix: str) -> Dimm:
    """DIMM ``dimmINDEX`` of ``opts.dimm_mb`` MiB, backed by a file of this
    cycle in the guest's run folder."""
    mem = f"mem{index}"
    path = str(Path(rec.guest.machine.spec.run_dir) / f"{mem}{suffix.replace('@', '-')}")
    return add_dimm(rec, f"dimm{index}", mem, opts.dimm_mb << 20, path)


def add_dimm(rec: Recorder, name: str, memdev: str, size: int, path: str) -> Dimm:
    """Step ``add NAME`` (QMP): ``object-add`` a file-backed memory backend
    ``memdev`` at ``path`` and ``device_add`` a pc-dimm on it; wait until the
    guest shows its blocks. Its file joins the walker's backings."""
    machine = rec.guest.machine

    def add() -> int:
        machine.qmp_cmd("object-add", **{"qom-type": "memory-backend-file", "id": memdev,
                                         "size": size, "mem-path": path, "share": True})
        machine.qmp_cmd("device_add", driver="pc-dimm", id=name, memdev=memdev)
        addr = int(memory_device(machine, name)["addr"])
        bs = sysfs.parse_memory_blocks(rec.sh(sysfs.MEMORY_BLOCKS_CMD)).block_size
        want = size // bs
        wait_for(lambda: len(blocks_in(rec, addr, addr + size)) == want, 20,
                 f"{want} memory blocks of {name} at {addr:#x} in the guest")
        return addr
    addr = rec.step(f"add {name}", add, transport="qmp")
    rec.backings.append((addr, path))
    return Dimm(name, memdev, addr, size)


DATA = "/tmp/harness-fill"
SEED = "/tmp/harness-seed"


def write_data(rec: Recorder, mb: int) -> str:
    """``mb`` MiB in tmpfs: one random MiB repeated (one ``cat``; random data of
    the whole size would take seconds under TCG); returns its md5."""
    out = rec.sh(f"head -c 1048576 /dev/urandom > {SEED} && cat {' '.join([SEED] * mb)} "
                 f"> {DATA} && rm -f {SEED} && md5sum {DATA}", 120)
    return out.split()[0]


def check_data(rec: Recorder, digest: str) -> str:
    """The data written before the DIMMs went offline must read back the same."""
    now = rec.sh(f"md5sum {DATA}", 120).split()[0]
    if now != digest:
        raise HarnessError(f"the {DATA} written before offlining changed: md5 {digest} "
                           f"before, {now} after the DIMMs' pages were migrated",
                           step="data intact", blame="kernel")
    return f"md5 {now} unchanged"


def fill(rec: Recorder, mb: int) -> str:
    """Write data that lands in movable (hot-added) memory; offline migrates it."""
    return rec.sh(f"dd if=/dev/zero of=/tmp/harness-fill bs=1M count={mb} 2>&1 "
                  "&& sync && grep -E 'MemFree|Shmem:' /proc/meminfo", 120)


def blocks_gone(rec: Recorder, blocks) -> bool:
    """Shell builtins typed into the serial console's shell: no guest process
    is created or exits. Inside a removal step gdb stops at every page the
    guest frees, and a process that exits frees its pages and page tables (a
    cat per sysfs file cost seconds; one shell per poll over SSH, ~20 stops)."""
    names = " ".join(f"memory{b.index}" for b in blocks)
    res = rec.guest.run(f"g=0; for b in {names}; do [ -e {MEMROOT}/$b ] && g=1; done; "
                        "[ $g = 0 ]", 10, via=rec.guest.console)
    return res.exit_code == 0


def unplug(rec: Recorder, dimm: Dimm, phase: str, baseline: str = "") -> None:
    """Offline the DIMM's blocks (step ``offline NAME``), then delete it."""
    offline(rec, dimm.name, dimm.addr, dimm.end)
    delete_dimm(rec, dimm, phase, baseline)


def delete_dimm(rec: Recorder, dimm: Dimm, phase: str, baseline: str = "") -> None:
    """Removal step ``remove NAME`` (QMP; its blocks offline first):
    ``device_del``, wait for ``DEVICE_DELETED`` (the guest's ACPI eject removed
    the memory), ``object-del`` and wait until its blocks are gone; watched
    through gdb when the ordering checks are on. Then phase ``phase`` and the
    removal of the DIMM's range."""
    machine = rec.guest.machine
    blocks = blocks_in(rec, dimm.addr, dimm.end)

    def delete() -> None:
        machine.qmp_cmd("device_del", id=dimm.name)
        machine.wait_event("DEVICE_DELETED", {"device": dimm.name}, 30.0)
        machine.qmp_cmd("object-del", id=dimm.memdev)
        wait_for(lambda: blocks_gone(rec, blocks), 10,
                 f"the blocks of {dimm.name} to disappear")
    rec.removal_step(f"remove {dimm.name}", dimm.addr, dimm.end, delete, transport="qmp")
    rec.backings[:] = [b for b in rec.backings if b[0] != dimm.addr]
    removed_phase(rec, phase, dimm.addr, dimm.end, baseline)


METHOD = register(Method(
    name="acpi-dimm", mode="acpi", options=Options, drive=drive, boot_options=boot_options,
    summary="pc-dimm hot-add/remove over ACPI (edk2 boot); 2 adjacent DIMMs, the first "
            "removed while its neighbour stays online",
    # arm64's boot-memory rule is tested by the probe method: testing it needs boot
    # memory in ZONE_MOVABLE (movablecore=), and then the data written here lands
    # there instead of in the DIMMs, so offline would migrate nothing
    required_checks=REMOVAL_CHECKS,
    honours=frozenset({"dimms", "dimm_mb", "cycles", "online_type"}),
    rank=10, in_all=True))
