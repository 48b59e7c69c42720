"""The recorded runs under tests/data/recorded-* (real guests, see tests/data/README):
re-judged with today's rules, their ptdumps and console logs parsed with the
project's parsers, and each seeded regression failing the checks its header names.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from harness.inspect import ptdump
from harness.machine.crashwatch import classify_file
from harness.records import ERROR, FAIL, PASS, SKIP, MethodRun
from harness.verdict import checks, report, repro

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data"
LINEAR = "Linear Mapping"
OFF = 0xffff_0000_0000_0000

# ------------------------------------------------------------ the patches' trailers

CHECK_NAMES = {name for name, _rule in checks.RULES}


def seeded_regressions() -> dict:
    """patch stem -> the checks its ``Repro-Expect`` trailer says catch it
    (harness/repro.py); the README's matrix is generated from the same trailers."""
    return {r.name: list(r.expect) for r in repro.discover() if r.expect}


SEEDED = seeded_regressions()
ADDRESS = re.compile(r"\b(?:0x)?[0-9a-f]{8,16}\b")


def assert_named_checks_fail(found, patch: str) -> None:
    """Every check the header names for ``patch`` FAILs, with evidence naming an address."""
    by_name = {c.name: c for c in found}
    wanted = SEEDED[patch]
    assert wanted, f"the header of {patch} names no check"
    for name in wanted:
        check = by_name.get(name)
        assert check is not None, f"{patch}: {name} was not judged"
        assert check.verdict == FAIL, (
            f"{patch}: its header says {name} catches it, but it is {check.verdict}: "
            f"{check.evidence}\nfailed: {[c.name for c in found if c.verdict == FAIL]}")
        assert check.evidence.strip(), f"{patch}: {name} FAILs without evidence"
        assert ADDRESS.search(check.evidence), \
            f"{patch}: {name} evidence names no address: {check.evidence}"


def test_trailers_name_checks_that_exist():
    patches = {p.stem for p in (ROOT / "patches" / "repro").glob("*.patch")}
    assert set(SEEDED) <= patches
    for patch, named in SEEDED.items():
        assert set(named) <= CHECK_NAMES, f"{patch} names an unknown check: {named}"
    assert {"0001-leak-linear-map-tables", "0002-stale-linear-map", "0003-stale-vmemmap",
            "0004-over-remove-linear-map"} <= set(SEEDED)
    assert SEEDED["0001-leak-linear-map-tables"] == ["tables-freed"]
    assert SEEDED["0003-stale-vmemmap"] == ["no-stale-vmemmap", "tables-freed"]


# ------------------------------------------------------------ recorded MethodRuns

def load_run(path: Path) -> MethodRun:
    return MethodRun.from_dict(json.loads(path.read_text()))


def verdicts(found) -> dict:
    return {c.name: c.verdict for c in found}


GOOD = ("blocks-lifecycle", "no-stale-linear-map", "no-stale-vmemmap", "tables-freed",
        "online-memory-mapped", "no-kernel-splat", "walker-agrees-with-ptdump")
# every check of a passing run; bootmem-not-removable is tried by acpi-dimm and
# probe only, kselftest is judged for the kselftest method only
PASSING = {
    "recorded-4k-48-acpi-dimm/methodrun.json": ("acpi-dimm", True),
    "recorded-4k-48-probe/probe.json": ("probe", True),
    "recorded-4k-48-virtio-mem/virtio-mem.json": ("virtio-mem", False),
    "recorded-4k-48-kselftest.json": ("kselftest", False),
    "recorded-64k-42/acpi-dimm.json": ("acpi-dimm", True),
    "recorded-64k-42/probe.json": ("probe", True),
    "recorded-64k-42/virtio-mem.json": ("virtio-mem", False),
    "recorded-64k-42/kselftest.json": ("kselftest", False),
}


