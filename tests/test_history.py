"""Upstream fixes undone (patches/history), the registry and ``repro --history``
/ ``--upstream``, and the hot-add checks the reach method feeds. Runs are
faked here; ``tests/test_history_real.py`` (make test-repro) runs the matrix."""

import json
from pathlib import Path

import pytest
from test_repro import report

from harness import cli
from harness.cli import repro as cli_repro
from harness.errors import HarnessError
from harness.records import Geometry, HotAddAttempt, MethodRun
from harness.verdict import checks, repro

ROOT = Path(__file__).resolve().parent.parent
HISTORY = repro.discover((), repro.HISTORY_DIR)


def test_every_history_patch_names_its_fix_and_a_scenario():
    assert len(HISTORY) >= 10
    shas = [r.upstream_sha for r in HISTORY]
    assert len(set(shas)) == len(shas)
    for r in HISTORY:
        assert r.name.startswith(r.upstream_sha + "-"), r.name
        assert '("' in r.upstream and r.upstream.endswith('")'), r.upstream
        assert r.methods and r.point
        assert r.expect or r.why, f"{r.name}: Repro-Expect: - needs a Repro-Why"
        text = Path(r.path).read_text()
        assert ("diff --git" in text) != r.stock, r.name
        for c in r.clean_patches:
            assert Path(c).is_file()
    caught = [r for r in HISTORY if r.expect]
    assert len(caught) >= 5


def test_expected_checks_exist():
    names = {n for n, _ in checks.RULES}
    for r in HISTORY:
        assert set(r.expect) <= names, r.name


def test_find_upstream_by_prefix():
    assert repro.find_upstream("8fac67c").name.startswith("8fac67ca236b")
    assert repro.find_upstream("95a58852b0e5413b6ef4c93da60a80e89da9986a").stock
    with pytest.raises(HarnessError, match="7 hex digits"):
        repro.find_upstream("8fac")
    with pytest.raises(HarnessError, match="no history patch for upstream 'deadbeef'"):
        repro.find_upstream("deadbeef")


def write(folder, name, body="diff --git a/x b/x\n", **trailers):
    lines = [f"Repro-{k.replace('_', '-').title()}: {v}" for k, v in trailers.items()
             if k != "upstream"]
    path = folder / f"{name}.patch"
    path.write_text("Subject: x\n\n" + (f"Upstream-Fix: {trailers['upstream']}\n"
                                         if "upstream" in trailers else "")
                    + "\n".join(lines) + "\n---\n" + body)
    return path


def test_stock_row_and_clean_patch(tmp_path):
    fixes = tmp_path / "fixes"
    fixes.mkdir()
    (fixes / "0002-fix.patch").write_text("fix\n")
    hist = tmp_path / "history"
    hist.mkdir()
    write(hist, "95a58852b0e5-stock", body="", upstream='95a58852b0e5 ("Reject")',
          point="split", methods="split-leaf", expect="online-memory-mapped",
          kernel="stock", clean_patch="../fixes/0002-fix.patch")
    write(hist, "8fac67ca236b-maxpfn", upstream='8fac67ca236b ("max_pfn")',
          point="max_pfn", methods="reach", expect="hotadd-frames-visible")
    regs = repro.discover((), hist)
    calls = []

    def fake(configs, patches, append, methods, cycles, folder):
        calls.append((methods, tuple(Path(p).name for p in patches), folder.name))
        bad = (methods == ("split-leaf",) and not patches) or any("maxpfn" in p
                                                                  for p in patches)
        check = "online-memory-mapped" if methods == ("split-leaf",) else \
            "hotadd-frames-visible"
        return report(1 if bad else 0, **{check: "FAIL" if bad else "PASS"})
    rows = repro.run_matrix(regs, tmp_path / "out", fake)
    assert calls[0] == (("reach",), (), "clean-default-reach")
    assert calls[1] == (("split-leaf",), ("0002-fix.patch",),
                        "clean-default-split-leaf-0002-fix")
    assert calls[2] == (("reach",), ("8fac67ca236b-maxpfn.patch",), "8fac67ca236b-maxpfn")
    assert calls[3] == (("split-leaf",), (), "95a58852b0e5-stock")
    assert [r.status for r in rows] == [repro.CLEAN_PASS, repro.CLEAN_PASS,
                                        repro.CAUGHT, repro.CAUGHT]
    assert repro.matrix_exit_code(rows) == 0
    assert [repro.run_folder(r.to_dict()) for r in rows] == [c[2] for c in calls]
    md = repro.matrix_markdown(rows)
    assert md.startswith("| upstream fix | kernel |")
    assert '| 95a58852b0e5 ("Reject") | stock | split | split-leaf |' in md
    assert "| - | `clean kernel + 0002-fix` |" in md
    back = repro.rows_from_json(json.loads(json.dumps({"rows": [r.to_dict()
                                                                for r in rows]})))
    assert back == rows
    text = repro.matrix_text(rows)
    assert '95a58852b0e5-stock: undoes upstream 95a58852b0e5 ("Reject")' in text


