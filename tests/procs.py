"""Processes of this host found through /proc, for the tests that check what a
run left running (QEMU, gdb: by command line or by a marker in the environment)."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def pids_where(name: str, test: Callable[[list], bool]) -> list:
    """PIDs whose /proc/PID/NAME (``cmdline``, ``environ``), split at NULs,
    passes ``test``; processes gone or unreadable meanwhile are passed over."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            parts = Path(f"/proc/{pid}/{name}").read_bytes().split(b"\0")
        except OSError:
            continue
        if test(parts):
            found.append(int(pid))
    return found
