"""The command line without QEMU: --version, -q/-v, boot --exec (faked boot),
exit codes and messages."""
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

import harness
from harness import cli, progress, runner, signals
from harness.cli import run as cli_run
from harness.errors import CommandError, HarnessError, MachineError
from harness.machine.transport import CommandResult

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def restore(monkeypatch):
    """main() installs signal handlers and sets the verbosity: undo both."""
    import signal
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, h in old.items():
        signal.signal(s, h)
    progress.set_level(progress.NORMAL)
    signals._state.update(signum=None, snapshot={})


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"hotplug-harness {harness.__version__}"


def test_version_from_the_command_line():
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "--version"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.split()[-1] == harness.__version__


def test_help_documents_every_exit_code():
    text = cli.parser().format_help()
    for code in ("0 pass", "1 the kernel", "2 the harness", "130", "143", "SIGTERM"):
        assert code in text
    run_help = cli.parser()._subparsers._group_actions[0].choices["run"].format_help()
    assert "130/143" in run_help and '"interrupted": true' in run_help
    readme = (ROOT / "README.md").read_text()
    assert "**130**" in readme and "**143**" in readme


@pytest.mark.parametrize("argv,level", [
    (["run"], progress.NORMAL), (["-q", "run"], progress.QUIET),
    (["run", "-q"], progress.QUIET), (["run", "--verbose"], progress.VERBOSE),
    (["-v", "boot", "--check"], progress.VERBOSE),
])
def test_quiet_and_verbose_before_or_after_the_command(argv, level):
    args = cli.parser().parse_args(argv)
    assert (progress.NORMAL if args.verbosity is None else args.verbosity) == level


def test_quiet_and_verbose_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["-q", "-v", "run"])
    assert e.value.code == 2 and "not allowed" in capsys.readouterr().err


def test_progress_levels(capsys):
    progress.set_level(progress.QUIET)
    runner._progress("[probe] booting")
    progress.detail("ssh$ ls")
    from harness.host import show_command
    show_command(["make", "Image"])
    assert capsys.readouterr().err == ""
    progress.set_level(progress.NORMAL)
    runner._progress("[probe] booting")
    progress.detail("ssh$ ls")
    assert capsys.readouterr().err == "[probe] booting\n"
    progress.set_level(progress.VERBOSE)
    progress.detail("ssh$ ls")
    progress.console_line("[    1.0] hello")
    assert capsys.readouterr().err == "ssh$ ls\nconsole| [    1.0] hello\n"


def test_verbose_prints_guest_commands():
    from harness.session import Guest
    progress.set_level(progress.VERBOSE)
    ran = []
    transport = SimpleNamespace(name="ssh", run=lambda c, d: ran.append(c) or "r")
    guest = Guest(machine=None, console=None, ssh=None, watcher=None,
                  transport=transport, out_dir=Path("."))
    import contextlib
    import io
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert guest.run("cat /proc/meminfo") == "r"
    assert err.getvalue() == "ssh$ cat /proc/meminfo\n" and ran == ["cat /proc/meminfo"]


# ------------------------------------------------------------ boot --exec ---

class FakeGuest:
    def __init__(self, result):
        self.result, self.step, self.commands = result, "boot", []

    def run(self, command, deadline=30.0, via=None):
        self.commands.append((command, deadline))
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


@pytest.fixture
def fake_boot(monkeypatch, tmp_path):
    """cli_run.boot and the build replaced: records the options, yields FakeGuest."""
    seen = {}

    def install(result):
        guest = FakeGuest(result)

        @contextmanager
        def boot(art, opts, out, progress=True):
            seen.update(opts=opts, out=out, progress=progress, entered=True)
            try:
                yield guest
            finally:
                seen["closed"] = True
        monkeypatch.setattr(cli_run, "boot", boot)
        monkeypatch.setattr(cli_run.build_mod, "build",
                            lambda req, progress=None: SimpleNamespace(
                                kernel_release="6.12.0-test"))
        seen["guest"] = guest
        return seen
    monkeypatch.chdir(tmp_path)
    return install


def test_boot_exec_prints_output_and_exits_with_the_status(fake_boot, capsys, tmp_path):
    seen = fake_boot(CommandResult("x", "out line\n", "err line\n", 7, 0.1, "ssh"))
    code = cli.main(["boot", "--exec", "echo hi; exit 7", "--mode", "dt",
                     "--out", str(tmp_path / "o")])
    out = capsys.readouterr()
    assert code == 7
    assert out.out == "out line\n" and out.err == "err line\n"
    assert seen["guest"].commands == [("echo hi; exit 7", 600.0)]
    assert seen["opts"].mode == "dt" and seen["opts"].transport == "ssh"
    assert seen["closed"] and seen["progress"] is False   # QEMU argv only with -v
    assert (tmp_path / "o").stat().st_mode & 0o777 == 0o700