def test_repro_markdown_without_history_rows_is_unchanged():
    row = repro.MatrixRow("0005-a", "a", ("tables-freed",), repro.CAUGHT)
    assert repro.matrix_markdown([row]).startswith("| kernel | review point |")


def fake_runner(result):
    ran = []

    def runner(kernel_src, series=True):
        def run(configs, patches, append, methods, cycles, folder):
            ran.append((configs, tuple(Path(p).name for p in patches), append, methods))
            return result(patches)
        return run
    return runner, ran


def test_upstream_runs_the_registered_scenario(tmp_path, monkeypatch, capsys):
    runner, ran = fake_runner(lambda p: report(1, **{"hotadd-frames-visible": "FAIL"}))
    monkeypatch.setattr(cli_repro, "_runner", runner)
    assert cli.main(["repro", "--upstream", "8fac67ca236b", "--report",
                     str(tmp_path / "a")]) == 1
    assert ran == [((), ("8fac67ca236b-max-pfn-not-updated.patch",), (), ("reach",))]
    out = capsys.readouterr().out
    assert 'upstream 8fac67ca236b ("arm64: mm: update max_pfn after memory hotplug"): ' \
           "the bug shows (exit 1)" in out
    mine = tmp_path / "my-revert.patch"
    mine.write_text("diff\n")
    runner, ran = fake_runner(lambda p: report(0, **{"hotadd-frames-visible": "PASS"}))
    monkeypatch.setattr(cli_repro, "_runner", runner)
    assert cli.main(["repro", "--upstream", "8fac67c", "--patch", str(mine),
                     "--report", str(tmp_path / "b")]) == 0
    assert ran == [((), ("my-revert.patch",), (), ("reach",))]
    assert "the bug does not show (exit 0)" in capsys.readouterr().out
    # the stock kernel is the revert of a fix it lacks
    runner, ran = fake_runner(lambda p: report(1, **{"online-memory-mapped": "FAIL"}))
    monkeypatch.setattr(cli_repro, "_runner", runner)
    assert cli.main(["repro", "--upstream", "95a58852b0e5", "--report",
                     str(tmp_path / "c")]) == 1
    assert ran == [((), (), (), ("split-leaf",))]
    # a harness error is 2
    runner, ran = fake_runner(lambda p: report(2, **{"hotadd-frames-visible": "ERROR"}))
    monkeypatch.setattr(cli_repro, "_runner", runner)
    assert cli.main(["repro", "--upstream", "8fac67ca236b", "--report",
                     str(tmp_path / "d")]) == 2


