"""Recognise kernel crashes and warnings in console output, live or offline.

``CrashWatcher.feed(line)`` takes console lines one at a time (the serial console
feeds every line it reads) and returns the reports each line completes;
``classify_log(text)`` does the same for a saved ``console.log``.

A report opens on a signature line (matched at the start of the kernel message,
after the ``[    1.234567] `` timestamp, so a typed command echoed after the shell
prompt does not match) and closes on its end marker:

==============  =============================================  ======================
kind            opened by                                      closed by
==============  =============================================  ======================
panic           ``Kernel panic - not syncing``                 ``---[ end Kernel panic``
oops            ``Unable to handle kernel``, ``Internal error``  ``---[ end trace``
bug             ``BUG:``, ``kernel BUG at``                    end trace, or the end of
                                                               its ``Call trace:`` block
kasan           ``BUG: KASAN:``                                the ``=====`` rule
warning         ``WARNING: CPU: N PID: M at ...``              ``---[ end trace``
bad-page        ``BUG: Bad page state``                        end of its call trace
soft-lockup     ``watchdog: BUG: soft lockup``                 end of its call trace
rcu-stall       ``rcu: INFO: rcu_sched self-detected stall``   end of its call trace
hung-task       ``INFO: task T:P blocked for more than N s``   end of its call trace
==============  =============================================  ======================

``------------[ cut here ]------------`` opens a report whose kind the next
signature (``WARNING:`` or ``kernel BUG at``) decides. A new signature closes the
open report, except the lines that continue it (``Internal error: Oops`` after
``Unable to handle kernel``). Reports missing their marker close
``post_trace_lines`` lines after their call trace, ``PRE_TRACE_LINES`` lines
in if no call trace began (a one-line ``BUG:``), at ``max_lines``, or on
``flush()`` (end of input); panic and KASAN reports only on their marker,
``max_lines`` or ``flush()``. When the report's first line has a timestamp, lines
without one (shell output interleaved on the serial line) are left out of it.

A signature line seen twice with the same timestamp (``dmesg`` run on the serial
console replays the kernel log) does not open a second report.
"""
from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

from harness.errors import GuestCrash, HarnessError
from harness.host import require_tool, run

KINDS = ("panic", "oops", "bug", "kasan", "warning", "bad-page", "soft-lockup",
         "rcu-stall", "hung-task")
_CUT = "cut-here"  # provisional kind until the next signature says what it is
PRE_TRACE_LINES = 80  # a report (not panic/KASAN) with no call trace by then is closed

# "[   12.345678] " and, with CONFIG_PRINTK_CALLER, "[   12.345678][  T123] "
KMSG_RE = re.compile(r"\[\s*(\d+\.\d{6})\](?:\[\s*[TC]\d+\])? ?")

_SIGNATURES = (
    (re.compile(r"^-+\[ cut here \]-+$"), _CUT),
    (re.compile(r"^Kernel panic - not syncing"), "panic"),
    (re.compile(r"^Unable to handle kernel "), "oops"),
    (re.compile(r"^Internal error: Oops - BUG"), "bug"),
    (re.compile(r"^Internal error: "), "oops"),
    (re.compile(r"^Oops(?: - \w+)?: "), "oops"),
    (re.compile(r"^[Kk]ernel BUG at "), "bug"),
    (re.compile(r"^BUG: KASAN: "), "kasan"),
    (re.compile(r"^(?:watchdog: )?BUG: soft lockup"), "soft-lockup"),
    (re.compile(r"^(?:BUG: )?Bad page (?:state|map)"), "bad-page"),
    (re.compile(r"^(?:watchdog: )?Watchdog detected hard LOCKUP"), "bug"),
    (re.compile(r"^BUG: "), "bug"),
    (re.compile(r"^WARNING: CPU: \d+ PID: \d+ "), "warning"),
    (re.compile(r"^WARNING: (?:possible|suspicious|inconsistent|bad unlock)"),
     "warning"),
    (re.compile(r"^(?:rcu: )?INFO: rcu_\w+ (?:self-)?detected stalls?"), "rcu-stall"),
    (re.compile(r"^INFO: task \S+ blocked for more than \d+ seconds"), "hung-task"),
)
_END_TRACE = re.compile(r"^---\[ end trace [0-9a-f]+ \]---")
_END_PANIC = re.compile(r"^---\[ end Kernel panic")
_KASAN_RULE = re.compile(r"^={20,}$")
# the address a KASAN report is about ("Read of size 8 at addr ffff000001e84c08")
_KASAN_ACCESS = re.compile(r"(Read|Write) of size \d+ at addr [0-9a-f]+")
_REG = re.compile(r"^(pc|lr) : (\S+)")
_SYMBOL = re.compile(r"([\w.$]+)\+0x([0-9a-f]+)/0x([0-9a-f]+)")
_TRACE_ENTRY = re.compile(r"^\s+([\w.$]+\+0x[0-9a-f]+/0x[0-9a-f]+)")


