"""Each method's ``drive()`` without QEMU (issue 8 item 6).

The drive runs against a :class:`FakeRecorder` (the Recorder's drive-facing
surface: step, removal_step, phase, removed, sh) over a :class:`ModelGuest`:
a small model of the guest's memory blocks as sysfs, ``/proc/iomem``, the
shell and QMP show them. The model starts from a RECORDED run's ``before``
phase (tests/data: ``MethodRun.to_dict()`` of real runs) and answers with that
run's recorded outputs where the drive reads one (the DIMM addresses QEMU
gave, the fill's output, the selftest's output, the boot-memory attempt);
what it does between them (blocks appearing on a probe or ``device_add``,
changing state, going away) is modelled, and checked against the recording:
at each phase the model's blocks must be the recorded phase's, in the same
states. Each test then asserts the steps, phases, removals (and what the
method keeps: boot-memory attempt, selftest result, notes) the drive recorded
against the real run's.

Runs without a recording (split-leaf, race, a second cycle) are SYNTHETIC:
the model alone answers, except split-leaf's page-table dumps, which are the
RECORDED 16k-47 ones (tests/data/recorded-16k-47-split-leaf-ptdump-*.txt).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Optional

import pytest

from harness.drive import acpi_dimm, kselftest, probe, race, split_leaf, virtio_mem
from harness.errors import HarnessError
from harness.inspect import ptdump, sysfs
from harness.inspect.sysfs import BlockTable, MemoryBlock
from harness.machine.transport import CommandResult
from harness.records import Geometry, MethodRun, Phase, Removal, Step

DATA = Path(__file__).resolve().parent / "data"
MEMROOT = "/sys/devices/system/memory"
K64 = {"CONFIG_ARM64_64K_PAGES": "y"}
K16 = {"CONFIG_ARM64_16K_PAGES": "y"}


def recorded(name: str) -> MethodRun:
    return MethodRun.from_dict(raw(name))


def raw(name: str) -> dict:
    """The recorded JSON as it is (what the drive kept, before any record type)."""
    return json.loads((DATA / name).read_text())


# ------------------------------------------------------------ the model -----

@dataclass
class Block:
    state: str
    zones: tuple = ("Normal", "Movable")


@dataclass
class ModelGuest:
    """The guest as the drive sees it. ``answers``: (regex, callable(match) ->
    (stdout, exit_code[, stderr])) tried before the model's own commands (recorded
    outputs); ``addrs``: the address QEMU gives each pc-dimm id (recorded);
    ``console``: lines the kernel prints during a command (regex -> lines)."""

    block_size: int
    blocks: dict
    ram: list
    auto_online: str = "offline"
    boot_refusal: tuple = (1, "sh: write error: Device or resource busy")
    addrs: dict = field(default_factory=dict)
    answers: list = field(default_factory=list)
    console: list = field(default_factory=list)
    console_commands: list = field(default_factory=list)   # run with via= (the console)
    run_dir: str = "/run/fake"
    commands: list = field(default_factory=list)
    files: dict = field(default_factory=dict)

    def __post_init__(self):
        self.boot = set(self.blocks)
        self.dimms: dict = {}            # id -> (addr, size)
        self.vmem = {"addr": 0, "size": 0}
        self.qmp: list = []
        self.machine = SimpleNamespace(qmp_cmd=self.qmp_cmd, wait_event=self.wait_event,
                                       spec=SimpleNamespace(run_dir=self.run_dir))
        self.reader = SimpleNamespace(listeners=[])
        self.transport = SimpleNamespace(name="ssh")

    @classmethod
    def from_phase(cls, before: Phase, **kw) -> ModelGuest:
        t = before.blocks
        return cls(t.block_size, {b.index: Block(b.state, b.valid_zones) for b in t.blocks},
                   [tuple(r) for r in before.system_ram], t.auto_online or "offline", **kw)

    # -- what the drive calls ---------------------------------------------
    def run(self, command: str, deadline: float = 30.0, via=None) -> CommandResult:
        self.commands.append(command)
        if via is not None:
            self.console_commands.append(command)
        for regex, lines in self.console:
            if re.search(regex, command):
                for listener in list(self.reader.listeners):
                    for line in lines:
                        listener(line)
        out, code, *err = self._answer(command)
        return CommandResult(command, out, "".join(err), code, 0.01, "ssh")

    def check(self, command: str, deadline: float = 30.0, step: str = "",
              blame: Optional[str] = None) -> str:
        return self.run(command, deadline).check(step, blame=blame).stdout

    def put_text(self, path: str, text: str) -> None:
        self.files[path] = text

    def qmp_cmd(self, name: str, **args):
        self.qmp.append((name, args))
        if name == "device_add":
            addr, size = self.addrs[args["id"]], self.backends[args["memdev"]]
            self.dimms[args["id"]] = (addr, size)
            self._plug(addr, size, self.auto_online)
        elif name == "object-add":
            self.backends = getattr(self, "backends", {})
            self.backends[args["id"]] = args["size"]
        elif name == "device_del":
            addr, size = self.dimms.pop(args["id"])
            gone = self._blocks(addr, addr + size)
            assert all(self.blocks[i].state == "offline" for i in gone), \
                f"device_del {args['id']} with blocks online: the eject would fail"
            self._unplug(addr, size)
        elif name == "query-memory-devices":
            devs = [{"type": "dimm", "data": {"id": i, "addr": a, "size": s}}
                    for i, (a, s) in self.dimms.items()]
            return devs + [{"type": "virtio-mem", "data": {
                "id": virtio_mem.DEVICE, "memaddr": self.vmem["addr"],
                "size": self.vmem["size"]}}]
        elif name == "qom-set":
            want, have = args["value"], self.vmem["size"]
            if want > have:
                self._plug(self.vmem["addr"] + have, want - have, self.auto_online)
            else:
                self._unplug(self.vmem["addr"] + want, have - want)
            self.vmem["size"] = want
        elif name == "qom-get":
            return self.vmem["size"]
        return {}

    def wait_event(self, event: str, match: dict, timeout: float) -> dict:
        return {"event": event, "data": match}

    # -- the model -----------------------------------------------------------
    def _blocks(self, start: int, end: int) -> list:
        return [i for i in range(start // self.block_size, end // self.block_size)
                if i in self.blocks]

    def _plug(self, addr: int, size: int, auto: str) -> None:
        state = "offline" if auto == "offline" else "online"
        for i in range(addr // self.block_size, (addr + size) // self.block_size):
            assert i not in self.blocks, f"memory{i} plugged twice"
            self.blocks[i] = Block(state)
        self.ram = sorted(self.ram + [(addr, addr + size)])

    def _unplug(self, addr: int, size: int) -> None:
        for i in self._blocks(addr, addr + size):
            del self.blocks[i]
        end = addr + size
        ram = []
        for s, e in self.ram:          # cut [addr, end) out of every range
            ram += [(s, min(e, addr))] if s < addr else []
            ram += [(max(s, end), e)] if e > end else []
        self.ram = [(s, e) for s, e in ram if s < e]

    def table(self) -> BlockTable:
        return BlockTable(tuple(MemoryBlock(i, b.state, i, tuple(b.zones), True)
                                for i, b in sorted(self.blocks.items())),
                          self.block_size, self.auto_online)

    def _listing(self) -> str:
        lines = [f"block_size_bytes={self.block_size:x}", f"auto_online_blocks={self.auto_online}"]
        lines += [f"memory{i} state={b.state} phys_index={i:08x} "
                  f"valid_zones={','.join(b.zones)} removable=1"
                  for i, b in sorted(self.blocks.items(), key=lambda kv: str(kv[0]))]
        return "\n".join(lines) + "\n"

    def _set_state(self, index: int, state: str) -> tuple:
        block = self.blocks.get(index)
        if block is None:
            return "", 1, "sh: can't create: nonexistent directory"
        if state == "offline" and index in self.boot:
            return "", self.boot_refusal[0], self.boot_refusal[1]
        block.state = "offline" if state == "offline" else "online"
        if state == "online_movable":
            block.zones = ("Movable",)
        return "", 0

    def _answer(self, command: str) -> tuple:
        for regex, answer in self.answers:
            m = re.search(regex, command)
            if m:
                return answer(m)
        if command == sysfs.MEMORY_BLOCKS_CMD:
            return self._listing(), 0
        if command == f"cat {MEMROOT}/block_size_bytes":
            return f"{self.block_size:x}\n", 0
        if command in ("cat /proc/iomem", sysfs.IOMEM_BUILTIN_CMD):
            return "".join(f"{s:08x}-{e - 1:08x} : System RAM\n" for s, e in self.ram), 0
        if command.startswith("test -e "):
            return "", 0
        writes = [re.fullmatch(rf"echo (\w+) > {MEMROOT}/memory(\d+)/state", part)
                  for part in command.split(" && ")]
        if all(writes):      # set_state: one block, or several chained with &&
            answer: tuple = ("", 0)
            for m in writes:
                answer = self._set_state(int(m[2]), m[1])
                if answer[1]:
                    break
            return answer
        m = re.fullmatch(rf"cat {MEMROOT}/memory(\d+)/state", command)
        if m:
            return self.blocks[int(m[1])].state + "\n", 0
        m = re.fullmatch(rf"echo (0x[0-9a-f]+) > {MEMROOT}/probe", command)
        if m:
            self._plug(int(m[1], 16), self.block_size, "offline")
            return "", 0
        m = re.fullmatch(rf"echo (0x[0-9a-f]+) > {MEMROOT}/remove", command)
        if m:
            addr = int(m[1], 16)
            if not self._blocks(addr, addr + self.block_size):
                return "", 1, "sh: write error: Invalid argument"
            self._unplug(addr, self.block_size)
            return "", 0
        m = re.fullmatch(rf"echo (\w+) > {MEMROOT}/auto_online_blocks", command)
        if m:
            self.auto_online = m[1]
            return "", 0
        m = re.match(r"g=0; for b in ([\w ]+); do \[ -e ", command)
        if m:
            present = any(int(n[len("memory"):]) in self.blocks for n in m[1].split())
            return "", 1 if present else 0
        if command.startswith("rm -f "):
            return "", 0
        raise AssertionError(f"ModelGuest: no answer for {command!r}")


class FakeRecorder:
    """What a drive function uses of harness.drive.common.Recorder. ``phase``
    checks the model against the recorded phase of that name (blocks and their
    states) and returns the recorded phase; a phase the recording lacks is the
    model's (with ``ptdumps[name]`` if given)."""

    def __init__(self, guest: ModelGuest, run: Optional[MethodRun] = None,
                 kconfig: Optional[dict] = None, geometry: Optional[dict] = None,
                 ptdumps: Optional[dict] = None):
        self.guest, self.art = guest, SimpleNamespace(kconfig=kconfig or {})
        self.recorded = {p.name: p for p in (run.phases if run else ())}
        self.ptdumps = ptdumps or {}
        self.steps: list = []
        self.phases: list = []
        self.removals: list = []
        self.notes: list = []
        self.backings: list = [(0x40000000, "ram")]
        self.geometry = Geometry.from_dict(dict(geometry or {}))
        self.bootmem = None
        self.kselftest = None
        self.removal_steps: list = []
        self.console_commands: list = []
        self.leak_phases: list = []

    def step(self, name: str, action: Callable, transport: Optional[str] = None):
        ok = False
        try:
            result = action()
            ok = True
            return result
        except HarnessError as e:
            e.step = e.step or name
            raise
        finally:
            self.steps.append(Step(name, 0.0, transport or "ssh", ok))

    def removal_step(self, name, pa_start, pa_end, action, transport=None):
        self.removal_steps.append((name, pa_start, pa_end))
        return self.step(name, action, transport)

    def sh(self, command: str, deadline: float = 30.0, blame=None, console=False) -> str:
        if console:
            self.console_commands.append(command)
        return self.guest.check(command, deadline, blame=blame)

    def phase(self, name: str, note: str = "", leak: bool = False) -> Phase:
        self.steps.append(Step(f"inspect {name}", 0.0, "ssh"))
        if leak:
            self.leak_phases.append(name)
        model = self.guest.table()
        want = self.recorded.get(name)
        if want is not None:
            assert states(model) == states(want.blocks), f"phase {name}: model != recorded"
            phase = want
        else:
            phase = Phase(name, model, {}, tuple(self.guest.ram), self.ptdumps.get(name))
        self.phases.append(phase)
        return phase

    def removed(self, phase: str, pa_start: int, pa_end: int, baseline: str = "") -> None:
        self.removals.append(Removal(phase, pa_start, pa_end, baseline))


