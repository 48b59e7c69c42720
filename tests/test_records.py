"""harness.records: the typed records a MethodRun carries round-trip through
report.json unchanged (every saved run in tests/data, recorded from real guests
or written by the harness), the Verdict/Blame enums behave as their strings,
and older callers' dicts are still read."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_walker import tiny_elf

from harness import runner
from harness.errors import HARNESS, INFRA, KERNEL, Blame, HarnessError, MachineError
from harness.inspect import walker
from harness.kernel import layout
from harness.machine import crashwatch
from harness.machine.crashwatch import classify_file
from harness.records import (
    ERROR,
    FAIL,
    PASS,
    SKIP,
    BadEntry,
    BootmemAttempt,
    Check,
    CheckOptions,
    Crash,
    Geometry,
    KselftestResult,
    Leaf,
    MethodRun,
    OrderRecord,
    RunError,
    Verdict,
    WalkSummary,
)
from harness.verdict import checks

DATA = Path(__file__).resolve().parent / "data"


def saved_runs(obj):
    """Every MethodRun dict in a saved file (a bare run or a report.json)."""
    if isinstance(obj, dict):
        if {"method", "geometry", "phases"} <= set(obj):
            yield obj
            return
        for v in obj.values():
            yield from saved_runs(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from saved_runs(v)


def _runs(path: Path) -> list[dict]:
    return list(saved_runs(json.loads(path.read_text())))


# recorded runs, repro runs, saved reports (not run-sample-report.json, a golden
# report.json as text, nor the QEMU argv golden)
SAVED = sorted(p for p in DATA.rglob("*.json") if _runs(p))


def with_defaults(saved: dict) -> dict:
    """What MethodRun.to_dict has always written for a run saved before some
    keys existed: the run's required/options/order, a phase's page_owner, a
    walk's bad entries (each last, in its place). The typed records add nothing."""
    out = {**saved, **{k: v for k, v in
                       (("required", []), ("options", {}), ("order", [])) if k not in saved}}
    out["phases"] = [{**p, "walks": [{**w, "bad": w.get("bad", [])} for w in p["walks"]],
                      "page_owner": p.get("page_owner")} for p in saved["phases"]]
    return out


def test_every_kind_of_saved_run_is_covered():
    names = {str(p.relative_to(DATA)) for p in SAVED}
    assert {"run-sample.json", "recorded-4k-48-kselftest.json",
            "recorded-run-0002-stale-linear-map/report.json"} <= names and len(names) >= 15


@pytest.mark.parametrize("path", SAVED, ids=lambda p: str(p.relative_to(DATA)))
def test_saved_runs_write_back_the_same_json(path):
    """old JSON -> records -> the same JSON, byte for byte, keys in their order."""
    for saved in _runs(path):
        again = MethodRun.from_dict(saved).to_dict()
        assert json.dumps(again) == json.dumps(with_defaults(saved))
        for key in ("geometry", "crashes", "bootmem_offline", "kselftest", "error"):
            assert json.dumps(again[key]) == json.dumps(saved[key]), key


@pytest.mark.parametrize("path", SAVED, ids=lambda p: str(p.relative_to(DATA)))
def test_saved_runs_are_judged_the_same_after_a_round_trip(path):
    for saved in _runs(path):
        run = MethodRun.from_dict(saved)
        again = MethodRun.from_dict(json.loads(json.dumps(run.to_dict())))
        assert again == run
        assert checks.judge(again) == checks.judge(run)
        assert checks.method_verdict(again, checks.judge(again)) == \
            checks.method_verdict(run, checks.judge(run))


def test_saved_runs_hold_typed_records():
    runs = [MethodRun.from_dict(r) for p in SAVED for r in _runs(p)]
    assert all(isinstance(r.geometry, Geometry) and isinstance(r.options, CheckOptions)
               for r in runs)
    crashes = [c for r in runs for c in r.crashes]
    assert crashes and all(isinstance(c, Crash) and isinstance(c.call_trace, tuple)
                           for c in crashes)
    errors = [r.error for r in runs if r.error]
    assert errors and all(isinstance(e.blame, Blame) for e in errors)
    assert any(isinstance(r.bootmem_offline, BootmemAttempt) for r in runs)
    assert any(isinstance(r.kselftest, KselftestResult) for r in runs)
    walks = [w for r in runs for p in r.phases for w in p.walks]
    assert walks and all(type(x) is Leaf for w in walks for x in w.leaves)


