"""bisect-run: report or error -> git bisect exit code (0 good, 1 bad, 125 skip,
128 abort), and the per-commit log (no kernel builds: run_to_report is
monkeypatched; the misuse paths run the real command line in a subprocess)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness import cli
from harness.cli import bisect as cli_bisect
from harness.cli import run as cli_run
from harness.errors import (
    BuildError,
    ConfigError,
    HarnessError,
    MachineError,
    PatchError,
    ToolMissing,
)

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parent.parent
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


def test_classify_infra_aborts_unless_told_to_skip():
    """A machine or harness failure is no verdict on the commit: it aborts the
    bisect (128) with its reason, or with --infra-is skip skips it (125)."""
    unbooted = method(verdict="ERROR", steps=0,
                      error={"message": "guest never printed HARNESS-READY", "step": "boot",
                             "blame": "infra"})
    could_not_look = method(verdict="ERROR", checks=[("tables-freed", "ERROR")])
    for rep, words in [(report(unbooted, verdict="ERROR", exit_code=2),
                        ("did not boot", "HARNESS-READY")),
                       (report(could_not_look, verdict="ERROR", exit_code=2),
                        ("could not judge", "acpi-dimm:tables-freed")),
                       (report(verdict="ERROR", exit_code=2), ("run verdict ERROR",))]:
        code, failing, reason = cli_bisect.classify(rep)
        assert (code, failing) == (128, []), reason
        assert reason.startswith(("infra:", "could not judge")), reason
        assert all(w in reason for w in words) and "--infra-is skip goes on" in reason
        code, _, reason = cli_bisect.classify(rep, infra_is="skip")
        assert code == 125 and reason.endswith("(--infra-is skip)")
    # a chosen check that never looked (SKIP everywhere) cannot call it good
    code, _, reason = cli_bisect.classify(report(CLEAN), ["bootmem-not-removable"])
    assert code == 128 and "did not look" in reason
    assert cli_bisect.classify(report(CLEAN), ["bootmem-not-removable"],
                               infra_is="skip")[0] == 125
    assert cli_bisect.classify(report(CLEAN, verdict="ERROR", exit_code=130,
                                      interrupted=True))[0] == 130


def test_classify_a_kernel_that_crashes_while_booting_is_untestable():
    panicked = method(verdict="FAIL", steps=0,
                      error={"message": "kernel panic: VFS: Unable to mount root fs",
                             "step": "boot", "blame": "kernel"})
    code, _, reason = cli_bisect.classify(report(panicked, verdict="FAIL", exit_code=1))
    assert code == 125 and reason.startswith("untestable: the kernel did not boot")


def hung(step, detail, blame="infra", message=None):
    """A method whose run stopped in ``step`` with ``detail`` (a run's step records)."""
    m = method(verdict="ERROR", checks=[("tables-freed", "SKIP")],
               error={"message": message or detail, "step": "qmp", "blame": blame})
    m["run"]["steps"] = [{"name": "offline dimm1", "seconds": 0.4, "transport": "ssh",
                          "ok": True, "detail": ""},
                         {"name": step, "seconds": 30.1, "transport": "qmp", "ok": False,
                          "detail": detail}]
    return m


HANGS = [
    ("remove dimm1", "no QMP event DEVICE_DELETED {'device': 'dimm1'} within 30s"),
    ("remove 0x80000000", "command timed out after 30s over ssh: echo 0x80000000 > "
                          "/sys/devices/system/memory/remove"),
    ("offline 0x80000000", "no answer within 30.0s while running 'echo offline > ...'"),
    ("shrink to 0", "timed out after 60s waiting for the blocks to go offline"),
]


@pytest.mark.parametrize("step,detail", HANGS)
def test_classify_a_removal_that_hangs_is_bad_by_default(step, detail):
    rep = report(hung(step, detail), verdict="ERROR", exit_code=2)
    code, failing, reason = cli_bisect.classify(rep)
    assert (code, failing) == (1, [])
    assert reason.startswith("hang, counted bad (--hang-is bad)") and step in reason
    code, _, reason = cli_bisect.classify(rep, hang_is="skip")
    assert code == 125 and reason.startswith("hang, skipped (--hang-is skip)")
    # a gdb error raised while detaching after the hang does not hide it
    gdb = hung(step, detail, message="gdb did not detach within 20s")
    assert cli_bisect.classify(report(gdb, verdict="ERROR", exit_code=2))[0] == 1


def test_classify_what_is_not_a_hang():
    # a timeout outside a removal (filling memory on a slow host): the machine
    not_removal = hung("use memory", "command timed out after 120s over ssh: head -c ...")
    # QEMU died in the removal: the machine, not a hang
    died = hung("remove dimm1", "QEMU exited with code -9 while waiting for QMP event "
                                "DEVICE_DELETED")
    for m in (not_removal, died):
        code, _, reason = cli_bisect.classify(report(m, verdict="ERROR", exit_code=2))
        assert code == 128 and reason.startswith("infra: could not judge"), reason
    # the kernel crashed in the removal: bad, as a crash
    crashed = hung("remove dimm1", "kernel BUG at mm/memory_hotplug.c:1234", blame="kernel")
    crashed["verdict"] = "FAIL"
    code, failing, reason = cli_bisect.classify(report(crashed, verdict="FAIL", exit_code=1))
    assert code == 1 and reason == "checks failed" and failing[0].startswith(
        "acpi-dimm:qmp (kernel BUG")


@pytest.mark.parametrize("error,code,kind", [
    (BuildError("the kernel does not build (make exit 2)", step="build", blame="kernel"),
     125, "untestable: the tree does not build"),
    (PatchError("0002 does not apply: mm/memory_hotplug.c hunk 3", step="patch"),
     125, "untestable: a patch does not apply"),
    (ConfigError("options dropped: CONFIG_ARM64_64K_PAGES", step="config"),
     125, "untestable: the configuration cannot be made"),
    (HarnessError("make config failed (exit 2)", step="config"),
     125, "untestable: the configuration cannot be made"),
    (MachineError("QEMU did not connect to the console socket", step="boot"),
     128, "infra: error in boot"),
    (ToolMissing("qemu-system-aarch64", "qemu-system-arm"), 128, "infra: error in host"),
    (HarnessError("--kernel-src x: no such file or directory", step="source"),
     128, "harness: error in source"),
    (RuntimeError("a harness bug"), 128, "harness: internal error: RuntimeError"),
])
def test_error_outcome(error, code, kind):
    got, reason = cli_bisect.error_outcome(error)
    assert got == code and reason.startswith(kind), reason
    got, reason = cli_bisect.error_outcome(error, infra_is="skip")
    assert got == 125
    assert reason.endswith("(--infra-is skip)") == (code == 128)


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
    """A git tree that passes for a kernel tree (a Makefile and arch/arm64)."""
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    repo = tmp_path / "linux"
    (repo / "arch" / "arm64").mkdir(parents=True)
    env_args = ["-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "Makefile").write_text("# not a kernel\n")
    (repo / "arch" / "arm64" / "Kconfig").write_text("# nor this\n")
    subprocess.run(["git", "-C", str(repo), "add", "Makefile", "arch"], check=True)
    subprocess.run(["git", *env_args, "-C", str(repo), "commit", "-q", "-m", "one"],
                   check=True)
    return repo


def head(repo):
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()


def fake_run(monkeypatch, outcome, calls=None):
    def run_to_report(kernel_src, configs, patches, append, methods, cycles, folder,
                      order_check="on", series=True):
        if calls is not None:
            calls.append(dict(kernel_src=kernel_src, configs=list(configs),
                              patches=list(patches), methods=tuple(methods),
                              folder=folder, series=series))
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
    mine = tree.parent / "my.patch"
    mine.write_text("--- a/x\n+++ b/x\n")
    assert cli.main(["bisect-run", "--kernel-src", str(tree), "--method", "acpi-dimm",
                     "--patch", str(mine), "--config", "64k-42"]) == 0
    assert calls[0]["kernel_src"] == str(tree.resolve())
    assert calls[0]["patches"] == [str(mine)] and calls[0]["configs"] == ["64k-42"]
    assert calls[0]["methods"] == ("acpi-dimm",) and calls[0]["series"] is True
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
    ConfigError("CONFIG_ARM64_VA_BITS_52 dropped by olddefconfig", step="config"),
])
def test_bisect_run_untestable_commits_are_skipped(tree, monkeypatch, error):
    fake_run(monkeypatch, error)
    log = tree.parent / "bisect.log"
    assert cli.main(["bisect-run", "--kernel-src", str(tree), "--log", str(log)]) == 125
    fields = log.read_text().splitlines()[-1].split("\t")
    assert fields[1:4] == [head(tree), "skip", "125"]
    assert fields[5].startswith("untestable: ") and error.message.split(":")[0] in fields[5]