def states(table: BlockTable) -> dict:
    return {b.index: b.state for b in table.blocks}


def names(steps) -> list:
    return [s.name for s in steps]


def dimm_addrs(run: MethodRun) -> dict:
    """QEMU's address for each pc-dimm, from the recorded 'add dimmN' steps."""
    return {s.name.split()[1]: int(s.detail) for s in run.steps
            if s.name.startswith("add dimm")}


DIGEST = "f41ed56160b6264247ddecc6021e03a3"   # SYNTHETIC md5 of the data written


def fill_answer(run: MethodRun):
    """The data write and its md5 read back (SYNTHETIC: the recorded runs
    predate the data check; they wrote zeros with dd and read nothing back)."""
    return (r"^head -c 1048576 /dev/urandom > /tmp/harness-seed && cat |^md5sum ",
            lambda m: (f"{DIGEST}  /tmp/harness-fill\n", 0))


def with_data_check(steps: list) -> list:
    """Recorded step names, with the data check the drive now adds before
    'free memory'."""
    out = []
    for name in steps:
        if name.startswith("free memory"):
            out.append("data intact" + name[len("free memory"):])
        out.append(name)
    return out


BOOTMEM_STEP = "offline boot memory (must fail)"


# ------------------------------------------------------------ acpi-dimm -----

