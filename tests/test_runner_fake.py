"""harness.runner and ``cli.main`` without QEMU: the real runner, Recorder,
session, Machine, console pipeline, checks and report, over the fakes of
tests/fakes.py. A method here replays a recorded real run
(tests/data/recorded-4k-48-probe/probe.json): its steps are run again as guest
commands (answered from a script), its inspections are the recorded phases."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from fakes import ART, DATA, Answer, crash_answer, install, qemu_dies_answer
from harness import cli, progress, runner, signals
from harness.cli import run as cli_run
from harness.drive.method import Method
from harness.records import FAIL, PASS, MethodRun
from harness.session import BootOptions
from harness.verdict import checks

RECORDED = DATA / "recorded-4k-48-probe" / "probe.json"
WARN_OOPS = "console-warn-hotplug.log"      # READY, then a WARNING and an Oops
CLEAN = "console-panic-sysrq.log"           # only its READY line is ever shown


@pytest.fixture(autouse=True)
def restore():
    yield
    progress.set_level(progress.NORMAL)
    signals._state.update(signum=None, snapshot={})


@dataclass(frozen=True)
class Options:
    cycles: int = 1


def replaying_method(name: str = "probe", mode: str = "dt"):
    """A method (harness.drive.method.Method) replaying RECORDED: each
    recorded step runs again over the guest transport, each recorded
    inspection is put back as it was."""
    recorded = MethodRun.from_dict(json.loads(RECORDED.read_text()))

    def drive(rec, opts):
        phases = iter(recorded.phases)
        for step in recorded.steps:
            if step.name.startswith("inspect "):
                rec.phases.append(next(phases))
                rec.steps.append(step)
                continue
            rec.step(step.name, lambda s=step: rec.sh(f": {s.name}"))
        rec.geometry = recorded.geometry      # a records.Geometry
        rec.removals.extend(recorded.removals)
        rec.bootmem = recorded.bootmem_offline
    return Method(name=name, mode=mode, summary="replays a recorded run", options=Options,
                  drive=drive, required_checks=(), honours=frozenset({"cycles"}))


ROPTS = runner.RunOptions(methods=("probe",), order_check="off",
                          boot=BootOptions(boot_timeout=5.0))


def run_probe(monkeypatch, tmp_path, console, ssh=(), ropts=ROPTS):
    """runner.run_method of the replaying "probe" over the fakes."""
    fake = install(monkeypatch, tmp_path, console, ssh=list(ssh) + [(r"^: ", Answer())])
    monkeypatch.setitem(runner.METHODS, "probe", replaying_method())
    return fake, runner.run_method("probe", ART, ropts, tmp_path / "probe")


def test_a_replayed_clean_run_passes(monkeypatch, tmp_path):
    fake, run = run_probe(monkeypatch, tmp_path, CLEAN)
    recorded = MethodRun.from_dict(json.loads(RECORDED.read_text()))
    assert run.error is None and run.crashes == ()
    assert [s.name for s in run.steps] == [s.name for s in recorded.steps]
    assert all(s.ok for s in run.steps)
    assert run.phases == recorded.phases and run.removals == recorded.removals
    assert run.options.to_dict() == {"walker": True, "cycles": 1, "order_check": "off"}
    # every step was marked in the kernel log, then run, over SSH
    marks = [c for c in fake.script.commands if c.endswith("> /dev/kmsg")]
    assert len(marks) == len(fake.script.commands) // 2 == 9
    assert checks.method_verdict(run, checks.judge(run)) == PASS
    assert (tmp_path / "probe" / "console.log").read_text().startswith("HARNESS-READY")


def test_a_crash_in_a_step_is_the_kernels_and_attributed_to_it(monkeypatch, tmp_path):
    _, run = run_probe(monkeypatch, tmp_path, WARN_OOPS,
                       [(r"^: remove 0x80000000$", crash_answer())])
    assert run.error["blame"] == "kernel" and run.error["step"] == "remove 0x80000000"
    assert [s.name for s in run.steps][-1] == "remove 0x80000000"
    assert not run.steps[-1].ok
    # every report the console showed (the runner waits for late ones), each
    # placed in the step whose kmsg marker precedes it
    assert [c["kind"] for c in run.crashes] == ["warning", "oops"]
    assert {c["step"] for c in run.crashes} == {"remove 0x80000000"}
    log = (tmp_path / "probe" / "console.log").read_text().split("\n")
    first = run.crashes[0]["first_line_no"]          # counted from 1
    assert "cut here" in log[first - 1] and "WARNING: CPU: 0 PID: 33" in log[first]
    found = {c.name: c.verdict for c in checks.judge(run)}
    assert found["no-kernel-splat"] == FAIL


def test_a_guest_that_never_gets_ready_is_a_run_without_steps(monkeypatch, tmp_path):
    ropts = runner.RunOptions(methods=("probe",), order_check="off",
                              boot=BootOptions(boot_timeout=0.5))
    _, run = run_probe(monkeypatch, tmp_path, b"EFI stub: Booting Linux Kernel...\r\n",
                       ropts=ropts)
    assert run.steps == () and run.phases == () and run.crashes == ()
    assert run.error["blame"] == "infra" and run.error["step"] == "boot"
    assert "never became ready" in run.error["message"]
    assert "EFI stub" in run.error["evidence"]


def test_qemu_dying_mid_method_blames_the_machine(monkeypatch, tmp_path):
    _, run = run_probe(monkeypatch, tmp_path, CLEAN,
                       [(r"^: online 0x80000000$", qemu_dies_answer())])
    assert run.error["blame"] == "infra" and run.crashes == ()
    assert "QEMU exited with code -9 while running step 'online 0x80000000'" \
        in run.error["message"]
    assert checks.method_verdict(run, checks.judge(run)) != PASS


def test_run_all_runs_each_method_in_a_fresh_guest_in_order(monkeypatch, tmp_path, capsys):
    fake = install(monkeypatch, tmp_path, CLEAN, ssh=[(r"^: ", Answer())])
    monkeypatch.setitem(runner.METHODS, "probe", replaying_method("probe", "dt"))
    monkeypatch.setitem(runner.METHODS, "virtio-mem", replaying_method("virtio-mem", "dt"))
    ropts = runner.RunOptions(methods=("virtio-mem", "probe"), order_check="off")
    runs = runner.run_all(ART, ropts, tmp_path)
    assert [r.method for r in runs] == ["virtio-mem", "probe"]
    assert len(fake.run_dirs) == 2 and not any(d.exists() for d in fake.run_dirs)
    err = capsys.readouterr().err
    assert err.index("[virtio-mem] booting (dt)") < err.index("[virtio-mem] done in") \
        < err.index("[probe] booting (dt)") < err.index("[probe] done in")


# ------------------------------------------------------------ cli.main ------

@pytest.fixture
def cli_fakes(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli_run.build_mod, "build", lambda req, progress=None: ART)
    monkeypatch.setitem(runner.METHODS, "probe", replaying_method())
    return tmp_path


def test_cli_run_passes_with_exit_code_0(cli_fakes, monkeypatch, capsys):
    install(monkeypatch, cli_fakes, CLEAN, ssh=[(r"^: ", Answer())])
    code = cli.main(["run", "--method", "probe", "--no-order-check", "--report", "out"])
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads((cli_fakes / "out" / "report.json").read_text())
    assert report["verdict"] == PASS and report["exit_code"] == 0
    assert [m["method"] for m in report["methods"]] == ["probe"]
    assert (cli_fakes / "out" / "junit.xml").exists()
    assert (cli_fakes / "out" / "probe" / "console.log").exists()
    assert "PASS" in out


def test_cli_run_kernel_crash_exits_1_naming_the_check(cli_fakes, monkeypatch, capsys):
    install(monkeypatch, cli_fakes, WARN_OOPS, ssh=[
        (r"^: remove 0x80000000$", crash_answer()), (r"^: ", Answer())])
    code = cli.main(["run", "--method", "probe", "--no-order-check", "--report", "out",
                     "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 1 and data["exit_code"] == 1 and data["verdict"] == FAIL
    [method] = data["methods"]
    splat = {c["name"]: c for c in method["checks"]}["no-kernel-splat"]
    assert splat["verdict"] == FAIL and "free_empty_tables" in splat["evidence"]


def test_cli_run_guest_never_ready_exits_2(cli_fakes, monkeypatch, capsys):
    install(monkeypatch, cli_fakes, b"EFI stub: Booting Linux Kernel...\r\n")
    code = cli.main(["run", "--method", "probe", "--no-order-check", "--boot-timeout",
                     "0.5", "--report", "out"])
    assert code == 2
    report = json.loads((cli_fakes / "out" / "report.json").read_text())
    error = report["methods"][0]["run"]["error"]
    assert error["blame"] == "infra" and error["step"] == "boot"


def test_cli_boot_exec_prints_output_and_exits_with_its_status(cli_fakes, monkeypatch,
                                                               capsys):
    fake = install(monkeypatch, cli_fakes, CLEAN, ssh=[
        (r"^cat /proc/meminfo; false$", Answer("MemTotal: 1 kB\n", 1, "oops\n"))])
    code = cli.main(["boot", "--mode", "dt", "--exec", "cat /proc/meminfo; false",
                     "--out", "boot"])
    got = capsys.readouterr()
    assert code == 1 and got.out == "MemTotal: 1 kB\n" and "oops" in got.err
    assert fake.script.commands == ["cat /proc/meminfo; false"]
    assert Path(cli_fakes / "boot" / "console.log").exists()


def test_cli_boot_check_reports_both_transports(cli_fakes, monkeypatch, capsys):
    """--check runs uname over SSH and over the serial console (framed, and
    answered here by a recording of a real framed command's output)."""
    ready = b"HARNESS-READY 6.12.0 uptime 0.50\r\n"
    framed = b"HHMARK-0badc0de-S\r\n6.12.0\r\nHHMARK-0badc0de-E 0\r\n"
    from harness.machine import console as console_module
    monkeypatch.setattr(console_module.secrets, "token_hex", lambda n: "0badc0de")
    install(monkeypatch, cli_fakes, ready + framed,
            ssh=[(r"^uname -r$", Answer("6.12.0\n"))])
    code = cli.main(["boot", "--mode", "dt", "--check", "--json", "--out", "boot"])
    res = json.loads(capsys.readouterr().out)
    assert code == 0
    assert res["serial_uname"] == res["ssh_uname"] == "6.12.0"
    assert res["guest_uptime_at_ready_s"] == 0.5 and res["boot_to_ready_s"] >= 0
