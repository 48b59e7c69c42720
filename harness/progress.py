"""The one progress printer: how much the harness says on stderr while it works.

Every stage reports through this module, in one format, ``[stage] text``
(``[build]``, ``[cache]``, ``[source]``, ``[guest-image]``, ``[machine]``,
``[probe]``...). Lines go through the standard :mod:`logging`: a line of stage
``S`` is a record of the logger ``harness.S`` (``harness`` for a line without a
stage), at WARNING (``warn``), INFO (``info``) or DEBUG (``detail``), with the
attributes ``stage`` and ``label``. The one handler that prints them,
:class:`StderrHandler` with :class:`StageFormatter` (``[stage] text``, the
thread's ``[label]`` in front), sits on the ``harness`` logger; the CLI sets
its level (``-q``, ``-v``). So a program embedding the harness, or pytest's
``caplog``, sees every line as a log record (records propagate to the root
logger); ``detach()`` removes the harness's own handler for a program that
prints them its own way, ``attach()`` puts it back.

A test can still install its own sink instead of logging
(``install(Recording())``, or any object with ``emit(text, stage, level)`` and
``level``: ``Printer`` prints straight to a stream). Levels:

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

import logging
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Optional, Protocol, TextIO

QUIET, NORMAL, VERBOSE = 0, 1, 2


class Sink(Protocol):
    level: int

    def emit(self, text: str, stage: str = "", level: int = NORMAL) -> None: ...


LOGGER = "harness"
# the harness's levels as logging's, and back
TO_LOGGING = {QUIET: logging.WARNING, NORMAL: logging.INFO, VERBOSE: logging.DEBUG}


def to_logging(level: int) -> int:
    return TO_LOGGING.get(level, logging.DEBUG if level > VERBOSE else logging.WARNING)


def from_logging(level: int) -> int:
    return QUIET if level > logging.INFO else NORMAL if level > logging.DEBUG else VERBOSE


def logger(stage: str = "") -> logging.Logger:
    """``harness.STAGE`` (``harness`` without a stage)."""
    return logging.getLogger(f"{LOGGER}.{stage}" if stage else LOGGER)


def format_line(text: str, stage: str = "", name: Optional[str] = None) -> str:
    """``[stage] text`` with the label ``name`` (default: this thread's) in front."""
    line = f"[{stage}] {text}" if stage else text
    name = label() if name is None else name
    if not name or line.startswith(f"[{name}]"):
        return line
    return f"[{name}] {line}"


class StageFormatter(logging.Formatter):
    """A record as ``[stage] text``: its ``stage`` attribute, or the part of its
    logger's name after ``harness.`` (a record logged straight to
    ``logging.getLogger("harness.cache")`` reads ``[cache] ...``), with the
    emitting thread's ``[label]`` in front."""

    def format(self, record: logging.LogRecord) -> str:
        stage = getattr(record, "stage", None)
        if stage is None:
            stage = record.name[len(LOGGER) + 1:] if record.name.startswith(LOGGER + ".") \
                else ""
        line = format_line(record.getMessage(), stage, getattr(record, "label", None))
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class StderrHandler(logging.Handler):
    """Prints each record as one whole line (threads never interleave within a
    line) to ``stream``, by default stderr looked up at print time (pytest's
    capture sees it)."""

    def __init__(self, stream: Optional[TextIO] = None) -> None:
        super().__init__()
        self.stream = stream
        self.setFormatter(StageFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            with _print_lock:
                print(line, file=self.stream or sys.stderr, flush=True)
        except Exception:
            self.handleError(record)


class LoggingSink:
    """The default sink: every line a record of ``harness.<stage>``. Its
    ``level`` is the ``harness`` logger's and the harness handler's."""

    @property
    def level(self) -> int:
        return from_logging(logger().getEffectiveLevel())

    @level.setter
    def level(self, value: int) -> None:
        logger().setLevel(to_logging(value))
        _handler.setLevel(to_logging(value))

    def emit(self, text: str, stage: str = "", level: int = NORMAL) -> None:
        log = logger(stage)
        lvl = to_logging(level)
        if log.isEnabledFor(lvl):
            log.log(lvl, "%s", text, extra={"stage": stage, "label": label()})


class Printer:
    """Prints each line at or below its level to ``stream`` (stderr by
    default, looked up at print time so pytest's capture sees it), without
    logging: the same ``[stage] text`` lines."""

    def __init__(self, level: int = NORMAL, stream: Optional[TextIO] = None) -> None:
        self.level = level
        self.stream = stream

    def emit(self, text: str, stage: str = "", level: int = NORMAL) -> None:
        if self.level < level:
            return
        line = format_line(text, stage)
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


_print_lock = threading.Lock()
_local = threading.local()
_handler = StderrHandler()
_printer: Sink = LoggingSink()


def attach(handler: Optional[logging.Handler] = None) -> logging.Handler:
    """Put the harness's handler (``[stage] text`` on stderr) on the ``harness``
    logger, once; the CLI does, and so does importing this module. Returns it."""
    log = logger()
    h = handler or _handler
    if h not in log.handlers:
        log.addHandler(h)
    return h


def detach() -> logging.Handler:
    """Take the harness's handler off (a program that handles the ``harness``
    records itself); ``attach()`` puts it back. Returns it."""
    logger().removeHandler(_handler)
    return _handler


def handler() -> logging.Handler:
    """The harness's own handler (a StderrHandler with the StageFormatter)."""
    return _handler


attach()
_printer.level = NORMAL


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
    return format_line(line)


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