@pytest.mark.parametrize("name,kconfig", [
    ("recorded-4k-48-acpi-dimm/methodrun.json", {}),
    ("recorded-64k-42/acpi-dimm.json", K64)])
def test_acpi_dimm_replays_a_recorded_run(name, kconfig):
    run = recorded(name)
    guest = ModelGuest.from_phase(run.phases[0], addrs=dimm_addrs(run),
                                  answers=[fill_answer(run)])
    rec = FakeRecorder(guest, run, kconfig)
    acpi_dimm.drive(rec, acpi_dimm.Options())
    # the boot-memory attempt moved to the probe method after these recordings
    assert names(rec.steps) == with_data_check(
        [n for n in names(run.steps) if n != BOOTMEM_STEP])
    assert all(s.ok for s in rec.steps)
    assert [s.transport for s in rec.steps if s.name.startswith(("add ", "remove "))] \
        == ["qmp"] * 4
    assert names(rec.phases) == names(run.phases)
    assert rec.removals == list(run.removals)
    a1, a2 = dimm_addrs(run)["dimm1"], dimm_addrs(run)["dimm2"]
    assert rec.removal_steps == [("remove dimm1", a1, a1 + (512 << 20)),
                                 ("remove dimm2", a2, a2 + (512 << 20))]
    assert [c[0] for c in guest.qmp] == [
        "object-add", "device_add", "query-memory-devices"] * 2 + [
        "device_del", "object-del"] * 2
    assert guest.qmp[0][1]["mem-path"] == "/run/fake/mem1"
    assert rec.backings == [(0x40000000, "ram")]    # each DIMM's file dropped on removal
    assert rec.bootmem is None and rec.leak_phases == []
    # the wait for the blocks to go: builtins in the console's shell (no process)
    assert guest.console_commands and all(
        c.startswith("g=0; for b in memory") for c in guest.console_commands)


