"""CrashWatcher and classify_log on console logs captured from real guests
(tests/data/console-*.log) and on one synthetic log of parser edge cases
(tests/data/synthetic-console-misc.log); tests/data/README says how each was made."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from harness.errors import GuestCrash
from harness.machine.crashwatch import (
    Addr2lineResolver,
    CrashWatcher,
    Frame,
    KernelCrash,
    classify_file,
    classify_log,
    match_signature,
    parse_symbol,
    split_kernel_line,
    symbolize,
)

DATA = Path(__file__).parent / "data"

# file -> [(kind, title, pc_symbol, first_line_no, len(call_trace), complete)]
REAL = {
    # default kernel, dt boot, serial transport: echo c > /proc/sysrq-trigger
    "console-panic-sysrq.log": [
        ("panic", "Kernel panic - not syncing: sysrq triggered crash", None, 11, 17, True),
    ],
    # + patches/repro/0004: offlining dimm2 after dimm1's removal unmapped it
    "console-oops-copy-page.log": [
        ("oops", "Unable to handle kernel paging request at virtual address "
         "ffff00008ff8c000", "copy_page+0x4/0xd0", 36, 24, True),
    ],
    # + patches/repro/0002: remove dimm1 warns, then oopses on the stale entries
    "console-warn-hotplug.log": [
        ("warning", "WARNING: CPU: 0 PID: 33 at arch/arm64/mm/mmu.c:1066 "
         "free_empty_tables+0x15c/0x400", "free_empty_tables+0x15c/0x400", 14, 13, True),
        ("oops", "Unable to handle kernel paging request at virtual address "
         "fffffdffc2000000", "free_hotplug_page_range.part.0+0x8/0x58", 48, 14, True),
    ],
}
# hand-written to cover report kinds no seeded regression produces (not recorded)
SYNTHETIC = {
    "synthetic-console-misc.log": [
        ("soft-lockup", "watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [sh:91]",
         "__offline_pages+0x2f8/0x7a0", 2, 16, True),
        ("rcu-stall", "rcu: INFO: rcu_sched self-detected stall on CPU",
         "__offline_pages+0x2f0/0x7a0", 38, 4, True),
        ("bad-page", "BUG: Bad page state in process sh  pfn:80040", None, 64, 10, True),
        ("bug", "BUG: sleeping function called from invalid context at "
         "mm/memory_hotplug.c:1922", None, 86, 7, True),
        ("bug", "kernel BUG at mm/memory_hotplug.c:2210!",
         "try_remove_memory+0x2e8/0x2f0", 101, 4, True),
        ("oops", "Unable to handle kernel NULL pointer dereference at virtual address "
         "0000000000000008", "memory_notify+0x18/0x40", 135, 2, True),
        ("panic", "Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b",
         None, 143, 0, True),
    ],
}
GOLDEN = {**REAL, **SYNTHETIC}


def summary(reports):
    return [(r.kind, r.title, r.pc_symbol, r.first_line_no, len(r.call_trace), r.complete)
            for r in reports]


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden(name):
    assert summary(classify_file(DATA / name)) == GOLDEN[name]


def test_every_log_has_a_golden_entry():
    assert sorted(p.name for p in DATA.glob("console-*.log")) == sorted(REAL)
    assert sorted(p.name for p in DATA.glob("synthetic-console-*.log")) == sorted(SYNTHETIC)


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_captures_keep_the_serial_line_endings(name):
    data = (DATA / name).read_bytes()
    assert data.count(b"\r\n") == data.count(b"\n")  # the guest's CRLF, as read
    assert data.startswith(b"HARNESS-READY 6.12.117 uptime ")


def test_line_ending_does_not_matter():
    text = (DATA / "console-warn-hotplug.log").read_text()
    assert summary(classify_log(text.replace("\n", "\r\r\n"))) == summary(classify_log(text))
    assert summary(classify_log(text.replace("\n", "\r\n"))) == summary(classify_log(text))


def test_oops_details():
    [oops] = classify_file(DATA / "console-oops-copy-page.log")
    assert oops.lr_symbol == "copy_highpage+0x30/0x38"
    assert oops.call_trace[:2] == ("copy_page+0x4/0xd0", "folio_mc_copy+0x48/0x6c")
    assert "offline_pages+0x338/0x494" in oops.call_trace  # page migration on offline
    assert "state_store+0x8c/0xd0" in oops.call_trace
    assert "Internal error: Oops: 0000000096000005 [#1] SMP" in oops.lines
    assert "  FSC = 0x05: level 1 translation fault" in oops.lines
    assert oops.lines[-1] == "---[ end trace 0000000000000000 ]---"
    assert oops.timestamp == pytest.approx(2.885986)
    # the faulting VA is in dimm2 (PA 0x88000000-0x90000000), still online
    va = int(oops.title.rsplit(" ", 1)[1], 16)
    assert 0x8800_0000 <= va - 0xffff_0000_0000_0000 < 0x9000_0000
    # the shell's messages after the crash are not part of the report
    assert "Segmentation fault" not in oops.lines


def test_warning_then_oops_of_the_stale_linear_map():
    warn, oops = classify_file(DATA / "console-warn-hotplug.log")
    assert warn.lr_symbol == "__remove_pgd_mapping.constprop.0+0x3c/0x6c"
    assert "Workqueue: kacpi_hotplug acpi_hotplug_work_fn" in warn.lines
    assert warn.lines[0] == "------------[ cut here ]------------"
    assert oops.call_trace[1] == "free_empty_tables+0x380/0x400"
    assert "Tainted: [W]=WARN" in oops.lines


def test_panic_trace_and_tail():
    [panic] = classify_file(DATA / "console-panic-sysrq.log")
    assert panic.call_trace[4] == "panic+0x354/0x368"
    # sysrq_handle_crash ends in a call to panic(): the return address is the next
    # function's first instruction, so the kernel names it
    assert panic.call_trace[5] == "sysrq_handle_showregs+0x0/0x3c"
    assert panic.call_trace[7] == "write_sysrq_trigger+0x90/0xb4"
    assert "CPU: 1 UID: 0 PID: 76 Comm: sh Not tainted 6.12.117 #1" in panic.lines
    assert panic.lines[-1] == "Memory Limit: none"  # panic=-1: no end marker


def test_dmesg_replay_is_not_a_second_report():
    kinds = [r.kind for r in classify_file(DATA / "synthetic-console-misc.log")]
    assert kinds.count("bug") == 2  # the dmesg replay of 'kernel BUG at' is ignored


def test_feed_returns_report_when_its_marker_arrives():
    lines = (DATA / "console-warn-hotplug.log").read_text().splitlines()
    watcher = CrashWatcher()
    done_at = [i for i, line in enumerate(lines) if watcher.feed(line)]
    assert len(done_at) == 2  # the WARNING, then the Oops
    assert all(lines[i].endswith("---[ end trace 0000000000000000 ]---") for i in done_at)
    assert watcher.open_kind is None and len(watcher.reports) == 2


def test_open_kind_while_collecting():
    watcher = CrashWatcher()
    watcher.feed("[    5.000000] ------------[ cut here ]------------")
    assert watcher.open_kind == "warning"
    watcher.feed("[    5.000100] kernel BUG at mm/memory_hotplug.c:10!")
    assert watcher.open_kind == "bug"
    [report] = watcher.flush()
    assert report.kind == "bug" and not report.complete


def test_oops_mid_output_without_timestamps():
    text = "\n".join(["line one", "Unable to handle kernel paging request at virtual "
                      "address ffff000080065000", "Internal error: Oops: 0000000096000007 "
                      "[#1] SMP", "pc : copy_page+0x30/0xd0", "Call trace:",
                      " copy_page+0x30/0xd0", "---[ end trace 0000000000000000 ]---",
                      "line two"])
    [report] = classify_log(text)
    assert (report.kind, report.pc_symbol, report.first_line_no) == (
        "oops", "copy_page+0x30/0xd0", 2)


def test_one_line_bug_closes_after_pre_trace_limit():
    watcher = CrashWatcher()
    watcher.feed("[    1.000000] BUG: Bad rss-counter state mm:00000000 type:MM_ANONPAGES val:1")
    done = []
    for i in range(100):
        done += watcher.feed(f"[    1.{i + 1:06d}] unrelated message {i}")
    assert [r.kind for r in done] == ["bug"]


@pytest.mark.parametrize("message,kind", [
    ("Kernel panic - not syncing: Fatal exception", "panic"),
    ("Internal error: Oops: 0000000096000004 [#1] SMP", "oops"),
    ("Internal error: Oops - BUG: 00000000f2000800 [#1] SMP", "bug"),
    ("BUG: KASAN: slab-out-of-bounds in foo+0x1/0x2", "kasan"),
    ("watchdog: BUG: soft lockup - CPU#0 stuck for 23s! [sh:1]", "soft-lockup"),
    ("BUG: Bad page state in process sh  pfn:80040", "bad-page"),
    ("Bad page state in process sh  pfn:80040", "bad-page"),
    ("BUG: scheduling while atomic: sh/1/0x00000002", "bug"),
    ("WARNING: CPU: 0 PID: 1 at mm/x.c:1 f+0x1/0x2", "warning"),
    ("WARNING: possible circular locking dependency detected", "warning"),
    ("rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:", "rcu-stall"),
    ("INFO: task sh:93 blocked for more than 20 seconds.", "hung-task"),
    ("INFO: task kworker/u4:1:52 blocked for more than 120 seconds.", "hung-task"),
    ("------------[ cut here ]------------", "cut-here"),
    ("~ # grep 'BUG:' /tmp/log", None),
    ("memory memory16: online", None),
    ("WARNING: this is user output without CPU/PID", None),
])
def test_signatures(message, kind):
    assert match_signature(message) == kind


def test_split_kernel_line():
    assert split_kernel_line("ab[   12.345678] memory: x") == ("ab", "memory: x", 12.345678)
    assert split_kernel_line("[    1.000000][    T1] Run /init") == ("", "Run /init", 1.0)
    assert split_kernel_line("[1] + Done  sleep 1").message is None


def test_kernel_crash_error():
    reports = classify_file(DATA / "console-oops-copy-page.log")
    err = KernelCrash(reports, step="serial")
    assert isinstance(err, GuestCrash) and err.blame == "kernel" and err.exit_code == 1
    assert err.report.kind == "oops"
    assert "copy_page+0x4/0xd0" in str(err) and "console line 36" in str(err)


def test_report_to_dict_round_trip_fields():
    warn = classify_file(DATA / "console-warn-hotplug.log")[0]
    d = warn.to_dict()
    assert d["kind"] == "warning" and d["call_trace"][0] == "free_empty_tables+0x15c/0x400"


# --- symbolize ---------------------------------------------------------------

def test_parse_symbol():
    assert parse_symbol("copy_page+0x30/0xd0") == ("copy_page", 0x30, 0xd0)
    assert parse_symbol("el0_svc_common.constprop.0+0x40/0xe0")[0] == "el0_svc_common.constprop.0"
    assert parse_symbol("ffff800080123456") is None


def test_symbolize_with_fake_resolver():
    [oops] = classify_file(DATA / "console-oops-copy-page.log")
    calls = []

    def resolve(func, off):
        calls.append((func, off))
        return {"copy_page": "arch/arm64/lib/copy_page.S:21"}.get(func)

    frames = symbolize(oops, resolve)
    assert frames[0] == Frame("pc", "copy_page+0x4/0xd0", "arch/arm64/lib/copy_page.S:21")
    assert frames[1].role == "lr" and frames[1].location is None
    assert [f.role for f in frames[2:]] == ["trace"] * len(oops.call_trace)
    # pc and the first trace entry (the pc) as is; return addresses minus one
    assert calls[0] == ("copy_page", 0x4)
    assert calls[1] == ("copy_highpage", 0x2f)
    assert calls[2] == ("copy_page", 0x4)
    assert calls[3] == ("folio_mc_copy", 0x47)


def test_symbolize_panic_has_no_pc():
    [panic] = classify_file(DATA / "console-panic-sysrq.log")
    frames = symbolize(panic, lambda func, off: None)
    assert all(f.role == "trace" for f in frames) and len(frames) == 17


CROSS_GCC = "aarch64-linux-gnu-gcc"
ADDR2LINE = "aarch64-linux-gnu-addr2line"


@pytest.mark.skipif(not (shutil.which(CROSS_GCC) and shutil.which(ADDR2LINE)),
                    reason="needs gcc-aarch64-linux-gnu and binutils-aarch64-linux-gnu")
def test_addr2line_resolver_on_a_real_elf(tmp_path):
    pytest.importorskip("elftools")
    src = tmp_path / "t.c"
    src.write_text("int counter;\n"
                   "void bump(void)\n"
                   "{\n"
                   "\tcounter++;\n"
                   "}\n"
                   "void _start(void) { bump(); for (;;); }\n")
    elf = tmp_path / "t.elf"
    subprocess.run([CROSS_GCC, "-g", "-O0", "-nostdlib", "-static", "-o", str(elf), str(src)],
                   check=True, capture_output=True)
    resolver = Addr2lineResolver(elf)
    assert resolver.address("bump", 4) is not None
    location = resolver("bump", 8)
    assert location is not None and location.startswith(str(src)) \
        and location.split(":")[-1] in {"3", "4"}
    assert resolver("no_such_function", 0) is None


def test_lockdep_warning_closes_at_the_end_of_its_trace():
    lines = ["[    3.000000] ======================================================",
             "[    3.000001] WARNING: possible circular locking dependency detected",
             "[    3.000002] 6.12.117 #1 Not tainted",
             "[    3.000003] stack backtrace:",
             "[    3.000004] Call trace:",
             "[    3.000005]  show_stack+0x18/0x24",
             "[    3.000006]  lock_acquire+0x1c8/0x338",
             "[    3.000007] memory memory16: unrelated"]
    watcher = CrashWatcher()
    done = [r for line in lines for r in watcher.feed(line)]
    assert [(r.kind, len(r.call_trace), r.complete) for r in done] == [("warning", 2, True)]
    assert done[0].lines[-1] == " lock_acquire+0x1c8/0x338"


def test_a_kasan_summary_names_the_address_it_is_about():
    """The KASAN title names a function only; the report's access line names the
    address (0012's evidence otherwise depended on a later Oops naming one)."""
    watcher = CrashWatcher()
    for line in ("==================================================================",
                 "BUG: KASAN: use-after-free in ptdump_pte_entry+0xe8/0xec",
                 "Read of size 8 at addr ffff000001e84c08 by task cat/123",
                 "Call trace:", " ptdump_pte_entry+0xe8/0xec",
                 "=================================================================="):
        watcher.feed(line)
    [report] = watcher.reports or watcher.flush()
    assert report.kind == "kasan"
    assert report.summary().endswith(": Read of size 8 at addr ffff000001e84c08")
