"""How much the harness says on stderr while it works: -q, default, -v.

* quiet (``-q``, level 0): nothing but errors; the verdict summary (stdout) stays.
* normal (level 1): one line per method, step and inspection; commands run on
  the host (make, the QEMU command line of ``boot``).
* verbose (``-v``, level 2): also every guest command line (``ssh$ ...``,
  ``serial$ ...``) and every console line (``console| ...``) as it arrives.

stdout is kept for results (summary, ``--json``, ``boot --exec`` output).
"""
from __future__ import annotations

import sys

QUIET, NORMAL, VERBOSE = 0, 1, 2
_level = NORMAL


def set_level(level: int) -> None:
    global _level
    _level = level


def level() -> int:
    return _level


def quiet() -> bool:
    return _level <= QUIET


def verbose() -> bool:
    return _level >= VERBOSE


def info(text: str) -> None:
    """A progress line (default and verbose)."""
    if _level >= NORMAL:
        print(text, file=sys.stderr, flush=True)


def detail(text: str) -> None:
    """A line shown only with -v."""
    if _level >= VERBOSE:
        print(text, file=sys.stderr, flush=True)


def console_line(line: str) -> None:
    detail("console| " + line)
