"""The Recorder's two parts without QEMU (issue 8 item 4): the step runner
(harness.drive.steps) and the phase collector (harness.drive.phases), each
on its own, and the Recorder facade that wires them.

Everything here is SYNTHETIC: the guest is a small fake answering from a
dict, the page tables are written by tests/test_walker.py's ``Tables`` builder
into a RAM file, and the ptdump, sysfs, meminfo and iomem texts are minimal
ones written for these tests (not recorded from a guest)."""
from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import pytest
from test_walker import Tables, kernel_attrs

from harness.drive.common import Recorder
from harness.drive.phases import RAM_BASE, PhaseCollector
from harness.drive.steps import StepRunner
from harness.errors import HarnessError
from harness.inspect import gdb
from harness.kernel.layout import Geometry as WalkGeometry
from harness.kernel.layout import KernelLayout
from harness.machine.transport import CommandResult
from harness.records import Geometry, OrderRecord, Step

GEO = WalkGeometry(4096, 48, 4)
VA_BASE = 0xffff_0000_0000_0000            # PAGE_OFFSET of 4K pages, 48-bit VA
TEXT = 0xffff_8000_8000_0000               # _text; Kernel code starts at RAM_BASE
MEMSTART_AT = 63 * 4096                    # memstart_addr's offset in the image
BLOCKS = ("block_size_bytes=8000000\nauto_online_blocks=offline\n"
          "memory8 state=online phys_index=00000008 valid_zones=Normal removable=1\n"
          "memory9 state=offline phys_index=00000009 valid_zones=Normal,Movable "
          "removable=1\n")
IOMEM = ("40000000-4fffffff : System RAM\n"
         "  40000000-400fffff : Kernel code\n")
PTDUMP = ("---[ Linear Mapping start ]---\n"
          "0xffff000040000000-0xffff000040400000           4M PMD       RW NX SHD AF"
          "        BLK UXN    MEM/NORMAL\n"
          "---[ Linear Mapping end ]---\n")


class FakeGuest:
    """What the two parts use of a Guest: ``check``/``run`` answered from
    ``answers`` (exact command -> stdout), ``mark``, ``console_line``, the
    transport's name, the output folder and a machine (QMP calls recorded,
    the RAM file, the gdbstub port)."""

    def __init__(self, out_dir: Path, answers: Optional[dict] = None,
                 ram_path: str = "/nonexistent/ram", gdb_port: int = 0):
        self.out_dir = out_dir
        self.answers = dict(answers or {})
        self.commands: list = []
        self.marks: list = []
        self.qmp: list = []
        self.lines = 0
        self.step = "boot"
        self.transport = SimpleNamespace(name="ssh")
        self.machine = SimpleNamespace(
            qmp_cmd=lambda name, **args: self.qmp.append(name) or {},
            spec=SimpleNamespace(ram_path=ram_path, gdb_port=gdb_port))

    def console_line(self) -> int:
        self.lines += 3                  # the marker and two more lines per step
        return self.lines

    def mark(self, name: str) -> None:
        self.marks.append(name)

    def run(self, command: str, deadline: float = 30.0) -> CommandResult:
        self.commands.append((command, deadline))
        if command not in self.answers:
            return CommandResult(command, "", "sh: not answered", 1, 0.0, "ssh")
        return CommandResult(command, self.answers[command], "", 0, 0.0, "ssh")

    def check(self, command: str, deadline: float = 30.0, step: str = "",
              blame: Optional[str] = None) -> str:
        return self.run(command, deadline).check(step or self.step, blame=blame).stdout


def inspect_answers(ptdump_text: str = PTDUMP) -> dict:
    """The guest's answer to a phase's one inspection command (phases.INSPECT_CMD)."""
    from harness.drive import phases
    parts = {"blocks": BLOCKS, "meminfo": "MemTotal: 1000 kB\n", "iomem": IOMEM,
             "ptdump": ptdump_text}
    return {phases.INSPECT_CMD: "".join(f"{phases.SECTION}{name}\n{parts[name]}"
                                        for name, _ in phases.INSPECT_PARTS)}


