"""Parse the arm64 kernel page-table dump (``/sys/kernel/debug/kernel_page_tables``).

Format (6.12, ``arch/arm64/mm/ptdump.c`` ``note_page``)::

    ---[ Linear Mapping start ]---
    0xfff0000080000000-0xfff00000a0000000         512M PMD       RW NX     AF    CON BLK UXN    MEM/NORMAL-TAGGED
    0xfff00000a0000000-0xfff00000c0000000         512M PMD

An entry is ``0x%016lx-0x%016lx   %9lu%c %s`` then, unless its prot bits are all
zero, one `` %s`` per attribute slot. An entry without attributes is a *hole*: its
level says how deep the walk found the empty entry. A non-zero entry whose valid
bit is clear shows ``F`` (e.g. DEBUG_PAGEALLOC): neither a hole nor a valid mapping.

Regions are keyed by marker name, because their order changes with the layout:
``"X start"`` opens region ``"X"``; any other marker (``"vmalloc() area"``,
``"Linear Mapping end"``) opens a region of that exact name, so the entries
between two regions are kept too. A region runs to the next marker. An entry
spanning a marker is printed before it (the kernel splits entries only where it
notes one), so a region's last entry may end past the region.
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from harness.inspect import ParseError

LEVELS = ("PGD", "P4D", "PUD", "PMD", "PTE")
_WRAP = 1 << 64
_MARKER = re.compile(r"---\[ (?P<name>.+) \]---")
_ENTRY = re.compile(
    r"0x(?P<start>[0-9a-f]{16})-0x(?P<end>[0-9a-f]{16})\s+"
    r"(?P<size>\d+[KMGTPE]) (?P<level>PGD|P4D|PUD|PMD|PTE)(?P<attrs>(?: .*)?)")

# pte_bits[] in arch/arm64/mm/ptdump.c, in print order: (text if set, text if clear)
_SLOTS = ((" ", "F"), ("USR", "   "), ("ro", "RW"), ("NX", "x "), ("SHD", "   "),
          ("AF", "  "), ("NG", "  "), ("CON", "   "), ("   ", "BLK"), ("UXN", "   "),
          ("GP", "  "))
MEMORY_TYPES = ("DEVICE/nGnRnE", "DEVICE/nGnRE", "MEM/NORMAL-NC", "MEM/NORMAL",
                "MEM/NORMAL-TAGGED")


@dataclass(frozen=True)
class Entry:
    """One dump line: ``[start, end)`` at ``level``; ``attrs`` as printed tokens."""

    start: int
    end: int
    size: str
    level: str
    attrs: tuple[str, ...] = ()

    @property
    def is_hole(self) -> bool:
        return not self.attrs

    @property
    def is_valid(self) -> bool:
        """A live mapping: has attributes and no ``F`` (valid bit clear)."""
        return bool(self.attrs) and "F" not in self.attrs

    @property
    def size_bytes(self) -> int:
        return self.end - self.start

    def overlaps(self, va_start: int, va_end: int) -> bool:
        return self.start < va_end and va_start < self.end

    def to_dict(self) -> dict:
        return {"start": f"0x{self.start:016x}", "end": f"0x{self.end:016x}",
                "size": self.size, "level": self.level, "attrs": list(self.attrs)}

    @classmethod
    def from_dict(cls, d: dict) -> Entry:
        return cls(int(d["start"], 16), int(d["end"], 16), d["size"], d["level"],
                   tuple(d["attrs"]))


@dataclass(frozen=True)
class Region:
    """Entries after one marker; ``marker`` is the text inside ``---[ ]---``."""

    name: str
    entries: tuple[Entry, ...]
    marker: str = ""

    @property
    def marker_text(self) -> str:
        return self.marker or self.name


@dataclass(frozen=True)
class Snapshot:
    """All regions of one dump, in dump order (``dict`` keeps it)."""

    regions: dict[str, Region]

    def region(self, name: str) -> Region:
        try:
            return self.regions[name]
        except KeyError:
            raise ParseError(f"no region {name!r} in the page-table dump; "
                             f"have: {', '.join(self.regions)}") from None

    def entries(self) -> list[Entry]:
        return [e for r in self.regions.values() for e in r.entries]

    def to_dict(self) -> dict:
        return {"regions": [{"name": r.name, "marker": r.marker_text,
                             "entries": [e.to_dict() for e in r.entries]}
                            for r in self.regions.values()]}

    @classmethod
    def from_dict(cls, d: dict) -> Snapshot:
        regions = (Region(r["name"], tuple(Entry.from_dict(e) for e in r["entries"]),
                          r.get("marker", ""))
                   for r in d["regions"])
        return cls({r.name: r for r in regions})


def region_name(marker: str) -> str:
    return marker[:-len(" start")] if marker.endswith(" start") else marker


def parse_entry(line: str) -> Entry | None:
    m = _ENTRY.fullmatch(line)
    if m is None:
        return None
    start, end = int(m["start"], 16), int(m["end"], 16)
    if end == 0:            # the last entry ends at 1 << 64, printed as 0
        end = _WRAP
    return Entry(start, end, m["size"], m["level"], tuple(m["attrs"].split()))


def parse(text: str, *, strict: bool = True) -> Snapshot:
    """Parse a whole dump; raises ParseError on any line it does not understand.

    ``strict`` also requires each entry to start where the previous one ended,
    which catches a truncated read; turn it off for excerpts.
    """
    regions: dict[str, tuple[str, list[Entry]]] = {}
    current: list[Entry] | None = None
    last_end = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if not line:
            continue
        marker = _MARKER.fullmatch(line)
        if marker:
            current = _open_region(regions, marker["name"], lineno)
            continue
        entry = parse_entry(line)
        _check_entry(entry, current, last_end if strict else None, lineno, line)
        current.append(entry)
        last_end = entry.end
    return Snapshot({n: Region(n, tuple(es), m) for n, (m, es) in regions.items()})


def _open_region(regions: dict, marker: str, lineno: int) -> list:
    name = region_name(marker)
    if name in regions:
        raise ParseError(f"line {lineno}: marker for region {name!r} seen twice")
    regions[name] = (marker, [])
    return regions[name][1]


def _check_entry(entry, current, last_end, lineno: int, line: str) -> None:
    if entry is None:
        raise ParseError(f"line {lineno}: not a page-table dump line", evidence=line)
    if current is None:
        raise ParseError(f"line {lineno}: entry before the first ---[ marker ]---",
                         evidence=line)
    if last_end is not None and entry.start != last_end:
        raise ParseError(f"line {lineno}: entry starts at 0x{entry.start:x}, the "
                         f"previous one ended at 0x{last_end:x} (truncated dump?)",
                         evidence=line)


def format_attrs(attrs: Iterable[str]) -> str:
    """Rebuild the kernel's column layout from the tokens (as ``dump_prot`` prints)."""
    tokens = list(attrs)
    if not tokens:
        return ""
    out, used = [], 0
    for set_text, clear_text in _SLOTS:
        text = _slot_text(set_text, clear_text, tokens)
        if text is None:
            return "  " + " ".join(tokens)       # unknown layout: keep the tokens
        used += bool(text.strip())
        out.append(" " + text)
    memtype = [t for t in tokens if t in MEMORY_TYPES]
    out.extend(" " + t for t in memtype[:1])
    if used + len(memtype[:1]) != len(tokens):
        return "  " + " ".join(tokens)
    return "".join(out)