# ---------------------------------------------------------------- keyed records

def test_an_old_record_writes_back_only_its_keys():
    old = {"block": 8, "exit_code": 1, "state_after": "online", "output": ""}
    attempt = BootmemAttempt.from_dict(old)
    assert attempt.console is None and attempt.zones is None      # not recorded then
    assert attempt.to_dict() == old and list(attempt.to_dict()) == list(old)
    assert "console" not in attempt and attempt.get("console", "x") == "x"


def test_a_key_this_version_does_not_know_is_kept():
    saved = {"message": "m", "step": "s", "blame": "infra", "evidence": "", "later": [1]}
    error = RunError.from_dict(saved)
    assert error.blame is Blame.INFRA and error.to_dict() == saved
    assert error["later"] == [1]


def test_a_record_built_in_code_writes_every_field_in_order():
    record = OrderRecord("remove dimm1", 1, 2, True)
    assert list(record.to_dict()) == ["step", "pa_start", "pa_end", "flush_check", "events",
                                      "stats", "error"]
    assert list(Geometry(granule=4096).to_dict()) == [
        "granule", "va_bits", "levels", "page_offset", "linear_end", "vmemmap_start",
        "vmemmap_end", "linear_offset", "memstart", "struct_page_size",
        "struct_page_size_from"]
    attempt = BootmemAttempt(8, 1, "busy", "online", ("Movable",), True, (1, 2), ("x",))
    assert attempt.to_dict() == {"block": 8, "exit_code": 1, "output": "busy",
                                 "state_after": "online", "zones": ["Movable"],
                                 "hole_free": True, "range": [1, 2], "console": ["x"]}
    assert Geometry.unknown().to_dict() == {} and not Geometry.unknown().learned


def test_method_run_reads_the_dicts_of_older_callers():
    run = MethodRun("probe", {"granule": 4096},
                    crashes=({"kind": "warning", "title": "WARNING: x", "step": "s"},),
                    bootmem_offline={"block": 8, "exit_code": 1},
                    kselftest={"exit_code": 1, "output": "o", "cycles": [{"cycle": 1}]},
                    error={"message": "m", "step": "s", "blame": "kernel"},
                    options={"walker": True},
                    order=({"step": "s", "pa_start": 0, "pa_end": 1},))
    assert run.geometry.granule == 4096 and run.crashes[0].kind == "warning"
    assert run.bootmem_offline.block == 8 and run.error.blame is Blame.KERNEL
    assert run.kselftest.cycles[0].cycle == 1 and run.options.walker is True
    assert run.order[0].step == "s" and run.options.to_dict() == {"walker": True}
    assert run.geometry.get("granule") == run.geometry["granule"] == 4096  # transition
    assert MethodRun("race", {}).to_dict()["options"] == {}


def test_kselftest_dict_of_the_method_becomes_its_record():
    """hotplug/kselftest.py leaves the first cycle's dict with every cycle's under
    'cycles'; the runner reads it as a KselftestResult, saved as it was."""
    results = [{"cycle": n, "exit_code": 1, "output": f"out {n}",
                "hotplugged_blocks": [16, 17]} for n in (1, 2)]
    left = dict(results[0], cycles=results)
    ks = KselftestResult.from_dict(left)
    assert ks.hotplugged_blocks == (16, 17) and [c.output for c in ks.cycles] == \
        ["out 1", "out 2"]
    assert ks.to_dict() == json.loads(json.dumps(left))
    assert KselftestResult.from_dict({"lines": ["a", "b"]}).text == "a\nb"


def test_run_error_from_a_harness_error():
    err = MachineError("QEMU died", step="boot", evidence="x" * 5000)
    error = RunError.from_error(err)
    assert (error.message, error.step, error.blame) == ("QEMU died", "boot", INFRA)
    assert len(error.evidence) == RunError.EVIDENCE_CHARS
    assert error.to_dict() == {"message": "QEMU died", "step": "boot", "blame": "infra",
                               "evidence": "x" * 4000}