class KernelLine(NamedTuple):
    """A console line split where the kernel's timestamp starts."""

    prefix: str             # text before the timestamp (shell output cut by it)
    message: Optional[str]  # the kernel message without its timestamp, or None
    timestamp: Optional[float]


def split_kernel_line(line: str) -> KernelLine:
    """Find a kernel message in ``line``: at its start, or after a cut shell line."""
    m = KMSG_RE.search(line)
    if m is None:
        return KernelLine(line, None, None)
    return KernelLine(line[:m.start()], line[m.end():], float(m.group(1)))


def match_signature(message: str) -> Optional[str]:
    """The kind a kernel message opens a report of, or None."""
    for regex, kind in _SIGNATURES:
        if regex.search(message):
            return kind
    return None


@dataclass(frozen=True)
class CrashReport:
    """One crash or warning: its kind, first line, trace lines and decoded fields.

    ``lines`` are the kernel messages without timestamps; ``first_line_no`` counts
    lines fed to the watcher (= line number in console.log), from 1.
    ``pc_symbol`` is ``func+0xoff/0xsize`` from the ``pc :`` line, else the symbol
    named in the title (KASAN, WARNING), else None. ``complete`` is False when the
    report was cut short (a new signature, end of input before its call trace).
    """

    kind: str
    title: str
    lines: tuple[str, ...]
    first_line_no: int
    pc_symbol: Optional[str]
    call_trace: tuple[str, ...]
    lr_symbol: Optional[str] = None
    timestamp: Optional[float] = None
    complete: bool = True

    def summary(self) -> str:
        where = f" (pc {self.pc_symbol})" if self.pc_symbol else ""
        access = next((m.group(0) for line in self.lines
                       if (m := _KASAN_ACCESS.search(line))), "") \
            if self.kind == "kasan" else ""
        return f"{self.kind}: {self.title}{where}" + (f": {access}" if access else "")

    def text(self) -> str:
        return "\n".join(self.lines)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "title": self.title,
                "first_line_no": self.first_line_no, "pc_symbol": self.pc_symbol,
                "lr_symbol": self.lr_symbol, "call_trace": list(self.call_trace),
                "timestamp": self.timestamp, "complete": self.complete,
                "lines": list(self.lines)}


def format_reports(reports: Sequence[CrashReport]) -> str:
    """Evidence text: each report's header and its lines."""
    parts = []
    for r in reports:
        cut = "" if r.complete else " [incomplete]"
        parts.append(f"=== {r.kind} at console line {r.first_line_no}{cut}: {r.title}")
        parts.append(r.text())
    return "\n".join(parts)