def _slot_text(set_text: str, clear_text: str, tokens: list[str]) -> str | None:
    for text in (set_text, clear_text):
        if text.strip() and text.strip() in tokens:
            return text
    blank = [t for t in (set_text, clear_text) if not t.strip()]
    return blank[0] if blank else None


def format_size(start: int, end: int) -> str:
    """The kernel's size column: the largest unit (K..E) that divides the span."""
    delta, unit = ((end - start) % _WRAP) >> 10, 0
    while delta % 1024 == 0 and unit < 5:
        delta, unit = delta >> 10, unit + 1
    return f"{delta}{'KMGTPE'[unit]}"


def format_entry(entry: Entry) -> str:
    """The entry as the kernel prints it."""
    head = f"0x{entry.start:016x}-0x{entry.end % _WRAP:016x}   "
    return f"{head}{entry.size:>10} {entry.level}{format_attrs(entry.attrs)}"


def format_snapshot(snapshot: Snapshot) -> str:
    lines = []
    for region in snapshot.regions.values():
        lines.append(f"---[ {region.marker_text} ]---")
        lines.extend(format_entry(e) for e in region.entries)
    return "\n".join(lines) + "\n"


def _lines(snapshot: Snapshot, region: str) -> list[str]:
    found = snapshot.regions.get(region)
    return [format_entry(e) for e in found.entries] if found else []


def diff(before: Snapshot, after: Snapshot, region: str) -> list[str]:
    """Changed entries of one region: ``-line`` (gone) and ``+line`` (new), in order."""
    if region not in before.regions and region not in after.regions:
        before.region(region)                 # raises, naming the known regions
    old, new = _lines(before, region), _lines(after, region)
    out = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new).get_opcodes():
        if tag != "equal":
            out.extend("-" + line for line in old[i1:i2])
            out.extend("+" + line for line in new[j1:j2])
    return out


def changed_regions(before: Snapshot, after: Snapshot) -> list[str]:
    """Names of regions whose entries differ (or exist in one snapshot only)."""
    names = list(before.regions) + [n for n in after.regions if n not in before.regions]
    return [n for n in names if before.regions.get(n) != after.regions.get(n)]


def mapped(snapshot: Snapshot, region: str) -> list[Entry]:
    """Entries of the region that are not holes."""
    return [e for e in snapshot.region(region).entries if not e.is_hole]


def covering(snapshot: Snapshot, region: str, va_start: int, va_end: int) -> list[Entry]:
    """Valid mappings of the region that overlap ``[va_start, va_end)``."""
    return [e for e in snapshot.region(region).entries
            if e.is_valid and e.overlaps(va_start, va_end)]


def holes(snapshot: Snapshot, region: str, va_start: int, va_end: int) -> list[Entry]:
    """Holes of the region that overlap ``[va_start, va_end)`` (their level matters)."""
    return [e for e in snapshot.region(region).entries
            if e.is_hole and e.overlaps(va_start, va_end)]


def entry_at(snapshot: Snapshot, va: int) -> Entry | None:
    """The entry (of any region) that contains ``va``."""
    return next((e for e in snapshot.entries() if e.start <= va < e.end), None)