def art(symbols: Optional[dict] = None) -> SimpleNamespace:
    lay = KernelLayout(GEO, 128, dict(symbols or {}), "" if symbols else "no vmlinux")
    return SimpleNamespace(layout=lay, vmlinux="/nonexistent/vmlinux", kconfig={})


SYMBOLS = {"_text": TEXT, "swapper_pg_dir": TEXT, "memstart_addr": TEXT + MEMSTART_AT}


def ram_file(tmp_path: Path, memstart: Optional[int] = RAM_BASE) -> str:
    """Guest RAM from RAM_BASE: swapper_pg_dir at its start (= _text), 4 MiB of
    the linear map as 2 MiB blocks, memstart_addr at MEMSTART_AT (or not in
    the file when ``memstart`` is None)."""
    t = Tables(GEO)
    assert t.root == RAM_BASE
    t.map_range(VA_BASE + RAM_BASE, RAM_BASE, 4 << 20, "PMD", kernel_attrs(GEO))
    ram = bytearray(t.ram)
    if memstart is None:
        ram = ram[:MEMSTART_AT]          # the symbol lies past the file's end
    else:
        ram[MEMSTART_AT:MEMSTART_AT + 8] = memstart.to_bytes(8, "little")
    path = tmp_path / "ram0"
    path.write_bytes(bytes(ram))
    return str(path)


# ------------------------------------------------------------ StepRunner -----

def test_a_step_is_timed_marked_placed_on_the_console_and_printed(tmp_path):
    lines: list = []
    runner = StepRunner(FakeGuest(tmp_path), art(), progress=lines.append)
    assert runner.step("online 0x80000000", lambda: "done") == "done"
    result = CommandResult("echo hi", "hi\n", "", 0, 0.0, "ssh")
    runner.step("say hi", lambda: result, transport="serial")
    assert [(s.name, s.transport, s.ok, s.detail) for s in runner.steps] == [
        ("online 0x80000000", "ssh", True, "done"), ("say hi", "serial", True, "$ echo hi")]
    assert runner.step_lines == [(3, "online 0x80000000"), (6, "say hi")]
    assert runner.guest.marks == ["online 0x80000000", "say hi"]
    assert lines[0].startswith("  ok  ") and lines[0].endswith("ssh    online 0x80000000")
    assert runner.order == []


def test_a_failing_step_is_recorded_named_and_reraised(tmp_path):
    lines: list = []
    runner = StepRunner(FakeGuest(tmp_path), art(), progress=lines.append)

    def refuse():
        raise HarnessError("write error: Device or resource busy", blame="kernel")
    with pytest.raises(HarnessError) as caught:
        runner.step("offline memory8", refuse)
    assert caught.value.step == "offline memory8"       # the step names the error
    step = runner.steps[-1]
    assert not step.ok and step.detail == "write error: Device or resource busy"
    assert lines[-1].startswith("  ERR ")


def test_record_keeps_a_step_timed_elsewhere_with_its_summary(tmp_path):
    lines: list = []
    runner = StepRunner(FakeGuest(tmp_path), art(), progress=lines.append)
    runner.record(Step("inspect before", 1.5, "ssh"), "2 blocks")
    assert runner.steps == [Step("inspect before", 1.5, "ssh")]
    assert runner.step_lines == []                     # no marker: not a guest step
    assert lines == ["  ok    1.50s ssh    inspect before (2 blocks)"]


def test_sh_passes_the_blame_to_a_failing_command(tmp_path):
    runner = StepRunner(FakeGuest(tmp_path, {"true": "ok\n"}), art())
    assert runner.sh("true") == "ok\n"
    with pytest.raises(HarnessError) as caught:
        runner.sh("echo 1 > /sys/devices/system/memory/probe", blame="kernel")
    assert caught.value.blame == "kernel"


class FakeView:
    """A stand-in for the phase collector (steps.TableView)."""

    def __init__(self, root_pa: Optional[int] = RAM_BASE):
        self.walk_geometry = GEO
        self.root_pa = root_pa
        self.backings = [(RAM_BASE, "/run/ram0")]
        self.geometry = Geometry(granule=4096, page_offset=VA_BASE, vmemmap_start=0x1000,
                                 memstart=RAM_BASE)