def test_crash_record_from_a_console_report():
    report = classify_file(DATA / "console-oops-copy-page.log")[0]
    crash = Crash.from_report(report, "remove memory17")
    assert crash.to_dict() == dict(report.to_dict(), step="remove memory17")
    assert list(crash.to_dict()) == list(report.to_dict()) + ["step"]
    assert Crash.from_dict(runner._crash_dict(report, None)).step == "boot"
    assert checks.crash_line(crash) == checks.crash_line(crash.to_dict())


# ---------------------------------------------------------------- walks

def test_leaves_and_bad_entries_are_named_tuples():
    walk = WalkSummary("Linear Mapping", 0, 1 << 30, ((0x1000, 0x3000, 0x8000, "PTE"),),
                       {"PTE": 1}, bad=((0x5000, "PMD", 0xf00, "valid bit clear"),))
    (leaf,) = walk.leaves
    va_start, va_end, pa, level = leaf
    assert (va_start, va_end, pa, level) == (0x1000, 0x3000, 0x8000, "PTE")
    assert leaf.size == 0x2000 and leaf.pa_end == 0xa000
    assert walk.bad[0].reason == "valid bit clear" and isinstance(walk.bad[0], BadEntry)
    assert walk.to_dict()["leaves"] == [[0x1000, 0x3000, 0x8000, "PTE"]]
    assert WalkSummary.from_dict(walk.to_dict()) == walk


def test_the_walker_helpers_take_a_saved_walk_too():
    leaves = (Leaf(0x1000, 0x3000, 0x8000, "PTE"), Leaf(0x3000, 0x4000, 0x20000, "PTE"))
    walk = WalkSummary("Linear Mapping", 0, 1 << 30, leaves, {})
    assert walker.leaves_covering_pa(walk, 0x9000, 0xa000) == [leaves[0]]
    assert walker.leaves_covering_va(walk, 0x3fff, 0x5000) == [leaves[1]]


def test_one_elf_symbol_reader(tmp_path):
    pytest.importorskip("elftools")
    elf = tmp_path / "vmlinux"
    elf.write_bytes(tiny_elf({"_text": 0x1000, "swapper_pg_dir": 0x2000}))
    assert layout.read_symtab(elf) == {"_text": [(0x1000, 0)], "swapper_pg_dir": [(0x2000, 0)]}
    assert crashwatch.load_function_symbols(elf) == layout.read_symtab(elf)
    cfg = {"CONFIG_ARM64_4K_PAGES": "y", "CONFIG_ARM64_VA_BITS": "48",
           "CONFIG_PGTABLE_LEVELS": "4"}
    assert layout.KernelLayout.from_files(cfg, elf).symbol("swapper_pg_dir") == 0x2000


# ---------------------------------------------------------------- enums

def test_verdict_and_blame_are_their_strings():
    assert PASS is Verdict.PASS and PASS == "PASS" and {"PASS": 1}[PASS] == 1
    assert json.dumps({"v": FAIL, SKIP: ERROR}) == '{"v": "FAIL", "SKIP": "ERROR"}'
    assert f"{ERROR:<6}|" == "ERROR |" and str(SKIP) == "SKIP"
    assert Verdict("FAIL") is FAIL and Check("x", "PASS").verdict is PASS
    assert KERNEL == "kernel" and {"kernel": 1}[KERNEL] == 1 and f"({INFRA})" == "(infra)"
    assert Blame("interrupted") is Blame.INTERRUPTED and HARNESS is Blame.HARNESS
    assert json.dumps([KERNEL]) == '["kernel"]'


def test_harness_errors_take_blame_as_enum_or_string():
    assert HarnessError("x", blame="kernel").blame is Blame.KERNEL
    assert HarnessError("x").blame is Blame.HARNESS and MachineError("x").blame is INFRA
    assert HarnessError("x", blame=Blame.KERNEL).exit_code == 1
    assert HarnessError("x", blame="interrupted").exit_code == 2
    with pytest.raises(ValueError):
        HarnessError("x", blame="nobody")
