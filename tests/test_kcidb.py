"""KCIDB JSON (``report DIR --kcidb FILE``, harness/verdict/kcidb.py), validated
with the kcidb-io package's own schema, on recorded runs: a FAIL (the seeded
regression 0002's whole report folder) and a PASS (the default kernel's
recorded method runs, written into a report folder the way ``run`` does)."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from harness import cli
from harness.records import MethodRun
from harness.verdict import kcidb, report

kcidb_io = pytest.importorskip(
    "kcidb_io", reason="kcidb-io (the test extras: make venv) is not installed")

DATA = Path(__file__).resolve().parent / "data"
FAIL_RUN = DATA / "recorded-run-0002-stale-linear-map"
PASS_RUNS = ["recorded-4k-48-acpi-dimm/methodrun.json", "recorded-4k-48-probe/probe.json",
             "recorded-4k-48-virtio-mem/virtio-mem.json", "recorded-4k-48-kselftest.json"]
TOOLCHAIN = ("aarch64-linux-gnu-gcc (Debian 12.2.0-14) 12.2.0 | "
             "GNU ld (GNU Binutils for Debian) 2.40")
BUILD_LOG = "$ make ARCH=arm64 Image\n  CC      arch/arm64/mm/mmu.o\n  LD      vmlinux\n"


def validate(doc: dict) -> None:
    """kcidb-io's schema: the version the document names, and the latest's
    upgrade path (what kcidb-submit does with it)."""
    kcidb_io.schema.LATEST.validate(doc)
    kcidb_io.schema.V5_0.validate_exactly(doc)
    assert kcidb_io.schema.LATEST.is_valid(kcidb_io.schema.LATEST.upgrade(doc))


@pytest.fixture
def fail_dir(tmp_path) -> Path:
    folder = tmp_path / "fail"
    shutil.copytree(FAIL_RUN, folder)
    return folder


@pytest.fixture
def pass_dir(tmp_path) -> Path:
    """The recorded default-kernel runs as one report folder (kernel identity as
    recorded for the FAIL run, without its seeded patch), with a build log."""
    kernel = json.loads((FAIL_RUN / "report.json").read_text())["kernel"]
    # the default kernel's cache key was not recorded with those runs: a stand-in
    kernel = {**kernel, "patches": kernel["patches"][:2], "toolchain": TOOLCHAIN,
              "cache_key": "0123456789abcdef" * 4}
    runs = [MethodRun.from_dict(json.loads((DATA / f).read_text())) for f in PASS_RUNS]
    folder = tmp_path / "pass"
    report.write_report(folder, kernel, runs,
                        extra={"seconds": 42.0, "build_seconds": 0.4, "rebuilt": False})
    (folder / kcidb.BUILD_LOG).write_text(BUILD_LOG)
    return folder


def export(folder: Path, tmp_path: Path, *extra: str) -> tuple[int, dict]:
    out = tmp_path / "kcidb.json"
    code = cli.main(["report", str(folder), "--kcidb", str(out), *extra])
    return code, json.loads(out.read_text())


def test_fail_run_validates(fail_dir, tmp_path, capsys):
    code, doc = export(fail_dir, tmp_path)
    assert code == 1
    validate(doc)
    assert doc["version"] == {"major": 5, "minor": 0}
    (co,), (b,) = doc["checkouts"], doc["builds"]
    assert co["tree_name"] == "linux-source-6.12" and co["valid"] is True
    digests = [p[1] for p in json.loads((FAIL_RUN / "report.json").read_text())
               ["kernel"]["patches"]]
    # KCIDB's definition: sha256sum *.patch | cut -c-64 | sha256sum
    assert co["patchset_hash"] == hashlib.sha256(
        "".join(d + "\n" for d in digests).encode()).hexdigest()
    assert co["misc"]["patches"][-1] == "0002-stale-linear-map.patch"
    assert b["checkout_id"] == co["id"] and b["architecture"] == "arm64"
    assert b["config_name"] == "base+4k-48" and b["misc"]["geometry"] == "4k-48"
    assert b["duration"] == 349.37 and b["status"] == "PASS"
    assert b["id"] == "hotplug_harness:" + json.loads(
        (FAIL_RUN / "report.json").read_text())["kernel"]["cache_key"]
    tests = {t["path"]: t for t in doc["tests"]}
    assert tests["hotplug.acpi-dimm"]["status"] == "FAIL"
    splat = tests["hotplug.acpi-dimm.no-kernel-splat"]
    assert splat["status"] == "FAIL" and splat["build_id"] == b["id"]
    assert "WARNING" in splat["log_excerpt"] and splat["duration"] > 0
    assert tests["hotplug.acpi-dimm.blocks-lifecycle"]["status"] == "PASS"
    assert tests["hotplug.acpi-dimm.no-stale-linear-map"]["status"] == "SKIP"
    assert all(t["id"].startswith("hotplug_harness:") for t in doc["tests"])
    assert len({t["id"] for t in doc["tests"]}) == len(doc["tests"])
    assert "[kcidb]" in capsys.readouterr().err


def test_pass_run_validates(pass_dir, tmp_path):
    code, doc = export(pass_dir, tmp_path, "--kcidb-origin", "my_lab")
    assert code == 0
    validate(doc)
    (b,) = doc["builds"]
    assert b["compiler"] == "aarch64-linux-gnu-gcc (Debian 12.2.0-14) 12.2.0"
    assert b["misc"]["toolchain"] == TOOLCHAIN and b["misc"]["rebuilt"] is False
    assert b["log_excerpt"] == BUILD_LOG and b["id"].startswith("my_lab:")
    methods = {t["path"]: t["status"] for t in doc["tests"] if t["path"].count(".") == 1}
    assert methods == {"hotplug.acpi-dimm": "PASS", "hotplug.probe": "PASS",
                       "hotplug.virtio-mem": "PASS", "hotplug.kselftest": "PASS"}
    statuses = {t["status"] for t in doc["tests"]}
    assert statuses == {"PASS", "SKIP"}
    # every check of the report is a test of its own
    data = json.loads((pass_dir / "report.json").read_text())
    assert len(doc["tests"]) == sum(1 + len(m["checks"]) for m in data["methods"])


def test_same_folder_same_ids(fail_dir, tmp_path):
    _, first = export(fail_dir, tmp_path)
    _, again = export(fail_dir, tmp_path)
    assert first == again


def test_matrix_folder_merges_builds_and_checkouts(fail_dir, pass_dir, tmp_path):
    """A matrix's or repro's folder: every report below it, each checkout and
    build once."""
    matrix = tmp_path / "matrix"
    shutil.copytree(pass_dir, matrix / "4k-48")
    shutil.copytree(pass_dir, matrix / "again" / "4k-48")
    shutil.copytree(fail_dir, matrix / "0002")
    doc = kcidb.from_folder(matrix)
    validate(doc)
    assert len(doc["checkouts"]) == 2 and len(doc["builds"]) == 2
    assert len(doc["tests"]) == len({t["id"] for t in doc["tests"]})


def test_run_error_is_a_test(tmp_path):
    run = MethodRun.from_dict(json.loads((DATA / PASS_RUNS[1]).read_text()))
    data = report.build_report({"source": "dir:/src/linux@abc", "cache_key": "k" * 8,
                                "commit": {"sha": "a" * 40, "subject": "mm: x",
                                           "dirty": True}}, [run])
    data["methods"][0]["run"]["error"] = {"blame": "infra", "step": "boot",
                                          "message": "no HARNESS-READY", "evidence": ""}
    doc = kcidb.from_report(data)
    validate(doc)
    (co,) = doc["checkouts"]
    assert co["git_commit_hash"] == "a" * 40 and co["tree_name"] == "linux"
    assert "with local changes" in co["comment"] and "/src" not in json.dumps(co)
    err = [t for t in doc["tests"] if t["path"] == "hotplug.probe.run"]
    assert err and err[0]["status"] == "ERROR" and "boot" in err[0]["log_excerpt"]


def test_no_kernel_no_objects():
    doc = kcidb.from_report({"verdict": "ERROR", "exit_code": 143, "kernel": {},
                             "methods": []})
    validate(doc)
    assert doc["builds"] == doc["tests"] == []


def test_excerpt_limits():
    long = "x" * 10 + "\n" + "y\n" * 20000
    assert len(kcidb.excerpt(long)) <= kcidb.EXCERPT_MAX
    tail = kcidb.excerpt(long, tail=True)
    assert len(tail) <= kcidb.EXCERPT_MAX and tail.endswith("y\n")
    assert kcidb.excerpt("a\0b") == "a\ufffdb"
    assert kcidb.path_part("split leaf/x") == "split_leaf_x"
    assert kcidb.patchset_hash([]) == ""


def test_bad_origin_is_refused(fail_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["report", str(fail_dir), "--kcidb", str(tmp_path / "k.json"),
                  "--kcidb-origin", "My-Lab"])
    assert e.value.code == 2
    assert "lower-case" in capsys.readouterr().err


def test_matrix_and_repro_take_the_option():
    import subprocess
    import sys
    for sub in ("matrix", "repro", "report"):
        out = subprocess.run([sys.executable, "-m", "harness.cli", sub, "--help"],
                             capture_output=True, text=True, check=True).stdout
        assert "--kcidb FILE" in out and "--kcidb-origin NAME" in out, sub