@needs_git
@pytest.mark.parametrize("error", [
    MachineError("guest never printed HARNESS-READY", step="boot"),
    ToolMissing("qemu-system-aarch64", "qemu-system-arm"),
    RuntimeError("a harness bug"),
])
def test_bisect_run_infra_and_harness_failures_abort(tree, monkeypatch, error, capsys):
    """The machine or the harness failing says nothing of the commit: abort with
    the reason (logged), or skip it with --infra-is skip."""
    fake_run(monkeypatch, error)
    log = tree.parent / "bisect.log"
    assert cli.main(["bisect-run", "--kernel-src", str(tree), "--log", str(log)]) == 128
    fields = log.read_text().splitlines()[-1].split("\t")
    assert fields[1:4] == [head(tree), "abort", "128"]
    assert getattr(error, "message", str(error)).split(":")[0] in fields[5]
    assert fields[5].endswith("(aborts the bisect; --infra-is skip goes on)")
    assert "abort (exit 128)" in capsys.readouterr().out
    assert cli.main(["bisect-run", "--kernel-src", str(tree), "--log", str(log),
                     "--infra-is", "skip"]) == 125
    fields = log.read_text().splitlines()[-1].split("\t")
    assert fields[2:4] == ["skip", "125"] and fields[5].endswith("(--infra-is skip)")


