"""Memory-block sysfs state, ``/proc/iomem`` and ``/proc/meminfo``.

The guest runs :data:`MEMORY_BLOCKS_CMD` (busybox ``sh``, POSIX only, one
subshell so it sets no variable in the caller's shell). It prints::

    block_size_bytes=8000000
    auto_online_blocks=offline
    memory8 state=online phys_index=00000008 valid_zones=Normal removable=1
    memory16 state=offline phys_index=00000010 valid_zones=Normal,Movable removable=1

Values are the sysfs text with spaces turned into commas; ``-`` means the file
could not be read (absent, or the block vanished during the listing).
Block lines come in glob order (memory16 before memory8): the parser sorts.
"""
from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Union

from harness.inspect import ParseError

MEMORY_ROOT = "/sys/devices/system/memory"
MISSING = "-"


def memory_blocks_cmd(root: str = MEMORY_ROOT) -> str:
    """The one-line shell command that lists every memory block under ``root``.

    Shell builtins only (``read``, ``echo``, ``[``, ``for``): a guest process
    per sysfs file (``$(cat ...)``) cost ~30 ms each under TCG, 0.35 s for a
    listing of 8 blocks against 0.08 s now (measured over SSH on the default
    kernel); inside a removal watched through gdb every process would also
    stop gdb at each page it frees."""
    r = shlex.quote(root)
    # rd FILE: $v = the file's first line, "-" if it cannot be read (the
    # 2>/dev/null comes first so that it also silences the failed redirection)
    rd = 'rd() { v=; read -r v 2>/dev/null <"$1"; v=${v:--}; }'
    block = ('n=${b##*/}; rd "$b/state"; s=$v; rd "$b/phys_index"; p=$v; '
             'rd "$b/valid_zones"; z=; for w in $v; do z=${z:+$z,}$w; done; '
             'rd "$b/removable"; '
             'echo "$n state=$s phys_index=$p valid_zones=$z removable=$v"')
    return (f'(d={r}; {rd}; rd "$d/block_size_bytes"; echo "block_size_bytes=$v"; '
            'rd "$d/auto_online_blocks"; echo "auto_online_blocks=$v"; '
            f'for b in "$d"/memory[0-9]*; do [ -d "$b" ] || continue; {block}; done)')


MEMORY_BLOCKS_CMD = memory_blocks_cmd()
# /proc/iomem read by shell builtins only (no cat): typed into the serial
# console's shell, it creates no process, so none exits inside a removal gdb follows
IOMEM_BUILTIN_CMD = 'while IFS= read -r l; do echo "$l"; done < /proc/iomem'

_BLOCK = re.compile(r"memory(?P<index>\d+) state=(?P<state>\S+) phys_index=(?P<phys>\S+) "
                    r"valid_zones=(?P<zones>\S+) removable=(?P<removable>\S+)")
_HEADER = re.compile(r"(?P<key>block_size_bytes|auto_online_blocks)=(?P<value>\S*)")


@dataclass(frozen=True)
class MemoryBlock:
    """One ``memoryN``. ``state`` is ``missing`` when it could not be read."""

    index: int
    state: str
    phys_index: int
    valid_zones: tuple[str, ...] = ()
    removable: bool | None = None

    def phys_start(self, block_size: int) -> int:
        return self.phys_index * block_size

    def phys_end(self, block_size: int) -> int:
        return (self.phys_index + 1) * block_size

    def to_dict(self) -> dict:
        return {"index": self.index, "state": self.state, "phys_index": self.phys_index,
                "valid_zones": list(self.valid_zones), "removable": self.removable}

    @classmethod
    def from_dict(cls, d: dict) -> MemoryBlock:
        return cls(d["index"], d["state"], d["phys_index"], tuple(d["valid_zones"]),
                   d["removable"])


@dataclass(frozen=True)
class BlockTable:
    """All memory blocks at one moment, sorted by index."""

    blocks: tuple[MemoryBlock, ...]
    block_size: int | None = None
    auto_online: str | None = None

    @property
    def by_index(self) -> dict[int, MemoryBlock]:
        return {b.index: b for b in self.blocks}

    @property
    def indices(self) -> tuple[int, ...]:
        return tuple(b.index for b in self.blocks)

    def with_state(self, state: str) -> tuple[MemoryBlock, ...]:
        return tuple(b for b in self.blocks if b.state == state)

    def in_range(self, pa_start: int, pa_end: int) -> tuple[MemoryBlock, ...]:
        """Blocks overlapping physical ``[pa_start, pa_end)``; needs ``block_size``."""
        size = self._size()
        return tuple(b for b in self.blocks
                     if b.phys_start(size) < pa_end and pa_start < b.phys_end(size))

    def _size(self) -> int:
        if not self.block_size:
            raise ParseError("block size unknown: the listing had no block_size_bytes")
        return self.block_size

    def to_dict(self) -> dict:
        return {"block_size": self.block_size, "auto_online": self.auto_online,
                "blocks": [b.to_dict() for b in self.blocks]}

    @classmethod
    def from_dict(cls, d: dict) -> BlockTable:
        return cls(tuple(MemoryBlock.from_dict(b) for b in d["blocks"]),
                   d.get("block_size"), d.get("auto_online"))