def test_boot_exec_serial_transport_and_timeout(fake_boot, capsys):
    seen = fake_boot(CommandResult("x", "6.12.0\n", "", 0, 0.1, "serial"))
    code = cli.main(["boot", "--exec", "uname -r", "--transport", "serial",
                     "--exec-timeout", "30"])
    assert code == 0 and capsys.readouterr().out == "6.12.0\n"
    assert seen["opts"].transport == "serial"
    assert seen["guest"].commands == [("uname -r", 30.0)]
    # the default output folder is private, under ./runs
    runs = list(Path("runs").iterdir())
    assert len(runs) == 1 and runs[0].stat().st_mode & 0o777 == 0o700
    assert Path("runs").stat().st_mode & 0o777 == 0o700


def test_boot_exec_status_out_of_range_is_255(fake_boot):
    fake_boot(CommandResult("x", "", "", -1, 0.1, "ssh"))
    assert cli.main(["boot", "--exec", "kill -9 $$"]) == 255


def test_boot_exec_machine_failure_is_exit_2(fake_boot, capsys):
    fake_boot(MachineError("QEMU exited with code 1 while running step 'exec'",
                           step="exec"))
    assert cli.main(["boot", "--exec", "true"]) == 2
    err = capsys.readouterr().err
    assert "hotplug-harness: error (infra)" in err and "QEMU exited" in err


def test_boot_exec_and_check_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["boot", "--check", "--exec", "true"])
    assert e.value.code == 2 and "not allowed with" in capsys.readouterr().err


def test_boot_exec_interrupted_exits_130(fake_boot, capsys):
    seen = fake_boot(signals.Interrupted())
    assert cli.main(["boot", "--exec", "sleep 100"]) == 130
    assert seen["closed"]
    assert "interrupted by SIGINT" in capsys.readouterr().err


# ------------------------------------------------------------ exit codes ----

@pytest.mark.parametrize("exc,code,text", [
    (HarnessError("bad input"), 2, "error (harness): bad input"),
    (CommandError("guest command failed", blame="kernel"), 1, "error (kernel)"),
    (signals.Interrupted(), 130, "interrupted by SIGINT"),
    (signals.Terminated(), 143, "interrupted by SIGTERM"),
    (KeyboardInterrupt(), 130, "interrupted by SIGINT"),
    (RuntimeError("oops"), 2, "harness bug"),
])
def test_main_maps_errors_to_exit_codes(monkeypatch, capsys, exc, code, text):
    def boom(args):
        raise exc
    monkeypatch.setattr(cli, "cmd_build", boom)
    assert cli.main(["build"]) == code
    assert text in capsys.readouterr().err


def test_error_after_a_signal_counts_as_the_interruption(monkeypatch, capsys):
    """make dies of the terminal's Ctrl-C before Python's handler runs: the
    BuildError that follows is the interruption, not a kernel that fails."""
    def build(args):
        signals._state["signum"] = signals.signal.SIGINT
        raise HarnessError("the kernel does not build (make exit 2)", blame="kernel")
    monkeypatch.setattr(cli, "cmd_build", build)
    assert cli.main(["build"]) == 130
    err = capsys.readouterr().err
    assert "interrupted by SIGINT" in err and "does not build" not in err


@pytest.mark.parametrize("argv,want", [
    (["run"], None), (["run", "--tcg-thread", "multi"], "multi"),
    (["boot", "--tcg-thread", "single"], "single")])
def test_tcg_thread_reaches_the_boot_options(argv, want):
    """None lets the method choose (race: multi; the others: single)."""
    from harness.cli.run import boot_options
    assert boot_options(cli.parser().parse_args(argv)).tcg_thread == want


@pytest.mark.parametrize("argv,want", [
    (["run"], "max"), (["run", "--cpu", "cortex-a57"], "cortex-a57"),
    (["boot", "--cpu", "cortex-a53"], "cortex-a53")])
def test_cpu_reaches_the_boot_options_and_qemus_argv(argv, want, tmp_path):
    from harness.cli.run import boot_options
    from harness.machine.qemu import VmSpec, qemu_argv
    assert boot_options(cli.parser().parse_args(argv)).cpu == want
    argv = qemu_argv(VmSpec(kernel="k", initrd="i", run_dir=str(tmp_path), cpu=want))
    assert argv[argv.index("-cpu") + 1] == want


def test_an_unknown_cpu_is_refused(capsys, tmp_path):
    from harness.machine.qemu import VmSpec, qemu_argv
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["run", "--cpu", "cortex-a9"])
    with pytest.raises(HarnessError, match="unknown CPU model 'cortex-a9'"):
        qemu_argv(VmSpec(kernel="k", initrd="i", run_dir=str(tmp_path), cpu="cortex-a9"))