class KernelCrash(GuestCrash):
    """GuestCrash for crash reports seen on the console; ``reports`` holds them."""

    def __init__(self, reports: Sequence[CrashReport], *, step: str = "serial",
                 message: str = "", extra: str = ""):
        reports = tuple(reports)
        first = reports[0]
        evidence = format_reports(reports) + (f"\n{extra}" if extra else "")
        super().__init__(message or f"kernel {first.summary()}", step=step,
                         evidence=evidence)
        self.reports = reports

    @property
    def report(self) -> CrashReport:
        return self.reports[0]


@dataclass
class _Open:
    """A report being collected."""

    kind: str
    title: str
    first_line_no: int
    timestamp: Optional[float]
    lines: list[str] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)
    trace_state: str = "none"  # none -> in -> done
    regs: dict[str, str] = field(default_factory=dict)
    saw_cut: bool = False
    saw_internal: bool = False
    after_trace: int = 0
    ended: bool = False

    @property
    def expects_marker(self) -> bool:
        """True if an end marker will close it (lockdep's WARNINGs have none)."""
        return (self.kind in ("panic", "oops", "kasan", _CUT) or self.saw_cut
                or self.saw_internal or self.title.startswith("WARNING: CPU:"))

    def absorbs(self, kind: str, message: str) -> bool:
        """Does this signature continue the open report instead of starting one?"""
        if self.kind == _CUT:
            return kind not in (_CUT, "panic")
        return (message.startswith("Internal error:") and not self.saw_internal
                and self.kind in ("oops", "bug"))

    def absorb(self, kind: str, message: str) -> None:
        if self.kind == _CUT:
            self.kind, self.title = kind, message
        self.saw_internal = self.saw_internal or message.startswith("Internal error:")
        self.lines.append(message)

    def step(self, message: str, max_lines: int, post_trace_lines: int) -> str:
        """Take one line: 'more', 'end' (line included) or 'stop' (line excluded)."""
        if self.trace_state == "in" and not _TRACE_ENTRY.match(message):
            self.trace_state = "done"
            if not self.expects_marker:
                return "stop"
        self.lines.append(message)
        self._decode(message)
        if self._is_end(message):
            self.ended = True
            return "end"
        return "end" if self._too_long(max_lines, post_trace_lines) else "more"

    def _too_long(self, max_lines: int, post_trace_lines: int) -> bool:
        if self.kind in ("panic", "kasan"):
            return len(self.lines) >= max_lines
        if self.trace_state == "done":
            self.after_trace += 1
            return self.after_trace >= post_trace_lines
        if self.trace_state == "none" and len(self.lines) >= PRE_TRACE_LINES:
            return True
        return len(self.lines) >= max_lines

    def _decode(self, message: str) -> None:
        reg = _REG.match(message)
        if reg and reg.group(1) not in self.regs:
            self.regs[reg.group(1)] = reg.group(2)
        if message == "Call trace:" and self.trace_state == "none":
            self.trace_state = "in"
        elif self.trace_state == "in":
            entry = _TRACE_ENTRY.match(message)
            assert entry is not None   # step() ends the trace at a non-entry line
            self.trace.append(entry.group(1))

    def _is_end(self, message: str) -> bool:
        if self.kind == "panic":
            return bool(_END_PANIC.match(message))
        if self.kind == "kasan" and _KASAN_RULE.match(message):
            return True
        return bool(_END_TRACE.match(message))

    def report(self) -> CrashReport:
        kind = "warning" if self.kind == _CUT else self.kind
        pc = self.regs.get("pc") or _last_symbol(self.title)
        return CrashReport(kind=kind, title=self.title, lines=tuple(self.lines),
                           first_line_no=self.first_line_no, pc_symbol=pc,
                           call_trace=tuple(self.trace), lr_symbol=self.regs.get("lr"),
                           timestamp=self.timestamp,
                           complete=self.ended or self.trace_state == "done")


def _last_symbol(text: str) -> Optional[str]:
    found = _SYMBOL.findall(text)
    if not found:
        return None
    func, off, size = found[-1]
    return f"{func}+0x{off}/0x{size}"