def test_every_recorded_run_is_listed_here():
    found = {str(p.relative_to(DATA)) for p in DATA.glob("recorded-*/*.json")
             if p.parent.name != "recorded-repro" and p.name != "report.json"}
    found |= {p.name for p in DATA.glob("recorded-*.json")}
    assert found == set(PASSING)


@pytest.mark.parametrize("name", sorted(PASSING))
def test_recorded_passing_run_rejudged(name):
    method, bootmem = PASSING[name]
    run = load_run(DATA / name)
    assert run.method == method and run.error is None and not run.crashes
    judged = checks.judge(run)
    found = verdicts(judged)
    want = {c: PASS for c in GOOD}
    want["no-leak-across-cycles"] = SKIP          # one cycle recorded
    if method == "kselftest":
        want["kselftest"] = PASS
    assert {c: found.get(c) for c in want} == want
    # tried (and refused) by acpi-dimm and probe; PASS or SKIP "not exercised"
    # depending on whether the rule asks for arm64's console line as well
    assert (found.get("bootmem-not-removable") in (PASS, SKIP)) if bootmem else \
        found.get("bootmem-not-removable") == SKIP
    bad = [c for c in judged if c.verdict in (FAIL, ERROR)]
    assert not bad, "\n".join(f"{c.verdict} {c.name}: {c.evidence}" for c in bad)
    assert checks.method_verdict(run, judged) == PASS


REPRO_RUNS = {p.stem.split("-", 2)[2]: p for p in DATA.glob("recorded-repro/acpi-dimm-*.json")}


def test_every_recorded_seeded_regression_is_in_readmes_table():
    assert set(REPRO_RUNS) <= set(SEEDED)


@pytest.mark.parametrize("patch", sorted(REPRO_RUNS))
def test_recorded_seeded_regression_fails_the_named_check(patch):
    run = load_run(REPRO_RUNS[patch])
    found = checks.judge(run)
    assert checks.method_verdict(run, found) == FAIL
    assert not [c for c in found if c.verdict == ERROR]
    assert_named_checks_fail(found, patch)


def test_recorded_0004_oops_is_copy_page_on_the_neighbour():
    run = load_run(REPRO_RUNS["0004-over-remove-linear-map"])
    first = run.crashes[0]
    assert (first["kind"], first["pc_symbol"], first["step"]) == (
        "oops", "copy_page+0x30/0xd0", "remove dimm1")
    # dimm1 is PA 0x80000000-0xa0000000: the fault is in dimm2, still online
    va = int(first["title"].rsplit(" ", 1)[1], 16)
    assert 0xa000_0000 <= va - OFF < 0xc000_0000
    assert run.error["blame"] == "kernel"


def test_recorded_0002_warns_in_free_empty_tables_then_oopses():
    run = load_run(REPRO_RUNS["0002-stale-linear-map"])
    kinds = [(c["kind"], c["pc_symbol"].split("+")[0]) for c in run.crashes]
    assert kinds == [("warning", "free_empty_tables"),
                     ("oops", "free_hotplug_page_range.part.0")]
    assert "arch/arm64/mm/mmu.c" in run.crashes[0]["title"]


# ------------------------------------------------------------ recorded ptdumps

PTDUMP_DIRS = {
    "recorded-4k-48-acpi-dimm": "methodrun.json",
    "recorded-4k-48-probe": "probe.json",
    "recorded-4k-48-virtio-mem": "virtio-mem.json",
}


def _dumps():
    return [(d, p) for d in sorted(PTDUMP_DIRS) for p in sorted((DATA / d).glob("ptdump-*.txt"))]


@pytest.mark.parametrize("folder,path", _dumps(), ids=lambda x: getattr(x, "name", x))
def test_recorded_ptdump_parses_and_equals_the_runs_phase(folder, path):
    snap = ptdump.parse(path.read_text())
    run = load_run(DATA / folder / PTDUMP_DIRS[folder])
    phase = run.phase(path.stem[len("ptdump-"):])
    assert phase.ptdump == snap
    assert ptdump.format_snapshot(snap) == path.read_text()
    assert {LINEAR, "vmemmap"} <= set(snap.regions)


