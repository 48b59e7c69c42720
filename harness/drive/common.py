"""What every hotplug method shares: the ``Recorder`` a method drives (steps
through ``steps.StepRunner``, phases through ``phases.PhaseCollector``, plus the
removals and results a method keeps), and the helpers the methods use
(``set_state``, ``blocks_in``, ``wait_for``, ``memory_device``, boot-memory
probing, the block size check)."""
from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Callable, Generic, Optional, TypeVar, Union, cast, overload

from harness.drive.phases import (  # noqa: F401  (re-exported: methods and tests import them from here)
    PTDUMP,
    RAM_BASE,
    REGIONS,
    STRUCT_PAGE_SIZE,
    PhaseCollector,
    struct_page_geometry,
)
from harness.drive.steps import StepRunner
from harness.errors import HarnessError
from harness.inspect import sysfs
from harness.inspect.sysfs import MemoryBlock
from harness.kernel.kernel import KernelArtifacts
from harness.machine.qemu import Machine
from harness.records import (  # noqa: F401  (REMOVAL_CHECKS: methods import it from here)
    REMOVAL_CHECKS,
    BootmemAttempt,
    Geometry,
    HotAddAttempt,
    KselftestResult,
    OrderRecord,
    Phase,
    Removal,
    Step,
)
from harness.session import Guest

MEMROOT = "/sys/devices/system/memory"
T = TypeVar("T")


class _Part(Generic[T]):
    """An attribute of the Recorder that lives in one of its parts (read and
    assigned there, so ``rec.steps.append`` and ``rec.geometry = ...`` reach
    the part's own value)."""

    def __init__(self, part: str) -> None:
        self.part = part
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, rec: None, owner: type) -> _Part[T]: ...

    @overload
    def __get__(self, rec: Recorder, owner: type) -> T: ...

    def __get__(self, rec: Optional[Recorder], owner: type) -> Union[T, _Part[T]]:
        if rec is None:
            return self
        value: T = getattr(getattr(rec, self.part), self.name)
        return value

    def __set__(self, rec: Recorder, value: T) -> None:
        setattr(getattr(rec, self.part), self.name, value)