class CrashWatcher:
    """Consumes console lines incrementally and collects CrashReports. ``feed``
    and ``flush`` may be called from different threads (the console reader
    feeds, a step that gives up flushes)."""

    def __init__(self, *, max_lines: int = 500, post_trace_lines: int = 30):
        self.max_lines = max_lines
        self.post_trace_lines = post_trace_lines
        self.lines_fed = 0
        self._open: Optional[_Open] = None
        self._reports: list[CrashReport] = []
        self._seen: set[str] = set()
        self._lock = threading.RLock()

    @property
    def reports(self) -> tuple[CrashReport, ...]:
        """Every completed report so far, in order."""
        return tuple(self._reports)

    @property
    def open_kind(self) -> Optional[str]:
        """Kind of the report being collected ('warning' while only 'cut here')."""
        if self._open is None:
            return None
        return "warning" if self._open.kind == _CUT else self._open.kind

    def feed(self, line: str) -> list[CrashReport]:
        """Take one console line (without its newline); return reports it completed."""
        with self._lock:
            return self._feed(line)

    def _feed(self, line: str) -> list[CrashReport]:
        self.lines_fed += 1
        split = split_kernel_line(line.rstrip("\r\n"))
        message = (split.prefix if split.message is None else split.message).rstrip()
        stamped = split.message is not None
        kind = match_signature(message)
        if kind and stamped and self._replayed(line, split):
            kind = None
        if kind:
            return self._signature(kind, message, split.timestamp)
        if self._open is None or (self._open.timestamp is not None and not stamped):
            return []
        verdict = self._open.step(message, self.max_lines, self.post_trace_lines)
        return self._close() if verdict != "more" else []

    def flush(self) -> list[CrashReport]:
        """End of input: close the open report, return it (as a list)."""
        with self._lock:
            return self._close()

    def _signature(self, kind: str, message: str,
                   timestamp: Optional[float]) -> list[CrashReport]:
        if self._open is not None and self._open.absorbs(kind, message):
            self._open.absorb(kind, message)
            return []
        if self._open is not None and self._open.trace_state == "in":
            self._open.trace_state = "done"  # the next report began: its trace ended
        done = self._close()
        self._open = _Open(kind=kind, title=message, first_line_no=self.lines_fed,
                           timestamp=timestamp, lines=[message],
                           saw_cut=kind == _CUT,
                           saw_internal=message.startswith("Internal error:"))
        return done

    def _replayed(self, line: str, split: KernelLine) -> bool:
        key = line[len(split.prefix):].rstrip()
        if key in self._seen:
            return True
        self._seen.add(key)
        return False

    def _close(self) -> list[CrashReport]:
        if self._open is None:
            return []
        report = self._open.report()
        self._open = None
        self._reports.append(report)
        return [report]


def classify_log(text: str) -> list[CrashReport]:
    """All crash reports in a console log's text (``\\r\\r\\n`` line ends are fine;
    read files with ``classify_file`` or ``newline=""``, or line numbers drift)."""
    watcher = CrashWatcher()
    for line in re.split(r"\r*\n", text):
        watcher.feed(line.rstrip("\r"))
    watcher.flush()
    return list(watcher.reports)


def classify_file(path: Path) -> list[CrashReport]:
    """``classify_log`` of a saved console.log."""
    return classify_log(Path(path).read_bytes().decode("utf-8", errors="replace"))


# --- symbolisation -----------------------------------------------------------

Resolver = Callable[[str, int], Optional[str]]
SymbolTable = dict[str, list[tuple[int, int]]]   # name -> [(address, size)]


@dataclass(frozen=True)
class Frame:
    """One symbol of a report and the source line it maps to."""

    role: str        # 'pc', 'lr' or 'trace'
    symbol: str      # 'copy_page+0x30/0xd0'
    location: Optional[str]  # 'arch/arm64/lib/copy_page.S:42', None if unknown


