"""bisect-run: report -> git bisect exit code, and the per-commit log (no kernel builds:
run_to_report is monkeypatched)."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from harness import cli
from harness.cli import bisect as cli_bisect
from harness.cli import run as cli_run
from harness.errors import BuildError, MachineError, PatchError

DATA = Path(__file__).parent / "data"
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")


def check(name, verdict):
    return {"name": name, "verdict": verdict, "evidence": "", "step": ""}


def method(name="acpi-dimm", verdict="PASS", checks=(), steps=1, error=None):
    return {"method": name, "verdict": verdict,
            "steps": [{"name": "add", "seconds": 1.0, "transport": "qmp"}] * steps,
            "checks": [check(*c) for c in checks],
            "run": {"error": error, "steps": []}}


def report(*methods, verdict="PASS", exit_code=0, **extra):
    return {"verdict": verdict, "exit_code": exit_code, "kernel": {},
            "methods": list(methods), **extra}


CLEAN = method(checks=[("tables-freed", "PASS"), ("no-kernel-splat", "PASS"),
                       ("bootmem-not-removable", "SKIP")])
LEAKY = method(verdict="FAIL", checks=[("tables-freed", "FAIL"),
                                      ("no-kernel-splat", "PASS")])


def test_classify_good_bad():
    assert cli_bisect.classify(report(CLEAN))[0] == 0
    code, failing, _ = cli_bisect.classify(report(LEAKY, verdict="FAIL", exit_code=1))
    assert (code, failing) == (1, ["acpi-dimm:tables-freed"])


def test_classify_chosen_checks():
    bad = report(LEAKY, verdict="FAIL", exit_code=1)
    assert cli_bisect.classify(bad, ["tables-freed"])[0] == 1
    code, failing, reason = cli_bisect.classify(bad, ["no-kernel-splat"])
    assert (code, failing) == (0, []) and "other checks failed: acpi-dimm:tables-freed" in reason
    # a chosen check that never looked (SKIP everywhere) cannot call it good
    code, _, reason = cli_bisect.classify(report(CLEAN), ["bootmem-not-removable"])
    assert code == 125 and "did not look" in reason


def test_classify_skips():
    unbooted = method(verdict="ERROR", steps=0,
                      error={"message": "guest never printed HARNESS-READY", "step": "boot",
                             "blame": "infra"})
    code, _, reason = cli_bisect.classify(report(unbooted, verdict="ERROR", exit_code=2))
    assert code == 125 and "did not boot" in reason and "HARNESS-READY" in reason
    could_not_look = method(verdict="ERROR", checks=[("tables-freed", "ERROR")])
    code, _, reason = cli_bisect.classify(report(could_not_look, verdict="ERROR",
                                                 exit_code=2))
    assert code == 125 and "acpi-dimm:tables-freed" in reason
    assert cli_bisect.classify(report(verdict="ERROR", exit_code=2))[0] == 125  # no method
    assert cli_bisect.classify(report(CLEAN, verdict="ERROR", exit_code=130,
                                      interrupted=True))[0] == 130


def test_classify_a_kernel_blamed_error_without_a_failed_check_is_bad():
    crashed = method(verdict="FAIL", checks=[("tables-freed", "PASS")],
                     error={"message": "Oops in remove", "step": "remove dimm1",
                            "blame": "kernel"})
    code, failing, _ = cli_bisect.classify(report(crashed, verdict="FAIL", exit_code=1))
    assert code == 1 and failing[0].startswith("acpi-dimm:remove dimm1")


def test_classify_recorded_runs():
    """Real report.json files: a clean sample and the seeded 0002 stale linear map."""
    bad = json.loads((DATA / "recorded-run-0002-stale-linear-map" / "report.json")
                     .read_text())
    code, failing, _ = cli_bisect.classify(bad)
    assert code == 1 and "acpi-dimm:no-kernel-splat" in failing
    assert cli_bisect.classify(bad, ["no-kernel-splat"])[0] == 1


@pytest.fixture
def tree(tmp_path):
    repo = tmp_path / "linux"
    repo.mkdir()
    env_args = ["-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "Makefile").write_text("# not a kernel\n")
    subprocess.run(["git", "-C", str(repo), "add", "Makefile"], check=True)
    subprocess.run(["git", *env_args, "-C", str(repo), "commit", "-q", "-m", "one"],
                   check=True)
    return repo


def head(repo):
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()


def fake_run(monkeypatch, outcome, calls=None):
    def run_to_report(kernel_src, configs, patches, append, methods, cycles, folder,
                      order_check="on"):
        if calls is not None:
            calls.append(dict(kernel_src=kernel_src, configs=list(configs),
                              patches=list(patches), methods=tuple(methods),
                              folder=folder))
        if isinstance(outcome, BaseException):
            raise outcome
        folder.mkdir(parents=True)
        (folder / "report.json").write_text(json.dumps(outcome))
        return outcome
    monkeypatch.setattr(cli_run, "run_to_report", run_to_report)


def read_log(repo):
    return (repo / ".git" / "hotplug-bisect.log").read_text().splitlines()


@needs_git
def test_bisect_run_good_then_bad_logs_each_commit(tree, monkeypatch, capsys):
    calls = []
    fake_run(monkeypatch, report(CLEAN), calls)
    assert cli.main(["bisect-run", "--kernel-src", str(tree), "--method", "acpi-dimm",
                     "--patch", "/x/my.patch", "--config", "64k-42"]) == 0
    assert calls[0]["kernel_src"] == str(tree.resolve())
    assert calls[0]["patches"] == ["/x/my.patch"] and calls[0]["configs"] == ["64k-42"]
    assert calls[0]["methods"] == ("acpi-dimm",)
    assert calls[0]["folder"].parent == tree / ".git" / "hotplug-bisect"
    fake_run(monkeypatch, report(LEAKY, verdict="FAIL", exit_code=1))
    assert cli.main(["bisect-run", "--kernel-src", str(tree)]) == 1
    lines = [line.split("\t") for line in read_log(tree)]
    assert [(f[1], f[2], f[3], f[4]) for f in lines] == [
        (head(tree), "good", "0", "-"),
        (head(tree), "bad", "1", "acpi-dimm:tables-freed")]
    assert Path(lines[1][6]).parent == tree / ".git" / "hotplug-bisect"
    assert "bad (exit 1)" in capsys.readouterr().out
    # nothing written into the work tree itself
    status = subprocess.run(["git", "-C", str(tree), "status", "--porcelain"],
                            capture_output=True, text=True).stdout
    assert status == ""


@needs_git
@pytest.mark.parametrize("error", [
    BuildError("make failed: mm/memory_hotplug.c:12: error", step="build"),
    PatchError("0002 does not apply: mm/memory_hotplug.c hunk 3", step="patch"),
    MachineError("guest never printed HARNESS-READY", step="boot"),
    RuntimeError("a harness bug"),
])
def test_bisect_run_untestable_commits_are_skipped(tree, monkeypatch, error):
    fake_run(monkeypatch, error)
    log = tree.parent / "bisect.log"
    assert cli.main(["bisect-run", "--kernel-src", str(tree), "--log", str(log)]) == 125
    fields = log.read_text().splitlines()[-1].split("\t")
    assert fields[1:4] == [head(tree), "skip", "125"]
    assert getattr(error, "message", str(error)).split(":")[0] in fields[5]


@needs_git
def test_bisect_run_skip_names_the_build_error(tree, monkeypatch):
    """The log line carries the evidence's first line: the compiler's error."""
    fake_run(monkeypatch, BuildError(
        "the kernel does not build (make exit 2)", step="build", blame="kernel",
        evidence="arch/arm64/mm/mmu.c:1335:9: error: implicit declaration of function "
                 "'unmap_hotplug_rang'\nfull log: /cache/build/x/build.log"))
    log = tree.parent / "bisect.log"
    assert cli.main(["bisect-run", "--kernel-src", str(tree), "--log", str(log)]) == 125
    reason = log.read_text().splitlines()[-1].split("\t")[5]
    assert reason == ("kernel error in build: the kernel does not build (make exit 2): "
                      "arch/arm64/mm/mmu.c:1335:9: error: implicit declaration of "
                      "function 'unmap_hotplug_rang'")


@needs_git
def test_bisect_run_chosen_check(tree, monkeypatch):
    fake_run(monkeypatch, report(LEAKY, verdict="FAIL", exit_code=1))
    assert cli.main(["bisect-run", "--kernel-src", str(tree),
                     "--check", "no-kernel-splat"]) == 0
    assert cli.main(["bisect-run", "--kernel-src", str(tree),
                     "--check", "tables-freed"]) == 1


def test_bisect_run_misuse_aborts_the_bisect(tmp_path, monkeypatch, capsys):
    fake_run(monkeypatch, report(CLEAN))
    assert cli.main(["bisect-run", "--kernel-src", str(tmp_path)]) == 128   # no git tree
    with pytest.raises(SystemExit) as exc:            # argparse's own exit 2 means "bad"
        cli.main(["bisect-run", "--order-check", "sometimes"])
    assert exc.value.code == 128
    assert "aborts git bisect" in capsys.readouterr().err


@needs_git
def test_bisect_run_unknown_check_or_method_aborts(tree, monkeypatch):
    fake_run(monkeypatch, report(CLEAN))
    assert cli.main(["bisect-run", "--kernel-src", str(tree), "--check", "nope"]) == 128
    assert cli.main(["bisect-run", "--kernel-src", str(tree), "--method", "nope"]) == 128
    assert not (tree / ".git" / "hotplug-bisect.log").exists()