def test_upstream_usage_errors(tmp_path, capsys):
    assert cli.main(["repro", "--patch", str(tmp_path / "x.patch"), "--all"]) == 2
    assert "--patch goes with --upstream" in capsys.readouterr().err
    assert cli.main(["repro", "--upstream", "8fac67ca236b", "--patch",
                     str(tmp_path / "missing.patch")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_history_list(capsys):
    assert cli.main(["repro", "--history", "--list"]) == 0
    out = capsys.readouterr().out
    assert 'upstream 58284a901b42 ("arm64/mm: Validate hotplug range before creating ' \
           'linear mapping")' in out


# ---------------------------------------------------------------- the hot-add checks

def run_with(*hotadds):
    return MethodRun(method="reach", geometry=Geometry(granule=4096), hotadds=hotadds)


REACH = (0x40000000, 0x800040000000)


def attempt(kind, pa, code=0, present=True, read=8, console=()):
    return HotAddAttempt(kind=kind, pa=pa, size=0x8000000, reach=REACH, exit_code=code,
                         present=present, console=console, kpageflags_bytes=read)


def test_hotadd_checks_pass_on_the_stock_shape():
    line = ("Hotplug memory [0x800040000000-0x800048000000] exceeds maximum addressable "
            "range [0x40000000-0x80003fffffff]")
    run = run_with(attempt("top-of-reach", 0x800038000000),
                   attempt("beyond-reach", 0x800040000000, 1, False, None, (line,)),
                   attempt("after-boot-memory", 0x80000000))
    got = {c.name: c for c in checks.judge(run) if c.name.startswith("hotadd-")}
    assert [c.verdict for c in got.values()] == ["PASS"] * 3
    assert "exceeds maximum addressable range" in got["hotadd-beyond-reach-refused"].evidence


def test_hotadd_checks_fail_with_evidence():
    run = run_with(attempt("top-of-reach", 0x800038000000, 1, False, None),
                   attempt("beyond-reach", 0x800040000000),
                   attempt("after-boot-memory", 0x80000000, read=0))
    got = {c.name: c for c in checks.judge(run) if c.name.startswith("hotadd-")}
    assert got["hotadd-frames-visible"].verdict == "FAIL"
    assert "PFN 0x87fff" in got["hotadd-frames-visible"].evidence
    assert got["hotadd-within-reach-accepted"].verdict == "FAIL"
    assert "top-of-reach PA 0x800038000000" in got["hotadd-within-reach-accepted"].evidence
    assert got["hotadd-beyond-reach-refused"].verdict == "FAIL"


def test_a_refusal_without_the_range_line_is_not_exercised():
    run = run_with(attempt("beyond-reach", 0x800040000000, 1, False, None))
    check = checks.check_hotadd_beyond_reach_refused(run)
    assert check.verdict == "SKIP" and check.evidence.startswith("not exercised")


def test_hotadd_checks_only_where_hotadds_were_tried():
    plain = MethodRun(method="probe", geometry=Geometry(granule=4096))
    assert not [c for c in checks.judge(plain) if c.name.startswith("hotadd-")]
    assert "hotadds" not in plain.to_dict()
    run = run_with(attempt("top-of-reach", 0x800038000000))
    assert MethodRun.from_dict(json.loads(json.dumps(run.to_dict()))) == run


def test_reach_of_counts_from_the_boot_memory():
    from harness.drive import reach

    class Phase:
        system_ram = ((0x40000000, 0x80000000),)
    assert reach.reach_of(Phase, 0xffff000000000000, 0xffff800000000000) == REACH


# ---------------------------------------------------------------- isb after a table's flush

DATA = ROOT / "tests" / "data"


def recorded(name, isb):
    """A real capture's events, its barriers marked as the agent now marks them."""
    from harness.inspect import order
    events = order.events_from_lines((DATA / name).read_text().splitlines())
    if isb is None:
        return events
    return [order.Dsb(**{**e.__dict__, "isb_after": isb}) if isinstance(e, order.Dsb)
            else e for e in events]


def test_isb_follows_on_the_straight_line():
    from harness.inspect import a64
    nop, ret, b = 0xD503201F, 0xD65F03C0, 0x14000002
    assert a64.isb_follows([a64.ISB]) is True
    assert a64.isb_follows([nop, nop, a64.ISB]) is True
    assert a64.isb_follows([nop, ret, a64.ISB]) is False
    assert a64.isb_follows([b, a64.ISB]) is False
    assert a64.isb_follows([nop] * 8 + [a64.ISB]) is False
    assert a64.isb_follows([]) is None


def test_isb_after_table_flush_on_recorded_removals():
    from harness.inspect import order
    judge = order.check_isb_after_table_flush
    clean = judge(recorded("order-clean-rodata-full.jsonl", True), "remove 0x80000000")
    assert clean.verdict == "PASS" and clean.counts["isb"] == 65, clean.evidence
    bad = judge(recorded("order-clean-rodata-full.jsonl", False), "remove 0x80000000")
    assert bad.verdict == "FAIL" and bad.counts["violations"] == 65
    assert "with no isb after it before" in bad.evidence.splitlines()[1]
    old = judge(recorded("order-clean-rodata-full.jsonl", None), "remove 0x80000000")
    assert old.verdict == "SKIP" and not old.applicable      # recorded before: not judged
    # what tlb-flushed-before-free fails is not judged here a second time
    unflushed = judge(recorded("order-no-flush-rodata-full.jsonl", False), "x")
    assert unflushed.verdict == "SKIP"


def test_dsb_round_trips_isb_after():
    from harness.inspect import order
    d = order.Dsb(3, "s", 0x10, "ish", 1, (2,), isb_after=False)
    assert order.Dsb.from_dict(d.to_dict()) == d
    assert "isb_after" not in order.Dsb(3, "s", 0x10, "ish", 1, (2,)).to_dict()


# ---------------------------------------------------------------- contiguous ranges flushed whole

def removal(*tlbis_valid):
    """arch_remove_memory() of 64 MiB at VA 0xffff000080000000 mapped by two
    contiguous runs of 16 PMD blocks (32 MiB each); one Tlbi per (lo, hi,
    still-valid ranges) in order."""
    from harness.inspect import order
    base, run = 0xffff000080000000, 32 << 20
    events = [order.RemoveEnter(1, "s", 0x80000000, 64 << 20, 0,
                                (order.LeafRun(base, 2 << 20, "PMD", 32),), base,
                                cont=((base, base + run), (base + run, base + 2 * run)))]
    for k, (lo, hi, valid) in enumerate(tlbis_valid, 2):
        events.append(order.Tlbi(k, "s", 0x10, "vale1is", 0, False, lo, hi, True, True,
                                 cpu=0, lin_valid=tuple(valid)))
    events.append(order.RemoveReturn(99, "s", 0, ()))
    return base, run, events


def test_contiguous_flushed_whole():
    from harness.inspect import order
    base, run, _events = removal()
    _b, _r, batched = removal((base, base + 2 * run, ()))          # 6.12: one flush at the end
    assert order.check_contiguous_flushed_whole(batched, "s").verdict == "PASS"
    # 48478b9f7913 undone: the first block cleared and flushed, 15 of its run valid
    _b, _r, each = removal((base, base + 4096, [(base + (2 << 20), base + 2 * run)]))
    v = order.check_contiguous_flushed_whole(each, "s")
    assert v.verdict == "FAIL" and "partly cleared" in v.evidence, v.evidence
    # one run cleared and flushed whole while the other is untouched: fine
    _b, _r, per_run = removal((base, base + run, [(base + run, base + 2 * run)]))
    assert order.check_contiguous_flushed_whole(per_run, "s").verdict == "PASS"
    # a recording made before the groups were noted
    old = [order.RemoveEnter(1, "s", 0, 1, 0), order.RemoveReturn(2, "s", 0, ())]
    assert not order.check_contiguous_flushed_whole(old, "s").applicable


def test_cont_groups_from_descriptors():
    from harness.inspect import order
    leaf = order.LeafEntry(0xffff000080200000, 2 << 20, "PMD", 0, 0x80200000,
                           0x80200000 | order.PTE_CONT | 1)
    plain = order.LeafEntry(0xffff0000a0000000, 2 << 20, "PMD", 0, 0xa0000000, 0xa0000001)
    assert order.cont_groups([leaf, plain], 12) == ((0xffff000080000000,
                                                     0xffff000082000000),)


def test_a_beyond_reach_add_cut_short_by_a_kernel_report_fails():
    run = run_with(HotAddAttempt(kind="beyond-reach", pa=0x800040000000, size=0x8000000,
                                 reach=REACH, exit_code=None, present=None,
                                 console=("WARNING: CPU: 1 PID: 94 at arch/arm64/mm/mmu.c:1207 "
                                          "vmemmap_populate+0x4c/0x54",)))
    check = checks.check_hotadd_beyond_reach_refused(run)
    assert check.verdict == "FAIL" and "cut short by a kernel report" in check.evidence


def test_repro_cpu_goes_to_the_row_and_its_clean_row(tmp_path):
    """Repro-Cpu: the shape's own clean row runs on the same model, run_fn is
    told cpu= only off max, and the matrix says it."""
    hist = tmp_path / "history"
    hist.mkdir()
    write(hist, "ee7febce0519-wrap", upstream='ee7febce0519 ("wrap")', point="wraps",
          methods="reach", config="kaslr", expect="hotadd-within-reach-accepted",
          cpu="cortex-a57")
    write(hist, "8fac67ca236b-maxpfn", upstream='8fac67ca236b ("max_pfn")',
          point="max_pfn", methods="reach", expect="hotadd-frames-visible", cpu="max")
    regs = repro.discover((), hist)
    assert [r.cpu for r in regs] == ["", "cortex-a57"]
    calls = []

    def fake(configs, patches, append, methods, cycles, folder, **kw):
        calls.append((configs, kw, folder.name))
        bad = bool(patches)
        check = "hotadd-within-reach-accepted" if configs else "hotadd-frames-visible"
        return report(1 if bad else 0, **{check: "FAIL" if bad else "PASS"})
    rows = repro.run_matrix(regs, tmp_path / "out", fake)
    assert calls == [((), {}, "clean-default-reach"),
                     (("kaslr",), {"cpu": "cortex-a57"}, "clean-kaslr-reach-cortex-a57"),
                     ((), {}, "8fac67ca236b-maxpfn"),
                     (("kaslr",), {"cpu": "cortex-a57"}, "ee7febce0519-wrap")]
    assert [r.status for r in rows] == [repro.CLEAN_PASS, repro.CLEAN_PASS,
                                        repro.CAUGHT, repro.CAUGHT]
    assert [repro.run_folder(r.to_dict()) for r in rows] == [c[2] for c in calls]
    assert rows[1].name == "clean kaslr reach on cortex-a57"
    assert "reach `--config kaslr` `--cpu cortex-a57`" in repro.matrix_markdown(rows)
    assert repro.rows_from_json(json.loads(json.dumps(
        {"rows": [r.to_dict() for r in rows]}))) == rows


def test_an_unknown_repro_cpu_is_refused(tmp_path):
    path = write(tmp_path, "x", point="p", methods="reach", expect="-", why="w",
                 cpu="pentium")
    with pytest.raises(HarnessError, match="Repro-Cpu: 'pentium'"):
        repro.load(path)


@pytest.mark.parametrize("cpuinfo,want", [
    ("processor\t: 0\nCPU part\t: 0xd07\nprocessor\t: 1\nCPU part\t: 0xd07\n", (44, "0xd07")),
    ("CPU part\t: 0xd03\n", (40, "0xd03")),
    ("CPU part\t: 0x051\n", (None, "0x051")),      # QEMU's max: 48 bits or more
    ("", (None, "?"))])
def test_the_cpus_pa_bits_from_cpuinfo(cpuinfo, want):
    from harness.drive import reach
    assert reach.cpu_pa_bits(cpuinfo) == want


def test_reach_targets_on_max_and_on_a_44_bit_cpu():
    """max, not randomised: the top block below 0x800040000000 and the first
    one past it. A 44-bit CPU with a randomised PHYS_OFFSET (memstart_addr
    below zero, as the kernel keeps it): what it is owed ends at 2^44, the
    kernel's reach at memstart + 2^47 (wrapped as u64)."""
    from harness.drive import reach
    bs, linear = 0x8000000, 1 << 47
    owed = (0x40000000, 0x40000000 + linear)
    assert reach.targets(owed, linear, 0x40000000, None, bs) == (
        0x800038000000, 0x800040000000, (0x40000000, 0x800040000000))
    assert reach.targets(owed, linear, None, None, bs)[:2] == (0x800038000000,
                                                              0x800040000000)
    memstart = 0x40000000 - 0x3f0000000000           # 1 GiB - 63 TiB
    top, beyond, actual = reach.targets(owed, linear, memstart, 44, bs)
    assert top == (1 << 44) - bs
    assert actual == (memstart & reach.U64, 0x410040000000)
    assert beyond == 0x410040000000 and beyond > top
