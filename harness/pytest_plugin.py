"""pytest plugin: write your own hotplug test in a few lines.

Registered through the ``pytest11`` entry point (``hotplug_harness``), so any
pytest run in an environment where hotplug-harness is installed has:

options
  ``--hh-kernel-src debian|DIR|TARBALL``  the kernel source (default: debian)
  ``--hh-patch FILE``   a patch after patches/series (repeatable)
  ``--hh-config NAME|FILE``  a config fragment, e.g. a geometry (repeatable)

fixtures
  ``hh_kernel``  (session) the built or cached ``KernelArtifacts``
  ``hh_guest``   a factory: ``hh_guest(method="probe")`` or
                 ``hh_guest(mode="acpi", mem_mb=..., slots=..., cmdline=(...))``
                 boots a fresh guest (torn down after the test) and returns a
                 :class:`HotplugGuest`: ``run``/``sh`` over the transport,
                 ``qmp``, ``phase("name")``, ``step(name, command)``,
                 ``removed(phase, pa_start, pa_end)``, ``judge()`` and
                 ``assert_pass(*checks)`` with the harness's own checks.

markers
  ``kernel``, ``qemu`` (as in the harness's suite: deselect with
  ``-m "not kernel and not qemu"``).

Guests do not collide under ``pytest -n N`` (pytest-xdist): each boot takes a
free port and its own private run folder, and kernel builds are serialised by
the cache's locks (the second worker finds the kernel cached).
"""
from __future__ import annotations

import itertools
import time
from contextlib import ExitStack
from dataclasses import replace
from typing import Any, Callable, Optional

import pytest

MARKERS = (
    "kernel: builds a real arm64 kernel (minutes when cold, seconds when cached)",
    "qemu: boots the kernel under qemu-system-aarch64",
)


def pytest_addoption(parser) -> None:
    g = parser.getgroup("hotplug-harness")
    g.addoption("--hh-kernel-src", default="debian", metavar="debian|DIR|TARBALL",
                help="hotplug-harness: kernel source for hh_kernel (default debian)")
    g.addoption("--hh-patch", action="append", default=[], metavar="FILE",
                help="hotplug-harness: apply this patch after patches/series (repeatable)")
    g.addoption("--hh-config", action="append", default=[], metavar="NAME|FILE",
                help="hotplug-harness: add a config fragment (repeatable)")


def pytest_configure(config) -> None:
    for line in MARKERS:
        config.addinivalue_line("markers", line)


class HotplugGuest:
    """A booted guest with a Recorder: the phases and steps a method records,
    judged by the same checks (``harness.verdict.checks``)."""

    def __init__(self, guest, recorder, method: str):
        self.guest = guest
        self.recorder = recorder
        self.method = method

    @property
    def qmp(self) -> Any:
        return self.guest.machine.qmp

    @property
    def kconfig(self) -> dict:
        return self.recorder.art.kconfig

    def run(self, command: str, deadline: float = 30.0):
        """A command over the guest's transport: a CommandResult (ok, stdout...)."""
        return self.guest.run(command, deadline)

    def sh(self, command: str, deadline: float = 30.0) -> str:
        """A command that must succeed; its stdout."""
        return self.recorder.sh(command, deadline)

    def phase(self, name: str):
        """Inspect now: sysfs blocks, meminfo, iomem, ptdump, the host walk."""
        return self.recorder.phase(name)

    def step(self, name: str, action):
        """A named, timed step: ``action`` is a guest command or a callable."""
        fn = (lambda: self.sh(action)) if isinstance(action, str) else action
        return self.recorder.step(name, fn)

    def removed(self, phase: str, pa_start: int, pa_end: int,
                baseline: str = "before") -> None:
        """Tell the removal checks that ``phase`` follows removing [start, end);
        ``tables-freed`` compares it with ``baseline`` ("" when a neighbour
        stays online: nothing to compare)."""
        self.recorder.removed(phase, pa_start, pa_end, baseline)

    def block_size(self) -> int:
        from harness.drive.common import block_size
        return block_size(self.recorder)

    def method_run(self):
        """What was recorded so far, as the MethodRun the checks take."""
        from harness.records import REMOVAL_CHECKS, CheckOptions
        from harness.runner import recorded_run
        rec = self.recorder
        return recorded_run(
            self.method, rec, self.guest.watcher.reports,
            required=REMOVAL_CHECKS if rec.removals else (),
            options=CheckOptions.from_dict({"walker": rec.walk, "cycles": 1,
                                            "order_check": "off"}))

    def judge(self) -> dict:
        """{check name: Check} for every check that applies."""
        from harness.verdict.checks import judge
        return {c.name: c for c in judge(self.method_run())}

    def assert_pass(self, *names: str) -> dict:
        """Every named check PASSed (all applicable checks without names)."""
        checks = self.judge()
        wanted = names or tuple(checks)
        bad = [f"{n}: {checks[n].verdict if n in checks else 'not judged'}"
               f"{(': ' + checks[n].evidence) if n in checks else ''}" for n in wanted
               if n not in checks or checks[n].verdict != "PASS"]
        assert not bad, "\n".join(bad)
        return checks


@pytest.fixture(scope="session")
def hh_kernel(request):
    """The kernel from --hh-kernel-src, --hh-patch and --hh-config (cached by content)."""
    from harness.build.kernel import BuildRequest, build
    opt = request.config.getoption
    return build(BuildRequest(kernel_src=opt("--hh-kernel-src"),
                              configs=tuple(opt("--hh-config")),
                              patches=tuple(opt("--hh-patch"))), progress=False)


_GUESTS = itertools.count(1)


@pytest.fixture
def hh_guest(hh_kernel, tmp_path, request) -> Any:
    """Factory: ``hh_guest(method=None, walk=True, **BootOptions fields)`` boots a
    guest for this test. ``method`` ("probe", "acpi-dimm", ...) boots it the way
    that method does (its mode, ``mem=``, ``rodata=full``...).

    Each guest's folder (console.log, qemu.cmdline) is under the test's
    ``tmp_path``; its SSH forward is a free port and its RAM files live in a
    private run folder, so parallel workers (``pytest -n N``) do not collide.
    The test's ``user_properties`` (JUnit ``<properties>``) get one
    ``hh_guest`` entry per guest: ``FOLDER BOOT_START READY STOPPED`` (epoch
    seconds), which shows whether guests of different tests overlapped."""
    from harness.drive.common import Recorder
    from harness.runner import METHODS, restored_note
    from harness.session import BootOptions, boot
    stack = ExitStack()
    booted: list = []

    def make(method: Optional[str] = None, walk: bool = True, **opts) -> HotplugGuest:
        bopts = BootOptions(**opts)
        if method is not None:
            module = METHODS[method]
            bopts = module.boot_options(replace(bopts, mode=opts.get("mode", module.mode)),
                                        hh_kernel.kconfig)
        out = tmp_path / f"guest-{next(_GUESTS)}"
        start = time.time()
        guest = stack.enter_context(boot(hh_kernel, bopts, out, progress=False))
        booted.append([str(out), start, time.time()])
        rec = Recorder(guest, hh_kernel, walk=walk, order_check="off")
        if guest.snapshot:
            rec.notes.append(restored_note(guest))
        return HotplugGuest(guest, rec, method or "user-test")

    maker: Callable[..., HotplugGuest] = make
    try:
        with stack:
            yield maker
    finally:
        stopped = time.time()
        for folder, start, ready in booted:
            request.node.user_properties.append(
                ("hh_guest", f"{folder} {start:.3f} {ready:.3f} {stopped:.3f}"))
