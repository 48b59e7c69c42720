"""Serialisable records passed from the drive/inspect stages to checks and report.

Everything here round-trips through JSON (``to_dict``/``from_dict``), so a saved
run can be re-judged without booting (``hotplug-harness report DIR``).

``MethodRun`` carries typed records, each with the keys it has always had in
``report.json``:

* ``geometry``        :class:`Geometry` (the kernel's layout, learned at the first phase)
* ``crashes``         :class:`Crash` (a ``crashwatch.CrashReport`` plus its ``step``)
* ``bootmem_offline`` :class:`BootmemAttempt` (``hotplug.common.try_bootmem_offline``)
* ``kselftest``       :class:`KselftestResult` (``hotplug/kselftest.py``)
* ``error``           :class:`RunError` (the ``HarnessError`` that stopped the run)
* ``options``         :class:`CheckOptions` (what the checks must know of the run)
* ``order``           :class:`OrderRecord` (one per removal watched through gdb)
* ``hotadds``         :class:`HotAddAttempt` (hot-adds at chosen addresses, ``drive/reach.py``)

These records are :class:`Keyed`: one read from a saved dict writes back
exactly that dict's keys, in its order (keys added later are absent from old
reports, and stay so), with any key this version does not know kept as is.
``MethodRun`` also accepts the plain dicts of older code (its tests, the pytest
plugin, a method that leaves a dict in ``rec.kselftest``) and converts them.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from types import MappingProxyType
from typing import Any, Callable, NamedTuple, Optional, TypeVar, Union, cast

from harness.errors import Blame, HarnessError
from harness.errors import Verdict as Verdict  # the records' verdicts (defined with Blame)
from harness.inspect import ptdump
from harness.inspect.sysfs import BlockTable
from harness.inspect.walker import BadEntry  # WalkSummary.bad holds the walker's own tuples

PASS, FAIL, SKIP, ERROR = Verdict.PASS, Verdict.FAIL, Verdict.SKIP, Verdict.ERROR
# checks every method that removes memory needs; one that cannot look is an
# error of the run, never a PASS (checks.judge)
REMOVAL_CHECKS = ("blocks-lifecycle", "no-stale-linear-map", "no-stale-vmemmap",
                  "tables-freed", "online-memory-mapped", "present-struct-pages-mapped",
                  "contiguous-groups-whole", "no-kernel-splat")


# ---------------------------------------------------------------- keyed records

K = TypeVar("K", bound="Keyed")


def _plain(value: Any) -> Any:
    """A field value in its JSON form: records as dicts, tuples as lists."""
    if isinstance(value, Keyed):
        return value.to_dict()
    if isinstance(value, Enum):
        return value
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def _tuple(value: Any) -> Any:
    return None if value is None else tuple(value)


class Keyed:
    """Base of a frozen dataclass record saved as a dict.

    ``from_dict`` remembers the keys the dict had (``to_dict`` writes back those
    keys, in that order; a record built in code writes every field) and the
    keys no field knows (written back unchanged). A key the dict lacks takes the
    field's default. ``get``/``[]``/``in``/``keys``/iteration read it as the dict
    it is saved as, for code not yet converted to attribute access (``in``: the
    key would be written). A record is always true (test ``is None``), and
    ``dataclasses.replace`` gives a record built in code (every field written)."""

    _keys: Optional[tuple[str, ...]] = None
    _extra: Mapping[str, Any] = MappingProxyType({})
    _LOAD: Mapping[str, Callable[[Any], Any]] = MappingProxyType({})  # key -> from JSON

    @classmethod
    def from_dict(cls: type[K], d: Mapping[str, Any]) -> K:
        names = _names(cls)
        load = cls._LOAD
        known = {k: (load[k](v) if k in load else v) for k, v in d.items() if k in names}
        record = cast(Callable[..., K], cls)(**known)
        object.__setattr__(record, "_keys", tuple(d))
        extra = {k: v for k, v in d.items() if k not in names}
        if extra:
            object.__setattr__(record, "_extra", MappingProxyType(extra))
        return record

    def keys(self) -> tuple[str, ...]:
        return self._keys if self._keys is not None else _names(type(self))

    def to_dict(self) -> dict[str, Any]:
        return {k: self._extra[k] if k in self._extra else _plain(getattr(self, k))
                for k in self.keys()}

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __iter__(self) -> Iterator[str]:       # the keys, as a dict would
        return iter(self.keys())

    def __getitem__(self, key: str) -> Any:
        if key not in self:
            raise KeyError(key)
        return self._extra[key] if key in self._extra else getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default


def _as(cls: type[K], value: Any) -> Any:
    """``value`` as a ``cls`` record: a dict is read with ``from_dict``."""
    return cls.from_dict(value) if isinstance(value, Mapping) else value


@dataclass(frozen=True)
class Geometry(Keyed):
    """The kernel's layout as the checks need it (``hotplug.common``
    ``PhaseCollector`` learns it: the translation geometry (``art.layout``) from the
    kernel's ``.config``, region bounds from ptdump, ``memstart_addr`` from guest
    RAM). Any value may be None (not learned): a check that needs it SKIPs."""

    granule: Optional[int] = None          # page size in bytes
    va_bits: Optional[int] = None
    levels: Optional[int] = None
    page_offset: Optional[int] = None      # first VA of the linear map
    linear_end: Optional[int] = None
    vmemmap_start: Optional[int] = None
    vmemmap_end: Optional[int] = None
    linear_offset: Optional[int] = None    # va = pa + linear_offset
    memstart: Optional[int] = None         # PHYS_OFFSET (memstart_addr)
    struct_page_size: Optional[int] = None
    struct_page_size_from: Optional[str] = None   # how struct_page_size was found

    @classmethod
    def unknown(cls) -> Geometry:
        """Nothing learned (saved as ``{}``)."""
        return cls.from_dict({})

    @property
    def learned(self) -> bool:
        return self.granule is not None

    def struct_pages(self, pa_start: int, pa_end: int) -> Optional[tuple[int, int]]:
        """VA range of the struct pages describing physical ``[pa_start,
        pa_end)`` (a partial last page counts); None while the vmemmap start,
        PHYS_OFFSET, struct page size or granule is not learned."""
        base, memstart, size, granule = (self.vmemmap_start, self.memstart,
                                         self.struct_page_size, self.granule)
        if base is None or memstart is None or size is None or granule is None:
            return None
        shift = granule.bit_length() - 1
        first_pfn = memstart >> shift
        last_pfn = -(-pa_end >> shift)                 # round a partial page up
        return (base + ((pa_start >> shift) - first_pfn) * size,
                base + (last_pfn - first_pfn) * size)


@dataclass(frozen=True)
class Crash(Keyed):
    """A kernel report seen on the console (``crashwatch.CrashReport.to_dict``)
    and the step it came in (``runner``: by the step markers' console lines)."""

    kind: str = ""
    title: str = ""
    first_line_no: Optional[int] = None    # console.log line, from 1
    pc_symbol: Optional[str] = None
    lr_symbol: Optional[str] = None
    call_trace: tuple[str, ...] = ()
    timestamp: Optional[float] = None
    complete: bool = True
    lines: tuple[str, ...] = ()
    step: str = ""

    _LOAD = MappingProxyType({"call_trace": _tuple, "lines": _tuple})

    @classmethod
    def from_report(cls, report: Any, step: str) -> Crash:
        """From a ``crashwatch.CrashReport`` (anything with ``to_dict()``)."""
        return cls.from_dict({**report.to_dict(), "step": step})


@dataclass(frozen=True)
class BootmemAttempt(Keyed):
    """Offlining one boot-memory block, which arm64 must refuse
    (``hotplug.common.try_bootmem_offline``). Records saved before ``zones``,
    ``hole_free``, ``range`` and ``console`` existed lack them (None)."""

    block: Optional[int] = None            # memoryN
    exit_code: Optional[int] = None        # of "echo offline > .../state"
    output: str = ""
    state_after: Optional[str] = None
    zones: Optional[tuple[str, ...]] = None
    hole_free: Optional[bool] = None       # inside one System RAM range
    range: Optional[tuple[int, int]] = None   # the block's PA [start, end)
    console: Optional[tuple[str, ...]] = None  # console lines about it meanwhile

    _LOAD = MappingProxyType({"zones": _tuple, "range": _tuple, "console": _tuple})


@dataclass(frozen=True)
class HotAddAttempt(Keyed):
    """One hot-add through the probe file at a chosen physical address
    (``drive/reach.py``) and what the kernel made of it: the write's exit code
    and output, whether a memory block appeared, the console lines printed
    meanwhile, and how many bytes ``/proc/kpageflags`` gave for the block's last
    frame (8 when the frame is below ``max_pfn``, 0 when it is not)."""

    kind: str = ""                         # "after-boot-memory", "top-of-reach", "beyond-reach"
    pa: Optional[int] = None
    size: Optional[int] = None
    reach: Optional[tuple[int, int]] = None   # the PA range the linear map must cover
    exit_code: Optional[int] = None
    output: str = ""
    present: Optional[bool] = None         # a memory block for it appeared
    console: tuple[str, ...] = ()
    kpageflags_bytes: Optional[int] = None

    _LOAD = MappingProxyType({"reach": _tuple, "console": _tuple})


def _cycles(value: Any) -> tuple[KselftestResult, ...]:
    return tuple(_as(KselftestResult, c) for c in value or ())


@dataclass(frozen=True)
class KselftestResult(Keyed):
    """One run of mem-on-off-test.sh (``hotplug/kselftest.py``). With several
    cycles the first cycle's result holds every cycle's in ``cycles``."""

    cycle: Optional[int] = None
    exit_code: Optional[int] = None
    output: str = ""
    hotplugged_blocks: tuple[int, ...] = ()
    lines: Optional[tuple[str, ...]] = None    # an older form of ``output``
    cycles: tuple[KselftestResult, ...] = ()

    _LOAD = MappingProxyType({"hotplugged_blocks": _tuple, "lines": _tuple,
                              "cycles": _cycles})

    @property
    def text(self) -> str:
        """The script's output, from either form."""
        return self.output or "\n".join(self.lines or ())


@dataclass(frozen=True)
class RunError(Keyed):
    """The error that stopped a method's run, and whom it blames."""

    message: str = ""
    step: str = ""
    blame: Blame = Blame.HARNESS
    evidence: str = ""

    EVIDENCE_CHARS = 4000      # the tail of the evidence kept in the report

    def __post_init__(self) -> None:
        object.__setattr__(self, "blame", Blame(self.blame))

    @classmethod
    def from_error(cls, err: HarnessError) -> RunError:
        return cls(err.message, err.step, Blame(err.blame),
                   err.evidence[-cls.EVIDENCE_CHARS:])


@dataclass(frozen=True)
class OrderRecord(Keyed):
    """One removal watched through the gdbstub (``StepRunner.removal_step``): the
    stop events (``harness.inspect.order`` event dicts, read with
    ``order.event_from_dict``), gdb's timing stats, and why it was not watched
    or what went wrong (``error``)."""

    step: str = ""
    pa_start: int = 0
    pa_end: int = 0
    flush_check: bool = False              # the TLB flush order was followed
    events: tuple[Mapping[str, Any], ...] = ()
    stats: Mapping[str, Any] = field(default_factory=dict)
    error: str = ""

    _LOAD = MappingProxyType({"events": tuple})


@dataclass(frozen=True)
class CheckOptions(Keyed):
    """The run options the checks must know (``runner._recorded_options``).
    None: not recorded (a report saved before the option existed)."""

    walker: Optional[bool] = None          # the host-side walker was asked for
    cycles: Optional[int] = None           # add/remove cycles the method ran
    order_check: Optional[str] = None      # gdb around removals: on, full, off

    @classmethod
    def unknown(cls) -> CheckOptions:
        return cls.from_dict({})


# ---------------------------------------------------------------- walks, phases

class Leaf(NamedTuple):
    """A mapping the walker saw: ``[va_start, va_end)`` -> ``pa`` at ``level``
    (saved as ``[va_start, va_end, pa, level]``)."""

    va_start: int
    va_end: int
    pa: int
    level: str

    @property
    def size(self) -> int:
        return self.va_end - self.va_start

    @property
    def pa_end(self) -> int:
        return self.pa + self.size


@dataclass(frozen=True)
class WalkSummary:
    """What the host-side walker saw in one region (linear map or vmemmap).
    Plain tuples given for ``leaves``/``bad`` become :class:`Leaf` and
    :class:`BadEntry` (``(va, level, raw descriptor, reason)``)."""

    region: str
    va_start: int
    va_end: int
    leaves: tuple[Leaf, ...]
    tables: dict[str, int]             # level name -> number of table pages
    empty_tables: int = 0
    seconds: float = 0.0
    bad: tuple[BadEntry, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "leaves", tuple(
            x if type(x) is Leaf else Leaf(*x) for x in self.leaves))
        object.__setattr__(self, "bad", tuple(
            b if type(b) is BadEntry else BadEntry(*b) for b in self.bad))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["leaves"] = [list(x) for x in self.leaves]
        d["bad"] = [list(b) for b in self.bad]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WalkSummary:
        d = dict(d)
        d["leaves"] = tuple(Leaf(*x) for x in d["leaves"])
        d["bad"] = tuple(BadEntry(*b) for b in d.get("bad", ()))
        return cls(**d)


@dataclass(frozen=True)
class Phase:
    """The guest's memory state at one point of a scenario."""
    name: str                          # e.g. "before", "online", "removed-1"
    blocks: BlockTable
    meminfo: dict[str, int]
    system_ram: tuple[tuple[int, int], ...]   # half-open, from /proc/iomem
    ptdump: Optional[ptdump.Snapshot] = None
    walks: tuple[WalkSummary, ...] = ()       # one per region walked
    note: str = ""
    # page_owner's hotplug-path allocation stacks (harness.leakcheck.snapshot,
    # as Snapshot.to_dict()), taken for the leak check before the first add and
    # after each cycle; {"unavailable": why} when asked for but page_owner was off
    page_owner: Optional[dict[str, Any]] = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "blocks": self.blocks.to_dict(),
                "meminfo": self.meminfo,
                "system_ram": [list(r) for r in self.system_ram],
                "ptdump": self.ptdump.to_dict() if self.ptdump else None,
                "walks": [w.to_dict() for w in self.walks], "note": self.note,
                "page_owner": self.page_owner}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Phase:
        return cls(name=d["name"], blocks=BlockTable.from_dict(d["blocks"]),
                   meminfo=d["meminfo"],
                   system_ram=tuple((r[0], r[1]) for r in d["system_ram"]),
                   ptdump=ptdump.Snapshot.from_dict(d["ptdump"]) if d["ptdump"] else None,
                   walks=tuple(WalkSummary.from_dict(w) for w in d["walks"]),
                   note=d.get("note", ""), page_owner=d.get("page_owner"))