def test_acpi_dimm_two_cycles_name_phases_per_cycle_and_take_leak_snapshots():
    """SYNTHETIC second cycle: the first cycle's recorded answers again."""
    run = recorded("recorded-4k-48-acpi-dimm/methodrun.json")
    guest = ModelGuest.from_phase(run.phases[0], addrs=dimm_addrs(run),
                                  answers=[fill_answer(run)])
    rec = FakeRecorder(guest, None)         # one DIMM: not the recorded phases
    acpi_dimm.drive(rec, acpi_dimm.Options(cycles=2, dimms=1))
    assert names(rec.phases) == ["before", "added", "online", "removed-1", "cycle-1",
                                 "added@2", "online@2", "removed-1@2", "cycle-2"]
    assert rec.leak_phases == ["before", "cycle-1", "cycle-2"]
    assert rec.removals == [Removal("removed-1", 0x80000000, 0xa0000000, "before"),
                            Removal("removed-1@2", 0x80000000, 0xa0000000, "before")]
    paths = [a["mem-path"] for c, a in guest.qmp if c == "object-add"]
    assert paths == ["/run/fake/mem1", "/run/fake/mem1-2"]      # a new file per cycle


def test_acpi_dimm_data_changed_by_the_offline_is_the_kernels_fault():
    """SYNTHETIC: the md5 read back after both removals differs from the one
    taken when the data was written."""
    run = recorded("recorded-4k-48-acpi-dimm/methodrun.json")
    sums = iter([DIGEST, "0" * 32])
    guest = ModelGuest.from_phase(run.phases[0], addrs=dimm_addrs(run), answers=[
        (r"md5sum ", lambda m: (f"{next(sums)}  /tmp/harness-fill\n", 0))])
    rec = FakeRecorder(guest, None)
    with pytest.raises(HarnessError) as e:
        acpi_dimm.drive(rec, acpi_dimm.Options(dimms=1))
    assert e.value.blame == "kernel" and e.value.step == "data intact"
    assert f"md5 {DIGEST} before, {'0' * 32} after" in e.value.message


