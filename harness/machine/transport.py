"""The interface every way of running commands in the guest shares.

Two transports implement it: the serial console (``console.SerialConsole``) and
SSH (``ssh``). Both take a command string for the guest's ``sh`` and a deadline,
and return a ``CommandResult``; neither raises because a command failed (call
``CommandResult.check`` for that). Copying files is SSH-only and lives there.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Union

from harness.errors import CommandError
from harness.host import Deadline

TAIL_LINES = 20


def as_deadline(deadline: Union[Deadline, float]) -> Deadline:
    """Accept a Deadline or a number of seconds from now."""
    if isinstance(deadline, Deadline):
        return deadline
    return Deadline(float(deadline))


def tail(text: str, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of ``text``."""
    return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class CommandResult:
    """What one guest command did. ``stderr`` is empty on serial (merged into stdout)."""

    command: str
    stdout: str
    stderr: str
    exit_code: int
    seconds: float
    transport: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def evidence(self) -> str:
        parts = [f"$ {self.command}", f"exit code {self.exit_code} "
                 f"after {self.seconds:.1f}s over {self.transport}"]
        if self.stdout:
            parts += ["--- stdout (tail) ---", tail(self.stdout)]
        if self.stderr:
            parts += ["--- stderr (tail) ---", tail(self.stderr)]
        return "\n".join(parts)

    def check(self, step: str = "", *, blame: str | None = None) -> CommandResult:
        """Return self if the command succeeded, else raise CommandError."""
        if self.ok:
            return self
        first = self.command.strip().splitlines()[0] if self.command.strip() else ""
        if len(first) > 120:
            first = first[:117] + "..."
        raise CommandError(f"guest command failed (exit {self.exit_code}): {first}",
                           step=step, evidence=self.evidence(), blame=blame)


class Transport(abc.ABC):
    """Runs shell commands in the guest. Usable as a context manager."""

    name: str = ""  # 'serial' or 'ssh'

    @abc.abstractmethod
    def run(self, command: str, deadline: Union[Deadline, float]) -> CommandResult:
        """Run ``command`` with the guest's sh; wait at most until ``deadline``."""

    def check_output(self, command: str, deadline: Union[Deadline, float],
                     step: str = "") -> str:
        """Run, require exit code 0, return stdout."""
        return self.run(command, deadline).check(step).stdout

    def close(self) -> None:  # noqa: B027 (optional hook, not abstract)
        """Release the transport (idempotent)."""

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