class Recorder:
    """What a method drives (mutable on purpose: whatever was recorded survives
    a failure, for the report). A facade over two parts: ``runner`` (a
    :class:`StepRunner`: ``step``, ``removal_step``, ``sh``; ``steps``,
    ``step_lines``, ``order``) and ``collector`` (a :class:`PhaseCollector`:
    ``phase``; ``phases``, ``geometry``, ``backings``, ``notes``, ``walk``),
    which the runner reads for watched removals and which records each
    inspection through the runner. Keeps itself what the method reports:
    ``removals``, ``bootmem``, ``kselftest``."""

    # the step runner's
    steps: _Part[list[Step]] = _Part("runner")
    step_lines: _Part[list[tuple[int, str]]] = _Part("runner")   # (console line, step)
    order: _Part[list[OrderRecord]] = _Part("runner")   # one per watched removal
    progress: _Part[Optional[Callable[[str], None]]] = _Part("runner")   # a line per step
    order_check: _Part[str] = _Part("runner")   # "on", "full", "sampled", "off" (removal_step)
    # the phase collector's
    phases: _Part[list[Phase]] = _Part("collector")
    geometry: _Part[Geometry] = _Part("collector")   # learned at the first phase
    backings: _Part[list[tuple[int, str]]] = _Part("collector")   # (guest_pa, path)
    notes: _Part[list[str]] = _Part("collector")   # what could not be observed, and
    # the method's own notes, in the order they came
    walk: _Part[bool] = _Part("collector")

    def __init__(self, guest: Guest, art: KernelArtifacts, walk: bool = True,
                 progress: Optional[Callable[[str], None]] = None,
                 order_check: str = "off") -> None:
        self.guest = guest
        self.art = art
        self.collector = PhaseCollector(guest, art, walk=walk, record=self._record)
        self.runner = StepRunner(guest, art, self.collector, progress=progress,
                                 order_check=order_check)
        self.removals: list[Removal] = []
        self.bootmem: Optional[BootmemAttempt] = None
        self.hotadds: list[HotAddAttempt] = []   # drive/reach.py's probes
        # the method's mem-on-off-test.sh result; a dict (hotplug/kselftest.py) is
        # read as KselftestResult when the run is recorded (runner._method_run)
        self.kselftest: Union[KselftestResult, dict[str, Any], None] = None

    def _record(self, step: Step, summary: str) -> None:
        self.runner.record(step, summary)

    def __repr__(self) -> str:
        return (f"Recorder({len(self.steps)} steps, {len(self.phases)} phases, "
                f"{len(self.removals)} removals)")

    # -- steps ---------------------------------------------------------------
    def step(self, name: str, action: Callable[[], Any],
             transport: Optional[str] = None) -> Any:
        """Run ``action()`` as a named step; record its duration either way."""
        return self.runner.step(name, action, transport)

    def removal_step(self, name: str, pa_start: int, pa_end: int,
                     action: Callable[[], Any], transport: Optional[str] = None) -> Any:
        """A step removing ``[pa_start, pa_end)``, watched through gdb when the
        ordering checks are on (``StepRunner.removal_step``)."""
        return self.runner.removal_step(name, pa_start, pa_end, action, transport)

    def sh(self, command: str, deadline: float = 30.0, blame: Optional[str] = None,
           console: bool = False) -> str:
        """A guest command that must succeed; returns stdout. ``blame="kernel"``
        for hotplug operations the kernel must carry out; ``console``: typed
        into the serial console's shell (``StepRunner.sh``)."""
        return self.runner.sh(command, deadline, blame=blame, console=console)

    # -- phases --------------------------------------------------------------
    def phase(self, name: str, note: str = "", leak: bool = False) -> Phase:
        """Inspect the guest now (``PhaseCollector.phase``). ``leak``: also take
        page_owner's hotplug-path allocation stacks, for the leak check."""
        return self.collector.phase(name, note, leak)

    def removed(self, phase: str, pa_start: int, pa_end: int, baseline: str = "",
                kept: tuple[tuple[int, int], ...] = ()) -> None:
        """Tell the removal checks that ``phase`` follows removing ``[pa_start,
        pa_end)``, compared with ``baseline``; ``kept``: device memory (no
        memory block) still there, whose struct pages must stay mapped."""
        self.removals.append(Removal(phase, pa_start, pa_end, baseline, tuple(kept)))


def wait_for(predicate: Callable[[], T], deadline: float, what: str,
             interval: float = 0.2) -> T:
    """Poll ``predicate`` until true; HarnessError (infra) naming ``what``."""
    end = time.monotonic() + deadline
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= end:
            raise HarnessError(f"timed out after {deadline:.0f}s waiting for {what}",
                               step="wait", blame="infra")
        time.sleep(interval)


def check_section_size(rec: Recorder, want_mb: int) -> int:
    """block_size_bytes of the booted kernel; an error if the layout chosen at
    boot (section_mb) assumed another size."""
    bs = block_size(rec)
    if bs != want_mb << 20:
        raise HarnessError(f"the memory layout was sized for {want_mb} MiB blocks, "
                           f"but the kernel's block_size_bytes is {bs >> 20} MiB "
                           "(harness.kernel.layout.section_mb is out of date for "
                           "this kernel)", step="layout")
    return bs


def block_size(rec: Recorder) -> int:
    return int(rec.sh(f"cat {MEMROOT}/block_size_bytes").strip(), 16)


def blocks_in(rec: Recorder, pa_start: int, pa_end: int) -> tuple[MemoryBlock, ...]:
    table = sysfs.parse_memory_blocks(rec.sh(sysfs.MEMORY_BLOCKS_CMD))
    return table.in_range(pa_start, pa_end)


def online(rec: Recorder, label: str, pa_start: int, pa_end: int,
           online_type: str = "online_movable") -> None:
    """Step ``online LABEL``: every block of ``[pa_start, pa_end)`` to
    ``online_type`` (``online``, ``online_movable``, ``online_kernel``)."""
    rec.step(f"online {label}",
             lambda: set_state(rec, blocks_in(rec, pa_start, pa_end), online_type))


def offline(rec: Recorder, label: str, pa_start: int, pa_end: int) -> None:
    """Step ``offline LABEL``: every block of ``[pa_start, pa_end)`` offline."""
    rec.step(f"offline {label}",
             lambda: set_state(rec, blocks_in(rec, pa_start, pa_end), "offline"))