# ------------------------------------------------------------ probe ---------

@pytest.mark.parametrize("name,kconfig,bs", [
    ("recorded-4k-48-probe/probe.json", {}, 128 << 20),
    ("recorded-64k-42/probe.json", K64, 512 << 20)])
def test_probe_replays_a_recorded_run(name, kconfig, bs):
    run, want = recorded(name), raw(name)["bootmem_offline"]
    guest = ModelGuest.from_phase(run.phases[0],
                                  boot_refusal=(want["exit_code"], want["output"]))
    rec = FakeRecorder(guest, run, kconfig)
    probe.drive(rec, probe.Options())
    assert names(rec.steps) == names(run.steps) and all(s.ok for s in rec.steps)
    assert names(rec.phases) == names(run.phases)
    assert rec.removals == list(run.removals)
    first = run.removals[0].pa_start
    assert rec.removal_steps == [(f"remove {first:#x}", first, first + bs),
                                 (f"remove {first + bs:#x}", first + bs, first + 2 * bs)]
    # typed into the console's shell: no process exits while gdb follows a removal
    assert rec.console_commands == [f"echo {pa:#x} > /sys/devices/system/memory/remove"
                                    for pa in (first, first + bs)]
    got = rec.bootmem.to_dict()      # a records.BootmemAttempt, as report.json saves it
    assert {k: got[k] for k in want} == want
    assert got["hole_free"] is True and got["console"] == []


def test_probe_refuses_a_kernel_without_the_probe_files():
    run = recorded("recorded-4k-48-probe/probe.json")
    guest = ModelGuest.from_phase(run.phases[0], answers=[
        (r"^test -e ", lambda m: ("", 1)), (r"^ls ", lambda m: ("auto_online_blocks\n", 0))])
    with pytest.raises(HarnessError, match="lacks patches/0001"):
        probe.drive(FakeRecorder(guest, run), probe.Options())


def test_probe_stops_when_the_kernels_block_size_is_not_the_layouts():
    """The layout was sized for 512 MiB blocks (64K pages), the kernel says 128."""
    run = recorded("recorded-4k-48-probe/probe.json")
    rec = FakeRecorder(ModelGuest.from_phase(run.phases[0]), run, K64)
    with pytest.raises(HarnessError, match="sized for 512 MiB blocks, but the kernel's "
                                           "block_size_bytes is 128 MiB"):
        probe.drive(rec, probe.Options())
    assert names(rec.steps) == ["inspect before"]


