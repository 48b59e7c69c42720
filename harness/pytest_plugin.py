"""pytest plugin: write your own hotplug test in a few lines.

Registered through the ``pytest11`` entry point (``hotplug_harness``), so any
pytest run in an environment where hotplug-harness is installed has:

options (each one also an ini option, in brackets, of ``pytest.ini``,
``pyproject.toml``'s ``[tool.pytest.ini_options]``, ``tox.ini`` or
``setup.cfg``; the command line wins; a relative path in the ini file is
relative to that file, on the command line to the current directory)
  ``--hh-kernel-src debian|DIR|TARBALL`` [hh_kernel_src]  the kernel source
                 (default: debian)
  ``--hh-patch FILE`` [hh_patch, one a line]  a patch after patches/series
                 (repeatable)
  ``--hh-config NAME|FILE`` [hh_config, one a line]  a config fragment, e.g. a
                 geometry (repeatable)
  ``--hh-order-check on|sampled|off`` [hh_order_check]  gdb on QEMU's gdbstub
                 around every removal step and the four ordering checks
                 (harness/inspect/gdb.py): ``on`` by default, as for ``run``;
                 ``sampled`` follows the first removal of a guest in full,
                 ``off`` attaches no gdb (``full`` is ``on``)
  ``--hh-reports DIR`` [hh_reports]  where each test's report folder goes
                 (default: ``hotplug-reports`` in pytest's rootdir)

fixtures
  ``hh_kernel``  (session) the built or cached ``KernelArtifacts``; a build
                 prints its progress lines (``[build] 412/1136 objects ...``) on
                 stderr, pytest's capture suspended meanwhile
  ``hh_guest``   a factory: ``hh_guest(method="probe")`` (booted as that method
                 boots: mode, ``mem=``, devices) or ``hh_guest(mode="acpi",
                 mem_mb=..., slots=..., cmdline=(...))`` boots a fresh guest
                 (torn down after the test) and returns a :class:`HotplugGuest`:
                 the methods' building blocks (``probe``, ``online``,
                 ``offline``, ``remove``, ``add_dimm``, ``delete_dimm``,
                 ``resize_virtio_mem``: the functions of harness/drive/ the
                 methods run, each recorded as they record it), ``run``/``sh``,
                 ``qmp``, ``phase``, ``step``, ``removal_step``, ``removed``,
                 ``judge()`` and ``assert_pass(*checks)``.

markers
  ``kernel``, ``qemu`` (as in the harness's suite: deselect with
  ``-m "not kernel and not qemu"``): added by themselves to every test that
  uses ``hh_kernel`` (kernel) or ``hh_guest`` (both).

reports
  A test that boots a guest keeps a report folder, as ``run --report`` writes
  one: ``HH_REPORTS/<node id, sanitised>/`` with ``report.json``,
  ``report.html``, ``junit.xml`` and a folder per guest (``console.log``,
  ``qemu.cmdline``, ``steps.txt``, ptdumps and their diffs, gdb's logs). It is
  emptied when the test's first guest boots, written when ``assert_pass`` or
  ``judge`` judges and again when the test ends; a failing test names it
  (in ``assert_pass``'s message and a ``hotplug-harness report`` section).

Guests do not collide under ``pytest -n N`` (pytest-xdist): each boot takes a
free port and its own private run folder, and kernel builds are serialised by
the cache's locks (the second worker finds the kernel cached).
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import re
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional, Union

import pytest

MARKERS = (
    "kernel: builds a real arm64 kernel (minutes when cold, seconds when cached)",
    "qemu: boots the kernel under qemu-system-aarch64",
)
# the markers a test gets by itself from the fixtures it uses
FIXTURE_MARKERS = {"hh_kernel": ("kernel",), "hh_guest": ("kernel", "qemu")}
ORDER_CHECKS = ("on", "full", "sampled", "off")
REPORTS = "hotplug-reports"        # in the rootdir, unless --hh-reports / hh_reports
# option -> (ini type, default, what the ini option is)
INI = {
    "kernel_src": ("string", "debian", "kernel source for hh_kernel: debian, a tree "
                   "or a tarball (default debian)"),
    "patch": ("paths", [], "patches applied after patches/series, one a line"),
    "config": ("linelist", [], "config fragments (names or files), one a line"),
    "no_series": ("bool", False, "do not apply patches/series (its patches already in "
                  "the tree are skipped anyway)"),
    "order_check": ("string", "on", "gdb around every removal step and the ordering "
                    "checks: on (default), sampled or off"),
    "reports": ("string", REPORTS, "folder for each test's report folder (default "
                f"{REPORTS} in the rootdir)"),
}


def pytest_addoption(parser) -> None:
    g = parser.getgroup("hotplug-harness")
    g.addoption("--hh-kernel-src", default=None, metavar="debian|DIR|TARBALL",
                help="hotplug-harness: kernel source for hh_kernel (default debian; "
                     "ini: hh_kernel_src)")
    g.addoption("--hh-patch", action="append", default=None, metavar="FILE",
                help="hotplug-harness: apply this patch after patches/series "
                     "(repeatable; ini: hh_patch)")
    g.addoption("--hh-config", action="append", default=None, metavar="NAME|FILE",
                help="hotplug-harness: add a config fragment (repeatable; ini: hh_config)")
    g.addoption("--hh-no-series", action="store_true", default=None,
                help="hotplug-harness: do not apply patches/series (ini: hh_no_series)")
    g.addoption("--hh-order-check", default=None, choices=ORDER_CHECKS,
                help="hotplug-harness: gdb around every removal step and the four "
                     "ordering checks: 'on' (default; 'full' is the same), 'sampled' "
                     "(the first removal of each guest in full), 'off' (no gdb; "
                     "ini: hh_order_check)")
    g.addoption("--hh-reports", default=None, metavar="DIR",
                help=f"hotplug-harness: each test's report folder goes under DIR "
                     f"(default {REPORTS} in the rootdir; ini: hh_reports)")
    for name, (kind, default, text) in INI.items():
        parser.addini(f"hh_{name}", f"hotplug-harness: {text}", type=kind, default=default)


def pytest_configure(config) -> None:
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    if hh_option(config, "order_check") not in ORDER_CHECKS:
        raise pytest.UsageError(f"hh_order_check = {hh_option(config, 'order_check')!r}: "
                                f"choose from {', '.join(ORDER_CHECKS)}")


def hh_option(config, name: str) -> Any:
    """The value of ``--hh-NAME``: the command line's when given, else the ini
    file's ``hh_NAME``, else the default. Paths come back absolute (the
    command line's from the current directory, the ini file's from its folder)."""
    given = config.getoption("--hh-" + name.replace("_", "-"))
    if given not in (None, []):
        return _path_value(name, given, Path(config.invocation_params.dir))
    kind, default, _ = INI[name]
    value = config.getini(f"hh_{name}")
    if value in ("", [], None):
        return _path_value(name, default, Path(config.rootpath))
    if kind == "paths":
        return [str(p) for p in value]
    base = Path(config.inipath).parent if config.inipath else Path(config.rootpath)
    return _path_value(name, value, base)


def _path_value(name: str, value: Any, base: Path) -> Any:
    def under(path: str) -> str:
        return str(base / Path(path).expanduser())
    if name == "reports" or (name == "kernel_src" and value != "debian"):
        return under(value)
    if name == "patch":
        return [under(v) for v in value]
    if name == "config":      # a fragment's name, or a file
        return [under(v) if (base / v).is_file() else v for v in value]
    return value


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items) -> None:
    """``kernel``/``qemu`` on every test that uses the fixtures, before ``-m``
    deselects (tryfirst)."""
    for item in items:
        used = getattr(item, "fixturenames", ())
        wanted = dict.fromkeys(m for f in used for m in FIXTURE_MARKERS.get(f, ()))
        for marker in wanted:
            if item.get_closest_marker(marker) is None:
                item.add_marker(marker)


REPORT_FOLDER = pytest.StashKey[Path]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test that booted a guest names its report folder."""
    outcome = yield
    rep = outcome.get_result()
    folder = item.stash.get(REPORT_FOLDER, None)
    if folder is not None and rep.failed:
        rep.sections.append(("hotplug-harness report",
                             f"{shown(folder)} (report.json, report.html)"))


