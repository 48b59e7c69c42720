"""Inspect stage: pure parsers of guest output and the host-side page-table walker.

* ``ptdump``  - ``/sys/kernel/debug/kernel_page_tables`` -> :class:`ptdump.Snapshot`
* ``sysfs``   - memory blocks, ``/proc/iomem``, ``/proc/meminfo``
* ``walker``  - walk the arm64 kernel translation tables from guest RAM files
* ``order``   - the ordering events of a removal and the four rules that judge them
* ``gdb`` (the driver), ``gdb_agent`` (runs inside gdb) and ``a64`` (the AArch64
  decoder): how those events are recorded over QEMU's gdbstub

Nothing here needs QEMU to import or test. All address ranges are half-open
``[start, end)``; where the kernel prints an inclusive end (``/proc/iomem``) the
record keeps it as ``last`` and converts.
"""
from __future__ import annotations

from harness.errors import HarnessError


class InspectError(HarnessError):
    """Inspecting guest state failed: bad input, missing symbol, unreadable PA."""

    def __init__(self, message: str, *, step: str = "inspect", **kw):
        super().__init__(message, step=step, **kw)


class ParseError(InspectError):
    """Guest output does not have the format the parser expects."""