@needs_git
def test_bisect_run_hang(tree, monkeypatch):
    fake_run(monkeypatch, report(hung(*HANGS[0]), verdict="ERROR", exit_code=2))
    log = tree.parent / "bisect.log"
    assert cli.main(["bisect-run", "--kernel-src", str(tree), "--log", str(log)]) == 1
    assert cli.main(["bisect-run", "--kernel-src", str(tree), "--log", str(log),
                     "--hang-is", "skip"]) == 125
    lines = [line.split("\t") for line in log.read_text().splitlines()]
    assert [f[2] for f in lines] == ["bad", "skip"]
    assert all("step 'remove dimm1' never finished: no QMP event DEVICE_DELETED" in f[5]
               for f in lines)


@needs_git
def test_bisect_run_no_series(tree, monkeypatch):
    calls = []
    fake_run(monkeypatch, report(CLEAN), calls)
    assert cli.main(["bisect-run", "--kernel-src", str(tree), "--no-series"]) == 0
    assert calls[0]["series"] is False


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
    assert reason == ("untestable: the tree does not build in build: the kernel does not "
                      "build (make exit 2): arch/arm64/mm/mmu.c:1335:9: error: implicit "
                      "declaration of function 'unmap_hotplug_rang'")


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
    assert cli.main(["--bogus", "bisect-run"]) == 128   # refused by the top-level parser


@needs_git
def test_bisect_run_unknown_check_or_method_aborts(tree, monkeypatch):
    fake_run(monkeypatch, report(CLEAN))
    assert cli.main(["bisect-run", "--kernel-src", str(tree), "--check", "nope"]) == 128
    assert cli.main(["bisect-run", "--kernel-src", str(tree), "--method", "nope"]) == 128
    assert not (tree / ".git" / "hotplug-bisect.log").exists()


def bisect_run(*args, cwd):
    """The real command line, as git bisect run calls it."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "harness.cli", "bisect-run", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@needs_git
def test_every_misuse_exits_128(tree, tmp_path):
    """Each way of calling bisect-run wrongly aborts the bisect (128), never 1
    or 2 (which git bisect takes for "bad"), before anything is built; none
    writes a log line."""
    plain_git = tmp_path / "not-a-kernel"
    plain_git.mkdir()
    subprocess.run(["git", "init", "-q", str(plain_git)], check=True)
    subprocess.run(["git", "-C", str(plain_git), "-c", "user.name=t", "-c",
                    "user.email=t@example.invalid", "commit", "-q", "--allow-empty",
                    "-m", "empty"], check=True)
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    cases = {
        "an unknown option": ["--bogus"],
        "a stray argument": ["extra"],
        "a malformed number": ["--cycles", "x"],
        "no cycles": ["--cycles", "0"],
        "a bad choice": ["--hang-is", "maybe"],
        "an option without its value": ["--method"],
        "not a git tree": ["--kernel-src", str(tmp_path)],
        "no such folder": ["--kernel-src", str(tmp_path / "nowhere")],
        "a git tree that is no kernel": ["--kernel-src", str(plain_git)],
        "an unknown check": ["--check", "nope"],
        "an unknown method": ["--method", "nope"],
        "an unknown config fragment": ["--config", "nope"],
        "a missing patch": ["--patch", str(tmp_path / "missing.patch")],
        "a missing series": ["--series", str(tmp_path / "missing.mbx")],
        "a log that cannot be written": ["--log", str(a_file / "bisect.log")],
        "a report folder that cannot be made": ["--reports", str(a_file / "reports")],
    }
    for what, args in cases.items():
        proc = bisect_run(*args, cwd=tree)
        assert proc.returncode == 128, (what, proc.returncode, proc.stderr[-800:])
        assert "aborts git bisect" in proc.stderr, (what, proc.stderr[-800:])
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "--bogus", "bisect-run"],
                          cwd=tree, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 128, proc.stderr
    assert not (tree / ".git" / "hotplug-bisect.log").exists()
    assert not (tree / ".git" / "hotplug-bisect").exists() or not any(
        (tree / ".git" / "hotplug-bisect").iterdir())