@pytest.mark.parametrize("port,tables,why", [
    (0, FakeView(), "QEMU has no gdbstub"),
    (1234, FakeView(root_pa=None), "the kernel's tables could not be located"),
    (1234, None, "the kernel's tables could not be located")])
def test_a_removal_that_cannot_be_watched_says_why_and_still_runs(tmp_path, port,
                                                                     tables, why):
    runner = StepRunner(FakeGuest(tmp_path, gdb_port=port), art(), tables,
                        order_check="on")
    runner.removal_step("remove 0x80000000", 0x8000_0000, 0x8800_0000, lambda: None)
    assert runner.order == [OrderRecord("remove 0x80000000", 0x8000_0000, 0x8800_0000,
                                        False, (), {}, f"not watched: {why}")]
    assert [s.name for s in runner.steps] == ["remove 0x80000000"]


def test_a_removal_with_the_order_checks_off_is_a_plain_step(tmp_path):
    runner = StepRunner(FakeGuest(tmp_path, gdb_port=1234), art(), FakeView())
    runner.removal_step("remove 0x80000000", 0x8000_0000, 0x8800_0000, lambda: None)
    assert runner.order == [] and len(runner.steps) == 1


class FakeSession:
    def __init__(self, kinds):
        self.events = [SimpleNamespace(to_dict=lambda k=k: {"kind": k}) for k in kinds]
        self.stats = {"attached_s": 0.25}


def fake_gdb(monkeypatch, kinds) -> list:
    """gdb.GdbSpec.for_removal and gdb.attach replaced: the specs asked for are
    returned (their keyword arguments), each session stops with ``kinds``."""
    specs: list = []
    monkeypatch.setattr(gdb.GdbSpec, "for_removal",
                        classmethod(lambda cls, vmlinux, **kw: specs.append(kw) or kw))

    @contextlib.contextmanager
    def attach(spec, progress=None, watch=None):
        yield FakeSession(kinds)
    monkeypatch.setattr(gdb, "attach", attach)
    return specs


def test_a_watched_removal_reads_the_collectors_view_and_records_the_stops(
        tmp_path, monkeypatch):
    specs = fake_gdb(monkeypatch, ["free_pages", "clear", "tlbi", "clear"])
    lines: list = []
    tables = FakeView()
    runner = StepRunner(FakeGuest(tmp_path, gdb_port=1234), art(), tables,
                        progress=lines.append, order_check="on")
    for _ in range(2):          # --cycles repeats the step's name
        runner.removal_step("remove 0x80000000", 0x8000_0000, 0x8800_0000, lambda: None)
    first = specs[0]
    assert first["backings"] is tables.backings and first["geometry"] == GEO
    assert first["root_pa"] == RAM_BASE and first["vmemmap_start"] == 0x1000
    assert first["memstart"] == RAM_BASE and first["page_offset"] == VA_BASE
    assert first["flush_check"] and first["port"] == 1234
    assert [s["occurrence"] for s in specs] == [1, 2]
    record = runner.order[0]
    assert record.flush_check and record.error == "" and record.stats == {"attached_s": 0.25}
    assert [e["kind"] for e in record.events] == ["free_pages", "clear", "tlbi", "clear"]
    assert "  gdb    0.25s gdb    remove 0x80000000: 2 clear, 1 free_pages, 1 tlbi " \
           "(flush order watched)" in lines


def test_on_and_full_both_follow_every_removal_in_full(tmp_path, monkeypatch):
    """No sampling: every removal of every cycle is followed (issue: a check
    that looked at part of what happened is not a PASS)."""
    specs = fake_gdb(monkeypatch, ["clear"] * 64)
    for check, flushes in (("on", [True, True, True]), ("full", [True, True, True]),
                           ("sampled", [True, False, False])):
        specs.clear()
        runner = StepRunner(FakeGuest(tmp_path, gdb_port=1234), art(), FakeView(),
                            order_check=check)
        for i in range(3):
            runner.removal_step(f"remove {i}", 0, 1, lambda: None)
        assert [s["flush_check"] for s in specs] == flushes
        assert [r.flush_check for r in runner.order] == flushes


