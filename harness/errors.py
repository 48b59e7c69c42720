"""One error hierarchy for the whole harness.

Every failure says whom it blames, so the CLI can map it to an exit code:

* ``kernel``  - the kernel under test misbehaved (exit 1)
* ``infra``   - the host or the machine failed: missing tool, QEMU died (exit 2)
* ``harness`` - bad input or a bug in the harness itself (exit 2)
* ``interrupted`` - SIGINT/SIGTERM stopped the run (exit 2; the CLI exits 130/143)

``Blame`` is a str-valued enum: ``Blame.KERNEL == "kernel"``, it hashes, formats
and serialises (JSON) as its value, and ``Blame("infra")`` reads a saved one.
"""
from __future__ import annotations

from collections.abc import Iterable
from enum import Enum
from typing import Any, Union


class TextEnum(str, Enum):
    """A str-valued enum that behaves as its value: ``==``, ``hash``, ``str``,
    ``format`` and ``json.dumps`` give the plain string (saved reports hold the
    strings, and older code compares with them)."""

    def __str__(self) -> str:
        return str(self.value)

    def __hash__(self) -> int:
        return str.__hash__(self)


class Verdict(TextEnum):
    """A check's or a run's verdict; equal to (and saved as) its string
    (``harness.records`` names its members PASS, FAIL, SKIP, ERROR)."""

    PASS = "PASS"
    FAIL = "FAIL"
    SKIP = "SKIP"
    ERROR = "ERROR"


class Blame(TextEnum):
    """Whom a failure is blamed on; decides the exit code."""

    KERNEL = "kernel"
    INFRA = "infra"
    HARNESS = "harness"
    INTERRUPTED = "interrupted"


KERNEL, INFRA, HARNESS, INTERRUPTED = (Blame.KERNEL, Blame.INFRA, Blame.HARNESS,
                                       Blame.INTERRUPTED)


# what an error raised by a transport or a wait names as its step; a step (or
# the boot) names itself instead
TRANSPORT_STEPS = ("ssh", "qmp", "serial", "wait")


class HarnessError(Exception):
    """Base error. ``step`` names the stage; ``evidence`` is text worth keeping."""

    blame: Blame = HARNESS

    def __init__(self, message: str, *, step: str = "", evidence: str = "",
                 blame: Union[Blame, str, None] = None):
        super().__init__(message)
        self.message = message
        self.step = step
        self.evidence = evidence
        if blame is not None:
            self.blame = Blame(blame)

    @property
    def exit_code(self) -> int:
        return 1 if self.blame == KERNEL else 2

    def __str__(self) -> str:
        head = f"[{self.step}] {self.message}" if self.step else self.message
        if self.evidence:
            return f"{head}\n{self.evidence.rstrip()}"
        return head


class ToolMissing(HarnessError):
    """A host program is not installed; names the Debian package providing it."""

    blame = INFRA

    def __init__(self, tool: str, package: str):
        super().__init__(f"'{tool}' not found: install the Debian package "
                         f"'{package}' (or run 'make deps')", step="host")
        self.tool = tool
        self.package = package


class PatchError(HarnessError):
    """A patch does not apply: names the patch file and the failing file/hunk."""


class ConfigError(HarnessError):
    """Requested kernel config options were dropped by olddefconfig."""

    def __init__(self, message: str, dropped: Iterable[str] = (), **kw: Any):
        super().__init__(message, **kw)
        self.dropped = list(dropped)


class BuildError(HarnessError):
    """The kernel did not compile (blamed on the input, not the machine)."""


class MachineError(HarnessError):
    """QEMU failed to start, died, or the guest never became ready."""

    blame = INFRA


class GuestCrash(HarnessError):
    """The kernel crashed or warned (panic, oops, BUG, WARNING, KASAN...)."""

    blame = KERNEL


class CommandError(HarnessError):
    """A command in the guest failed where success was required."""