def parse_symbol(text: str) -> Optional[tuple[str, int, int]]:
    """'copy_page+0x30/0xd0' -> ('copy_page', 0x30, 0xd0); None for raw addresses."""
    m = _SYMBOL.fullmatch(text.strip())
    if m is None:
        return None
    return m.group(1), int(m.group(2), 16), int(m.group(3), 16)


def symbolize(report: CrashReport, resolve: Resolver) -> tuple[Frame, ...]:
    """Map the report's pc, lr and call-trace entries to source lines.

    ``resolve(func, offset)`` returns 'file:line' or None. lr and call-trace
    entries are return addresses, so they are passed ``offset - 1`` (the call
    instruction itself); pc, and the first trace entry when it is the pc, are not.
    """
    roles = [("pc", report.pc_symbol), ("lr", report.lr_symbol)]
    roles += [("trace", entry) for entry in report.call_trace]
    frames = []
    for index, (role, symbol) in enumerate(roles):
        if symbol is None:
            continue
        is_pc = role == "pc" or (index == 2 and symbol == report.pc_symbol)
        frames.append(Frame(role, symbol, _resolve_one(symbol, is_pc, resolve)))
    return tuple(frames)


def _resolve_one(symbol: str, is_pc: bool, resolve: Resolver) -> Optional[str]:
    parsed = parse_symbol(symbol)
    if parsed is None:
        return None
    func, off, _size = parsed
    return resolve(func, off if is_pc or off == 0 else off - 1)


class Addr2lineResolver:
    """Default resolver: symbol address from vmlinux's symtab (pyelftools), then
    ``addr2line -e vmlinux -f -i``. Needs a vmlinux with DWARF (CONFIG_DEBUG_INFO*)
    for file:line; without it every lookup returns None.

    Among several symbols of the same name (static functions), the first one
    large enough to hold the offset is used.
    """

    def __init__(self, vmlinux: Path, addr2line: Sequence[str] = ("aarch64-linux-gnu-addr2line",)):
        self.vmlinux = Path(vmlinux)
        if not self.vmlinux.is_file():
            raise HarnessError(f"vmlinux not found: {self.vmlinux}", step="symbolize")
        self.command = (require_tool(addr2line[0]), *addr2line[1:])
        self._symbols: Optional[SymbolTable] = None
        self._cache: dict[int, Optional[str]] = {}

    def __call__(self, func: str, offset: int) -> Optional[str]:
        address = self.address(func, offset)
        if address is None:
            return None
        if address not in self._cache:
            self._cache[address] = self._addr2line(address)
        return self._cache[address]

    def address(self, func: str, offset: int) -> Optional[int]:
        candidates = sorted(self._symbol_table().get(func, ()), key=lambda s: s[1] == 0)
        for start, size in candidates:
            if size == 0 or offset < size:
                return start + offset
        return None

    def _symbol_table(self) -> SymbolTable:
        if self._symbols is None:
            self._symbols = load_function_symbols(self.vmlinux)
        return self._symbols

    def _addr2line(self, address: int) -> Optional[str]:
        argv = [*self.command, "-e", str(self.vmlinux), "-f", "-i", hex(address)]
        try:
            out = run(argv, quiet=True, check=False)
        except OSError:
            return None
        lines = out.stdout.decode(errors="replace").splitlines()
        location = lines[1].split(" (discriminator")[0] if len(lines) > 1 else ""
        return None if not location or location.startswith("??") else location


def load_function_symbols(elf_path: Path) -> SymbolTable:
    """name -> [(address, size)] for the functions in an ELF's .symtab (read by
    harness.kernel.layout's ELF reader, the harness's only one)."""
    from harness.kernel.layout import LayoutError, read_symtab
    try:
        return read_symtab(elf_path, types=("STT_FUNC", "STT_NOTYPE"))
    except LayoutError as e:
        raise HarnessError(e.message, step="symbolize") from None
