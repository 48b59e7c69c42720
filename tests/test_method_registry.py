"""The method protocol and registry (harness/drive/method.py): what each
method declares, how the runner fills its Options, how ``run`` refuses an
option a method cannot honour, and the help generated from the registry.
No kernel, no QEMU: the build and the runner are replaced where ``cli.main``
runs."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness import cli, progress, runner
from harness.cli import run as cli_run
from harness.drive import acpi_dimm, kselftest, method, probe, race, reach, split_leaf, virtio_mem
from harness.errors import HarnessError
from harness.kernel import source as src
from harness.records import REMOVAL_CHECKS, MethodRun
from harness.session import BootOptions

ROOT = Path(__file__).resolve().parent.parent
ART = SimpleNamespace(source="debian 6.12", patches=(), config_digest="cd",
                      cache_key="ef" * 32, kernel_release="6.12.0", fragments=("base",),
                      seconds=0.1, rebuilt=False, kconfig={})
MODULES = (acpi_dimm, probe, virtio_mem, kselftest, split_leaf, race, reach)


@pytest.fixture(autouse=True)
def restore():
    yield
    progress.set_level(progress.NORMAL)


@dataclass(frozen=True)
class Opts:
    cycles: int = 1
    dimms: int = 2
    fill_mb: int = 8


def squeeze(text: str) -> str:
    return "".join(text.split())


def stand_in(name="fifth", mode="dt", **kw) -> method.Method:
    return method.Method(name=name, mode=mode, summary=f"{name}: a stand-in", options=Opts,
                         drive=lambda rec, opts: None, **kw)


# ---------------------------------------------------------------- registry

def test_every_module_registers_one_method_and_the_runner_uses_the_registry():
    assert runner.METHODS is method.load()
    assert list(runner.METHODS) == ["acpi-dimm", "probe", "virtio-mem", "kselftest",
                                    "split-leaf", "race", "reach", "subsection"]
    for module in MODULES:
        assert runner.METHODS[module.METHOD.name] is module.METHOD
        assert module.METHOD.drive is module.drive and module.METHOD.options is module.Options
    assert runner.ORDER == method.default_order() == ("acpi-dimm", "probe", "virtio-mem",
                                                      "kselftest")
    assert [m.name for m in method.methods()] == list(runner.METHODS)


def test_declarations_as_before():
    """What the modules' implicit attributes said (NAME, MODE, REQUIRED_CHECKS,
    ORDER_CHECKS) before the protocol, now declared."""
    got = {m.name: (m.mode, m.required_checks, m.order_checks) for m in method.methods()}
    assert got == {
        "acpi-dimm": ("acpi", REMOVAL_CHECKS, True),
        "probe": ("dt", REMOVAL_CHECKS + ("bootmem-not-removable",), True),
        "virtio-mem": ("dt", REMOVAL_CHECKS, True),
        "kselftest": ("acpi", REMOVAL_CHECKS + ("kselftest",), True),
        "split-leaf": ("acpi", REMOVAL_CHECKS, True),
        "race": ("dt", REMOVAL_CHECKS, False),
        "reach": ("dt", REMOVAL_CHECKS + reach.CHECKS, False),
        "subsection": ("acpi", ("no-stale-linear-map", "no-stale-vmemmap",
                                "present-struct-pages-mapped", "no-kernel-splat"), False)}


def test_lookup_and_unknown_names():
    assert method.lookup("probe") is probe.METHOD
    with pytest.raises(HarnessError, match="unknown method 'nope'; choose from acpi-dimm"):
        method.lookup("nope")
    with pytest.raises(HarnessError, match="unknown method"):
        runner.resolve_methods("probe,nope")


def test_two_methods_of_one_name_are_refused_a_reimport_is_not():
    with pytest.raises(ValueError, match="two methods named 'probe'"):
        method.register(stand_in("probe"))
    assert method.register(probe.METHOD) is probe.METHOD


@pytest.mark.parametrize("kw,match", [
    (dict(mode="uefi"), "mode 'uefi' is not one of"),
    (dict(honours=frozenset({"seconds"})), "its Options lacks"),
    (dict(honours=frozenset({"fill_mb"})), "are not run options"),
])
def test_a_bad_declaration_fails_at_import(kw, match):
    with pytest.raises(ValueError, match=match):
        stand_in(**kw)


def test_a_new_method_is_one_new_file(tmp_path):
    """A module dropped next to the others (here: a folder added to the
    package's search path) is a method: in the registry, in 'all' if it says
    so, in run's help, and run's options are judged against it."""
    (tmp_path / "fifth.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass
        from harness.drive.method import Method, register

        @dataclass(frozen=True)
        class Options:
            cycles: int = 1

        def drive(rec, opts):
            pass

        METHOD = register(Method(name="fifth", mode="dt", options=Options, drive=drive,
                                 summary="a fifth way to remove memory",
                                 honours=frozenset({"cycles"}), rank=45, in_all=True))
        '''))
    code = textwrap.dedent(f'''
        import harness.drive
        harness.drive.__path__.append({str(tmp_path)!r})
        from harness import cli, runner
        print(runner.ORDER)
        print("exit", cli.main(["run", "--method", "fifth", "--dimms", "3"]))
        try:
            cli.main(["run", "--help"])
        except SystemExit:
            pass
        ''')
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == "('acpi-dimm', 'probe', 'virtio-mem', 'kselftest', 'fifth')"
    assert lines[1] == "exit 2"
    assert "  fifth       a fifth way to remove memory" in proc.stdout
    assert squeeze("acpi-dimm, probe, virtio-mem, kselftest, fifth, split-leaf, race, "
                   "reach, subsection or all") in squeeze(proc.stdout)
    assert "--dimms 3: fifth cannot honour it (fifth takes no --dimms)" in proc.stderr


# ---------------------------------------------------------------- options

def test_the_runner_fills_only_what_a_method_honours():
    ropts = runner.RunOptions(cycles=3, dimms=4, dimm_mb=1024, online_type="online",
                              race_seconds=7)
    assert runner.method_options(acpi_dimm.METHOD, ropts) == acpi_dimm.Options(
        dimms=4, dimm_mb=1024, cycles=3, online_type="online")
    assert runner.method_options(probe.METHOD, ropts) == probe.Options(
        cycles=3, online_type="online")
    assert runner.method_options(virtio_mem.METHOD, ropts) == virtio_mem.Options(
        cycles=3, online_type="online")
    assert runner.method_options(split_leaf.METHOD, ropts) == split_leaf.Options(
        dimm_mb=1024, online_type="online")
    assert runner.method_options(race.METHOD, ropts) == race.Options(
        seconds=7, online_type="online")
    # dimm_mb 0 is "the method's own": the default stays
    assert runner.method_options(split_leaf.METHOD, runner.RunOptions()).dimm_mb == 1024
    # None keeps a default; a value for a field not honoured is dropped
    m = stand_in(honours=frozenset({"cycles"}))
    assert m.make_options({"cycles": None, "dimms": 5}) == Opts()
    assert m.make_options({"cycles": 4}) == Opts(cycles=4)


def test_recorded_cycles_follow_what_the_method_honours():
    ropts = runner.RunOptions(cycles=3)
    assert runner._recorded_options(probe.METHOD, ropts)["cycles"] == 3
    assert runner._recorded_options(race.METHOD, ropts)["cycles"] == 1


def test_kselftest_gets_the_kernels_tree_from_the_artifacts(tmp_path, monkeypatch):
    """The drive no longer resolves --kernel-src: the runner hands it the tree
    the artifacts were built from (Source.describe(): KIND:PATH@SHORT)."""
    tree = tmp_path / "linux"
    art = SimpleNamespace(source=src.Source("dir", tree, "ab" * 32).describe())
    opts = runner.method_options(kselftest.METHOD, runner.RunOptions(dimm_mb=256), art)
    assert opts == kselftest.Options(dimm_mb=256, kernel_tree=str(tree))
    seen = []
    monkeypatch.setattr(src, "pristine_tree", lambda s: seen.append(s) or tmp_path / "x")
    tarball = SimpleNamespace(source="tarball:/usr/src/linux-source-6.12.tar.xz@0123456789abcdef")
    assert runner.kernel_tree(tarball) == tmp_path / "x"
    assert (seen[0].kind, str(seen[0].path), seen[0].short) == (
        "tarball", "/usr/src/linux-source-6.12.tar.xz", "0123456789abcdef")
    with pytest.raises(HarnessError, match="cannot tell the kernel's source tree"):
        runner.kernel_tree(SimpleNamespace(source="debian 6.12"))
    with pytest.raises(HarnessError, match="needs the kernel's source tree"):
        runner.method_options(kselftest.METHOD, runner.RunOptions())


def test_kselftest_script_comes_from_the_given_tree(tmp_path):
    script = tmp_path / kselftest.SCRIPT
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\necho synthetic\n")
    assert kselftest.script_text(str(tmp_path)) == "#!/bin/sh\necho synthetic\n"
    with pytest.raises(HarnessError, match="cannot read .*mem-on-off-test.sh"):
        kselftest.script_text(str(tmp_path / "elsewhere"))
    with pytest.raises(HarnessError, match="no kernel source tree"):
        kselftest.script_text("")


@pytest.mark.parametrize("m", method.methods(), ids=lambda m: m.name)
@pytest.mark.parametrize("page", ["CONFIG_ARM64_4K_PAGES", "CONFIG_ARM64_64K_PAGES"])
def test_boot_declarations_match_boot_options(m, page):
    """``mode`` is the boot the method gets whatever --mode said; ``own_memory``
    is declared exactly when boot_options replaces --mem; the user's kernel
    parameters are kept."""
    other = "dt" if m.mode == "acpi" else "acpi"
    base = BootOptions(mode=other, mem_mb=3000, cmdline=("user=1",))
    got = m.boot(base, {page: "y"})
    assert got.mode == m.mode
    assert (got.mem_mb != 3000) == bool(m.own_memory)
    assert got.cmdline[0] == "user=1"


# ---------------------------------------------------------------- refusals

@pytest.mark.parametrize("name,given,words", [
    ("probe", {"mode": "acpi"}, ["--mode acpi: probe cannot honour it",
                                 "probe boots in dt mode", "drop --mode",
                                 "acpi-dimm, kselftest, split-leaf"]),
    ("acpi-dimm", {"mode": "dt"}, ["acpi-dimm boots in acpi mode",
                                   "probe, virtio-mem, race"]),
    ("probe", {"dimms": 3}, ["--dimms 3: probe cannot honour it",
                             "probe takes no --dimms", "run a method that can: acpi-dimm"]),
    ("virtio-mem", {"dimm_mb": 256}, ["--dimm-size 256", "virtio-mem takes no --dimm-size"]),
    ("probe", {"mem_mb": 2048}, ["--mem 2048: probe cannot honour it",
                                 "probe sets its own boot memory: mem= hides 1024 MiB"]),
    ("race", {"mem_mb": 2048}, ["race sets its own boot memory"]),
    ("acpi-dimm", {"seconds": 5}, ["--race-seconds 5", "acpi-dimm takes no --race-seconds",
                                   "run a method that can: race"]),
    ("race", {"order_check": "full"}, ["--order-check=full: race cannot honour it",
                                       "race runs without gdb"]),
    ("race", {"cycles": 2}, ["--cycles 2", "race takes no --cycles"]),
    ("kselftest", {"online_type": "online"}, ["--online-type online",
                                              "kselftest takes no --online-type"]),
    ("split-leaf", {"dimms": 1}, ["split-leaf takes no --dimms"]),
])
def test_an_option_the_method_cannot_honour_is_refused(name, given, words):
    with pytest.raises(HarnessError) as e:
        method.check_given([method.lookup(name)], given)
    assert e.value.exit_code == 2 and e.value.blame == "harness"
    for w in words:
        assert w in e.value.message, e.value.message


@pytest.mark.parametrize("name,given", [
    ("probe", {"mode": "dt", "cycles": 3, "online_type": "online", "order_check": "full"}),
    ("acpi-dimm", {"mode": "acpi", "mem_mb": 2048, "dimms": 3, "dimm_mb": 256}),
    ("race", {"seconds": 10, "order_check": "off", "online_type": "online"}),
    ("kselftest", {"dimm_mb": 256, "cycles": 2, "mem_mb": 2048}),
    ("split-leaf", {"mem_mb": 2048, "dimm_mb": 2048}),
    ("virtio-mem", {"mem_mb": 2048, "cycles": 2}),
])
def test_options_the_method_honours_pass(name, given):
    assert method.check_given([method.lookup(name)], given) == []


def test_several_methods_refuse_only_what_none_honours():
    selected = [method.lookup(n) for n in runner.ORDER]
    notes = method.check_given(selected, {"dimms": 3, "mode": "dt", "cycles": 2})
    assert notes == [
        "--dimms 3 applies to acpi-dimm only; probe, virtio-mem, kselftest run without "
        "it (probe takes no --dimms; virtio-mem takes no --dimms; kselftest takes no "
        "--dimms)",
        "--mode dt applies to probe, virtio-mem only; acpi-dimm, kselftest run without "
        "it (acpi-dimm boots in acpi mode; kselftest boots in acpi mode)"]
    with pytest.raises(HarnessError, match=r"--race-seconds 9: acpi-dimm, probe, "
                                           r"virtio-mem, kselftest cannot honour it"):
        method.check_given(selected, {"seconds": 9})


# ---------------------------------------------------------------- the CLI

@pytest.fixture
def fake_run(monkeypatch, tmp_path):
    """cli.main's run with the build and run_all replaced; returns the RunOptions
    run_all got (a list, empty if the run was refused before the build)."""
    monkeypatch.chdir(tmp_path)
    seen: list = []

    def build(req, progress=None):
        seen.append("build")
        return ART

    def run_all(art, ropts, out):
        seen.append(ropts)
        return [MethodRun(method=m, geometry={}) for m in ropts.methods]
    monkeypatch.setattr(cli_run.build_mod, "build", build)
    monkeypatch.setattr(runner, "run_all", run_all)
    return seen


def test_cli_refuses_before_building(fake_run, capsys):
    code = cli.main(["run", "--method", "probe", "--mode", "acpi", "--report", "out"])
    err = capsys.readouterr().err
    assert code == 2 and fake_run == []
    assert "hotplug-harness: error (harness): [options] --mode acpi: probe cannot " \
           "honour it (probe boots in dt mode)" in err
    assert not Path("out").exists()


def test_cli_defaults_never_refuse(fake_run):
    """Every method alone with every option left at its default (the defaults
    are acpi, 1024 MiB, order checks on, 2 DIMMs... which several methods cannot
    honour), and the defaults still reach the runner."""
    for m in method.methods():
        assert cli.main(["run", "--method", m.name, "--report", f"out-{m.name}"]) in (0, 2)
    ropts = [r for r in fake_run if r != "build"]
    assert [r.methods for r in ropts] == [(m.name,) for m in method.methods()]
    first = ropts[0]
    assert (first.cycles, first.dimms, first.dimm_mb, first.online_type, first.order_check,
            first.race_seconds, first.race_iterations) == (1, 2, 0, "online_movable", "on",
                                                           240, 30)
    assert (first.boot.mode, first.boot.mem_mb) == ("acpi", 1024)


def test_cli_an_explicit_default_value_is_still_judged(fake_run):
    """--dimms 2 is what the default says, but the user asked for it: probe
    cannot honour it."""
    assert cli.main(["run", "--method", "probe", "--dimms", "2"]) == 2
    assert cli.main(["run", "--method", "probe", "--mode", "dt", "--no-order-check",
                     "--report", "out"]) in (0, 2)
    [ropts] = [r for r in fake_run if r != "build"]
    assert ropts.order_check == "off"


def test_cli_all_with_an_option_some_cannot_honour_runs_and_says_so(fake_run, capsys):
    code = cli.main(["run", "--dimms", "3", "--report", "out", "--json"])
    out = capsys.readouterr()
    [ropts] = [r for r in fake_run if r != "build"]
    assert ropts.methods == runner.ORDER and ropts.dimms == 3
    assert "[run] --dimms 3 applies to acpi-dimm only; probe, virtio-mem, kselftest run " \
           "without it" in out.err
    assert code == json.loads(out.out)["exit_code"]


def test_cli_help_is_generated_from_the_registry(monkeypatch):
    monkeypatch.setitem(runner.METHODS, "fifth", stand_in(
        honours=frozenset({"cycles", "dimms"}), rank=55))
    text = cli.parser()._subparsers._group_actions[0].choices["run"].format_help()
    flat = squeeze(text)     # argparse wraps help lines (at hyphens too)
    for m in method.methods():
        assert f"  {m.name:<11} " in text
        assert squeeze(m.summary) in flat
    assert "[dt boot; --cycles --dimms]" in text            # the stand-in's line
    assert "[dt boot; --online-type --race-seconds --race-iterations; no --mem; no gdb]" \
        in text
    assert "('all' is the 4 above; these are asked for by name:)" in text
    assert squeeze("acpi-dimm, probe, virtio-mem, kselftest, split-leaf, fifth, race, reach, "
                   "subsection or "
                   "all (default: all = acpi-dimm, probe, virtio-mem, kselftest)") in flat
    assert squeeze("DIMMs to plug (default 2; taken by acpi-dimm, fifth)") in flat