def shown(path: Path) -> str:
    """``path`` relative to the current directory when it is under it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _recording_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A HarnessError out of a guest action is kept for the test's report (the
    run's error: what stopped it, whom it blames), then raised on."""
    @functools.wraps(fn)
    def wrapper(self: HotplugGuest, *args: Any, **kw: Any) -> Any:
        from harness.errors import HarnessError
        from harness.runner import true_cause
        try:
            return fn(self, *args, **kw)
        except HarnessError as e:
            cause = true_cause(self.guest, e)    # QEMU's own fault (exit, freeze) first
            self.error = self.error or cause
            if cause is not e:
                raise cause from e
            raise
    return wrapper


Target = Union[int, Any]    # an address (a block of block_size), or a Dimm


class HotplugGuest:
    """A booted guest with a Recorder: the phases and steps a method records,
    judged by the same checks (``harness.verdict.checks``).

    The building blocks are the methods' own functions (harness/drive/:
    ``probe.probe_block``, ``common.online``/``offline``, ``probe.remove_block``,
    ``acpi_dimm.add_dimm``/``delete_dimm``, ``virtio_mem.grow``/``shrink_to``),
    so a step is recorded as the method records it: the same names, a removal
    as a removal step (gdb around it when the ordering checks are on) followed
    by its phase and its removal window. They also take, when the test has
    not, the phases the checks read: ``before`` (before the first add; the
    baseline of ``tables-freed`` once nothing added is left), ``online``
    (before the first offline or removal, if something was onlined) and
    ``removed-N`` (after each removal)."""

    def __init__(self, guest: Any, recorder: Any, method: str, order_check: str = "off",
                 report: Optional[ReportFolder] = None):
        self.guest = guest
        self.recorder = recorder
        self.method = method
        self.order_check = order_check
        self.report = report
        self.error: Optional[BaseException] = None   # a HarnessError a step raised
        self._block_size = 0
        self._added: set[int] = set()     # indices of the blocks added and not removed
        self._baseline = ""               # the phase before the first add
        self._onlined = False
        self._dimms = itertools.count(1)
        self._vmem_size = 0

    @property
    def qmp(self) -> Any:
        return self.guest.machine.qmp

    @property
    def kconfig(self) -> dict:
        return self.recorder.art.kconfig

    # -- the guest, as a method sees it ----------------------------------------
    def run(self, command: str, deadline: float = 30.0):
        """A command over the guest's transport: a CommandResult (ok, stdout...)."""
        return self.guest.run(command, deadline)

    @_recording_errors
    def sh(self, command: str, deadline: float = 30.0) -> str:
        """A command that must succeed; its stdout."""
        return self.recorder.sh(command, deadline)

    @_recording_errors
    def phase(self, name: str):
        """Inspect now: sysfs blocks, meminfo, iomem, ptdump, the host walk."""
        return self.recorder.phase(name)

    @_recording_errors
    def step(self, name: str, action):
        """A named, timed step: ``action`` is a guest command or a callable."""
        fn = (lambda: self.recorder.sh(action)) if isinstance(action, str) else action
        return self.recorder.step(name, fn)

    @_recording_errors
    def removal_step(self, name: str, pa_start: int, pa_end: int, action):
        """A step removing ``[pa_start, pa_end)`` (a guest command or a callable),
        gdb around it when the ordering checks are on."""
        fn = (lambda: self.recorder.sh(action)) if isinstance(action, str) else action
        return self.recorder.removal_step(name, pa_start, pa_end, fn)

    def removed(self, phase: str, pa_start: int, pa_end: int,
                baseline: str = "before") -> None:
        """Tell the removal checks that ``phase`` follows removing [start, end);
        ``tables-freed`` compares it with ``baseline`` ("" when a neighbour
        stays online: nothing to compare)."""
        self.recorder.removed(phase, pa_start, pa_end, baseline)

    def block_size(self) -> int:
        if not self._block_size:
            from harness.drive.common import block_size
            self._block_size = block_size(self.recorder)
        return self._block_size

    # -- the methods' building blocks ------------------------------------------
    def hidden_base(self) -> int:
        """Where the RAM hidden from the kernel with ``mem=`` starts (a guest
        booted with ``method="probe"``): the end of the boot System RAM, from
        the ``before`` phase (taken now if the test took none)."""
        from harness.drive import probe
        self._before_adding()
        return int(probe.hidden_base(self.recorder.phases[0]))

    @_recording_errors
    def probe(self, addr: int) -> int:
        """Add the block at ``addr`` through ``memory/probe`` (step ``probe
        ADDR``; it comes up offline). Returns ``addr``."""
        from harness.drive import probe
        self._adding(addr, addr + self.block_size())
        probe.probe_block(self.recorder, addr)
        return addr

    @_recording_errors
    def online(self, target: Target, size: int = 0,
               online_type: str = "online_movable") -> None:
        """Online the blocks of ``target`` (an address with ``size`` bytes,
        default one block, or a Dimm): step ``online ADDR|NAME``."""
        from harness.drive.common import online
        label, start, end = self._range(target, size)
        online(self.recorder, label, start, end, online_type)
        self._onlined = True

    @_recording_errors
    def offline(self, target: Target, size: int = 0) -> None:
        """Offline the blocks of ``target``: step ``offline ADDR|NAME``."""
        from harness.drive.common import offline
        label, start, end = self._range(target, size)
        self._taking_down()
        offline(self.recorder, label, start, end)

    @_recording_errors
    def remove(self, addr: int, size: int = 0):
        """Remove a probed block through ``memory/remove`` (patches/0002; it
        offlines what is still online): removal step ``remove ADDR``, then
        phase ``removed-N``. Returns that phase."""
        from harness.drive import probe
        _, start, end = self._range(addr, size)
        return self._removal(start, end, lambda phase, base: probe.remove_block(
            self.recorder, start, end - start, phase, base))

    @_recording_errors
    def add_dimm(self, size_mb: int = 512):
        """Plug a pc-dimm of ``size_mb`` MiB over QMP (``object-add`` of a
        file-backed backend, ``device_add``, until its blocks show; step ``add
        dimmN``). Returns its ``acpi_dimm.Dimm`` (name, memdev, addr, size)."""
        from harness.drive import acpi_dimm
        n = next(self._dimms)
        path = str(Path(self.guest.machine.spec.run_dir) / f"mem{n}")
        self._before_adding()
        dimm = acpi_dimm.add_dimm(self.recorder, f"dimm{n}", f"mem{n}", size_mb << 20, path)
        self._adding(dimm.addr, dimm.end)
        return dimm

    @_recording_errors
    def delete_dimm(self, dimm):
        """Remove a DIMM over QMP (offline it first): ``device_del``, wait for
        ``DEVICE_DELETED``, ``object-del``, until its blocks are gone (removal
        step ``remove dimmN``), then phase ``removed-N``. Returns that phase."""
        from harness.drive import acpi_dimm
        return self._removal(dimm.addr, dimm.end, lambda phase, base: acpi_dimm.delete_dimm(
            self.recorder, dimm, phase, base))

    @_recording_errors
    def resize_virtio_mem(self, size_mb: int, online_type: str = "online_movable"):
        """Set the virtio-mem device's ``requested-size`` (a guest booted with
        ``method="virtio-mem"``) and wait for ``size``: growing, until the
        guest's driver has onlined the new blocks (``auto_online_blocks`` set to
        ``online_type`` first); shrinking, a removal step until the range left
        ``/proc/iomem``, then phase ``removed-N`` (returned)."""
        from harness.drive import virtio_mem
        rec, new, old = self.recorder, size_mb << 20, self._vmem_size
        if new == old:
            return None
        self._before_adding()
        addr = virtio_mem.region(rec)
        if new > old:
            self._adding(addr + old, addr + new)
            if not self._onlined:
                virtio_mem.auto_online(rec, online_type)
            virtio_mem.grow(rec, addr, old, new)
            self._onlined = True
            self._vmem_size = new
            return None
        phase = self._removal(addr + new, addr + old, lambda name, base: virtio_mem.shrink_to(
            rec, addr, old, new, name, base))
        self._vmem_size = new
        return phase

    # -- what the building blocks keep -----------------------------------------
    def _range(self, target: Target, size: int) -> tuple[str, int, int]:
        if isinstance(target, int):
            return f"{target:#x}", target, target + (size or self.block_size())
        return target.name, target.addr, target.end

    def _indices(self, start: int, end: int) -> set[int]:
        bs = self.block_size()
        return set(range(start // bs, -(-end // bs)))

    def _before_adding(self) -> None:
        """Nothing added yet: the last phase is the baseline (``before``, taken
        now if the test took none)."""
        if self._added:
            return
        if not self.recorder.phases:
            self.phase("before")
        self._baseline = self.recorder.phases[-1].name

    def _adding(self, start: int, end: int) -> None:
        self._before_adding()
        self._added |= self._indices(start, end)

    def _taking_down(self) -> None:
        """The first offline or removal after an online: phase ``online`` if
        the test took none (what blocks-lifecycle and online-memory-mapped read)."""
        if self._onlined and not any(p.name == "online" for p in self.recorder.phases):
            self.phase("online")

    def _removal(self, start: int, end: int, remove: Callable[[str, str], None]):
        self._taking_down()
        left = self._added - self._indices(start, end)
        phase = f"removed-{len(self.recorder.removals) + 1}"
        remove(phase, "" if left else self._baseline)
        self._added = left
        return self.recorder.phases[-1]

    # -- the verdict -----------------------------------------------------------
    def method_run(self):
        """What was recorded so far, as the MethodRun the checks take."""
        from harness.records import REMOVAL_CHECKS, CheckOptions, RunError
        from harness.runner import recorded_run
        rec = self.recorder
        return recorded_run(
            self.method, rec, self.guest.watcher.reports,
            error=RunError.from_error(self.error) if self.error is not None else None,
            required=REMOVAL_CHECKS if rec.removals else (),
            options=CheckOptions.from_dict({"walker": rec.walk, "cycles": 1,
                                            "order_check": self.order_check}))

    def judge(self) -> dict:
        """{check name: Check} for every check that applies (a late kernel
        message given a moment to arrive first); the test's report folder is
        written with it."""
        from harness.verdict.checks import judge
        console = getattr(self.guest, "console", None)
        if console is not None:
            try:
                console.drain(2.0, quiet=0.3)
            except Exception:
                pass
        checks = {c.name: c for c in judge(self.method_run())}
        if self.report is not None:
            self.report.write()
        return checks

    def assert_pass(self, *names: str) -> dict:
        """Every named check PASSed; without names, the run's verdict is PASS:
        no check FAILed or ERRORed (a crash FAILs no-kernel-splat; a required
        check that could not look is an ERROR: the removal checks, the walker's,
        the ordering checks when they are on) and no step stopped. The failure
        names the test's report folder."""
        __tracebackhide__ = True       # the failure shows the test's line, not this one
        checks = self.judge()
        wanted = names or tuple(checks)
        ok = ("PASS",) if names else ("PASS", "SKIP")
        bad = [f"{n}: {checks[n].verdict}: {_evidence(checks[n].evidence)}"
               if n in checks else f"{n}: not judged"
               for n in wanted if n not in checks or checks[n].verdict not in ok]
        if self.error is not None:      # a step's error the test caught
            bad.append(f"stopped: {self.error}")
        if bad:
            where = (f"\nreport: {shown(self.report.folder)} (report.json, report.html)"
                     if self.report is not None else "")
            raise AssertionError("\n".join(bad) + where)
        return checks


def _evidence(text: str, lines: int = 6) -> str:
    """A check's evidence in a failure message: its first lines (the report
    keeps the whole)."""
    kept = text.splitlines()
    more = len(kept) - lines
    return "\n".join(kept[:lines]) + (f"\n  ... {more} more line(s) in the report"
                                      if more > 0 else "")


class ReportFolder:
    """One test's report folder, as ``run --report`` writes one: a method entry
    per guest (its run recorded so far) in report.json, report.html, junit.xml,
    and each guest's files in its own folder."""

    def __init__(self, folder: Path, kernel: Any, test: str):
        self.folder, self.kernel, self.test = Path(folder), kernel, test
        self.guests: list[HotplugGuest] = []

    def guest_folder(self, name: str) -> tuple[str, Path]:
        """A guest's name in the report (its method, ``-2``... for more) and folder."""
        from harness.verdict.report import safe_name
        taken = {g.method for g in self.guests}
        label = next(n for n in (name if i == 1 else f"{name}-{i}"
                                 for i in itertools.count(1)) if n not in taken)
        return label, self.folder / safe_name(label)

    def write(self) -> Path:
        from harness.cli.run import kernel_identity
        from harness.verdict import checks, report
        runs = [g.method_run() for g in self.guests]
        return report.write_report(self.folder, kernel_identity(self.kernel), runs,
                                   {r.method: checks.judge(r) for r in runs},
                                   {"pytest_test": self.test})


def report_folder(config, nodeid: str) -> Path:
    """``HH_REPORTS/<node id>``: ``/`` and ``::`` as ``_`` and ``__``, any other
    character but letters, digits, ``.``, ``-`` and ``_`` as ``_``; a long id
    shortened, with a digest of the whole."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", nodeid.replace("::", "__")).strip("_") or "_"
    if len(name) > 120:
        name = f"{name[:100]}-{hashlib.sha1(nodeid.encode()).hexdigest()[:12]}"
    return Path(hh_option(config, "reports")) / name


@pytest.fixture(scope="session")
def hh_kernel(request):
    """The kernel from --hh-kernel-src, --hh-patch and --hh-config (cached by content)."""
    from harness.kernel.kernel import BuildRequest, build
    config = request.config
    req = BuildRequest(kernel_src=hh_option(config, "kernel_src"),
                       configs=tuple(hh_option(config, "config")),
                       patches=tuple(hh_option(config, "patch")),
                       series=not hh_option(config, "no_series"))
    start = time.monotonic()
    with build_output(config) as say:
        art = build(req, progress=None)
        if art.rebuilt:
            release = f" {art.kernel_release}" if art.kernel_release else ""
            say(f"[hh_kernel] kernel{release} built in "
                f"{time.monotonic() - start:.0f} s (cached for the next run)")
    return art


class _FreshLine:
    """stderr, but the terminal's current line (pytest's ``file.py ..``) ended
    before the first text written."""

    def __init__(self, stream: Any, reporter: Any):
        self.stream, self.reporter, self.started = stream, reporter, False

    def write(self, text: str) -> int:
        if not self.started:
            self.started = True
            if self.reporter is not None:
                self.reporter.ensure_newline()
                self.reporter.flush()
        return int(self.stream.write(text))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


@contextmanager
def build_output(config) -> Iterator[Callable[[str], None]]:
    """While a kernel is built or checked: pytest's capture suspended, so the
    build's progress lines (harness.kernel.kernel.BuildProgress: live on a
    terminal, else a line every few seconds) reach stderr; yields a printer
    for lines of the fixture's own."""
    capman = config.pluginmanager.getplugin("capturemanager")
    reporter = config.pluginmanager.getplugin("terminalreporter")
    with ExitStack() as stack:
        if capman is not None:
            stack.enter_context(capman.global_and_fixture_disabled())
        saved, sys.stderr = sys.stderr, _FreshLine(sys.stderr, reporter)
        try:
            yield lambda text: print(text, file=sys.stderr, flush=True)
        finally:
            sys.stderr = saved