def test_a_gdb_failure_is_kept_in_the_order_record(tmp_path, monkeypatch):
    fake_gdb(monkeypatch, [])

    @contextlib.contextmanager
    def attach(spec, progress=None, watch=None):
        raise gdb.GdbError("gdb exited with code 1")
        yield
    monkeypatch.setattr(gdb, "attach", attach)
    runner = StepRunner(FakeGuest(tmp_path, gdb_port=1234), art(), FakeView(),
                        order_check="on")
    with pytest.raises(gdb.GdbError):
        runner.removal_step("remove 0x80000000", 0, 1, lambda: None)
    assert "gdb exited with code 1" in runner.order[0].error


# ------------------------------------------------------------ PhaseCollector -

def test_a_phase_without_the_walker_learns_ptdumps_geometry_and_notes_why(tmp_path):
    recorded: list = []
    guest = FakeGuest(tmp_path, inspect_answers())
    phases = PhaseCollector(guest, art(), record=lambda s, summary: recorded.append(
        (s, summary)))
    phase = phases.phase("before", note="first")
    assert phase.name == "before" and phase.note == "first" and phase.walks == ()
    assert phase.blocks.indices == (8, 9) and phase.meminfo == {"MemTotal": 1000}
    assert phase.system_ram == ((0x4000_0000, 0x5000_0000),)
    assert (tmp_path / "ptdump-before.txt").read_text() == PTDUMP
    assert phases.geometry.granule == 4096 and phases.geometry.page_offset == 0xffff_0000_4000_0000
    assert phases.geometry.linear_offset is None and phases.geometry.struct_page_size == 64
    assert not phases.walk and phases.root_pa is None and phases.walk_geometry == GEO
    assert phases.notes[0].startswith("host-side walker disabled")
    assert guest.qmp == []                      # never paused
    step, summary = recorded[0]
    assert step.name == "inspect before" and step.transport == "ssh" and step.ok
    assert summary == "2 blocks, MemTotal 1000 kB"
    assert phases.phases == [phase]
    assert phases.backings == [(RAM_BASE, "/nonexistent/ram")]


def test_a_phase_walks_the_tables_with_the_guest_paused(tmp_path):
    recorded: list = []
    guest = FakeGuest(tmp_path, inspect_answers(), ram_path=ram_file(tmp_path))
    phases = PhaseCollector(guest, art(SYMBOLS), record=lambda s, summary: recorded.append(
        summary))
    phase = phases.phase("before")
    assert guest.qmp == ["stop", "cont"]
    (walk,) = phase.walks
    assert walk.region == "Linear Mapping" and len(walk.leaves) == 1
    assert (walk.leaves[0].va_start, walk.leaves[0].pa) == (VA_BASE + RAM_BASE, RAM_BASE)
    assert phases.root_pa == RAM_BASE and phases.notes == []
    # memstart_addr read from guest RAM; the walk agrees with it (no note)
    assert phases.geometry.memstart == RAM_BASE and phases.geometry.linear_offset == VA_BASE
    assert ", walker " in recorded[0]
    phases.phase("after")                      # learned once, walked again
    assert guest.qmp == ["stop", "cont"] * 2 and len(phases.phases) == 2


def test_the_walk_gives_the_linear_offset_when_memstart_is_unreadable(tmp_path):
    guest = FakeGuest(tmp_path, inspect_answers(), ram_path=ram_file(tmp_path, None))
    phases = PhaseCollector(guest, art(SYMBOLS))      # no record callback: kept nowhere
    phases.phase("before")
    assert phases.notes[0].startswith("memstart_addr unreadable at PA 0x4003f000")
    assert phases.geometry.linear_offset == VA_BASE and phases.geometry.memstart == RAM_BASE


def test_a_memstart_the_walk_contradicts_is_noted_once(tmp_path):
    guest = FakeGuest(tmp_path, inspect_answers(), ram_path=ram_file(tmp_path, 0))
    phases = PhaseCollector(guest, art(SYMBOLS))
    phases.phase("before")
    phases.phase("after")
    assert phases.geometry.linear_offset == VA_BASE + RAM_BASE     # memstart_addr's word
    assert len(phases.notes) == 1 and "differs from the walker's first leaf" in phases.notes[0]


