"""Serialisable records passed from the drive/inspect stages to checks and report.

Everything here round-trips through JSON (``to_dict``/``from_dict``), so a saved
run can be re-judged without booting (``hotplug-harness report DIR``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

from .inspect import ptdump
from .inspect.sysfs import BlockTable

PASS, FAIL, SKIP, ERROR = "PASS", "FAIL", "SKIP", "ERROR"
# checks every method that removes memory needs; one that cannot look is an
# error of the run, never a PASS (checks.judge)
REMOVAL_CHECKS = ("blocks-lifecycle", "no-stale-linear-map", "no-stale-vmemmap",
                  "tables-freed", "online-memory-mapped", "contiguous-groups-whole",
                  "no-kernel-splat")


@dataclass(frozen=True)
class WalkSummary:
    """What the host-side walker saw in one region (linear map or vmemmap)."""
    region: str
    va_start: int
    va_end: int
    leaves: tuple            # ((va_start, va_end, pa, level), ...)
    tables: dict             # level name -> number of table pages
    empty_tables: int = 0
    seconds: float = 0.0
    bad: tuple = ()          # ((va, level, raw descriptor, reason), ...)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["leaves"] = [list(l) for l in self.leaves]
        d["bad"] = [list(b) for b in self.bad]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> WalkSummary:
        d = dict(d)
        d["leaves"] = tuple(tuple(l) for l in d["leaves"])
        d["bad"] = tuple(tuple(b) for b in d.get("bad", ()))
        return cls(**d)


@dataclass(frozen=True)
class Phase:
    """The guest's memory state at one point of a scenario."""
    name: str                          # e.g. "before", "online", "removed-1"
    blocks: BlockTable
    meminfo: dict
    system_ram: tuple                  # ((start, end), ...) half-open, from /proc/iomem
    ptdump: Optional[ptdump.Snapshot] = None
    walks: tuple = ()                  # WalkSummary, one per region walked
    note: str = ""
    # page_owner's hotplug-path allocation stacks (harness.leakcheck.snapshot,
    # as Snapshot.to_dict()), taken for the leak check before the first add and
    # after each cycle; {"unavailable": why} when asked for but page_owner was off
    page_owner: Optional[dict] = None

    def to_dict(self) -> dict:
        return {"name": self.name, "blocks": self.blocks.to_dict(),
                "meminfo": self.meminfo,
                "system_ram": [list(r) for r in self.system_ram],
                "ptdump": self.ptdump.to_dict() if self.ptdump else None,
                "walks": [w.to_dict() for w in self.walks], "note": self.note,
                "page_owner": self.page_owner}

    @classmethod
    def from_dict(cls, d: dict) -> Phase:
        return cls(name=d["name"], blocks=BlockTable.from_dict(d["blocks"]),
                   meminfo=d["meminfo"],
                   system_ram=tuple(tuple(r) for r in d["system_ram"]),
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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Step:
        return cls(**d)


@dataclass(frozen=True)
class Removal:
    """A physical range hot-removed at some phase, and what stayed online."""
    phase: str                         # name of the Phase taken after removal
    pa_start: int
    pa_end: int                        # exclusive
    baseline: str = "before"           # phase to compare tables against

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Removal:
        return cls(**d)


@dataclass(frozen=True)
class Check:
    name: str
    verdict: str                       # PASS FAIL SKIP ERROR
    evidence: str = ""
    step: str = ""                     # the step the evidence points at

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Check:
        return cls(**d)


@dataclass(frozen=True)
class MethodRun:
    """Everything one hotplug method recorded: input to the checks."""
    method: str
    geometry: dict                     # granule, va_bits, levels, linear map VA base
    steps: tuple = ()                  # Step
    phases: tuple = ()                 # Phase, in order
    removals: tuple = ()               # Removal
    crashes: tuple = ()                # crash report dicts (crashwatch.CrashReport.to_dict)
    bootmem_offline: Optional[dict] = None   # {"block", "exit_code", "output",
    #   "state_after", "zones", "hole_free", "range", "console": [lines]}
    kselftest: Optional[dict] = None   # {"exit_code", "output", "hotplugged_blocks"}
    error: Optional[dict] = None       # {"message", "step", "blame", "evidence"}
    notes: tuple = ()                  # what could not be observed, said honestly
    required: tuple = ()               # check names the method needs (empty: derived)
    options: dict = field(default_factory=dict)   # {"walker", "cycles", "order_check"}
    order: tuple = ()                  # watched removals: {"step", "pa_start", "pa_end",
    #   "flush_check", "events": [harness.order event dicts], "stats", "error"}

    def phase(self, name: str) -> Optional[Phase]:
        for p in self.phases:
            if p.name == name:
                return p
        return None

    def to_dict(self) -> dict:
        return {"method": self.method, "geometry": self.geometry,
                "steps": [s.to_dict() for s in self.steps],
                "phases": [p.to_dict() for p in self.phases],
                "removals": [r.to_dict() for r in self.removals],
                "crashes": list(self.crashes), "bootmem_offline": self.bootmem_offline,
                "kselftest": self.kselftest, "error": self.error,
                "notes": list(self.notes), "required": list(self.required),
                "options": dict(self.options), "order": list(self.order)}

    @classmethod
    def from_dict(cls, d: dict) -> MethodRun:
        return cls(method=d["method"], geometry=d["geometry"],
                   steps=tuple(Step.from_dict(s) for s in d["steps"]),
                   phases=tuple(Phase.from_dict(p) for p in d["phases"]),
                   removals=tuple(Removal.from_dict(r) for r in d["removals"]),
                   crashes=tuple(d["crashes"]), bootmem_offline=d["bootmem_offline"],
                   kselftest=d.get("kselftest"), error=d.get("error"),
                   notes=tuple(d.get("notes", ())),
                   required=tuple(d.get("required", ())),
                   options=dict(d.get("options") or {}),
                   order=tuple(d.get("order") or ()))