def test_probe_a_failed_remove_is_the_kernels():
    run = recorded("recorded-4k-48-probe/probe.json")
    guest = ModelGuest.from_phase(run.phases[0], answers=[
        (rf"^echo 0x80000000 > {MEMROOT}/remove$",
         lambda m: ("", 1, "sh: write error: Device or resource busy"))])
    rec = FakeRecorder(guest, run)
    with pytest.raises(HarnessError) as e:
        probe.drive(rec, probe.Options())
    assert e.value.blame == "kernel" and e.value.step == "remove 0x80000000"
    assert rec.steps[-1] == Step("remove 0x80000000", 0.0, "serial", ok=False)
    assert rec.removals == []


# ------------------------------------------------------------ virtio-mem ----

@pytest.mark.parametrize("name", ["recorded-4k-48-virtio-mem/virtio-mem.json",
                                  "recorded-64k-42/virtio-mem.json"])
def test_virtio_mem_replays_a_recorded_run(name):
    run = recorded(name)
    guest = ModelGuest.from_phase(run.phases[0])
    guest.vmem["addr"] = run.removals[0].pa_start
    rec = FakeRecorder(guest, run)
    virtio_mem.drive(rec, virtio_mem.Options())
    assert names(rec.steps) == names(run.steps) and all(s.ok for s in rec.steps)
    assert names(rec.phases) == names(run.phases)
    assert rec.removals == list(run.removals) and rec.notes == list(run.notes)
    addr = run.removals[0].pa_start
    assert rec.removal_steps == [("shrink to 0", addr, addr + (512 << 20))]
    assert [(c, a.get("value")) for c, a in guest.qmp if c == "qom-set"] == [
        ("qom-set", 512 << 20), ("qom-set", 0)]
    assert rec.backings[-1] == (addr, "/run/fake/vmem0")
    assert rec.console_commands and set(rec.console_commands) == {sysfs.IOMEM_BUILTIN_CMD}


# ------------------------------------------------------------ kselftest -----

@pytest.mark.parametrize("name", ["recorded-4k-48-kselftest.json",
                                  "recorded-64k-42/kselftest.json"])
def test_kselftest_replays_a_recorded_run(name, tmp_path):
    run, result = recorded(name), raw(name)["kselftest"]
    hotplugged = result["hotplugged_blocks"]

    def selftest(m):        # the script offlines and onlines the hot-added blocks
        for i in hotplugged:
            guest.blocks[i].state = "offline"
        return result["output"], result["exit_code"]
    guest = ModelGuest.from_phase(run.phases[0], addrs=dimm_addrs(run), answers=[
        (r"^sh /tmp/mem-on-off-test\.sh -r 100 2>&1$", selftest)])
    script = tmp_path / kselftest.SCRIPT        # SYNTHETIC: the tree's script
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n# synthetic stand-in\n")
    rec = FakeRecorder(guest, run)
    kselftest.drive(rec, kselftest.Options(kernel_tree=str(tmp_path)))
    assert guest.files == {kselftest.GUEST_PATH: "#!/bin/sh\n# synthetic stand-in\n"}
    # since these recordings the script is copied once, before the first cycle
    steps = [n for n in names(run.steps) if n != "copy mem-on-off-test.sh"]
    assert names(rec.steps) == steps[:1] + ["copy mem-on-off-test.sh"] + steps[1:]
    # a failing selftest is judged by the check, not by the drive
    assert all(s.ok for s in rec.steps) and result["exit_code"] == 1
    assert names(rec.phases) == names(run.phases)
    assert rec.removals == list(run.removals)
    assert {k: rec.kselftest[k] for k in result} == result
    assert rec.kselftest["cycles"] == [dict(result, cycle=1)]


# ------------------------------------------------------------ split-leaf ----

DIMM = 0x80000000
LINEAR_16K = 0xffff800000000000     # the recorded 16k-47 guest's linear offset (memstart 0)