def test_a_leak_phase_says_when_page_owner_is_off(tmp_path):
    from harness.inspect import leakcheck
    answers = inspect_answers()
    answers[leakcheck._READ] = "NO-PAGE-OWNER\n"
    phases = PhaseCollector(FakeGuest(tmp_path, answers), art())
    assert phases.phase("before", leak=True).page_owner == {
        "unavailable": leakcheck.NOT_ENABLED}


# ------------------------------------------------------------ Recorder -------

def test_the_recorder_wires_the_parts_and_keeps_its_attributes(tmp_path):
    lines: list = []
    guest = FakeGuest(tmp_path, inspect_answers())
    rec = Recorder(guest, art(), walk=False, progress=lines.append, order_check="on")
    assert rec.runner.tables is rec.collector and rec.order_check == "on"
    rec.step("probe 0x80000000", lambda: None)
    rec.phase("before")
    rec.removal_step("remove 0x80000000", 0x8000_0000, 0x8800_0000, lambda: None)
    rec.removed("before", 0x8000_0000, 0x8800_0000)
    # the inspection went through the runner: in order with the steps
    assert [s.name for s in rec.steps] == ["probe 0x80000000", "inspect before",
                                           "remove 0x80000000"]
    assert rec.steps is rec.runner.steps and rec.phases is rec.collector.phases
    assert rec.step_lines == [(3, "probe 0x80000000"), (6, "remove 0x80000000")]
    assert rec.order[0].error == "not watched: QEMU has no gdbstub"
    assert lines[1].endswith("inspect before (2 blocks, MemTotal 1000 kB)")
    assert rec.removals[0].phase == "before" and rec.bootmem is None and rec.kselftest is None
    # assigned through the facade, kept by the part (runner._method_run reads it back)
    rec.geometry = Geometry(granule=16384)
    assert rec.collector.geometry.granule == 16384
    rec.notes.append("race: loop started")
    rec.backings.append((0x1_0000_0000, "/run/dimm1"))
    assert rec.collector.notes[-1] == "race: loop started"
    assert rec.collector.backings[-1] == (0x1_0000_0000, "/run/dimm1")
    assert rec.walk is False and rec.progress == lines.append


def test_one_inspection_command_split_byte_for_byte():
    """A phase reads blocks, meminfo, iomem and the ptdump in one round trip;
    each part comes back exactly as the guest printed it."""
    from harness.drive import phases
    answer = inspect_answers("---[ Linear Mapping start ]---\nx\n")[phases.INSPECT_CMD]
    got = phases.split_sections(answer)
    assert got == {"blocks": BLOCKS, "meminfo": "MemTotal: 1000 kB\n", "iomem": IOMEM,
                   "ptdump": "---[ Linear Mapping start ]---\nx\n"}
    assert phases.INSPECT_CMD.count(" && ") == 7 and "cat /proc/iomem" in phases.INSPECT_CMD
    with pytest.raises(HarnessError, match="no iomem, ptdump section"):
        phases.split_sections(answer.split(phases.SECTION + "iomem")[0])


class _QmpOnly:
    def __init__(self, state, fail=False):
        self.state, self.fail, self.sent = state, fail, []

    def qmp_cmd(self, name, **args):
        self.sent.append(name)
        if self.fail:
            raise OSError("QMP gone")
        if name == "cont":
            self.state = "running"
            return {}
        return {"status": self.state, "running": self.state == "running"}


def test_a_guest_left_stopped_after_gdb_is_resumed_and_said():
    from harness.drive.steps import _resume_if_stopped
    m = _QmpOnly("debug")
    assert _resume_if_stopped(m) == "debug" and m.sent == ["query-status", "cont"]
    m = _QmpOnly("running")
    assert _resume_if_stopped(m) == "" and m.sent == ["query-status"]
    assert _resume_if_stopped(_QmpOnly("debug", fail=True)) == ""