@dataclass(frozen=True)
class Step:
    """One scenario step: what ran, how long, over which transport."""
    name: str
    seconds: float
    transport: str                     # "ssh", "serial", "qmp", "host"
    ok: bool = True
    detail: str = ""                   # command line / QMP call, and output tail

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Step:
        return cls(**d)


@dataclass(frozen=True)
class Removal:
    """A physical range hot-removed at some phase, and what stayed online."""
    phase: str                         # name of the Phase taken after removal
    pa_start: int
    pa_end: int                        # exclusive
    baseline: str = "before"           # phase to compare tables against
    # device memory (no memory block: ZONE_DEVICE) still there after this
    # removal, whose struct pages must stay mapped (half-open PA ranges)
    kept: tuple[tuple[int, int], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not self.kept:          # written only where a method says (runs saved before)
            del d["kept"]
        else:
            d["kept"] = [list(k) for k in self.kept]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Removal:
        return cls(**{**d, "kept": tuple((a, b) for a, b in d.get("kept", ()))})


@dataclass(frozen=True)
class Check:
    name: str
    verdict: Verdict
    evidence: str = ""
    step: str = ""                     # the step the evidence points at

    def __post_init__(self) -> None:
        object.__setattr__(self, "verdict", Verdict(self.verdict))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Check:
        return cls(**d)


# ---------------------------------------------------------------- the run

def _options(value: Union[CheckOptions, Mapping[str, Any], None]) -> CheckOptions:
    if value is None:
        return CheckOptions.unknown()
    return cast(CheckOptions, _as(CheckOptions, value))


@dataclass(frozen=True)
class MethodRun:
    """Everything one hotplug method recorded: input to the checks."""
    method: str
    geometry: Geometry
    steps: tuple[Step, ...] = ()
    phases: tuple[Phase, ...] = ()     # in order
    removals: tuple[Removal, ...] = ()
    crashes: tuple[Crash, ...] = ()
    bootmem_offline: Optional[BootmemAttempt] = None
    kselftest: Optional[KselftestResult] = None
    error: Optional[RunError] = None
    notes: tuple[str, ...] = ()        # what could not be observed, said honestly
    required: tuple[str, ...] = ()     # check names the method needs (empty: derived)
    options: CheckOptions = field(default_factory=CheckOptions.unknown)
    order: tuple[OrderRecord, ...] = ()   # watched removals
    hotadds: tuple[HotAddAttempt, ...] = ()   # hot-adds at chosen addresses (reach)

    def __post_init__(self) -> None:
        """Dicts given for the typed records (older callers) are read as saved."""
        set_ = object.__setattr__
        set_(self, "geometry", _as(Geometry, self.geometry))
        set_(self, "crashes", tuple(_as(Crash, c) for c in self.crashes))
        set_(self, "bootmem_offline", _as(BootmemAttempt, self.bootmem_offline))
        set_(self, "kselftest", _as(KselftestResult, self.kselftest))
        set_(self, "error", _as(RunError, self.error))
        set_(self, "options", _options(self.options))
        set_(self, "order", tuple(_as(OrderRecord, o) for o in self.order))
        set_(self, "hotadds", tuple(_as(HotAddAttempt, h) for h in self.hotadds))

    def phase(self, name: str) -> Optional[Phase]:
        for p in self.phases:
            if p.name == name:
                return p
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "geometry": self.geometry.to_dict(),
                "steps": [s.to_dict() for s in self.steps],
                "phases": [p.to_dict() for p in self.phases],
                "removals": [r.to_dict() for r in self.removals],
                "crashes": [c.to_dict() for c in self.crashes],
                "bootmem_offline": _dict_or_none(self.bootmem_offline),
                "kselftest": _dict_or_none(self.kselftest),
                "error": _dict_or_none(self.error),
                "notes": list(self.notes), "required": list(self.required),
                "options": self.options.to_dict(),
                "order": [o.to_dict() for o in self.order],
                # only when there are some: reports without them keep their keys
                **({"hotadds": [h.to_dict() for h in self.hotadds]} if self.hotadds else {})}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MethodRun:
        return cls(method=d["method"], geometry=Geometry.from_dict(d["geometry"]),
                   steps=tuple(Step.from_dict(s) for s in d["steps"]),
                   phases=tuple(Phase.from_dict(p) for p in d["phases"]),
                   removals=tuple(Removal.from_dict(r) for r in d["removals"]),
                   crashes=tuple(Crash.from_dict(c) for c in d["crashes"]),
                   bootmem_offline=_from_or_none(BootmemAttempt, d["bootmem_offline"]),
                   kselftest=_from_or_none(KselftestResult, d.get("kselftest")),
                   error=_from_or_none(RunError, d.get("error")),
                   notes=tuple(d.get("notes", ())),
                   required=tuple(d.get("required", ())),
                   options=CheckOptions.from_dict(d.get("options") or {}),
                   order=tuple(OrderRecord.from_dict(o) for o in d.get("order") or ()),
                   hotadds=tuple(HotAddAttempt.from_dict(h) for h in d.get("hotadds") or ()))


def _dict_or_none(record: Optional[Keyed]) -> Optional[dict[str, Any]]:
    return None if record is None else record.to_dict()


def _from_or_none(cls: type[K], d: Optional[Mapping[str, Any]]) -> Optional[K]:
    return None if d is None else cls.from_dict(d)