def split_leaf_guest(**kw) -> ModelGuest:
    """SYNTHETIC boot memory of a 1 GiB guest (8 boot blocks of 128 MiB, the top
    two movable: movablecore=256M), and QEMU placing the DIMM at 0x80000000 as
    in the recorded 16k-47 run."""
    blocks = {i: Block("online", ("Normal",) if i < 14 else ("Movable",))
              for i in range(8, 16)}
    fill = (r"^dd if=/dev/zero of=/tmp/harness-fill", lambda m: ("384+0 records in\n", 0))
    return ModelGuest(128 << 20, blocks, [(0x40000000, DIMM)], addrs={"dimm1": DIMM},
                      answers=[fill] + kw.pop("answers", []), **kw)


def split_leaf_recorder(guest: ModelGuest) -> FakeRecorder:
    dumps = {phase: ptdump.parse((DATA / f"recorded-16k-47-split-leaf-ptdump-{phase}.txt")
                                 .read_text()) for phase in ("online", "removed-1")}
    return FakeRecorder(guest, None, K16, ptdumps=dumps,
                        geometry={"granule": 16384, "linear_offset": LINEAR_16K})


def test_split_leaf_on_a_kernel_that_removes_the_block():
    guest = split_leaf_guest()
    rec = split_leaf_recorder(guest)
    split_leaf.drive(rec, split_leaf.Options())
    target = DIMM + (128 << 20)
    rest = [DIMM] + [DIMM + i * (128 << 20) for i in range(2, 8)]
    assert names(rec.steps) == [
        "inspect before", "add dimm1", "inspect added", "online dimm1", "inspect online",
        f"offline {target:#x}", f"remove {target:#x}", "inspect removed-1", "touch memory",
        "free memory"] + [n for pa in rest for n in (f"offline {pa:#x}", f"remove {pa:#x}")] \
        + ["inspect removed-2"]
    assert rec.removals == [Removal("removed-1", target, target + (128 << 20), ""),
                            Removal("removed-2", DIMM, DIMM + (1 << 30), "before")]
    assert rec.removal_steps[0] == (f"remove {target:#x}", target, target + (128 << 20))
    assert "lies inside a larger linear-map leaf: PA 0x80000000-0xc0000000 is one 1G " \
           "PMD CON leaf" in rec.notes[0]
    assert "expected-fail" in rec.notes[1]
    assert guest.blocks.keys() == set(range(8, 16))


def test_split_leaf_on_a_kernel_that_refuses_the_removal():
    """SYNTHETIC refusal, worded as patches/fixes/0001 prints it."""
    target = DIMM + (128 << 20)
    line = ("Memory [88000000 90000000] removal refused: it splits the linear map block "
            "[80000000 c0000000]")
    guest = split_leaf_guest(
        answers=[(rf"^echo {target:#x} > {MEMROOT}/remove$",
                  lambda m: ("", 1, "sh: write error: Invalid argument"))],
        console=[(rf"^echo {target:#x} > {MEMROOT}/remove$", [line])])
    rec = split_leaf_recorder(guest)
    split_leaf.drive(rec, split_leaf.Options())
    assert names(rec.steps)[5:] == [
        f"offline {target:#x}", f"remove {target:#x}", "inspect refused-1",
        f"online {target:#x} again", "touch memory", "free memory", "offline dimm1",
        "remove dimm1", "inspect removed-2"]
    assert all(s.ok for s in rec.steps)
    assert rec.removals == [Removal("removed-2", DIMM, DIMM + (1 << 30), "before")]
    assert "refused with EINVAL" in rec.notes[1] and line in rec.notes[1]
    refused = rec.phases[-2]
    assert refused.name == "refused-1" and refused.ptdump is None
    assert states(refused.blocks) == {**{i: "online" for i in range(8, 24)}, 17: "offline"}


def test_split_leaf_stops_when_nothing_would_be_split():
    """The removed-1 dump (the block already gone, the rest in 128M PMD runs) as
    if it were the online one: no leaf reaches beyond a block."""
    guest = split_leaf_guest()
    rec = split_leaf_recorder(guest)
    rec.ptdumps["online"] = ptdump.parse(
        (DATA / "recorded-16k-47-split-leaf-ptdump-online.txt").read_text().replace(
            "0xffff800080000000-0xffff8000c0000000           1G PMD       RW NX SHD AF"
            "    CON BLK", "0xffff800080000000-0xffff8000c0000000           1G PMD       "
            "RW NX SHD AF        BLK"))
    with pytest.raises(HarnessError, match="nothing to split") as e:
        split_leaf.drive(rec, split_leaf.Options())
    assert e.value.blame == "harness"