def _linear(folder: str, phase: str) -> ptdump.Snapshot:
    return ptdump.parse((DATA / folder / f"ptdump-{phase}.txt").read_text())


def test_recorded_acpi_dimm_ptdumps_tell_the_story():
    folder = "recorded-4k-48-acpi-dimm"
    dimm1 = (OFF + 0x8000_0000, OFF + 0xa000_0000)
    dimm2 = (OFF + 0xa000_0000, OFF + 0xc000_0000)
    before = _linear(folder, "before")
    assert ptdump.covering(before, LINEAR, dimm1[0], dimm2[1]) == []
    assert ptdump.entry_at(before, dimm1[0]).level == "PUD"  # one 510G hole
    online = ptdump.entry_at(_linear(folder, "online"), dimm1[0])
    assert (online.start, online.end, online.level, online.is_valid) == (
        dimm1[0], dimm2[1], "PMD", True)  # both DIMMs, 2M blocks
    removed1 = _linear(folder, "removed-1")
    hole = ptdump.entry_at(removed1, dimm1[0])
    assert (hole.start, hole.end, hole.level, hole.is_valid) == (dimm1[0], dimm1[1], "PMD", False)
    assert ptdump.entry_at(removed1, dimm2[0]).is_valid  # the neighbour stays mapped
    removed2 = _linear(folder, "removed-2")
    assert ptdump.diff(before, removed2, LINEAR) == []
    assert ptdump.diff(before, removed2, "vmemmap") == []


def test_recorded_probe_ptdumps_map_the_probed_blocks_at_the_linear_offset():
    folder = "recorded-4k-48-probe"
    run = load_run(DATA / folder / PTDUMP_DIRS[folder])
    off = run.geometry["linear_offset"] if "linear_offset" in run.geometry else None
    online = _linear(folder, "online")
    before = _linear(folder, "before")
    added_linear = ptdump.diff(before, online, LINEAR)
    assert added_linear, "onlining two probed blocks changed nothing in the linear map"
    assert ptdump.diff(before, _linear(folder, "removed-2"), LINEAR) == []
    assert off is None or off <= OFF + 0x4000_0000


# ------------------------------------------------------------ recorded console logs

def test_recorded_clean_console_log_has_no_report():
    log = DATA / "recorded-4k-48-acpi-dimm" / "console.log"
    text = log.read_text(errors="replace")
    assert "HARNESS-READY 6.12.117" in text and "EFI stub: Booting Linux Kernel" in text
    assert classify_file(log) == []


# ------------------------------------------------------------ recorded report folders
# `hotplug-harness run --method acpi-dimm --patch patches/repro/N --report DIR`,
# kept whole (report.json, junit.xml, the method's console.log and ptdumps)

RUN_DIRS = sorted(DATA.glob("recorded-run-*"))


@pytest.mark.parametrize("folder", RUN_DIRS, ids=lambda p: p.name)
def test_recorded_report_rejudged_gives_the_recorded_verdicts(folder, tmp_path):
    saved = json.loads((folder / "report.json").read_text())
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    again, code = report.rejudge(copy)
    assert (again["verdict"], code) == (saved["verdict"], saved["exit_code"]) == (FAIL, 1)
    for old, new in zip(saved["methods"], again["methods"], strict=True):
        assert new["verdict"] == old["verdict"]
        before, now = verdicts_of(old), verdicts_of(new)
        assert {k: now.get(k) for k in before} == before
        # checks added since the recording judge the same real data: they pass
        assert {v for k, v in now.items() if k not in before} <= {PASS}
    # the folder itself is left as recorded
    assert json.loads((folder / "report.json").read_text()) == saved


def verdicts_of(method: dict) -> dict:
    return {c["name"]: c["verdict"] for c in method["checks"]}


def _run_of(folder: str) -> MethodRun:
    [method] = json.loads((DATA / folder / "report.json").read_text())["methods"]
    return MethodRun.from_dict(method["run"])


