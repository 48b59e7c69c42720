"""kselftest: the kernel's own memory-hotplug selftest, from the same tree.

``tools/testing/selftests/memory-hotplug/mem-on-off-test.sh`` picks every
block whose ``removable`` is 1; on arm64 that includes boot memory, which can
never be offlined. So a DIMM is hot-added first (and onlined), the script runs
with ``-r 100`` (offline every candidate), and the verdict reads its per-block
lines: hot-added blocks must pass, boot blocks failing is expected.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from harness.drive import acpi_dimm
from harness.drive.common import REMOVAL_CHECKS, Recorder, blocks_in, set_state
from harness.drive.method import Method, register
from harness.errors import HARNESS, HarnessError
from harness.session import BootOptions

SCRIPT = "tools/testing/selftests/memory-hotplug/mem-on-off-test.sh"
GUEST_PATH = "/tmp/mem-on-off-test.sh"


@dataclass(frozen=True)
class Options:
    dimm_mb: int = 512
    kernel_tree: str = ""    # the source tree the kernel was built from (the runner
    # takes it from the artifacts: runner.kernel_tree)
    ratio: int = 100
    cycles: int = 1


def boot_options(base: BootOptions, kconfig: Optional[dict] = None) -> BootOptions:
    # The script onlines with plain "online": let the kernel pick ZONE_MOVABLE
    # (as online_movable would), or the block can never be offlined again.
    return replace(base, cmdline=base.cmdline
                   + ("memory_hotplug.online_policy=auto-movable",))


def script_text(kernel_tree: str) -> str:
    """The selftest script of the kernel's own source tree."""
    if not kernel_tree:
        raise HarnessError("kselftest: no kernel source tree was given (Options."
                           "kernel_tree)", step="kselftest", blame=HARNESS)
    path = Path(kernel_tree) / SCRIPT
    try:
        return path.read_text()
    except OSError as e:
        raise HarnessError(f"kselftest: cannot read {path}: {e.strerror}",
                           step="kselftest", blame=HARNESS) from None


def drive(rec: Recorder, opts: Options) -> None:
    rec.phase("before", leak=opts.cycles > 1)
    text = script_text(opts.kernel_tree)
    rec.step("copy mem-on-off-test.sh", lambda: rec.guest.put_text(GUEST_PATH, text))
    results = []
    for cycle in range(1, opts.cycles + 1):
        suffix = "" if cycle == 1 else f"@{cycle}"
        dimm = acpi_dimm.plug(rec, 1, acpi_dimm.Options(dimm_mb=opts.dimm_mb), suffix)
        blocks = blocks_in(rec, dimm.addr, dimm.end)
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
        acpi_dimm.unplug(rec, dimm, "removed-1" + suffix, baseline="before")
        if opts.cycles > 1:
            rec.phase(f"cycle-{cycle}", leak=True)


METHOD = register(Method(
    name="kselftest", mode="acpi", options=Options, drive=drive, boot_options=boot_options,
    summary="the tree's own mem-on-off-test.sh -r 100 after hot-adding a DIMM; judged by "
            "its per-block lines",
    required_checks=REMOVAL_CHECKS + ("kselftest",),
    honours=frozenset({"dimm_mb", "kernel_tree", "cycles"}),
    rank=40, in_all=True))
