"""kselftest: the kernel's own memory-hotplug selftest, from the same tree.

``tools/testing/selftests/memory-hotplug/mem-on-off-test.sh`` picks every
block whose ``removable`` is 1; on arm64 that includes boot memory, which can
never be offlined. So a DIMM is hot-added first (and onlined), the script runs
with ``-r 100`` (offline every candidate), and the verdict reads its per-block
lines: hot-added blocks must pass, boot blocks failing is expected.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .. import source as src
from ..session import BootOptions
from . import acpi_dimm
from .common import REMOVAL_CHECKS, Recorder, blocks_in, set_state

NAME = "kselftest"
MODE = "acpi"
REQUIRED_CHECKS = REMOVAL_CHECKS + ("kselftest",)
SCRIPT = "tools/testing/selftests/memory-hotplug/mem-on-off-test.sh"
GUEST_PATH = "/tmp/mem-on-off-test.sh"


@dataclass(frozen=True)
class Options:
    dimm_mb: int = 512
    kernel_src: str = "debian"
    ratio: int = 100
    cycles: int = 1


def boot_options(base: BootOptions, kconfig: Optional[dict] = None) -> BootOptions:
    # The script onlines with plain "online": let the kernel pick ZONE_MOVABLE
    # (as online_movable would), or the block can never be offlined again.
    from dataclasses import replace
    return replace(base, cmdline=base.cmdline
                   + ("memory_hotplug.online_policy=auto-movable",))


def script_text(kernel_src: str) -> str:
    tree = src.pristine_tree(src.resolve_source(kernel_src))
    return (tree / SCRIPT).read_text()


def drive(rec: Recorder, opts: Options) -> None:
    rec.phase("before", leak=opts.cycles > 1)
    text = script_text(opts.kernel_src)
    rec.step("copy mem-on-off-test.sh", lambda: rec.guest.put_text(GUEST_PATH, text))
    results = []
    for cycle in range(1, opts.cycles + 1):
        suffix = "" if cycle == 1 else f"@{cycle}"
        name, addr, size = acpi_dimm.plug(rec, 1, acpi_dimm.Options(dimm_mb=opts.dimm_mb),
                                          suffix)
        blocks = blocks_in(rec, addr, addr + size)
        rec.step(f"online dimm1{suffix}",
                 lambda b=blocks: set_state(rec, b, "online_movable"))
        rec.phase("online" + suffix)
        result = rec.step(f"run mem-on-off-test.sh{suffix}",
                          lambda: rec.guest.run(f"sh {GUEST_PATH} -r {opts.ratio} 2>&1", 600))
        results.append({"cycle": cycle, "exit_code": result.exit_code,
                        "output": result.stdout,
                        "hotplugged_blocks": [b.index for b in blocks]})
        # the first cycle's result is the record (the check reads one run);
        # later cycles add theirs under "cycles"
        rec.kselftest = dict(results[0], cycles=results)
        # the script may leave blocks offline; put ours back online, then remove
        for b in blocks:
            rec.guest.run(f"echo online_movable > /sys/devices/system/memory/"
                          f"memory{b.index}/state", 60)
        rec.phase("after-selftest" + suffix)
        acpi_dimm.unplug(rec, name, addr, size)
        rec.phase("removed-1" + suffix)
        rec.removed("removed-1" + suffix, addr, addr + size, baseline="before")
        if opts.cycles > 1:
            rec.phase(f"cycle-{cycle}", leak=True)
