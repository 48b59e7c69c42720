"""Tests for harness.verdict.report.

Golden files: ``tests/data/run-sample.json`` is a recorded run (two methods built
from the synthetic samples, see test_checks.py) and
``tests/data/run-sample-report.json`` holds the report.json and junit.xml that
``write_report`` makes of it. Regenerate both with
``UPDATE_GOLDEN=1 python -m pytest tests/test_report.py``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import xml.etree.ElementTree as ET

import pytest
from test_checks import DATA, TABLES, boot_refused_hot_ok, kselftest_output, make_run

from harness.errors import HarnessError
from harness.machine.crashwatch import classify_file
from harness.records import FAIL, PASS, MethodRun
from harness.verdict import checks, report

SAMPLE = DATA / "run-sample.json"
GOLDEN = DATA / "run-sample-report.json"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
KERNEL = {"source": "debian:linux-source-6.12", "patches": ["0001-remove-probe.patch"],
          "config_digest": "c0ffee", "cache_key": "0123456789abcdef",
          "release": "6.12.117", "fragments": ["base", "4k-48"]}


def sample_runs() -> list[MethodRun]:
    """A passing acpi-dimm run and a failing probe run (table kept, an oops)."""
    good = make_run(
        bootmem_offline={"block": 8, "exit_code": 1, "state_after": "online",
                         "output": "sh: write error: Device or resource busy"},
        kselftest={"exit_code": 1, "hotplugged_blocks": [16, 17, 18, 19],
                   "output": kselftest_output(boot_refused_hot_ok())})
    crash = [dict(r.to_dict(), step="remove memory17")
             for r in classify_file(DATA / "console-oops-copy-page.log")]
    bad = make_run("removed-table-kept", TABLES["added"], method="probe",
                   crashes=tuple(crash), notes=("walker not run on this machine",))
    return [good, bad]


def recorded_runs() -> list[MethodRun]:
    data = {"kernel": KERNEL, "runs": [r.to_dict() for r in sample_runs()]}
    if UPDATE:
        SAMPLE.write_text(json.dumps(data, indent=1) + "\n")
    saved = json.loads(SAMPLE.read_text())
    return [MethodRun.from_dict(r) for r in saved["runs"]]


def test_recorded_sample_matches_its_builder():
    saved = [r.to_dict() for r in recorded_runs()]
    assert saved == json.loads(json.dumps([r.to_dict() for r in sample_runs()])), \
        "tests/data/run-sample.json is stale: UPDATE_GOLDEN=1 regenerates it"


@pytest.fixture
def written(tmp_path):
    runs = recorded_runs()
    path = report.write_report(tmp_path / "out", KERNEL, runs,
                               {r.method: checks.judge(r) for r in runs},
                               {"started": "2026-11-26T10:00:00Z"})
    return path


def without_runs(data: dict) -> dict:
    """report.json minus each method's run (that is run-sample.json's content)."""
    return dict(data, methods=[dict(m, run="<see run-sample.json>")
                               for m in data["methods"]])


def test_golden_report_and_junit(written):
    data = json.loads(written.read_text())
    assert [m["run"] for m in data["methods"]] == \
        [r.to_dict() for r in recorded_runs()]
    produced = {"report.json": without_runs(data),
                "junit.xml": (written.parent / "junit.xml").read_text()}
    if UPDATE:
        GOLDEN.write_text(json.dumps(produced, indent=1) + "\n")
    golden = json.loads(GOLDEN.read_text())
    hint = "report format changed: UPDATE_GOLDEN=1 regenerates the golden file"
    assert produced["junit.xml"].splitlines() == golden["junit.xml"].splitlines(), hint
    assert produced["report.json"] == golden["report.json"], hint


def test_report_shape(written):
    data = json.loads(written.read_text())
    assert list(data)[:4] == ["verdict", "exit_code", "kernel", "methods"]
    assert (data["verdict"], data["exit_code"]) == (FAIL, 1)
    assert data["kernel"] == KERNEL and data["started"] == "2026-11-26T10:00:00Z"
    good, bad = data["methods"]
    assert (good["method"], good["verdict"], bad["method"], bad["verdict"]) == \
        ("acpi-dimm", PASS, "probe", FAIL)
    assert good["steps"][0] == {"name": "boot", "seconds": 1.5, "transport": "serial"}
    assert set(good["checks"][0]) == {"name", "verdict", "evidence", "step"}
    assert MethodRun.from_dict(good["run"]) == recorded_runs()[0]


def test_junit(written):
    root = ET.parse(written.parent / "junit.xml").getroot()
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert list(suites) == ["acpi-dimm", "probe"]
    probe = suites["probe"]
    counts = tuple(probe.get(k) for k in ("tests", "failures", "errors", "skipped"))
    assert counts == ("12", "2", "0", "2")
    failure = probe.find("testcase[@name='tables-freed']/failure")
    assert failure.get("message") == (
        "removed-dimm1: page tables differ from before: hole at VA 0xffff000080000000-"
        "0xffff0000c0000000 is at PMD level, PUD in before: a PMD table was kept alive "
        "(not freed)")
    assert "a PMD table was kept alive" in failure.text
    assert probe.find("testcase[@name='bootmem-not-removable']/skipped") is not None
    assert suites["acpi-dimm"].find("testcase[@name='kselftest']") is not None


def test_method_folders(written):
    folder = written.parent / "probe"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["ptdump-added-to-online.diff", "ptdump-added.txt",
                     "ptdump-before-to-added.diff", "ptdump-before.txt",
                     "ptdump-online-to-removed-dimm1.diff", "ptdump-online.txt",
                     "ptdump-removed-dimm1.txt", "steps.txt"]
    assert (folder / "ptdump-before.txt").read_text() == \
        (DATA / "synthetic-ptdump-4k-48-before.txt").read_text()
    diff = (folder / "ptdump-before-to-added.diff").read_text().splitlines()
    assert diff[:3] == ["--- ptdump-before.txt", "+++ ptdump-added.txt",
                        "@@ Linear Mapping @@"]
    assert "+0xffff000080000000-0xffff0000a0000000         512M PMD       RW NX SHD AF" \
        "    CON BLK UXN    MEM/NORMAL-TAGGED" in diff
    same = (folder / "ptdump-added-to-online.diff").read_text()
    assert "@@ Linear Mapping @@ (identical)" in same
    steps = (folder / "steps.txt").read_text()
    assert "    1.50s  serial  ok    boot" in steps
    assert "# note: walker not run on this machine" in steps


def test_summary(written):
    text = report.summary(json.loads(written.read_text()), written)
    lines = text.splitlines()
    assert lines[0] == ("kernel: release 6.12.117, source debian:linux-source-6.12, "
                        "config base+4k-48, cache_key 0123456789abcdef")
    assert lines[1].startswith("patches: 0001-")
    assert lines[3].split() == ["acpi-dimm", "PASS", "4.7s"]
    assert any(ln.split()[:2] == ["FAIL", "tables-freed"] for ln in lines)
    assert "FAIL: method probe, step remove dimm1, check tables-freed:" in lines
    assert "    oops: Unable to handle kernel paging request at virtual address " \
        "ffff00008ff8c000 (pc copy_page+0x4/0xd0), step remove memory17, " \
        "console line 36" in lines
    assert lines[-1] == f"verdict: FAIL (exit 1)  report: {written}"


def test_summary_shows_run_errors(tmp_path):
    run = make_run(error={"message": "QEMU died", "step": "add dimm1", "blame": "infra",
                          "evidence": "qemu: terminating on signal 15"})
    run = dataclasses.replace(run, phases=run.phases[:1])
    path = report.write_report(tmp_path, KERNEL, [run])
    data = json.loads(path.read_text())
    assert (data["verdict"], data["exit_code"]) == ("ERROR", 2)
    text = report.summary(data)
    assert "ERROR: method acpi-dimm, step add dimm1, run stopped (infra): QEMU died" in text
    assert "    qemu: terminating on signal 15" in text
    root = ET.parse(tmp_path / "junit.xml").getroot()
    assert root.find("testsuite/testcase[@name='run']/error").get("type") == "infra"


def test_rejudge_applies_current_rules(written, monkeypatch):
    data = json.loads(written.read_text())
    for method in data["methods"]:                  # as judged by an older rule set
        method["verdict"] = PASS
        method["checks"] = [{"name": "old-rule", "verdict": PASS, "evidence": "",
                             "step": ""}]
    data["verdict"], data["exit_code"] = PASS, 0
    written.write_text(json.dumps(data))
    again, code = report.rejudge(written.parent)
    assert code == 1 and again["verdict"] == FAIL
    assert again["started"] == "2026-11-26T10:00:00Z"
    assert json.loads(written.read_text()) == again
    assert without_runs(again) == json.loads(GOLDEN.read_text())["report.json"]
    assert "tables-freed" in (written.parent / "junit.xml").read_text()


def test_rejudge_missing_report(tmp_path):
    with pytest.raises(HarnessError, match="cannot read"):
        report.rejudge(tmp_path)


def test_extra_keys_cannot_replace_the_verdict(tmp_path):
    with pytest.raises(HarnessError, match="verdict"):
        report.write_report(tmp_path, KERNEL, [make_run()], None, {"verdict": PASS})


def test_control_characters_survive_junit(tmp_path):
    run = make_run(bootmem_offline={"block": 8, "exit_code": 0, "state_after": "offline",
                                    "output": "\x1b[31mred\x1b[0m \x00"})
    report.write_report(tmp_path, KERNEL, [run])
    root = ET.parse(tmp_path / "junit.xml").getroot()
    assert "red" in root.find(".//testcase[@name='bootmem-not-removable']/failure").text