def parse_block_size(text: str) -> int:
    """``block_size_bytes`` is bare hex (``8000000`` = 128 MiB)."""
    try:
        return int(text.strip(), 16)
    except ValueError:
        raise ParseError(f"block_size_bytes is not hex: {text.strip()!r}") from None


def parse_memory_blocks(text: str, block_size: int | None = None) -> BlockTable:
    """Parse :data:`MEMORY_BLOCKS_CMD` output. Unrelated lines are ignored, but a
    line that starts like a block line and does not parse raises ParseError."""
    header: dict[str, str] = {}
    blocks = []
    for raw in text.splitlines():
        line = raw.strip()
        head = _HEADER.fullmatch(line)
        if head:
            header[head["key"]] = head["value"]
        elif re.match(r"memory\d+ ", line):
            blocks.append(_parse_block(line))
    if block_size is None and header.get("block_size_bytes", MISSING) not in ("", MISSING):
        block_size = parse_block_size(header["block_size_bytes"])
    auto = header.get("auto_online_blocks")
    return BlockTable(tuple(sorted(blocks, key=lambda b: b.index)), block_size,
                      None if auto in (None, "", MISSING) else auto)


def _parse_block(line: str) -> MemoryBlock:
    m = _BLOCK.fullmatch(line)
    if m is None:
        raise ParseError("malformed memory block line", evidence=line)
    index = int(m["index"])
    phys = m["phys"]
    zones = m["zones"]
    return MemoryBlock(
        index=index,
        state="missing" if m["state"] == MISSING else m["state"],
        phys_index=index if phys == MISSING else int(phys, 16),
        valid_zones=() if zones == MISSING else tuple(zones.split(",")),
        removable={"1": True, "0": False}.get(m["removable"]))


@dataclass(frozen=True)
class Resource:
    """One ``/proc/iomem`` line: ``start``..``last`` inclusive, as the kernel prints."""

    start: int
    last: int
    name: str
    children: tuple[Resource, ...] = ()

    @property
    def end(self) -> int:
        return self.last + 1

    def walk(self) -> Iterator[Resource]:
        yield self
        for child in self.children:
            yield from child.walk()


_IOMEM = re.compile(r"(?P<indent> *)(?P<start>[0-9a-f]+)-(?P<last>[0-9a-f]+) : (?P<name>.*)")
Iomem = Union[str, Iterable[Resource]]


def parse_iomem(text: str) -> tuple[Resource, ...]:
    """Parse ``/proc/iomem`` (two spaces of indent per nesting level)."""
    stack: list[tuple[int, list]] = [(-1, [])]     # (depth, children being collected)
    for raw in text.splitlines():
        if not raw.strip():
            continue
        m = _IOMEM.fullmatch(raw.rstrip())
        if m is None:
            raise ParseError("not an /proc/iomem line", evidence=raw)
        depth = len(m["indent"]) // 2
        while stack[-1][0] >= depth:
            stack.pop()
        node = (int(m["start"], 16), int(m["last"], 16), m["name"], [])
        stack[-1][1].append(node)
        stack.append((depth, node[3]))
    return tuple(_freeze(n) for n in stack[0][1])


def _freeze(node) -> Resource:
    start, last, name, children = node
    return Resource(start, last, name, tuple(_freeze(c) for c in children))


def _resources(iomem: Iomem) -> Iterator[Resource]:
    top = parse_iomem(iomem) if isinstance(iomem, str) else iomem
    for res in top:
        yield from res.walk()


def system_ram(iomem: Iomem) -> list[tuple[int, int]]:
    """Every ``System RAM`` range (incl. ``System RAM (virtio_mem)``), half-open, sorted."""
    return sorted((r.start, r.end) for r in _resources(iomem)
                  if r.name.startswith("System RAM"))


def kernel_code(iomem: Iomem) -> tuple[int, int]:
    """The ``Kernel code`` range, half-open: ``[__pa(_text), __pa(__init_begin))``."""
    found = [(r.start, r.end) for r in _resources(iomem) if r.name == "Kernel code"]
    if not found:
        raise ParseError("no 'Kernel code' in /proc/iomem (read as non-root shows zeros)")
    if found[0][0] == 0:
        raise ParseError("/proc/iomem shows zero addresses: it must be read as root")
    return found[0]


def parse_meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` -> ``{name: value}``; values in kB except the page counts
    (``HugePages_*``) that the kernel prints without a unit."""
    out = {}
    for raw in text.splitlines():
        if not raw.strip():
            continue
        m = re.fullmatch(r"(?P<key>[^:]+):\s+(?P<value>\d+)(?: kB)?", raw.strip())
        if m is None:
            raise ParseError("not a /proc/meminfo line", evidence=raw)
        out[m["key"]] = int(m["value"])
    return out