@pytest.fixture
def hh_guest(hh_kernel, request) -> Any:
    """Factory: ``hh_guest(method=None, walk=True, order_check=None, **BootOptions
    fields)`` boots a guest for this test. ``method`` ("probe", "acpi-dimm",
    "virtio-mem"...) boots it the way that method does (its mode, ``mem=``,
    ``rodata=full``, its devices...); ``order_check`` overrides
    ``--hh-order-check`` for this guest (gdb and the gdbstub only when not "off").

    Each guest's folder (console.log, qemu.cmdline, steps.txt, ptdumps, gdb's
    logs) is in the test's report folder (``--hh-reports``); its SSH forward is
    a free port and its RAM files live in a private run folder, so parallel
    workers (``pytest -n N``) do not collide. The test's ``user_properties``
    (JUnit ``<properties>``) get one ``hh_guest`` entry per guest: ``FOLDER
    BOOT_START READY STOPPED`` (epoch seconds), which shows whether guests of
    different tests overlapped, and ``hh_report``: the report folder."""
    from harness.drive.common import Recorder
    from harness.runner import METHODS, restored_note
    from harness.session import BootOptions, boot
    config = request.config
    default_check = hh_option(config, "order_check")
    folder = report_folder(config, request.node.nodeid)
    report = ReportFolder(folder, hh_kernel, request.node.nodeid)
    stack = ExitStack()
    booted: list = []

    def make(method: Optional[str] = None, walk: bool = True,
             order_check: Optional[str] = None, **opts) -> HotplugGuest:
        check = order_check or default_check
        bopts = BootOptions(**opts)
        if method is not None:
            module = METHODS[method]
            check = check if module.order_checks else "off"   # race: gdb stays out
            bopts = module.boot_options(replace(bopts, mode=opts.get("mode", module.mode)),
                                        hh_kernel.kconfig)
        bopts = replace(bopts, gdb=check != "off")
        if not report.guests:          # the test's first guest: a fresh folder
            shutil.rmtree(folder, ignore_errors=True)
            request.node.stash[REPORT_FOLDER] = folder
        name, out = report.guest_folder(method or "user-test")
        start = time.time()
        guest = stack.enter_context(boot(hh_kernel, bopts, out, progress=False))
        booted.append([str(out), start, time.time()])
        rec = Recorder(guest, hh_kernel, walk=walk, order_check=check)
        if guest.snapshot:
            rec.notes.append(restored_note(guest))
        g = HotplugGuest(guest, rec, name, order_check=check, report=report)
        report.guests.append(g)
        return g

    maker: Callable[..., HotplugGuest] = make
    try:
        with stack:
            yield maker
    finally:
        stopped = time.time()
        for out, start, ready in booted:
            request.node.user_properties.append(
                ("hh_guest", f"{out} {start:.3f} {ready:.3f} {stopped:.3f}"))
        if report.guests:
            request.node.user_properties.append(("hh_report", str(folder)))
            try:
                report.write()
            except Exception as e:      # the test's own outcome stands
                import warnings
                warnings.warn(f"hotplug-harness: the report in {folder} was not "
                              f"written: {type(e).__name__}: {e}", stacklevel=1)
