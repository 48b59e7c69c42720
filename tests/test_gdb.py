"""harness.inspect.gdb: the command line, the tlbi scan, the driver's life cycle (with a
stand-in gdb), and the real thing against a real guest (``qemu`` mark)."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness.inspect import a64, gdb, gdb_agent, order
from harness.machine.qemu import VmSpec, qemu_argv

ROOT = Path(__file__).resolve().parent.parent


def _spec(tmp_path, **kw):
    base = dict(vmlinux="/k/vmlinux", port=1234, out_dir=str(tmp_path), step="remove 0x80000000",
                pa_start=0x80000000, pa_end=0x88000000,
                backings=((0x40000000, "/dev/shm/x/ram0"),), geometry=(4096, 48, 4, 48),
                root_pa=0x41fa0000, tlbi_sites=((0xffff800080010000, "vaae1is", 1),),
                vmemmap_start=0xfffffdffc0000000)
    base.update(kw)
    return gdb.GdbSpec(**base)


def test_argv_is_a_pure_function_of_the_spec(tmp_path):
    spec = _spec(tmp_path, gdb=gdb.GDB)
    argv = gdb.gdb_argv(spec)
    assert argv == gdb.gdb_argv(_spec(tmp_path, gdb=gdb.GDB))
    assert argv[:4] == ["gdb-multiarch", "-q", "-nx", "-batch"] and argv[-1] == "/k/vmlinux"
    assert any(spec.config_path in a and "agent_main" in a for a in argv)
    assert not Path(spec.config_path).exists()          # no I/O
    # the default client: no gdb, this Python running harness.inspect.rsp_gdb
    rsp = gdb.gdb_argv(_spec(tmp_path))
    assert rsp[0] == sys.executable and rsp[-1] == spec.config_path
    assert "rsp_gdb.main" in rsp[2]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.port = 1                                    # frozen


def test_vmspec_gdb_port(tmp_path):
    base = VmSpec(kernel="/k/Image", initrd="/k/initrd", run_dir=str(tmp_path), mode="dt")
    assert "-gdb" not in qemu_argv(base)
    from dataclasses import replace
    argv = qemu_argv(replace(base, gdb_port=4567))
    i = argv.index("-gdb")
    assert argv[i + 1] == "tcp:127.0.0.1:4567"


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-as") is None, reason="no cross as")
def test_scan_sites_finds_aligned_tlbi_and_their_completing_dsb(tmp_path):
    src = tmp_path / "t.s"
    src.write_text(".text\nnop\ntlbi vaae1is, x3\n.word 0x12d50883\ntlbi vmalle1is\n"
                   "dsb ishst\ndsb ish\nisb\ntlbi vaale1is, x2\nret\ndsb sy\n"
                   ".data\n.word 0xd5088362\n")
    obj = tmp_path / "t.o"
    subprocess.run(["aarch64-linux-gnu-as", str(src), "-o", str(obj)], check=True)
    sites = a64.scan_sites(obj.read_bytes())
    # the first two reach the dsb ish at 20 (the dsb ishst does not complete a
    # tlbi); the last one's straight line ends at ret, before the dsb sy
    assert sites["tlbi"] == [[4, "vaae1is", 3, True, 20, "ish", True, None],
                             [12, "vmalle1is", 31, True, 20, "ish", True, None],
                             [28, "vaale1is", 2, False, None, None, False, None]]
    assert sites["dsb"] == [[16, "ishst"], [20, "ish"], [36, "sy"]]


# ---------------------------------------------------------------- driver life cycle

FAKE = r'''#!{python}
import json, os, re, signal, sys, time
cfg = re.search(r"agent_main\('([^']+)'\)", " ".join(sys.argv)).group(1)
spec = json.load(open(cfg))
ev = open(os.path.join(spec["out_dir"], "gdb-%s.events.jsonl" % spec["tag"]), "a", buffering=1)
mode = os.environ["FAKE_GDB"]
open(os.path.join(spec["out_dir"], "fake.pid"), "w").write(str(os.getpid()))
if mode == "die":
    sys.stderr.write("Remote connection closed\nsome gdb complaint\n"); sys.exit(1)
if mode == "error":
    ev.write(json.dumps({{"kind": "error", "message": "RuntimeError: no swapper"}}) + "\n")
    time.sleep(30); sys.exit(3)
def done(*a):
    ev.write(json.dumps({{"kind": "stopping"}}) + "\n")
    ev.write(json.dumps({{"kind": "free", "seq": 1, "step": spec["step"], "fn": "free_pages",
        "arg": "0x0", "pa": "0x80000000", "order": 0, "lr": "0x0", "caller": "x"}}) + "\n")
    ev.write(json.dumps({{"kind": "detached", "stats": {{"stops": 1}}}}) + "\n")
    sys.exit(0)
slow = {{"sigints": 0, "since": None}}
def slow_stop(*a):
    # a target that takes 1.5 s to stop; a second SIGINT meanwhile makes real
    # gdb give up on it ("Disconnected from target.")
    slow["sigints"] += 1
    if slow["sigints"] > 1:
        ev.write(json.dumps({{"kind": "stopping"}}) + "\n")
        ev.write(json.dumps({{"kind": "disconnected", "message": "error: Disconnected from target.",
                             "stats": {{"stops": 1}}}}) + "\n")
        sys.exit(0)
    slow["since"] = time.monotonic()
if mode == "ok":
    signal.signal(signal.SIGINT, done)
elif mode == "slowstop":
    signal.signal(signal.SIGINT, slow_stop)
else:
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # "stuck": only SIGKILL ends it
ev.write(json.dumps({{"kind": "ready"}}) + "\n")
while True:
    time.sleep(0.1)
    if slow["since"] is not None and time.monotonic() - slow["since"] > 1.5:
        done()
'''


@pytest.fixture
def fake_gdb(tmp_path, monkeypatch):
    path = tmp_path / "fake-gdb"
    path.write_text(FAKE.format(python=sys.executable))
    path.chmod(0o755)
    return str(path)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    st = Path(f"/proc/{pid}/stat").read_text().split()
    return st[2] != "Z"


def test_attach_detach_collects_events(tmp_path, fake_gdb, monkeypatch):
    monkeypatch.setenv("FAKE_GDB", "ok")
    lines = []
    with gdb.attach(_spec(tmp_path, gdb=fake_gdb), progress=lines.append) as s:
        pid = s.proc.pid
    assert lines[0].startswith("$ " + fake_gdb)
    assert [type(e) for e in s.events] == [order.Free]
    assert s.stats["stops"] == 1 and "attach_s" in s.stats
    assert not _alive(pid)


def test_gdb_is_killed_by_pid_when_the_step_fails(tmp_path, fake_gdb, monkeypatch):
    monkeypatch.setenv("FAKE_GDB", "ok")
    with pytest.raises(RuntimeError):
        with gdb.attach(_spec(tmp_path, gdb=fake_gdb), progress=lambda l: None) as s:
            raise RuntimeError("the removal step failed")
    assert not _alive(s.proc.pid)


def test_gdb_that_will_not_detach_is_killed(tmp_path, fake_gdb, monkeypatch):
    monkeypatch.setenv("FAKE_GDB", "stuck")
    monkeypatch.setattr(gdb, "DETACH_TIMEOUT_S", 1.5)
    with pytest.raises(gdb.GdbError, match="did not detach"):
        with gdb.attach(_spec(tmp_path, gdb=fake_gdb), progress=lambda l: None) as s:
            pass
    assert not _alive(s.proc.pid)


def test_gdb_that_dies_reports_its_stderr_tail(tmp_path, fake_gdb, monkeypatch):
    monkeypatch.setenv("FAKE_GDB", "die")
    with pytest.raises(gdb.GdbError) as e:
        with gdb.attach(_spec(tmp_path, gdb=fake_gdb), progress=lambda l: None):
            pass
    assert "exited with code 1" in e.value.message
    assert "some gdb complaint" in e.value.evidence and fake_gdb in e.value.evidence


def test_agent_error_is_reported(tmp_path, fake_gdb, monkeypatch):
    monkeypatch.setenv("FAKE_GDB", "error")
    with pytest.raises(gdb.GdbError) as e:
        with gdb.attach(_spec(tmp_path, gdb=fake_gdb), progress=lambda l: None):
            pass
    assert "no swapper" in e.value.evidence
    if "while recording" in e.value.message:     # the cause is in the message too
        assert "no swapper" in e.value.message
    assert not _alive(int((tmp_path / "fake.pid").read_text()))


def test_missing_gdb_names_the_package(tmp_path):
    with pytest.raises(Exception) as e:
        with gdb.attach(_spec(tmp_path, gdb="no-such-gdb-xyz"), progress=lambda l: None):
            pass
    assert "gdb-multiarch" in str(e.value)


# ---------------------------------------------------------------- a real guest

@pytest.mark.kernel
@pytest.mark.qemu
def test_real_guest_removal_with_gdb(tmp_path):
    """DT boot, probe/online/offline 0x80000000, attach, remove, detach: the
    breakpoints hit, registers are read, both checks pass, the guest runs on."""
    if shutil.which("gdb-multiarch") is None:
        pytest.skip("gdb-multiarch not installed")
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_order

    from harness.kernel import kernel as build
    art = build.build(build.BuildRequest())
    res = bench_order.one_run(art, rodata_full=False, use_gdb=True, flush_check=True,
                              out=tmp_path, say=lambda l: None)
    lines = res["lines"]
    head = next(d for d in lines if d["kind"] == "header")
    assert int(head["memstart"], 16) == 0x40000000           # read from the guest
    frees = [d for d in lines if d["kind"] == "free"]
    assert frees and all(int(d["lr"], 16) >> 48 == 0xffff for d in frees)   # registers
    assert any(d["order"] == 9 and "free_hotplug_page_range" in d["caller"]
               for d in frees)                              # the 2 MiB vmemmap block
    assert any(d["was_table"] for d in frees)               # the PMD table
    assert res["checks"]["no-table-freed-while-linked"]["verdict"] == "PASS"
    assert res["checks"]["tlb-flushed-before-free"]["verdict"] == "PASS"
    assert res["after_detach_status"] == "running"
    assert res["after_detach_uname"] == art.kernel_release
    assert res["stats"]["struct_page_size"] == 64


@pytest.mark.kernel
@pytest.mark.qemu
@pytest.mark.xfail(reason="measured: after gdb is SIGKILLed while attached, the guest "
                   "stays stopped even after the driver's remote-protocol D; the "
                   "graceful detach (used on every exception path) is what works",
                   strict=False)
def test_real_guest_survives_a_killed_gdb(tmp_path):
    """gdb killed outright while attached (breakpoints inserted): QEMU keeps
    them and the guest would hang at the next hit; the driver detaches the
    gdbstub itself (remote-protocol D) and the guest keeps running."""
    if shutil.which("gdb-multiarch") is None:
        pytest.skip("gdb-multiarch not installed")
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_order

    from harness.kernel import kernel as build
    from harness.machine.qemu import RAM_BASE, free_port
    from harness.session import BootOptions, boot
    art = build.build(build.BuildRequest())
    port = free_port()
    opts = BootOptions(mode="dt", mem_mb=2048, cmdline=("mem=1024M",),
                       devices=("-gdb", f"tcp:127.0.0.1:{port}"))
    with boot(art, opts, tmp_path, progress=False) as guest:
        geo, root, vmemmap = bench_order.removal_context(guest, art)
        spec = gdb.GdbSpec.for_removal(
            art.vmlinux, port=port, out_dir=tmp_path, step="kill test",
            pa_start=0x80000000, pa_end=0x88000000,
            backings=[(RAM_BASE, guest.machine.spec.ram_path)], geometry=geo,
            root_pa=root, vmemmap_start=vmemmap)
        with pytest.raises(gdb.GdbError, match="before detaching"):
            with gdb.attach(spec, progress=lambda l: None) as s:
                os.kill(s.proc.pid, signal.SIGKILL)
                s.proc.wait(timeout=10)
        for _ in range(3):            # frees happen: breakpoints must be gone
            assert guest.check("uname -r", 20).strip() == art.kernel_release
        assert guest.machine.qmp_cmd("query-status")["status"] == "running"
        assert s.stats["rescue_detach"] is True


# ------------------------------------------------------------------ the agent's
# root-table writes: swapper_pg_dir is written through a fixmap alias, so the
# agent observes set_swapper_pgd(pgdp, pgd) instead of a watchpoint hit

class _FakeBp:
    count = 100

    def __init__(self, spec, **kw):
        _FakeBp.count += 1
        self.number, self.spec, self.enabled = _FakeBp.count, spec, True
        self.deleted = False

    def delete(self):
        self.deleted = True


def _agent(monkeypatch, regs: dict, mem: dict):
    import io
    import types

    fake = types.SimpleNamespace(Breakpoint=_FakeBp, BP_WATCHPOINT=6, WP_WRITE=1,
                                 BP_HARDWARE_WATCHPOINT=7, error=RuntimeError)
    monkeypatch.setitem(sys.modules, "gdb", fake)
    spec = {"step": "remove 0xc0000000", "geometry": [65536, 42, 2, 48]}
    agent = gdb_agent.Agent(spec, io.StringIO())
    agent.reg = lambda name: regs[name]
    agent.sym_addr = lambda name: {"set_swapper_pgd": 0xffff800080123000}[name]
    agent.symbolise = lambda addr: f"sym@{addr:#x}"
    agent.mem = types.SimpleNamespace(read=lambda pa, n: mem[pa].to_bytes(8, "little"))
    link = order.Link(table_pa=0x5fae0000, entry_pa=0x41230008, va=0xfffffc0040000000,
                      span=1 << 29, level="PGD")
    watch = order.Watch(1, spec["step"], link, entry_va=0xffff800081230008)
    wp = _FakeBp("*(unsigned long *)0xffff800081230008")
    agent.watches[wp.number] = (watch, wp, 0x5fae0003)
    agent.bps.append(wp)
    agent.watch_root_writes()
    return agent, wp


def test_agent_sees_a_root_entry_cleared_through_set_swapper_pgd(monkeypatch):
    regs = {"x0": 0xffff800081230008, "x1": 0, "lr": 0xffff800080456789}
    agent, wp = _agent(monkeypatch, regs, {})
    assert agent.roles[agent.swapper_bp.number] == "set_swapper_pgd"
    agent.handle([agent.swapper_bp.number])
    clears = [json.loads(line) for line in agent.out.getvalue().splitlines()
              if json.loads(line).get("kind") == "clear"]
    assert len(clears) == 1 and clears[0]["pc_sym"] == "sym@0xffff800080456789"
    assert agent.pending and ("table", 0x5fae0000) in agent.pending and wp.deleted
    assert agent.counts["clear"] == 1


def test_agent_ignores_a_root_write_that_keeps_the_table(monkeypatch):
    regs = {"x0": 0xffff800081230008, "x1": 0x5fae0003, "lr": 0}
    agent, wp = _agent(monkeypatch, regs, {})
    agent.handle([agent.swapper_bp.number])
    assert agent.counts == dict(agent.counts, clear=0, watch_other=1)
    assert not wp.deleted and not agent.pending


def test_agent_counts_a_root_write_to_an_unwatched_entry_as_other(monkeypatch):
    regs = {"x0": 0xffff800081230010, "x1": 0, "lr": 0}
    agent, _wp = _agent(monkeypatch, regs, {})
    agent.handle([agent.swapper_bp.number])
    assert agent.counts["other"] == 1 and agent.counts["clear"] == 0


def test_a_repeated_step_gets_its_own_gdb_files(tmp_path):
    def spec(n):
        return gdb.GdbSpec.for_removal("vmlinux", port=1234, out_dir=tmp_path,
                                       step="remove 0x80000000", pa_start=0, pa_end=1,
                                       backings=(), geometry=(4096, 48, 4, 48), root_pa=0,
                                       flush_check=False, occurrence=n)
    assert spec(1).tag == "order-remove-0x80000000"
    assert spec(2).events_path.endswith("gdb-order-remove-0x80000000-2.events.jsonl")


# ------------------------------------------------------------------ late watch
# stops: QEMU (MTTCG, -smp 2) once reported a watchpoint five instructions after
# the store, past the tlbi (false-alarm bench, virtio-mem "shrink to 0", cycle 2;
# kept run folder: events gdb-order-shrink-to-0-2.events.jsonl, clear at
# free_empty_tables+0x3b4). The words below are free_empty_tables+0x39c..+0x3b4
# of that kernel (aarch64-linux-gnu-objdump -d vmlinux).

FET = 0xffff800080020c0c                       # free_empty_tables in that vmlinux
INCIDENT = [0xd34cfc80,   # +0x398 lsr x0, x4, #12
            0xf900039f,   # +0x39c str xzr, [x28]        <- the clear
            0xa90633eb,   # +0x3a0 stp x11, x12, [sp, #96]
            0xd5033a9f,   # +0x3a4 dsb ishst
            0x9240ac00,   # +0x3a8 and x0, x0, #0xfffffffffff
            0xd5088360,   # +0x3ac tlbi vaae1is, x0
            0xd5033b9f]   # +0x3b0 dsb ish               (stop reported at +0x3b4)
ENTRY_VA = 0xffff00003ffff008
SP = 0xffff800082f3bd00


def _regs(changed=None):
    regs = {28: ENTRY_VA, 31: SP, 0: 0xff000040000}
    regs.update(changed or {})
    return lambda n: regs[n]


def test_store_range_decodes_general_purpose_stores():
    r = {1: 0, 2: 0x1000, 3: 0x10, 28: ENTRY_VA, 31: SP}
    reg = r.__getitem__
    # words assembled by aarch64-linux-gnu-as
    assert a64.store_range(0xf900039f, reg) == (ENTRY_VA, 8)          # str xzr, [x28]
    assert a64.store_range(0xa90633eb, reg) == (SP + 96, 16)          # stp x11,x12,[sp,#96]
    assert a64.store_range(0xf81f8041, reg) == (0x1000 - 8, 8)        # stur x1,[x2,#-8]
    assert a64.store_range(0xf8010c41, reg) == (0x1000, 8)           # str x1,[x2,#16]!
    assert a64.store_range(0xf8010441, reg) == (0x1000 - 16, 8)       # str x1,[x2],#16 (x2 updated)
    assert a64.store_range(0xf8237841, reg) == (0x1000 + (0x10 << 3), 8)  # str x1,[x2,x3,lsl #3]
    assert a64.store_range(0xb9000441, reg) == (0x1004, 4)            # str w1,[x2,#4]
    assert a64.store_range(0xa9bf0861, reg) == (0x10, 16)              # stp x1,x2,[x3,#-16]!
    for word in (0xf9400041, 0xd5033b9f, 0xb4000000):                # ldr, dsb, cbz
        assert a64.store_range(word, reg) is None
    assert a64.is_branch(0xb4000000) and a64.is_branch(0x14000000) and a64.is_branch(0xd65f03c0)
    assert not a64.is_branch(0xd5088360)
    assert all(a64.is_barrier_or_hint(w) for w in (0xd5033b9f, 0xd5033fdf, 0xd503201f,
                                                   0xd5033a9f))
    assert not a64.is_barrier_or_hint(0x9240ac00)


def test_store_effect_says_what_a_store_is_about_to_write():
    """Before the store runs (QEMU's watch stop): address, bytes, write-back.
    The same words as store_range's, assembled by aarch64-linux-gnu-as."""
    r = {1: 0x1122334455667788, 2: 0x1000, 3: 0x10, 11: 0xB, 12: 0xC, 28: ENTRY_VA, 31: SP}
    reg = r.__getitem__
    x1 = (0x1122334455667788).to_bytes(8, "little")
    assert a64.store_effect(0xf900039f, reg) == (ENTRY_VA, bytes(8), None)   # str xzr,[x28]
    assert a64.store_effect(0xa90633eb, reg) == (
        SP + 96, (0xB).to_bytes(8, "little") + (0xC).to_bytes(8, "little"), None)
    assert a64.store_effect(0xf81f8041, reg) == (0x1000 - 8, x1, None)      # stur x1,[x2,#-8]
    assert a64.store_effect(0xf8010c41, reg) == (0x1010, x1, (2, 0x1010))   # str x1,[x2,#16]!
    assert a64.store_effect(0xf8010441, reg) == (0x1000, x1, (2, 0x1010))   # str x1,[x2],#16
    assert a64.store_effect(0xf8237841, reg) == (0x1000 + (0x10 << 3), x1, None)
    assert a64.store_effect(0xb9000441, reg) == (0x1004, x1[:4], None)      # str w1,[x2,#4]
    assert a64.store_effect(0xa9bf0861, reg) == (                           # stp x1,x2,[x3,#-16]!
        0x0, x1 + (0x1000).to_bytes(8, "little"), (3, 0x0))
    for word in (0xf9400041, 0xd5033b9f, 0xb4000000, 0xf8e18041):     # ldr, dsb, cbz, swpal
        assert a64.store_effect(word, reg) is None


def test_late_window_finds_the_store_and_the_tlbi_that_ran_before_the_stop():
    base, pc = FET + 0x398, FET + 0x3b4
    sites = [(FET + 0x3ac, "vaae1is", 0), (FET + 0x500, "vale1is", 1)]
    store, tlbis, why = a64.late_window(INCIDENT, base, pc, ENTRY_VA, _regs(), sites)
    assert store == FET + 0x39c and tlbis == [(FET + 0x3ac, "vaae1is", 0)] and why == ""
    # a precise stop (right after the store): nothing ran in between
    store, tlbis, why = a64.late_window(INCIDENT[:2], base, FET + 0x3a0, ENTRY_VA,
                                        _regs(), sites)
    assert (store, tlbis, why) == (FET + 0x39c, [], "")


def test_late_window_says_what_it_cannot_establish():
    base, pc, sites = FET + 0x398, FET + 0x3b4, [(FET + 0x3ac, "vaae1is", 0)]
    # x28 rewritten since: the store is not found
    store, _t, why = a64.late_window(INCIDENT, base, pc, ENTRY_VA, _regs({28: 0}), sites)
    assert store is None and "no store to 0xffff00003ffff008" in why
    # a branch between the store and the stop
    words = INCIDENT[:4] + [0x14000000] + INCIDENT[5:]
    assert "branch" in a64.late_window(words, base, pc, ENTRY_VA, _regs(), sites)[2]
    # the tlbi's operand register may have changed after it ran
    words = INCIDENT + [0x9240ac00]                 # and x0, ... after the tlbi
    why = a64.late_window(words, base, pc + 4, ENTRY_VA, _regs(), sites)[2]
    assert "operand x0 may have changed" in why


class _Inferior:
    def __init__(self, base: int, words: list):
        self.base, self.data = base, b"".join(w.to_bytes(4, "little") for w in words)

    def read_memory(self, addr: int, n: int):
        off = addr - self.base
        return b"\0" * max(0, -off) + self.data[max(0, off):max(0, off) + n - max(0, -off)]


def _watching_agent(monkeypatch, stop_pc: int, words: list, regs: dict):
    import io
    import types
    base = stop_pc - 4 * a64.LATE_SCAN_INSNS
    pad = (FET + 0x398 - base) // 4
    inferior = _Inferior(base, [0xd503201f] * pad + words)
    fake = types.SimpleNamespace(Breakpoint=_FakeBp, BP_WATCHPOINT=6, WP_WRITE=1,
                                 BP_HARDWARE_WATCHPOINT=7, error=RuntimeError,
                                 selected_inferior=lambda: inferior)
    monkeypatch.setitem(sys.modules, "gdb", fake)
    spec = {"step": "shrink to 0", "geometry": [4096, 48, 4, 48]}
    agent = gdb_agent.Agent(spec, io.StringIO())
    agent.reg = lambda name: regs[name]
    agent.symbolise = lambda addr: f"free_empty_tables+{addr - FET:#x}"
    agent.mem = types.SimpleNamespace(read=lambda pa, n: (0).to_bytes(8, "little"))
    link = order.Link(table_pa=0x4422c000, entry_pa=0x7ffff008, va=0xffff000040000000,
                      span=1 << 30, level="PUD")
    watch = order.Watch(1, spec["step"], link, entry_va=ENTRY_VA)
    wp = _FakeBp(f"*(unsigned long *){ENTRY_VA:#x}")
    agent.watches[wp.number] = (watch, wp, 0x180000004422c003)
    agent.bps.append(wp)
    tlbi = _FakeBp(f"*{FET + 0x3ac:#x}")
    agent.tlbi_bps[tlbi.number] = (FET + 0x3ac, "vaae1is", 0, None, False)
    agent.bps.append(tlbi)
    return agent, wp, watch


def _events(agent):
    return order.events_from_lines(agent.out.getvalue().splitlines())


def test_agent_accounts_for_a_late_watch_stop(monkeypatch):
    """The incident replayed: the clear is dated at the store and the tlbi that
    ran before the stop is recorded, so the flush check passes (it FAILed)."""
    regs = {"pc": FET + 0x3b4, "x28": ENTRY_VA, "sp": SP, "x0": 0xff000040000}
    agent, wp, watch = _watching_agent(monkeypatch, FET + 0x3b4, INCIDENT, regs)
    agent.handle([wp.number])
    events = [watch] + _events(agent)
    clear, tlbi = events[1], events[2]
    assert clear.pc == FET + 0x3a0 and clear.late == "" and agent.counts["late"] == 1
    assert tlbi.op == "vaae1is" and tlbi.pc == FET + 0x3ac and "5 instructions later" in tlbi.note
    assert not agent.pending                       # the tlbi settled the clear
    free = order.Free(9, "shrink to 0", "free_pages", 0, 0x4422c000, 0, 4096, 0, "", (), True)
    verdict = order.check_tlb_flushed_before_free(events + [free], "shrink to 0")
    assert verdict.verdict == "PASS", verdict.evidence


def test_agent_never_fails_a_flush_it_could_not_see(monkeypatch):
    """A late stop whose store cannot be located: the clear is marked late and
    a free with no tlbi seen is 'cannot judge' (ERROR), not a FAIL."""
    regs = {"pc": FET + 0x3b4, "x28": 0, "sp": SP, "x0": 0xff000040000}
    agent, wp, watch = _watching_agent(monkeypatch, FET + 0x3b4, INCIDENT, regs)
    agent.handle([wp.number])
    events = [watch] + _events(agent)
    assert len(events) == 2 and "may have gone unseen" in events[1].late
    free = order.Free(9, "shrink to 0", "free_pages", 0, 0x4422c000, 0, 4096, 0, "", (), True)
    verdict = order.check_tlb_flushed_before_free(events + [free], "shrink to 0")
    assert verdict.verdict == "ERROR" and "cannot judge" in verdict.evidence
    # and a precise stop with no tlbi before the free is still a FAIL
    regs = {"pc": FET + 0x3a0, "x28": ENTRY_VA, "sp": SP, "x0": 0}
    agent, wp, watch = _watching_agent(monkeypatch, FET + 0x3a0, INCIDENT[:2], regs)
    agent.handle([wp.number])
    events = [watch] + _events(agent)
    assert events[1].late == "" and agent.counts["late"] == 0
    verdict = order.check_tlb_flushed_before_free(events + [free], "shrink to 0")
    assert verdict.verdict == "FAIL"


# ------------------------------------------------------------------ detaching:
# two flakes of the false-alarm bench (kept run folders, gdb-*.events.jsonl)

def test_a_slow_target_gets_one_interrupt_not_two(tmp_path, fake_gdb, monkeypatch):
    """The SIGINT was re-sent after 1 s; when QEMU took longer to stop, gdb gave
    up on the target ('Disconnected from target.', bench run 1 of 20). Now the
    interrupt is re-sent only after INTERRUPT_RESEND_S."""
    monkeypatch.setenv("FAKE_GDB", "slowstop")
    with gdb.attach(_spec(tmp_path, gdb=fake_gdb), progress=lambda l: None) as s:
        pass
    assert s.stats["sigints"] == 1 and "disconnected" not in s.stats
    assert [type(e) for e in s.events] == [order.Free] and s.stats["detach_s"] >= 1.4


def test_detach_reads_the_events_after_gdb_exits(tmp_path, monkeypatch):
    """gdb wrote 'detached' and exited between the driver's read of its events
    and its poll(): 'gdb exited with code 0 before detaching' (bench run 6 of
    20, whose events file ends with stopping, detached). Now poll() comes first."""
    import types
    spec = _spec(tmp_path, gdb="gdb-multiarch")
    session = gdb.Session(spec, ["gdb"])
    polls = iter([None, 0, 0, 0])
    session.proc = types.SimpleNamespace(pid=-1, returncode=0, poll=lambda: next(polls))
    reads = iter([[], ["ready", "stopping", "detached"], ["ready", "stopping", "detached"]])
    monkeypatch.setattr(session, "_kinds", lambda: next(reads))
    monkeypatch.setattr(gdb.os, "kill", lambda pid, sig: None)
    gdb._detach(session, timeout=5)
    assert session.stats["sigints"] == 1


def test_agent_ends_its_recording_when_gdb_gives_up_on_the_target(monkeypatch, tmp_path):
    """If gdb disconnects anyway, what was recorded stands: the agent says
    'disconnected' with its stats (the driver then detaches QEMU itself)."""
    lines = _looping_agent(monkeypatch, tmp_path,
                           [RuntimeError("Disconnected from target.")])
    # the recording is partial, and says so first (the checks then ERROR)
    assert [d["kind"] for d in lines] == ["incomplete", "stopping", "disconnected"]
    assert "lost the connection" in lines[0]["why"]
    assert lines[2]["message"] == "Disconnected from target." and "stops" in lines[2]["stats"]
    assert lines[2]["stats"]["incomplete"] == [lines[0]["why"]]



def test_a_relative_report_folder_is_made_absolute_for_gdb(tmp_path, monkeypatch):
    """gdb runs with its cwd in out_dir and is told the config's path: a relative
    out_dir (repro's default runs/...) would be looked up twice over."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(gdb, "tlbi_sites", lambda vmlinux: [])
    spec = gdb.GdbSpec.for_removal("vmlinux", port=1, out_dir="runs/x", step="remove a",
                                   pa_start=0, pa_end=1, backings=(), geometry=(4096, 48, 4, 48),
                                   root_pa=0)
    assert spec.out_dir == str(tmp_path / "runs" / "x")
    assert spec.config_path == str(tmp_path / "runs" / "x" / "gdb-order-remove-a.json")


# ------------------------------------------------------------------ partial recordings

def _looping_agent(monkeypatch, tmp_path, hits, max_stops=20000, detach=False):
    """The agent's loop over fake stops: each of ``hits`` is what one
    'continue' stops on, or an exception it raises."""
    regs = {"x0": 0, "x1": 0, "lr": 0, "pc": 0xffff800080001000}
    agent, _wp = _agent(monkeypatch, regs, {})
    agent.spec.update(out_dir=str(tmp_path), tag="t", max_stops=max_stops)
    if detach:
        (tmp_path / "gdb-t.detach").write_text("detach\n")
    seq = iter(hits)

    def execute(cmd, to_string=False):
        if cmd == "continue":
            hit = next(seq)
            if isinstance(hit, BaseException):
                raise hit
            agent.last_hit = hit
        return ""
    agent.gdb.execute = execute
    agent.mem = None
    agent.sp_size, agent.sp_from = 64, "vmemmap_start"
    agent.loop()
    return [json.loads(line) for line in agent.out.getvalue().splitlines()]


def test_an_unexpected_stop_ends_the_recording_as_incomplete(monkeypatch, tmp_path):
    lines = _looping_agent(monkeypatch, tmp_path, [["signal:SIGTRAP"]])
    assert lines[0]["kind"] == "incomplete" and "signal:SIGTRAP" in lines[0]["why"]
    assert lines[-1]["kind"] == "detached" and lines[-1]["stats"]["incomplete"]


def test_the_interrupt_the_driver_asked_for_is_not_incomplete(monkeypatch, tmp_path):
    lines = _looping_agent(monkeypatch, tmp_path, [["signal:SIGINT"]], detach=True)
    assert [d["kind"] for d in lines] == ["stopping", "detached"]
    assert lines[-1]["stats"]["incomplete"] == []


def test_the_stop_cap_makes_the_recording_incomplete(monkeypatch, tmp_path):
    lines = _looping_agent(monkeypatch, tmp_path, [[12345]] * 3, max_stops=3)
    assert lines[0]["kind"] == "incomplete" and "after 3 stops" in lines[0]["why"]


def test_a_connection_lost_after_the_detach_request_leaves_the_recording_whole(
        monkeypatch, tmp_path):
    """The driver asks to detach only once the step is over: a gdb that then
    gives up on the target (a slow interrupt) lost nothing of the removal."""
    lines = _looping_agent(monkeypatch, tmp_path, [RuntimeError("Disconnected from target.")],
                           detach=True)
    assert [d["kind"] for d in lines] == ["note", "stopping", "disconnected"]
    assert lines[-1]["stats"]["incomplete"] == []