@pytest.mark.parametrize("folder", RUN_DIRS, ids=lambda p: p.name)
def test_recorded_report_ptdumps_are_its_phases(folder):
    run = _run_of(folder.name)
    dumps = sorted((folder / "acpi-dimm").glob("ptdump-*.txt"))
    assert dumps
    for path in dumps:
        snap = ptdump.parse(path.read_text())
        assert snap == run.phase(path.stem[len("ptdump-"):]).ptdump


def test_recorded_0002_run_fails_no_kernel_splat_as_readme_says():
    folder = "recorded-run-0002-stale-linear-map"
    run = _run_of(folder)
    found = checks.judge(run)
    assert_named_checks_fail(found, "0002-stale-linear-map")
    assert run.error["blame"] == "kernel" and run.error["step"] == "remove dimm1"
    console = DATA / folder / "acpi-dimm" / "console.log"
    warn, oops = classify_file(console)
    assert (warn.kind, warn.pc_symbol) == ("warning", "free_empty_tables+0x15c/0x400")
    assert (oops.kind, oops.pc_symbol) == ("oops", "free_hotplug_page_range.part.0+0x8/0x58")
    assert oops.title.endswith("fffffdffc2000000")  # dimm1's first struct page (vmemmap)
    assert [c["first_line_no"] for c in run.crashes] == [warn.first_line_no, oops.first_line_no]


def test_console_warn_fixture_is_a_verbatim_slice_of_the_0002_run():
    full = (DATA / "recorded-run-0002-stale-linear-map" / "acpi-dimm" /
            "console.log").read_bytes().splitlines(keepends=True)
    fixture = (DATA / "console-warn-hotplug.log").read_bytes()
    assert b"".join(full[188:284]) == fixture      # lines 189-284


def test_recorded_0004_run_is_caught_by_online_memory_mapped_not_a_splat():
    """0004's header says it is caught by no-kernel-splat (an Oops in copy_page).
    In this run (2026-11-27, while acpi-dimm booted with movablecore=, since
    reverted: the data then landed in boot memory) no page of the over-removed
    block was migrated, so there was no Oops: online-memory-mapped caught it,
    naming the unmapped block. Kept as recorded; see tests/data/README."""
    folder = "recorded-run-0004-over-remove-linear-map"
    run = _run_of(folder)
    found = {c.name: c for c in checks.judge(run)}
    assert found["no-kernel-splat"].verdict == PASS and not run.crashes
    hit = found["online-memory-mapped"]
    assert hit.verdict == FAIL and hit.step == "remove dimm1"
    assert "PA 0xa0000000-0xa8000000 (VA 0xffff0000a0000000-0xffff0000a8000000) not mapped" \
        in hit.evidence
    removed1 = ptdump.parse((DATA / folder / "acpi-dimm" / "ptdump-removed-1.txt").read_text())
    assert ptdump.covering(removed1, LINEAR, OFF + 0xa000_0000, OFF + 0xa800_0000) == []
    assert ptdump.entry_at(removed1, OFF + 0xa800_0000).is_valid  # the rest of dimm2
    assert classify_file(DATA / folder / "acpi-dimm" / "console.log") == []


def test_tests_data_readme_says_where_every_file_comes_from():
    import fnmatch
    text = (DATA / "README").read_text()
    named = set(re.findall(r"`([\w.*/-]+)`", text))
    patterns = {n.split("/")[0] for n in named if not n.startswith(("hotplug-harness", "--"))}
    for entry in sorted(DATA.iterdir()):
        if entry.name in ("README", "__pycache__"):
            continue
        assert any(fnmatch.fnmatch(entry.name, pat) for pat in patterns), \
            f"tests/data/README does not say how {entry.name} was made"
    # whatever is not a capture says so in its name (or README names it generated)
    for entry in DATA.glob("console-*.log"):
        assert "RECORDED" in text.split(f"`{entry.name}`", 1)[1].split("\n", 1)[0]
