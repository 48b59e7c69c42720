"""CrashWatcher and classify_log on recorded console logs (tests/data/console-*.log)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from harness.crashwatch import (Addr2lineResolver, CrashWatcher, KernelCrash, Frame,
                                classify_file, classify_log, match_signature,
                                parse_symbol, split_kernel_line, symbolize)
from harness.errors import GuestCrash

DATA = Path(__file__).parent / "data"

# file -> [(kind, title, pc_symbol, first_line_no, len(call_trace), complete)]
GOLDEN = {
    "console-panic-sysrq.log": [
        ("panic", "Kernel panic - not syncing: sysrq triggered crash", None, 7, 17, True),
    ],
    "console-oops-copy-page.log": [
        ("oops", "Unable to handle kernel paging request at virtual address "
         "ffff000080065000", "copy_page+0x30/0xd0", 8, 12, True),
    ],
    "console-kasan-uaf.log": [
        ("kasan", "BUG: KASAN: slab-use-after-free in try_offline_memory_block+0x2c/0x1b0",
         "try_offline_memory_block+0x2c/0x1b0", 5, 21, True),
    ],
    "console-warn-hotplug.log": [
        ("warning", "WARNING: CPU: 1 PID: 77 at mm/memory_hotplug.c:123 "
         "try_remove_memory+0x1c/0x1a0", "try_remove_memory+0x1c/0x1a0", 4, 11, True),
    ],
    "console-misc.log": [
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


def summary(reports):
    return [(r.kind, r.title, r.pc_symbol, r.first_line_no, len(r.call_trace), r.complete)
            for r in reports]


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden(name):
    assert summary(classify_file(DATA / name)) == GOLDEN[name]


def test_every_recorded_log_has_a_golden_entry():
    assert sorted(p.name for p in DATA.glob("console-*.log")) == sorted(GOLDEN)


def test_line_ending_does_not_matter():
    text = (DATA / "console-warn-hotplug.log").read_text()
    assert summary(classify_log(text.replace("\n", "\r\r\n"))) == summary(classify_log(text))
    assert summary(classify_log(text.replace("\n", "\r\n"))) == summary(classify_log(text))


def test_oops_details():
    [oops] = classify_file(DATA / "console-oops-copy-page.log")
    assert oops.lr_symbol == "copy_highpage+0x30/0x15c"
    assert oops.call_trace[:2] == ("copy_page+0x30/0xd0", "copy_highpage+0x30/0x15c")
    assert "__handle_mm_fault+0x6b4/0xb70" in oops.call_trace
    assert "Internal error: Oops: 0000000096000007 [#1] SMP" in oops.lines
    assert oops.lines[-1] == "---[ end trace 0000000000000000 ]---"
    assert oops.timestamp == pytest.approx(42.101234)
    # shell output interleaved on the serial line is not part of the report
    assert "35452 kB" not in oops.lines and "Killed" not in oops.lines


def test_panic_trace_and_tail():
    [panic] = classify_file(DATA / "console-panic-sysrq.log")
    assert panic.call_trace[3] == "panic+0x168/0x360"
    assert panic.call_trace[4] == "sysrq_handle_crash+0x1c/0x20"
    assert "CPU: 0 UID: 0 PID: 1 Comm: sh Not tainted 6.12.117 #1" in panic.lines
    assert panic.lines[-1] == "Memory Limit: none"  # panic=-1: no end marker


def test_kasan_keeps_only_the_access_stack_as_call_trace():
    [kasan] = classify_file(DATA / "console-kasan-uaf.log")
    assert "kasan_save_stack+0x3c/0x64" not in kasan.call_trace
    assert kasan.call_trace[5] == "try_offline_memory_block+0x2c/0x1b0"
    assert "Freed by task 104:" in kasan.lines
    assert "" in kasan.lines  # blank kernel lines kept
    assert kasan.lines[-1].startswith("=====")


def test_dmesg_replay_is_not_a_second_report():
    kinds = [r.kind for r in classify_file(DATA / "console-misc.log")]
    assert kinds.count("bug") == 2  # the dmesg replay of 'kernel BUG at' is ignored


def test_feed_returns_report_when_its_marker_arrives():
    lines = (DATA / "console-warn-hotplug.log").read_text().splitlines()
    watcher = CrashWatcher()
    done_at = [i for i, line in enumerate(lines) if watcher.feed(line)]
    assert len(done_at) == 1
    assert lines[done_at[0]].endswith("---[ end trace 0000000000000000 ]---")
    assert watcher.open_kind is None and len(watcher.reports) == 1


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
    assert "copy_page+0x30/0xd0" in str(err) and "console line 8" in str(err)


def test_report_to_dict_round_trip_fields():
    [warn] = classify_file(DATA / "console-warn-hotplug.log")
    d = warn.to_dict()
    assert d["kind"] == "warning" and d["call_trace"][0] == "try_remove_memory+0x1c/0x1a0"


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
        return {"copy_page": "arch/arm64/lib/copy_page.S:30"}.get(func)

    frames = symbolize(oops, resolve)
    assert frames[0] == Frame("pc", "copy_page+0x30/0xd0", "arch/arm64/lib/copy_page.S:30")
    assert frames[1].role == "lr" and frames[1].location is None
    assert [f.role for f in frames[2:]] == ["trace"] * len(oops.call_trace)
    # pc and the first trace entry (the pc) as is; return addresses minus one
    assert calls[0] == ("copy_page", 0x30)
    assert calls[1] == ("copy_highpage", 0x2f)
    assert calls[2] == ("copy_page", 0x30)
    assert calls[3] == ("copy_highpage", 0x2f)


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