# ------------------------------------------------------------ race ----------

def race_guest(loop_out: str, reads: str, code: int = 0, unplug: bool = True):
    """SYNTHETIC: the probe flow's boot memory (recorded 4k-48 probe run's
    'before' phase); the loop prints ``loop_out`` and exits ``code`` (having
    removed both blocks if ``unplug``), the load's stop prints ``reads``."""
    run = recorded("recorded-4k-48-probe/probe.json")

    def loop(m):
        for a in (0x80000000, 0x88000000) if unplug else ():
            guest._unplug(a, 128 << 20)
        return loop_out, code
    guest = ModelGuest.from_phase(run.phases[0], answers=[
        (r"^rm -rf /tmp/race; mkdir -p /tmp/race; ", lambda m: ("started\n", 0)),
        (r"^cut -d' ' -f1 /proc/uptime$", lambda m: ("41.50\n", 0)),
        (r"^sh /tmp/race-loop\.sh$", loop),
        (r"^touch /tmp/race/stop; ", lambda m: (reads, 0))])
    return guest


def test_race_drive_runs_the_loop_and_records_the_end_state():
    guest = race_guest("race-iter 1 ok\nrace-iter 2 ok\nrace-iter 3 ok\nrace-done 3 4 2\n",
                       "reads 11 13 wx 5\n")
    rec = FakeRecorder(guest, None)
    race.drive(rec, race.Options(seconds=5, iterations=3))
    assert names(rec.steps) == [
        "inspect before", "probe 0x80000000", "probe 0x88000000", "inspect added",
        "start load", "online 0x80000000", "online 0x88000000", "inspect online",
        "copy the loop", "add/remove loop (3 rounds, 5 s at most)", "stop load",
        "inspect removed-1"]
    assert guest.files[race.LOOP] == race.loop_script(
        [0x80000000, 0x88000000], 128 << 20, 5, "online_movable", 3)
    assert rec.removals == [Removal("removed-1", 0x80000000, 0x90000000, "before")]
    assert rec.removal_steps == []            # the loop is one step, not a removal
    assert rec.notes == ["race: loop started at uptime 41.50 s",
                         "race: 3 add/remove iteration(s) of 2 blocks in 4 s, under 24 "
                         "concurrent page-table dump reads (1 reader), 5 W+X check walks "
                         "(2 readers) and a 64 MiB page-cache write/truncate loop; 2 tasks "
                         "created in the guest meanwhile (kernel threads included: the "
                         "load itself starts none)"]


def test_race_a_loop_the_bound_cut_short_says_so():
    """2 of 30 rounds when the 5 s bound came: the note says the bound, not
    the count, ended it (and a kernel without check_wx_pages; a loop that
    printed no task count says none)."""
    rec = FakeRecorder(race_guest("race-iter 1 ok\nrace-iter 2 ok\nrace-done 2 5\n",
                                  "reads 4 4 wx 0\n"), None)
    race.drive(rec, race.Options(seconds=5))
    assert rec.notes[-1] == (
        "race: 2 add/remove iteration(s) of 2 blocks in 5 s (the 5 s bound came before "
        "30), under 8 concurrent page-table dump reads (1 reader), 0 W+X check walks "
        "(2 readers, no check_wx_pages) and a 64 MiB page-cache write/truncate loop")


def test_race_a_failed_iteration_is_the_kernels():
    guest = race_guest("race-iter 1 ok\nrace-iter 2 FAIL remove 0x88000000\n", "reads 1 1\n",
                       code=1, unplug=False)
    with pytest.raises(HarnessError, match="loop stopped at iteration 2: FAIL remove "
                                           "0x88000000") as e:
        race.drive(FakeRecorder(guest, None), race.Options(seconds=5))
    assert e.value.blame == "kernel"