def removed_phase(rec: Recorder, phase: str, pa_start: int, pa_end: int,
                  baseline: str = "") -> Phase:
    """What follows every removal step: inspect the guest (phase ``phase``) and
    tell the removal checks that it follows removing ``[pa_start, pa_end)``,
    compared with ``baseline`` ("" while a neighbour stays online)."""
    taken = rec.phase(phase)
    rec.removed(phase, pa_start, pa_end, baseline)
    return taken


def set_state(rec: Recorder, blocks: Iterable[MemoryBlock], state: str) -> None:
    """Write ``state`` to each block's state file (all must succeed), in block
    order, in one guest command (``&&``: it stops at the first refusal, and the
    failure names that block's file in the command): one round trip instead of
    one per block."""
    writes = [f"echo {state} > {MEMROOT}/memory{b.index}/state" for b in blocks]
    if writes:
        rec.sh(" && ".join(writes), 120, blame="kernel")


BOOTMEM_MOVABLE = "movablecore=256M"   # kernel parameter: the top 256 MiB of boot
# memory in ZONE_MOVABLE, so that offlining one of its blocks reaches arm64's
# boot-memory notifier instead of failing earlier on unmovable pages
BOOTMEM_RULE_TEXT = "offlining attempted"   # "Boot memory [%lx %lx] offlining attempted"


def bootmem_candidate(phase: Phase, size: int) -> tuple[MemoryBlock, bool]:
    """(block, hole_free): the lowest online boot block in ZONE_MOVABLE that lies
    inside one System RAM range (no firmware holes); else the last online block.
    Offlining a block with holes or unmovable pages fails whatever arm64's rule
    says, so only the first kind tests the rule."""
    online = [b for b in phase.blocks.blocks if b.state == "online"]
    ram = [(s, e + 1 if e % 2 else e) for s, e in phase.system_ram]
    def hole_free(b: MemoryBlock) -> bool:
        return any(s <= b.phys_start(size) and b.phys_end(size) <= e for s, e in ram)
    for block in online:
        if "Movable" in block.valid_zones and hole_free(block):
            return block, True
    return online[-1], hole_free(online[-1])


def try_bootmem_offline(rec: Recorder, boot_phase: Phase) -> BootmemAttempt:
    """Try to offline a boot block that only arm64's rule can protect (see
    :func:`bootmem_candidate`); record the console lines printed meanwhile, so
    the check can tell the rule's refusal from any other."""
    size = cast(int, boot_phase.blocks.block_size)   # parsed from block_size_bytes
    block, hole_free = bootmem_candidate(boot_phase, size)
    lines: list[str] = []
    reader, listener = rec.guest.reader, lines.append
    reader.listeners.append(listener)
    try:
        res = rec.guest.run(f"echo offline > {MEMROOT}/memory{block.index}/state", 60)
        after = rec.sh(f"cat {MEMROOT}/memory{block.index}/state").strip()
        end = time.monotonic() + 5.0     # the console may lag the shell (a loaded host)
        while time.monotonic() < end and not any(BOOTMEM_RULE_TEXT in l for l in lines):
            if res.exit_code == 0:
                break
            time.sleep(0.05)
    finally:
        reader.listeners.remove(listener)
    said = [l for l in lines if "Boot memory" in l or "offlin" in l.lower()]
    return BootmemAttempt(block=block.index, exit_code=res.exit_code,
                          output=(res.stdout + res.stderr).strip()[-500:], state_after=after,
                          zones=tuple(block.valid_zones), hole_free=hole_free,
                          range=(block.phys_start(size), block.phys_end(size)),
                          console=tuple(said[-20:]))


def memory_device(machine: Machine, dev_id: str) -> dict[str, Any]:
    """The ``data`` of a QMP query-memory-devices entry (pc-dimm, virtio-mem)."""
    for dev in machine.qmp_cmd("query-memory-devices"):
        data: dict[str, Any] = dev.get("data", {})
        if data.get("id") == dev_id:
            return data
    raise HarnessError(f"{dev_id} is not in QMP query-memory-devices", step="qmp",
                       blame="infra")
