"""The one progress printer: how much the harness says on stderr while it works.

Every stage reports through this module, in one format, ``[stage] text``
(``[build]``, ``[cache]``, ``[source]``, ``[guest-image]``, ``[machine]``,
``[probe]``...). The printer is injected: the CLI sets its level (``-q``, ``-v``),
a test or an embedding program installs its own (``install(Printer(...))``, or
any object with an ``emit(text, stage, level)`` method) to capture or redirect
the lines. Levels:

* quiet (``-q``, level 0): nothing but warnings (``warn``: a corrupt cache entry
  being rebuilt, a lock being waited for); the verdict summary (stdout) stays.
* normal (level 1): one line per method, step and inspection; commands run on
  the host (make, the QEMU command line of ``boot``).
* verbose (``-v``, level 2): also every guest command line (``ssh$ ...``,
  ``serial$ ...``) and every console line (``console| ...``) as it arrives.

stdout is kept for results (summary, ``--json``, ``boot --exec`` output).

Methods run side by side (``run --jobs 2``) each in a thread labelled with the
method's name (``labelled``): every line that thread prints starts with
``[method]``, so interleaved lines stay readable; ``bind`` carries the label
to a callback another thread calls (the console reader's ``console|`` lines).
"""
from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Optional, Protocol, TextIO

QUIET, NORMAL, VERBOSE = 0, 1, 2


class Sink(Protocol):
    level: int

    def emit(self, text: str, stage: str = "", level: int = NORMAL) -> None: ...


class Printer:
    """Prints each line at or below its level to ``stream`` (stderr by
    default, looked up at print time so pytest's capture sees it)."""

    def __init__(self, level: int = NORMAL, stream: Optional[TextIO] = None) -> None:
        self.level = level
        self.stream = stream

    def emit(self, text: str, stage: str = "", level: int = NORMAL) -> None:
        if self.level < level:
            return
        line = with_label(f"[{stage}] {text}" if stage else text)
        with _print_lock:       # threads print whole lines
            print(line, file=self.stream or sys.stderr, flush=True)


class Recording:
    """A printer that keeps ``(level, stage, text)`` for tests."""

    def __init__(self, level: int = VERBOSE) -> None:
        self.level = level
        self.lines: list[tuple[int, str, str]] = []

    def emit(self, text: str, stage: str = "", level: int = NORMAL) -> None:
        if self.level >= level:
            self.lines.append((level, stage, text))


_printer: Sink = Printer()
_print_lock = threading.Lock()
_local = threading.local()


def label() -> Optional[str]:
    """This thread's label (a method's name while methods run side by side)."""
    return getattr(_local, "label", None)


@contextmanager
def labelled(name: Optional[str]) -> Iterator[None]:
    """Prefix every line this thread prints with ``[name]`` (None: no prefix)."""
    old, _local.label = label(), name
    try:
        yield
    finally:
        _local.label = old


def with_label(line: str) -> str:
    """``line`` with this thread's ``[label]`` in front (once)."""
    name = label()
    if not name or line.startswith(f"[{name}]"):
        return line
    return f"[{name}] {line}"


def bind(fn: Callable[[str], None]) -> Callable[[str], None]:
    """``fn`` to be called from another thread, printing under this thread's label."""
    name = label()
    if not name:
        return fn

    def call(text: str) -> None:
        with labelled(name):
            fn(text)
    return call


def install(printer: Sink) -> Sink:
    """Make ``printer`` the harness's printer; returns the one it replaces."""
    global _printer
    old, _printer = _printer, printer
    return old


def printer() -> Sink:
    return _printer


def set_level(level: int) -> None:
    _printer.level = level


def level() -> int:
    return _printer.level


def quiet() -> bool:
    return _printer.level <= QUIET


def verbose() -> bool:
    return _printer.level >= VERBOSE


def warn(text: str, stage: str = "") -> None:
    """Shown even with -q: something the user should know about."""
    _printer.emit(text, stage, QUIET)


def info(text: str, stage: str = "") -> None:
    """A progress line (default and verbose)."""
    _printer.emit(text, stage, NORMAL)


def detail(text: str, stage: str = "") -> None:
    """A line shown only with -v."""
    _printer.emit(text, stage, VERBOSE)


def console_line(line: str) -> None:
    detail("console| " + line)


class Stage:
    """``progress.stage("build")``: info/detail/warn with the stage's prefix,
    for passing as a ``progress=`` callable."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, text: str) -> None:
        info(text, self.name)

    def info(self, text: str) -> None:
        info(text, self.name)

    def detail(self, text: str) -> None:
        detail(text, self.name)

    def warn(self, text: str) -> None:
        warn(text, self.name)


def stage(name: str) -> Stage:
    return Stage(name)
