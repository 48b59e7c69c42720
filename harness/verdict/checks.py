"""Verdict rules over a :class:`records.MethodRun`: pure functions, no I/O.

Each rule returns one :class:`records.Check` whose evidence is short, concrete
text a reviewer can paste into a mail (hex addresses, ptdump lines, phase
names). ``Check.step`` names the phase (or, for crashes, the step) the evidence
points at. ``judge(run)`` runs every applicable rule in a stable order; a rule
that raises becomes an ERROR check instead of stopping the others.

Phase names (set by the scenarios): ``before``, ``added`` (optional),
``online``, one phase per removal (``Removal.phase``), ``cycle-N``.

Geometry used (:class:`records.Geometry`; any value may be None, and rules
that need one SKIP and say which): ``granule``, ``linear_offset`` (va = pa +
linear_offset), ``vmemmap_start``, ``memstart``, ``struct_page_size``.

``Phase.system_ram`` is read as inclusive ends (``/proc/iomem``) when the end
is odd and as half-open when it is even (``sysfs.system_ram``): RAM is
page-granular, so the two never collide.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import partial
from typing import Any, Callable, NamedTuple, Optional, Union

from harness.errors import KERNEL, HarnessError
from harness.inspect import leakcheck, ptdump
from harness.inspect.ranges import Span, clip, clip_to, coalesce, subtract
from harness.inspect.selftest import SelftestLog, parse_mem_on_off
from harness.inspect.walker import leaves_covering_pa, leaves_covering_va
from harness.records import (
    ERROR,
    FAIL,
    PASS,
    REMOVAL_CHECKS,
    SKIP,
    Check,
    Crash,
    HotAddAttempt,
    KselftestResult,
    Leaf,
    MethodRun,
    Phase,
    Removal,
    Verdict,
    WalkSummary,
)

Rule = Callable[[MethodRun], Check]
LINEAR, VMEMMAP = "Linear Mapping", "vmemmap"
REGIONS = (LINEAR, VMEMMAP)
MAX_LINES = 12                   # evidence lines listed before "... and N more"


NOT_APPLICABLE = "not applicable: "     # a SKIP that looked and found nothing to judge
# a SKIP because the user asked to sample (--order-check sampled): said, not an ERROR
SAMPLED = "sampled: "


class _Skip(Exception):
    """Raised inside a rule when a needed input is missing: the part could not
    look (SKIP), which a required check never turns into a PASS."""


class _NotApplicable(_Skip):
    """Raised when a part does not apply (a removal with a neighbour still
    online has no baseline): it SKIPs without counting as "could not look"."""


class Part(NamedTuple):
    """One judged piece of a check (a phase, a removal, a region).
    ``looked`` is False for a SKIP that does not apply (see _NotApplicable)."""
    verdict: Verdict
    text: str
    step: str = ""
    looked: bool = True


# ---------------------------------------------------------------- helpers

def _hex(n: int) -> str:
    return f"0x{n:x}"


def _span(start: int, end: int) -> str:
    return f"{_hex(start)}-{_hex(end)}"


def _limit(lines: list[str], limit: int = MAX_LINES) -> list[str]:
    if len(lines) <= limit:
        return lines
    return lines[:limit] + [f"... and {len(lines) - limit} more"]


def _more(lines: list[str]) -> str:
    """Further problems after the headline, one per indented line."""
    return "\n" + _indent(_limit(lines)) if lines else ""


def _indent(lines: Iterable[str]) -> str:
    return "\n".join("    " + line for line in lines)


def _geo(run: MethodRun, *names: str) -> list[int]:
    """The geometry's values of ``names``; SKIP naming those not learned."""
    values = [getattr(run.geometry, n) for n in names]
    missing = [n for n, v in zip(names, values) if v is None]
    if missing:
        raise _Skip(f"geometry lacks {', '.join(missing)}")
    return [int(v) for v in values]


def _linear_offset(run: MethodRun) -> int:
    return _geo(run, "linear_offset")[0]


def page_shift(granule: int) -> int:
    return granule.bit_length() - 1


def struct_page_range(run: MethodRun, pa_start: int, pa_end: int) -> Span:
    """VA range of the struct pages describing physical ``[pa_start, pa_end)``
    (``Geometry.struct_pages``); SKIP naming what the geometry lacks."""
    _geo(run, "vmemmap_start", "memstart", "struct_page_size", "granule")
    span = run.geometry.struct_pages(pa_start, pa_end)
    assert span is not None            # _geo raised for anything missing
    return span


def ram_ranges(phase: Phase) -> list[Span]:
    """``Phase.system_ram`` as half-open ranges (see the module docstring)."""
    return coalesce((s, e + 1 if e % 2 else e) for s, e in phase.system_ram)


def _walks(phase: Phase, region: str) -> list[WalkSummary]:
    return [w for w in phase.walks if w.region == region]


def _leaf_text(leaf: Leaf) -> str:
    return (f"walker {leaf.level} leaf VA {_span(leaf.va_start, leaf.va_end)} -> "
            f"PA {_span(leaf.pa, leaf.pa_end)}")


def _block_names(indices: Iterable[int]) -> str:
    """memory16-memory19, memory22"""
    groups: list[list[int]] = []
    for i in sorted(set(indices)):
        if groups and i == groups[-1][1] + 1:
            groups[-1][1] = i
        else:
            groups.append([i, i])
    return ", ".join(f"memory{a}" if a == b else f"memory{a}-memory{b}"
                     for a, b in groups) or "none"


def phase_step(run: MethodRun, phase: str) -> str:
    """The step that led to ``phase``: the last step before ``inspect PHASE`` that
    is not itself an inspection (``remove dimm1`` for ``removed-1``). Falls back
    to ``inspect PHASE``, then to the phase name (no such step recorded)."""
    names = [s.name for s in run.steps]
    if f"inspect {phase}" not in names:
        return phase
    before = names[:names.index(f"inspect {phase}")]
    acting = [n for n in before if not n.startswith("inspect ")]
    return acting[-1] if acting else f"inspect {phase}"


def combine(run: MethodRun, name: str, parts: list[Part], empty: str) -> Check:
    """One Check from parts: the worst verdict, its evidence first; the step is
    the one that led to the phase of the first part naming one.

    A part that could not look (SKIP) outranks the PASS parts: a check is PASS
    only when every part that applies looked and passed. SKIP parts that do not
    apply (``looked=False``) only add their note."""
    if not parts:
        return Check(name, SKIP, empty)
    ordered = sorted(parts, key=_part_rank)
    phase = next((p.step for p in ordered if p.step), "")
    return Check(name, ordered[0].verdict, "\n".join(p.text for p in ordered),
                 phase_step(run, phase) if phase else "")


def _part_rank(part: Part) -> int:
    """FAIL, ERROR, SKIP that could not look, PASS, SKIP that does not apply."""
    if part.verdict == SKIP:
        return 2 if part.looked else 4
    return {FAIL: 0, ERROR: 1, PASS: 3}[part.verdict]


def _guard(phase_name: str, body: Callable[[], Part]) -> Part:
    """Run one part; a missing input SKIPs it, unusable input (a ptdump without
    the region) makes it ERROR."""
    try:
        return body()
    except _Skip as skip:
        return Part(SKIP, f"{phase_name}: {skip}", phase_name,
                    looked=not isinstance(skip, _NotApplicable))
    except HarnessError as exc:
        return Part(ERROR, f"{phase_name}: {exc.message}", phase_name)


def _removal_phase(run: MethodRun, removal: Removal) -> Phase:
    phase = run.phase(removal.phase)
    if phase is None:
        raise _Skip(f"phase {removal.phase!r} was not recorded")
    return phase


# ---------------------------------------------------------------- blocks-lifecycle

def _block_size(run: MethodRun) -> Optional[int]:
    return next((p.blocks.block_size for p in run.phases if p.blocks.block_size), None)


def _expected_indices(removal: Removal, size: int) -> list[int]:
    return list(range(removal.pa_start // size, -(-removal.pa_end // size)))


def _lifecycle_problems(run: MethodRun, removal: Removal,
                        size: int) -> tuple[list[str], list[str]]:
    """(problems in the recorded phases, required phases not recorded)."""
    want = _expected_indices(removal, size)
    rules: tuple[tuple[str, bool, Optional[str]], ...] = (
        ("before", False, None), ("added", True, "offline"),
        ("online", True, "online"), (removal.phase, False, None))
    problems: list[str] = []
    missing: list[str] = []
    for phase_name, present, state in rules:
        phase = _lifecycle_phase(run, removal, phase_name)
        if phase is not None:
            problems += _phase_blocks(phase, want, present, state)
        elif phase_name != "added":
            missing.append(phase_name)
    return problems, missing


def _lifecycle_phase(run: MethodRun, removal: Removal, name: str) -> Optional[Phase]:
    """The phase ``name``; for "added" and "online", the last one named so, or
    NAME-N (a second device plugged later: split-leaf), before the removal's."""
    if name not in ("added", "online"):
        return run.phase(name)
    found = None
    for phase in run.phases:
        if phase.name == removal.phase:
            break
        if phase.name == name or re.fullmatch(rf"{name}-\d+", phase.name):
            found = phase
    return found if found is not None else run.phase(name)


def _phase_blocks(phase: Phase, want: list[int], present: bool,
                  state: Optional[str]) -> list[str]:
    have = {b.phys_index: b for b in phase.blocks.blocks}
    if not present:
        extra = [have[i].index for i in want if i in have]
        return [f"{phase.name}: {_block_names(extra)} present"] if extra else []
    out = []
    missing = [i for i in want if i not in have]
    if missing:
        out.append(f"{phase.name}: {_block_names(missing)} absent")
    out += [f"{phase.name}: memory{have[i].index} is {have[i].state}, expected {state}"
            for i in want if i in have and have[i].state != state]
    return out


def _lifecycle_part(run: MethodRun, removal: Removal, size: int) -> Part:
    want = _expected_indices(removal, size)
    what = f"{_block_names(want)} ({_span(removal.pa_start, removal.pa_end)})"
    problems, missing = _lifecycle_problems(run, removal, size)
    if problems:
        return Part(FAIL, f"{what}: {problems[0]}" + _more(problems[1:]), removal.phase)
    if missing:
        return Part(SKIP, f"{what}: phase(s) {', '.join(missing)} not recorded; the "
                          "recorded ones agree", removal.phase)
    added = "offline after add, " if run.phase("added") else ""
    return Part(PASS, f"{what}: absent before, {added}online after onlining, "
                      f"gone after {removal.phase}", removal.phase)


def _boot_blocks_part(run: MethodRun) -> Part:
    before = run.phase("before")
    if before is None:
        return Part(SKIP, "boot blocks: phase 'before' not recorded")
    later = list(run.phases)[list(run.phases).index(before) + 1:]
    if not later:
        return Part(SKIP, "blocks present before the add: no later phase recorded")
    problems = [(p.name, line) for p in later for line in _changed_blocks(before, p)]
    if problems:
        lines = [f"{name}: {line}" for name, line in problems]
        return Part(FAIL, f"block present before the add changed: {lines[0]}"
                    + _more(lines[1:]), problems[0][0])
    return Part(PASS, f"{len(before.blocks.blocks)} blocks present before the add "
                      f"unchanged in {len(later)} later phase(s)")


def _changed_blocks(before: Phase, phase: Phase) -> list[str]:
    have = phase.blocks.by_index
    out = []
    for block in before.blocks.blocks:
        now = have.get(block.index)
        if now is None or now.state != block.state:
            out.append(f"memory{block.index} {block.state} -> "
                       f"{now.state if now else 'absent'}")
    return out


def check_blocks_lifecycle(run: MethodRun) -> Check:
    name = "blocks-lifecycle"
    size = _block_size(run)
    if size is None:
        return Check(name, SKIP, "no phase recorded block_size_bytes")
    parts = [_lifecycle_part(run, r, size) for r in run.removals]
    if run.phases:
        parts.append(_boot_blocks_part(run))
    return combine(run, name, parts, "no phases recorded")


# ---------------------------------------------------------------- stale mappings

def _stale_ptdump(snapshot: ptdump.Snapshot, region: str, va_start: int,
                  va_end: int) -> list[str]:
    return [f"ptdump: {ptdump.format_entry(e)}"
            for e in ptdump.covering(snapshot, region, va_start, va_end)]


def _stale_linear_part(run: MethodRun, removal: Removal) -> Part:
    phase = _removal_phase(run, removal)
    if phase.ptdump is None and not phase.walks:
        raise _Skip("no ptdump and no walker output")
    pa = (removal.pa_start, removal.pa_end)
    found: list[str] = []
    said: list[str] = []
    if phase.ptdump is not None:
        off = _linear_offset(run)
        found += _stale_ptdump(phase.ptdump, LINEAR, pa[0] + off, pa[1] + off)
        said.append(f"ptdump VA {_span(pa[0] + off, pa[1] + off)}")
    for walk in _walks(phase, LINEAR):
        found += [_leaf_text(x) for x in leaves_covering_pa(walk, *pa)]
        said.append(f"walker VA {_span(walk.va_start, walk.va_end)}")
    return _stale_part(phase.name, f"removed PA {_span(*pa)}", found, said)


def _stale_part(phase: str, what: str, found: list[str], said: list[str]) -> Part:
    head = f"{phase}: {what}"
    if found:
        return Part(FAIL, f"{head} still mapped:\n" + _indent(_limit(found)), phase)
    return Part(PASS, f"{head}: no valid mapping ({'; '.join(said)})", phase)


def _per_removal(run: MethodRun, part: Callable[[MethodRun, Removal], Part]) -> list[Part]:
    """``part`` of each removal, guarded (see :func:`_guard`)."""
    return [_guard(r.phase, partial(part, run, r)) for r in run.removals]


def _per_phase(run: MethodRun, part: Callable[[MethodRun, Phase], Part]) -> list[Part]:
    return [_guard(p.name, partial(part, run, p)) for p in run.phases]


def check_no_stale_linear_map(run: MethodRun) -> Check:
    parts = _per_removal(run, _stale_linear_part)
    return combine(run, "no-stale-linear-map", parts, "no removals recorded")


def _stale_vmemmap_part(run: MethodRun, removal: Removal) -> Part:
    phase = _removal_phase(run, removal)
    if phase.ptdump is None and not phase.walks:
        raise _Skip("no ptdump and no walker output")
    va = struct_page_range(run, removal.pa_start, removal.pa_end)
    found: list[str] = []
    said: list[str] = []
    if phase.ptdump is not None:
        found += _stale_ptdump(phase.ptdump, VMEMMAP, *va)
        said.append("ptdump vmemmap")
    for walk in _walks(phase, VMEMMAP):
        found += [_leaf_text(x) for x in leaves_covering_va(walk, *va)]
        said.append(f"walker VA {_span(walk.va_start, walk.va_end)}")
    what = (f"struct pages VA {_span(*va)} of removed PA "
            f"{_span(removal.pa_start, removal.pa_end)}")
    return _stale_part(phase.name, what, found, said)


def check_no_stale_vmemmap(run: MethodRun) -> Check:
    parts = _per_removal(run, _stale_vmemmap_part)
    return combine(run, "no-stale-vmemmap", parts, "no removals recorded")


# ---------------------------------------------------------------- tables-freed

def _hole_notes(before: ptdump.Snapshot, after: ptdump.Snapshot, region: str,
                baseline: str) -> list[str]:
    """Holes whose level changed: a table kept alive (deeper) or freed (shallower)."""
    old = set(before.region(region).entries) if region in before.regions else set()
    notes = []
    for hole in (e for e in after.region(region).entries if e.is_hole and e not in old):
        was = ptdump.entry_at(before, hole.start)
        if was is None or not was.is_hole or was.level == hole.level:
            continue
        deeper = ptdump.LEVELS.index(hole.level) > ptdump.LEVELS.index(was.level)
        why = (f"a {hole.level} table was kept alive (not freed)" if deeper
               else f"a {was.level} table present in {baseline} is gone")
        notes.append(f"hole at VA {_span(hole.start, hole.end)} is at {hole.level} level, "
                     f"{was.level} in {baseline}: {why}")
    return notes


def _ptdump_tables_lines(base: ptdump.Snapshot, after: ptdump.Snapshot,
                         baseline: str) -> tuple[list[str], list[str]]:
    """(evidence lines, hole-level notes) for the regions that differ."""
    lines: list[str] = []
    all_notes: list[str] = []
    for region in REGIONS:
        if region not in base.regions and region not in after.regions:
            raise _Skip(f"neither ptdump has a {region!r} region")
        changed = ptdump.diff(base, after, region)
        if changed:
            notes = _hole_notes(base, after, region, baseline)
            lines.append(f"ptdump {region} differs from {baseline}:")
            shown = _limit(notes) + _limit(changed, 2 * MAX_LINES)
            lines += ["  " + line for line in shown]
            all_notes += notes
    return lines, all_notes


def _walk_table_lines(base: Phase, after: Phase) -> tuple[list[str], int]:
    lines: list[str] = []
    compared = 0
    for region in REGIONS:
        old, new = _walks(base, region), _walks(after, region)
        if len(old) != 1 or len(new) != 1:
            continue
        compared += 1
        lines += [f"walker {region} {line}" for line in _count_diff(old[0], new[0])]
    return lines, compared


def _count_diff(old: WalkSummary, new: WalkSummary) -> list[str]:
    out = []
    if (old.va_start, old.va_end) != (new.va_start, new.va_end):
        out.append(f"walked VA {_span(old.va_start, old.va_end)} then "
                   f"{_span(new.va_start, new.va_end)}: counts not comparable")
        return out
    for level in sorted(set(old.tables) | set(new.tables), key=_level_key):
        a, b = old.tables.get(level, 0), new.tables.get(level, 0)
        if a != b:
            out.append(f"{level} tables: {a} -> {b}")
    if new.empty_tables > old.empty_tables:
        out.append(f"empty tables: {old.empty_tables} -> {new.empty_tables}")
    return out


def _level_key(level: str) -> int:
    return ptdump.LEVELS.index(level) if level in ptdump.LEVELS else len(ptdump.LEVELS)


def _baseline_pair(run: MethodRun, removal: Removal) -> tuple[Phase, Phase]:
    if not removal.baseline:
        raise _NotApplicable("no baseline to compare with (a neighbour stays online)")
    after, base = _removal_phase(run, removal), run.phase(removal.baseline)
    if base is None:
        raise _Skip(f"baseline phase {removal.baseline!r} was not recorded")
    return base, after


def _tables_part(run: MethodRun, removal: Removal) -> Part:
    base, after = _baseline_pair(run, removal)
    lines: list[str] = []
    notes: list[str] = []
    said: list[str] = []
    if base.ptdump is not None and after.ptdump is not None:
        lines, notes = _ptdump_tables_lines(base.ptdump, after.ptdump, removal.baseline)
        said.append("ptdump Linear Mapping and vmemmap identical")
    walk_lines, compared = _walk_table_lines(base, after)
    lines += walk_lines
    said += ["walker table counts equal"] if compared else []
    if not said:
        raise _Skip(f"no ptdump or walk in both {removal.baseline} and {after.name}")
    if lines:
        why = notes[0] if notes else lines[0].strip().rstrip(":")
        return Part(FAIL, f"{after.name}: page tables differ from {removal.baseline}: "
                    f"{why}\n" + _indent(lines), after.name)
    return Part(PASS, f"{after.name} vs {removal.baseline}: {', '.join(said)}",
                after.name)


def check_tables_freed(run: MethodRun) -> Check:
    parts = _per_removal(run, _tables_part)
    return combine(run, "tables-freed", parts, "no removals recorded")


# ---------------------------------------------------------------- online-memory-mapped

def _online_ranges(run: MethodRun, phase: Phase, size: int) -> tuple[list[Span], str]:
    """PA ranges that must be mapped: online blocks within System RAM. Without a
    System RAM list, only blocks absent in 'before' (hot-added, all RAM) count:
    boot blocks hold no-map holes (reserved firmware memory)."""
    blocks = phase.blocks.with_state("online")
    if not phase.system_ram:
        before = run.phase("before")
        boot = set(before.blocks.indices) if before else set()
        ranges = [(b.phys_start(size), b.phys_end(size)) for b in blocks
                  if b.index not in boot]
        return coalesce(ranges), " (no System RAM list: hot-added blocks only)"
    ranges = [(b.phys_start(size), b.phys_end(size)) for b in blocks]
    return clip_to(ranges, ram_ranges(phase)), ""


def _uncovered(phase: Phase, want: list[Span], off: int) -> list[str]:
    out = []
    if phase.ptdump is not None:
        have = [(e.start - off, e.end - off) for e in ptdump.mapped(phase.ptdump, LINEAR)
                if e.is_valid]
        out += [f"ptdump: PA {_span(a, b)} (VA {_span(a + off, b + off)}) not mapped"
                for a, b in subtract(want, have)]
    for walk in _walks(phase, LINEAR):
        inside = clip(want, walk.va_start - off, walk.va_end - off)
        have = [(x.pa, x.pa_end) for x in walk.leaves]
        out += [f"walker: PA {_span(a, b)} (VA {_span(a + off, b + off)}) not mapped"
                for a, b in subtract(inside, have)]
    return out


def _online_part(run: MethodRun, phase: Phase, size: int) -> Part:
    if phase.ptdump is None and not phase.walks:
        raise _Skip("no ptdump and no walker output")
    off = _linear_offset(run)
    want, how = _online_ranges(run, phase, size)
    problems = _uncovered(phase, want, off)
    if problems:
        return Part(FAIL, f"{phase.name}: online memory not in the linear map: "
                    f"{problems[0]}" + _more(problems[1:]), phase.name)
    count = len(phase.blocks.with_state("online"))
    return Part(PASS, f"{phase.name}: {count} online blocks mapped{how}", phase.name)


def _vmemmap_pa(run: MethodRun, va: int) -> int:
    """The physical address whose struct page sits at vmemmap ``va``."""
    base, memstart, size, granule = _geo(run, "vmemmap_start", "memstart",
                                         "struct_page_size", "granule")
    return memstart + (va - base) // size * granule


def _struct_pages_part(run: MethodRun, phase: Phase, size: int) -> Part:
    """The struct pages of memory still there at ``phase`` are mapped: every
    memory block present (any state: an offline block keeps its struct pages)
    and the device memory a removal said stayed (``Removal.kept``)."""
    if phase.ptdump is None or VMEMMAP not in phase.ptdump.regions:
        raise _Skip("no ptdump of the vmemmap")
    blocks = [(b.phys_start(size), b.phys_end(size)) for b in phase.blocks.blocks]
    kept = [k for r in run.removals if r.phase == phase.name for k in r.kept]
    want = coalesce(struct_page_range(run, a, b) for a, b in coalesce(blocks + kept))
    have = [(e.start, e.end) for e in ptdump.mapped(phase.ptdump, VMEMMAP) if e.is_valid]
    missing = []
    for a, b in subtract(want, have):
        pa = _span(_vmemmap_pa(run, a), _vmemmap_pa(run, b))
        missing.append(f"VA {_span(a, b)} (struct pages of PA {pa}) not mapped")
    ranges = ", ".join(_span(*k) for k in kept)
    what = f"{len(blocks)} present block(s)" + (
        f" and {len(kept)} device range(s) still there ({ranges})" if kept else "")
    if missing:
        return Part(FAIL, f"{phase.name}: struct pages of memory still there are not in "
                    f"the vmemmap ({what}): {missing[0]}" + _more(missing[1:]), phase.name)
    return Part(PASS, f"{phase.name}: struct pages of {what} mapped (ptdump vmemmap)",
                phase.name)


def check_present_struct_pages_mapped(run: MethodRun) -> Check:
    """A removal must not unmap the struct pages of memory that stays: a vmemmap
    block (PMD) shared with a neighbour cleared whole (review point c; upstream
    d4234d131b0a for sub-sections)."""
    return _per_phase_with_blocks(run, "present-struct-pages-mapped", _struct_pages_part)


def check_online_memory_mapped(run: MethodRun) -> Check:
    return _per_phase_with_blocks(run, "online-memory-mapped", _online_part)


def _per_phase_with_blocks(run: MethodRun, name: str,
                           part: Callable[[MethodRun, Phase, int], Part]) -> Check:
    """``part`` of every phase, given the memory block size (SKIP without one)."""
    size = _block_size(run)
    if size is None:
        return Check(name, SKIP, "no phase recorded block_size_bytes")
    parts = _per_phase(run, lambda run, p: part(run, p, size))
    return combine(run, name, parts, "no phases recorded")


# ---------------------------------------------------------------- contiguous groups

# arm64's contiguous hint (arch/arm64/include/asm/pgtable-hwdef.h): a leaf with
# the CON bit belongs to an aligned group of CONT_PTES / CONT_PMDS entries that
# must all be valid with the same attributes. Removing part of a group without
# rewriting the rest (break-before-make) is contiguous-bit misprogramming: TLB
# conflicts on hardware, which TCG does not model, so the dump is what shows it.
CONT_SPAN = {  # granule -> {level: bytes one group maps}
    4096: {"PTE": 16 << 12, "PMD": 16 << 21},
    16384: {"PTE": 128 << 14, "PMD": 32 << 25},
    65536: {"PTE": 32 << 16, "PMD": 32 << 29},
}
_CONT_REGIONS = ("Linear Mapping", "vmemmap")


def _broken_groups(dump: ptdump.Snapshot, granule: int) -> list[str]:
    spans = CONT_SPAN.get(granule, {})
    out = []
    for region in _CONT_REGIONS:
        if region not in dump.regions:
            continue
        for e in dump.region(region).entries:
            span = spans.get(e.level)
            if not e.is_valid or "CON" not in e.attrs or not span:
                continue
            if e.start % span or e.end % span:
                unit = f"{span >> 30}G" if span >= 1 << 30 else (
                    f"{span >> 20}M" if span >= 1 << 20 else f"{span >> 10}K")
                out.append(f"{region} VA {_span(e.start, e.end)} ({e.size} {e.level} CON) "
                           f"is not whole {unit}-aligned contiguous groups")
    return out


def _contiguous_part(run: MethodRun, phase: Phase) -> Part:
    if phase.ptdump is None:
        raise _Skip("no ptdump")
    granule = run.geometry.granule or 0
    if granule not in CONT_SPAN:
        raise _Skip(f"granule {granule} unknown")
    broken = _broken_groups(phase.ptdump, granule)
    if broken:
        return Part(FAIL, f"{phase.name}: a contiguous (CON) group is only partly mapped: "
                    f"{broken[0]}" + _more(broken[1:]), phase.name)
    return Part(PASS, f"{phase.name}: every CON range is whole groups", phase.name)


def check_contiguous_groups_whole(run: MethodRun) -> Check:
    """No phase shows a leaf with the contiguous bit whose aligned group is
    only partly mapped (a removal that cut through a CONT range)."""
    name = "contiguous-groups-whole"
    parts = _per_phase(run, _contiguous_part)
    return combine(run, name, parts, "no phases recorded")


# ---------------------------------------------------------------- bootmem, crashes

_BOOTMEM_RULE = re.compile(r"Boot memory \[([0-9a-f]+) ([0-9a-f]+)\] offlining attempted")
# EPERM from a write of "offline" to a block's state: in 6.12 only a memory
# notifier's veto of MEM_GOING_OFFLINE gives it (offline_pages(): NOTIFY_BAD
# through notifier_to_errno(); holes give EINVAL, unmovable pages EBUSY)
_NOTIFIER_VETO = "Operation not permitted"


def check_bootmem_not_removable(run: MethodRun) -> Check:
    """arm64's rule (prevent_bootmem_remove_notifier): offlining boot memory is
    refused, *by that rule*, which says so ("Boot memory [...] offlining
    attempted", upstream 9fb3d4a30338). PASS needs the refusal and the rule's
    console line. A notifier's veto (EPERM) with the console watched and no
    such line is a FAIL: the rule refused without its report (the kernel
    before 9fb3d4a30338). A refusal for another reason (holes, unmovable
    pages) did not test the rule: SKIP "not exercised", which a method that
    requires the check turns into an error. Offlining that succeeds is a
    FAIL."""
    name, attempt = "bootmem-not-removable", run.bootmem_offline
    if attempt is None:
        return Check(name, SKIP, "no boot-memory offline attempt recorded")
    block, code, state = attempt.block, attempt.exit_code, attempt.state_after
    step = _named_step(run, "boot memory", f"offline memory{block}")
    head = (f"echo offline > memory{block}/state: exit code {code}, "
            f"state after: {state}")
    output = (attempt.output or "").strip()
    tail = f"\n    output: {output}" if output else ""
    if code is None or state is None:
        return Check(name, ERROR, f"incomplete record: {head}{tail}", step)
    span = attempt.range
    if span:
        head = f"{head} (boot memory PA {_span(*span)})"
    if code == 0 or state != "online":
        return Check(name, FAIL, f"boot memory was offlined or changed state: {head}; "
                                 f"arm64 must refuse (prevent_bootmem_remove_notifier)"
                                 f"{tail}", step)
    rule = [line for line in attempt.console or () if _BOOTMEM_RULE.search(line)]
    if rule:
        return Check(name, PASS, f"{head}: refused by arm64's boot-memory rule; "
                                 f"console: {rule[0].strip()}{tail}", step)
    zones = ",".join(attempt.zones or ()) or "?"
    if attempt.console is not None and _NOTIFIER_VETO in output:
        return Check(name, FAIL, f"boot memory refused by a memory notifier's veto (EPERM: "
                     f"MEM_GOING_OFFLINE answered NOTIFY_BAD) without the report arm64's "
                     f"rule makes: no 'Boot memory [...] offlining attempted' line on the "
                     f"console (zones {zones}): {head}{tail}", step)
    why = [f"zones {zones}"]
    if attempt.hole_free is False:
        why.append("the block has firmware holes (not one System RAM range)")
    if "Movable" not in zones:
        why.append("the block is not in ZONE_MOVABLE (unmovable pages refuse first)")
    seen = ("no console record" if attempt.console is None else
            "no 'Boot memory [...] offlining attempted' line on the console")
    return Check(name, SKIP, f"not exercised: memory{block} was refused, but not by "
                 f"arm64's rule ({seen}; {'; '.join(why)}): {head}{tail}", step)


# ---------------------------------------------------------------- hot-adds at chosen addresses

_RANGE_REFUSED = "exceeds maximum addressable range"   # mhp_range_allowed()'s line


def _hotadd_head(h: HotAddAttempt) -> str:
    pa, size = h.pa or 0, h.size or 0
    block = {True: "present", False: "absent", None: "unknown"}[h.present]
    code = ("cut short by a kernel report" if h.exit_code is None
            else f"probe exit code {h.exit_code}")
    return f"{h.kind} PA {_span(pa, pa + size)}: {code}, block {block} after"


def _hotadd_console(h: HotAddAttempt) -> str:
    return "".join(f"\n    console: {line.strip()}" for line in h.console[-3:])


def check_hotadd_frames_visible(run: MethodRun) -> Check:
    """Frames of hot-added memory lie below ``max_pfn``: reading a hot-added
    block's last frame from ``/proc/kpageflags`` gives its 8 bytes (arm64 raises
    max_pfn in arch_add_memory(), upstream 8fac67ca236b; without it the read is
    end-of-file)."""
    name = "hotadd-frames-visible"
    read = [h for h in run.hotadds if h.present and h.kpageflags_bytes is not None]
    if not read:
        return Check(name, SKIP, "no hot-added block's frames were read from /proc/kpageflags")
    step = _named_step(run, "kpageflags", "probe")
    bad = [h for h in read if h.kpageflags_bytes != 8]
    lines = [f"{_hotadd_head(h)}; /proc/kpageflags gave {h.kpageflags_bytes} bytes for "
             f"its last frame (PFN {((h.pa or 0) + (h.size or 0)) // _granule(run) - 1:#x})"
             for h in (bad or read)]
    if bad:
        return Check(name, FAIL, f"hot-added frames beyond max_pfn: {lines[0]}; max_pfn "
                     "was not raised by the hot-add (/proc/kpage* and page_owner stop "
                     "short of hot-added memory)" + _more(lines[1:]), step)
    return Check(name, PASS, "; ".join(lines), step)


def _granule(run: MethodRun) -> int:
    return run.geometry.granule or 4096


def check_hotadd_within_reach_accepted(run: MethodRun) -> Check:
    """Memory the platform may hot-add inside the linear map's reach (right
    after the boot memory, and the last block below PHYS_OFFSET + the linear
    region's size, PHYS_OFFSET as the boot memory gives it) is accepted: a
    refusal there means the linear region does not cover where hot-added memory
    can be (upstream 97d6786e0669, ee7febce0519)."""
    name = "hotadd-within-reach-accepted"
    tried = [h for h in run.hotadds if h.kind in ("after-boot-memory", "top-of-reach")]
    if not tried:
        return Check(name, SKIP, "no hot-add inside the linear map's reach was tried")
    step = _named_step(run, "probe", "probe")
    bad = [h for h in tried if h.exit_code != 0 or not h.present]
    if bad:
        h = bad[0]
        reach = f" (the reach expected: PA {_span(*h.reach)})" if h.reach else ""
        return Check(name, FAIL, f"a hot-add inside the linear map's reach was refused: "
                     f"{_hotadd_head(h)}{reach}; output: {h.output.strip() or '-'}"
                     + _hotadd_console(h) + _more([_hotadd_head(b) for b in bad[1:]]), step)
    return Check(name, PASS, "accepted: " + "; ".join(_hotadd_head(h) for h in tried), step)


def check_hotadd_beyond_reach_refused(run: MethodRun) -> Check:
    """A hot-add past the linear map's reach (PHYS_OFFSET + the linear region's
    size) is refused, by the range check ("exceeds maximum addressable range",
    E2BIG), before anything is mapped (upstream 58284a901b42): accepted, it
    would be mapped past PAGE_END. A refusal without that line did not test the
    rule: SKIP (an ERROR when required)."""
    name = "hotadd-beyond-reach-refused"
    tried = [h for h in run.hotadds if h.kind == "beyond-reach"]
    if not tried:
        return Check(name, SKIP, "no hot-add beyond the linear map's reach was tried")
    step = _named_step(run, "beyond", "probe")
    for h in tried:
        reach = f" (the linear map reaches PA {_span(*h.reach)})" if h.reach else ""
        if h.exit_code == 0 or h.present:
            return Check(name, FAIL, f"a hot-add beyond the linear map's reach was "
                         f"accepted: {_hotadd_head(h)}{reach}; the kernel must refuse it "
                         f"(arch_get_mappable_range)" + _hotadd_console(h), step)
        if h.exit_code is None and not any(_RANGE_REFUSED in line for line in h.console):
            return Check(name, FAIL, f"a hot-add beyond the linear map's reach was not "
                         f"refused by the range check: {_hotadd_head(h)}{reach} (see "
                         f"no-kernel-splat)" + _hotadd_console(h), step)
        if not any(_RANGE_REFUSED in line for line in h.console):
            return Check(name, SKIP, f"not exercised: {_hotadd_head(h)}{reach}, refused, "
                         f"but without the range check's line ('{_RANGE_REFUSED}'); "
                         f"output: {h.output.strip() or '-'}" + _hotadd_console(h), step)
    said = next(line for line in tried[0].console if _RANGE_REFUSED in line)
    return Check(name, PASS, f"refused: {_hotadd_head(tried[0])}; console: {said.strip()}",
                 step)


def _named_step(run: MethodRun, needle: str, default: str) -> str:
    """The first step whose name contains ``needle``, else ``default``."""
    return next((s.name for s in run.steps if needle in s.name), default)


def crash_line(crash: Union[Crash, Mapping[str, Any]]) -> str:
    """One line naming a kernel report: kind, title, pc, step, console line."""
    c = crash if isinstance(crash, Crash) else Crash.from_dict(crash)
    pc = f" (pc {c.pc_symbol})" if c.pc_symbol else ""
    step = f", step {c.step}" if c.step else ""
    line = f", console line {c.first_line_no}" if c.first_line_no else ""
    # a KASAN title names a function; its access line names the address
    access = next((m.group(0) for text in c.lines
                   if (m := re.search(r"(Read|Write) of size \d+ at addr [0-9a-f]+", text))),
                  "") if c.kind == "kasan" else ""
    return (f"{c.kind if 'kind' in c else '?'}: {c.title}{pc}"
            f"{f' ({access})' if access else ''}{step}{line}")


# A kernel report the stock 6.12 kernel makes by itself under hot-remove: said
# beside the evidence (still a FAIL: the kernel did report it), so a reviewer
# does not take it for the patch's without looking
STOCK_REPORTS = (
    (re.compile(r"kernel BUG at mm/page_alloc\.c:\d+"), "free_pages",
     "the stock kernel makes this report too: free_pages()'s VM_BUG_ON("
     "!virt_addr_valid()) when a page is freed (e.g. a process's pgd at exit) "
     "while hot-remove's memblock_remove() has split boot memory out of memblock "
     "(arm64 looks it up there without a lock); docs/running.md, 'A race of the "
     "stock kernel'"),
)


def _stock_note(crash: Crash) -> str:
    for title, pc, note in STOCK_REPORTS:
        if title.search(crash.title) and (crash.pc_symbol or "").startswith(pc):
            return note
    return ""


def check_no_kernel_splat(run: MethodRun) -> Check:
    name = "no-kernel-splat"
    if not run.crashes:
        return Check(name, PASS,
                     "no oops, panic, BUG, WARNING or KASAN report on the console")
    lines = []
    for crash in run.crashes:
        lines.append(crash_line(crash))
        lines += ["    " + t for t in crash.call_trace[:8]]
        known = _stock_note(crash)
        if known:
            lines.append(f"    note: {known}")
    step = next((c.step for c in run.crashes if c.step), "")
    count = len(run.crashes)
    head = f"{count} kernel reports, the first: {crash_line(run.crashes[0])}\n"
    span = _step_range(run, step)
    if span:     # a WARNING carries no address: say what the step was removing
        lines.append(f"step {step!r} was removing PA {_span(*span)}")
    return Check(name, FAIL, (head if count > 1 else "") + "\n".join(lines), step)


def _step_range(run: MethodRun, step: str) -> Optional[tuple[int, int]]:
    """The physical range a removal step removes: from the ordering records
    (their step names), else from the removal whose phase that step led to."""
    if not step:
        return None
    for record in run.order:
        if record.step == step and record.pa_end:
            return int(record.pa_start), int(record.pa_end)
    for removal in run.removals:
        if phase_step(run, removal.phase) == step:
            return removal.pa_start, removal.pa_end
    return None


# ---------------------------------------------------------------- cycles

def _cycles(run: MethodRun) -> list[tuple[int, Phase]]:
    found = [(int(m[1]), p) for p in run.phases
             if (m := re.fullmatch(r"cycle-(\d+)", p.name)) and int(m[1]) >= 1]
    return sorted(found, key=lambda c: c[0])


def _memtotal_part(run: MethodRun, cycles: list[tuple[int, Phase]]) -> Part:
    before = run.phase("before")
    if before is None or "MemTotal" not in before.meminfo:
        return Part(SKIP, "MemTotal: no 'before' phase with /proc/meminfo")
    want = before.meminfo["MemTotal"]
    bad = [p for _, p in cycles if p.meminfo.get("MemTotal") != want]
    if bad:
        lines = [f"{p.name}: MemTotal {p.meminfo.get('MemTotal')} kB, before {want} kB"
                 for p in bad]
        return Part(FAIL, "MemTotal differs from before:\n" + _indent(lines), bad[0].name)
    return Part(PASS, f"MemTotal {want} kB in all {len(cycles)} cycles, as before")


def _cycle_tables_part(cycles: list[tuple[int, Phase]]) -> Part:
    walked = [(p, {w.region: w for w in p.walks}) for _, p in cycles if p.walks]
    if len(walked) < 2:
        return Part(SKIP, "table counts: fewer than 2 cycles with walker output")
    first, first_walks = walked[0]
    lines: list[str] = []
    step = ""
    for phase, walks in walked[1:]:
        for region in (r for r in walks if r in first_walks):
            found = _count_diff(first_walks[region], walks[region])
            lines += [f"{phase.name} vs {first.name}, {region} {d}" for d in found]
            step = step or (phase.name if found else "")
    if lines:
        return Part(FAIL, "walker table counts change across cycles:\n"
                    + _indent(_limit(lines)), step)
    return Part(PASS, f"walker table counts equal in {len(walked)} cycles")


def _memfree_context(cycles: list[tuple[int, Phase]]) -> str:
    """MemFree across the cycles, for the reader only: on the clean kernel it
    moves by -5 to +7 MB per cycle (page cache, per-cpu lists, lazily built
    caches), more than a leaked section's memmap, so it judges nothing."""
    (n0, p0), (n1, p1) = cycles[0], cycles[-1]
    if "MemFree" not in p0.meminfo or "MemFree" not in p1.meminfo:
        return "context, not judged: MemFree not recorded in the cycle phases"
    loss = (p0.meminfo["MemFree"] - p1.meminfo["MemFree"]) / (n1 - n0)
    return (f"context, not judged: MemFree {p0.meminfo['MemFree']} kB at {p0.name} -> "
            f"{p1.meminfo['MemFree']} kB at {p1.name} ({loss:+.0f} kB per cycle)")


def _page_owner_part(run: MethodRun, cycles: list[tuple[int, Phase]],
                     removed: list[Span]) -> Part:
    """The exact signal: page_owner's vmemmap and linear-map table stacks after
    each cycle against before the first add (harness.inspect.leakcheck)."""
    before = run.phase("before")
    snaps = [before.page_owner if before else None] + [p.page_owner for _, p in cycles]
    if any(s is None or "unavailable" in s for s in snaps):
        why = next((s["unavailable"] for s in snaps if s and "unavailable" in s),
                   "no page_owner snapshot was taken before the first add and after "
                   "each cycle")
        return Part(SKIP, f"page_owner: could not look: {why}")
    page_kb = max(1, (run.geometry.granule or 4096) // 1024)
    verdict, text, step = leakcheck.check_cycles(
        snaps[0], [(p.name, p.page_owner) for _, p in cycles], page_kb=page_kb,
        removed=removed)
    return Part(verdict, "page_owner: " + text, step)


def check_no_leak_across_cycles(run: MethodRun) -> Check:
    name, cycles = leakcheck.NAME, _cycles(run)
    if len(cycles) < 2:
        return Check(name, SKIP, f"{len(cycles)} cycle phase(s) recorded; need 2")
    removed = coalesce((r.pa_start, r.pa_end) for r in run.removals)
    tables = _cycle_tables_part(cycles)
    if tables.verdict == SKIP and run.options.walker is False:
        tables = Part(SKIP, tables.text + " (--no-walker)", looked=False)
    parts = [_page_owner_part(run, cycles, removed), _memtotal_part(run, cycles), tables]
    check = combine(run, name, parts, "")
    tail = [_memfree_context(cycles)]
    if removed:      # what each cycle added and removed, for the reader
        tail.append(f"added and removed each cycle: PA "
                    f"{', '.join(_span(a, b) for a, b in removed)}")
    return Check(check.name, check.verdict, check.evidence + "\n" + "\n".join(tail),
                 check.step)


# ---------------------------------------------------------------- walker vs ptdump

def _agree_part(phase: Phase, dump_: ptdump.Snapshot, walk: WalkSummary) -> Part:
    lo, hi = walk.va_start, walk.va_end
    dump = clip([(e.start, e.end) for e in dump_.entries() if e.is_valid], lo, hi)
    leaves = clip([(x.va_start, x.va_end) for x in walk.leaves], lo, hi)
    where = f"{phase.name} {walk.region} VA {_span(lo, hi)}"
    if dump == leaves:
        return Part(PASS, f"{where}: {len(dump)} mapped range(s) agree", phase.name)
    lines = [f"only in ptdump: {_span(a, b)}" for a, b in subtract(dump, leaves)]
    lines += [f"only in walker: {_span(a, b)}" for a, b in subtract(leaves, dump)]
    return Part(FAIL, f"{where}: walker and ptdump disagree:\n" + _indent(_limit(lines)),
                phase.name)


def check_walker_agrees_with_ptdump(run: MethodRun) -> Check:
    parts = [_agree_part(p, p.ptdump, w) for p in run.phases if p.ptdump is not None
             for w in p.walks if w.region in REGIONS]
    return combine(run, "walker-agrees-with-ptdump", parts,
                   "no phase has both a ptdump and a walk")


# ---------------------------------------------------------------- walker bad entries

def _bad_entry_lines(phase: Phase) -> list[str]:
    return [f"{phase.name}: {w.region} {level} entry for VA {_hex(va)}: descriptor "
            f"{_hex(raw)}: {reason}"
            for w in phase.walks for va, level, raw, reason in w.bad]


def check_walker_no_bad_entries(run: MethodRun) -> Check:
    """Descriptors the walker could not follow are evidence, not noise: a
    non-zero entry without the valid bit, a block where the geometry allows
    none, a table pointer outside guest RAM."""
    name = "walker-no-bad-entries"
    walked = [p for p in run.phases if p.walks]
    if not walked:
        return Check(name, SKIP, "no phase has walker output")
    bad = [(p, lines) for p in walked if (lines := _bad_entry_lines(p))]
    if bad:
        phase, lines = bad[0]
        total = sum(len(lines) for _, lines in bad)
        return Check(name, FAIL, f"{total} descriptor(s) the walker could not follow, "
                     f"the first in phase {phase.name}:\n" + _indent(_limit(lines)),
                     phase_step(run, phase.name))
    regions = sorted({w.region for p in walked for w in p.walks})
    return Check(name, PASS, f"every descriptor valid or zero in {len(walked)} walked "
                             f"phase(s) ({', '.join(regions)})")


# ---------------------------------------------------------------- ordering (gdb)

def followed(rec: Any) -> str:
    """What was seen of one watched removal, for the report."""
    st = rec.stats or {}
    kinds: dict[str, int] = {}
    for d in rec.events:
        kinds[d.get("kind", "?")] = kinds.get(d.get("kind", "?"), 0) + 1
    seen = ", ".join(f"{kinds[k]} {k}" for k in ("free", "clear", "tlbi", "dsb",
                                                 "remove_enter") if kinds.get(k))
    whys = [d.get("why", "") for d in rec.events if d.get("kind") == "incomplete"]
    if rec.error:
        return f"{rec.step}: not followed: {rec.error}"
    if whys:
        return f"{rec.step}: followed in part ({'; '.join(whys)}): {seen or 'no stops'}"
    if not rec.flush_check:
        return f"{rec.step}: frees followed, flush order not followed: {seen or 'no stops'}"
    return (f"{rec.step}: followed in full ({st.get('stops', '?')} stops: "
            f"{seen or 'none'})")


def _order_check(run: MethodRun, name: str,
                 judge_events: Callable[[list[Any], str], Any], flush_only: bool) -> Check:
    """One Part per watched removal (``MethodRun.order``), judged by
    harness.inspect.order. A removal not followed, or followed in part, makes
    the check ERROR (a SKIP of a required check), never a PASS; the evidence
    ends with what was followed of each removal."""
    from harness.inspect import order
    parts = []
    total = len(run.order)
    unfollowed = 0
    for rec in run.order:
        step = rec.step
        if rec.error:
            unfollowed += 1
            parts.append(Part(SKIP if "not watched" in rec.error else ERROR,
                              f"{step}: {rec.error}", step))
            continue
        if flush_only and not rec.flush_check:
            unfollowed += 1
            sampled = (run.options.order_check or "") == "sampled"
            parts.append(Part(SKIP if sampled else ERROR,
                              f"{step}: not followed: the flush order of this removal "
                              f"was not recorded"
                              + (" (--order-check sampled)" if sampled else ""), step))
            continue
        events = [e for e in (order.event_from_dict(dict(d)) for d in rec.events) if e]
        v = judge_events(events, step)
        parts.append(Part(v.verdict, v.evidence, step, v.applicable))
    listing = "\n".join(followed(r) for r in run.order)
    if unfollowed:
        listing = f"not followed: {unfollowed} of {total} removals\n" + listing
    if parts and not any(p.looked for p in parts):
        # gdb watched every removal and nothing applied (a removal under one
        # PUD block frees no table): nothing to judge, which is not "could not look"
        return Check(name, SKIP, NOT_APPLICABLE + "\n".join(p.text for p in parts)
                     + "\n" + listing)
    check = combine(run, name, parts, "no removal was watched through the gdbstub")
    if check.verdict == SKIP and unfollowed and (run.options.order_check or "") == "sampled":
        return Check(name, SKIP, f"{SAMPLED}not followed: {unfollowed} of {total} removals "
                     "(--order-check sampled follows the first removal of each method in "
                     "full)\n" + check.evidence + "\nremovals:\n"
                     + _indent(listing.splitlines()[1:]), check.step)
    if listing and check.verdict != SKIP:
        check = Check(check.name, check.verdict, check.evidence + "\nremovals:\n"
                      + _indent(listing.splitlines()), check.step)
    return check


def check_no_table_freed_while_linked(run: MethodRun) -> Check:
    """The review's first point: no page is freed while a live table entry still
    points at it (the table's parent entry must be cleared first)."""
    from harness.inspect import order
    return _order_check(run, order.NO_TABLE_FREED_WHILE_LINKED,
                        order.check_no_table_freed_while_linked, False)


def check_tlb_flushed_before_free(run: MethodRun) -> Check:
    """The review's second point, for tables: between clearing a table's parent
    entry and freeing the table, a TLB invalidation covering it must have been
    issued and completed (a dsb ish or stronger on the same CPU)."""
    from harness.inspect import order
    return _order_check(run, order.TLB_FLUSHED_BEFORE_FREE,
                        order.check_tlb_flushed_before_free, True)


def check_isb_after_table_flush(run: MethodRun) -> Check:
    """Walk-cache invalidation (upstream d6984c21d815): the barrier completing
    a freed table's flush is followed by an isb. Shown wherever removals were
    followed; not required (recordings made before the agent looked after its
    barriers cannot say)."""
    from harness.inspect import order
    return _order_check(run, order.ISB_AFTER_TABLE_FLUSH,
                        order.check_isb_after_table_flush, True)


def check_contiguous_flushed_whole(run: MethodRun) -> Check:
    """Break-before-make for contiguous runs of the removed linear map (upstream
    48478b9f7913): no TLB invalidation of a contiguous group while it is only
    partly cleared. Shown where removals were followed; not required (older
    recordings did not note the groups)."""
    from harness.inspect import order
    return _order_check(run, order.CONTIGUOUS_FLUSHED_WHOLE,
                        order.check_contiguous_flushed_whole, True)


def check_leaf_flushed_before_free(run: MethodRun) -> Check:
    """The review's second point, for leaves ("flush_tlb_all() is too late"):
    a vmemmap page is freed only after its cleared leaf was invalidated and
    the invalidation completed; the linear map's cleared leaves are
    invalidated, completed, before arch_remove_memory() returns."""
    from harness.inspect import order
    return _order_check(run, order.LEAF_FLUSHED_BEFORE_FREE,
                        order.check_leaf_flushed_before_free, True)


def check_unlinked_tables_freed(run: MethodRun) -> Check:
    """A table whose parent entry a removal cleared is freed (a table unlinked
    and kept is a leaked page-table page), seen in a one-cycle run."""
    from harness.inspect import order
    return _order_check(run, order.UNLINKED_TABLES_FREED,
                        order.check_unlinked_tables_freed, True)


# ---------------------------------------------------------------- kselftest

def _selftest_problems(log: SelftestLog, hot: set[int]) -> list[str]:
    out = [f"hot-plugged memory{b}: online->offline -> Failure"
           for b in sorted(log.offline_failed & hot)]
    out += [f"boot-memory memory{b} was offlined: arm64 must refuse"
            for b in sorted(log.offlined - hot)]
    out += [f"hot-plugged memory{b} was offlined and never onlined again"
            for b in sorted((log.offlined & hot) - log.onlined)]
    out += [f"memory{b}: {why}" for b, whys in sorted(log.unexpected.items())
            for why in whys]
    return out


def check_kselftest(run: MethodRun) -> Check:
    """Each cycle's mem-on-off-test.sh run (``kselftest.cycles`` with
    ``--cycles``; one record otherwise); the worst cycle decides."""
    name, ks = "kselftest", run.kselftest
    if ks is None:
        return Check(name, SKIP, "mem-on-off-test.sh did not run")
    records = ks.cycles or (ks,)
    if len(records) == 1:
        return _kselftest_once(run, records[0])
    rank = {FAIL: 0, ERROR: 1, SKIP: 2, PASS: 3}
    numbered = [(n if r.cycle is None else r.cycle, r) for n, r in enumerate(records, 1)]
    judged = sorted(((n, _kselftest_once(run, r, n)) for n, r in numbered),
                    key=lambda c: (rank[c[1].verdict], c[0]))
    worst = judged[0][1]
    return Check(name, worst.verdict,
                 "\n".join(f"cycle {n}: {c.evidence}" for n, c in judged), worst.step)


def _kselftest_once(run: MethodRun, ks: KselftestResult, cycle: int = 1) -> Check:
    name = "kselftest"
    output = ks.text
    code = ks.exit_code
    log, hot = parse_mem_on_off(output), set(ks.hotplugged_blocks or ())
    suffix = "" if cycle == 1 else f"@{cycle}"
    step = next((st.name for st in run.steps
                 if st.name == f"run mem-on-off-test.sh{suffix}"), "") \
        or _named_step(run, "mem-on-off-test", "kselftest")
    exercised = log.touched & hot
    if not exercised:
        tail = output.strip().splitlines()[-5:]
        return Check(name, ERROR, f"mem-on-off-test.sh exercised no hot-plugged block "
                     f"(hot-plugged: {_block_names(hot)}; exit code {code}):\n"
                     + _indent(tail), step)
    problems = _selftest_problems(log, hot)
    boot_refused = len(log.offline_failed - hot)
    note = (f"{boot_refused} boot-memory block(s) failed to offline, expected on arm64 "
            f"(boot memory cannot be offlined); script exit code {code} not used: "
            "the script counts those as failures")
    if problems:
        return Check(name, FAIL, f"mem-on-off-test.sh: {problems[0]}" + _more(problems[1:])
                     + "\n" + note, step)
    return Check(name, PASS, f"hot-plugged {_block_names(exercised)} exercised, all "
                 f"succeeded (offlined: {_block_names(log.offlined & hot)}; onlined: "
                 f"{_block_names(log.onlined & hot)}); " + note, step)


# ---------------------------------------------------------------- verdicts

RULES: tuple[tuple[str, Rule], ...] = (
    ("blocks-lifecycle", check_blocks_lifecycle),
    ("no-stale-linear-map", check_no_stale_linear_map),
    ("no-stale-vmemmap", check_no_stale_vmemmap),
    ("tables-freed", check_tables_freed),
    ("online-memory-mapped", check_online_memory_mapped),
    ("present-struct-pages-mapped", check_present_struct_pages_mapped),
    ("contiguous-groups-whole", check_contiguous_groups_whole),
    ("bootmem-not-removable", check_bootmem_not_removable),
    ("hotadd-frames-visible", check_hotadd_frames_visible),
    ("hotadd-within-reach-accepted", check_hotadd_within_reach_accepted),
    ("hotadd-beyond-reach-refused", check_hotadd_beyond_reach_refused),
    ("no-kernel-splat", check_no_kernel_splat),
    ("no-leak-across-cycles", check_no_leak_across_cycles),
    ("walker-agrees-with-ptdump", check_walker_agrees_with_ptdump),
    ("walker-no-bad-entries", check_walker_no_bad_entries),
    ("no-table-freed-while-linked", check_no_table_freed_while_linked),
    ("tlb-flushed-before-free", check_tlb_flushed_before_free),
    ("leaf-flushed-before-free", check_leaf_flushed_before_free),
    ("unlinked-tables-freed", check_unlinked_tables_freed),
    ("isb-after-table-flush", check_isb_after_table_flush),
    ("contiguous-flushed-whole", check_contiguous_flushed_whole),
    ("kselftest", check_kselftest),
)

_WALKER_CHECKS = ("walker-agrees-with-ptdump", "walker-no-bad-entries")
_ORDER_CHECKS = ("no-table-freed-while-linked", "tlb-flushed-before-free",
                 "leaf-flushed-before-free", "unlinked-tables-freed")


def required_checks(run: MethodRun) -> tuple[str, ...]:
    """The checks that must look for this run to PASS: what the method declared
    (``MethodRun.required``), the walker's checks unless the walker was turned
    off on request (``--no-walker``), the leak check with ``--cycles`` > 1."""
    # a run saved before methods declared their checks: the removal checks
    names = list(run.required or (REMOVAL_CHECKS if run.removals else ()))
    if run.options.walker:
        names += _WALKER_CHECKS
    if (run.options.order_check or "off") != "off" and names:
        names += _ORDER_CHECKS
    if int(run.options.cycles or 1) > 1:
        names.append("no-leak-across-cycles")
    return tuple(dict.fromkeys(names))


def _applicable(name: str, run: MethodRun) -> bool:
    if name in _ORDER_CHECKS:        # shown when watched (or required)
        return bool(run.order)
    if name in ("isb-after-table-flush", "contiguous-flushed-whole"):   # where followed
        return bool(run.order)
    if name.startswith("hotadd-"):   # shown where hot-adds were tried (reach)
        return bool(run.hotadds)
    return name != "kselftest" or run.kselftest is not None


def _could_not_look(check: Check, method: str) -> Check:
    return Check(check.name, ERROR, f"required for {method}, but it could not look: "
                 f"{check.evidence}", check.step)


def judge(run: MethodRun) -> list[Check]:
    """Every applicable rule, in the order of RULES. A rule that raises gives ERROR.
    A required check that SKIPs becomes ERROR (never a silent PASS), unless the
    run already stopped with an error or a crash, which says why."""
    required = set(required_checks(run))
    stopped = bool(run.error or run.crashes)
    out = []
    for name, rule in RULES:
        if not _applicable(name, run) and name not in required:
            continue
        try:
            check = rule(run)
        except Exception as exc:   # a broken rule must not hide the other verdicts
            check = Check(name, ERROR, f"check raised {type(exc).__name__}: {exc}")
        if (check.verdict == SKIP and name in required and not stopped
                and not check.evidence.startswith((NOT_APPLICABLE, SAMPLED))):
            check = _could_not_look(check, run.method)
        out.append(_cut_short(check, run))
    return out


def _cut_short(check: Check, run: MethodRun) -> Check:
    """A FAIL in the step a run stopped in for a reason not the kernel's (QEMU
    killed or frozen, gdb killed, Ctrl-C) judged a recording cut short there
    (a table unlinked whose free never came, a stop the agent never saw): an
    ERROR naming the stop, not a failure blamed on the kernel. A FAIL in an
    earlier step stands."""
    err = run.error
    if (check.verdict != FAIL or err is None or err.blame == KERNEL or run.crashes
            or not check.step or check.step != err.step):
        return check
    return Check(check.name, ERROR,
                 f"could not judge: the run stopped in step {err.step} ({err.blame}: "
                 f"{err.message.splitlines()[0] if err.message else '?'}), so what was "
                 f"recorded of it is partial; it read: {check.evidence}", check.step)


def method_verdict(run: MethodRun, checks: Iterable[Check]) -> Verdict:
    """FAIL: a check failed, a crash, or a kernel-blamed error; ERROR: a harness or
    infrastructure error, or a check ERROR; else PASS."""
    verdicts = {c.verdict for c in checks}
    if FAIL in verdicts or run.crashes or (run.error and run.error.blame == KERNEL):
        return FAIL
    if run.error or ERROR in verdicts:
        return ERROR
    return PASS


def overall_verdict(method_verdicts: Union[Iterable[str], Mapping[str, str]]
                    ) -> tuple[Verdict, int]:
    """Any FAIL -> ("FAIL", 1); any ERROR, or no method at all -> ("ERROR", 2);
    else ("PASS", 0). Takes verdict strings or a {method: verdict} mapping."""
    verdicts = list(method_verdicts.values() if isinstance(method_verdicts, Mapping)
                    else method_verdicts)
    if FAIL in verdicts:
        return FAIL, 1
    if ERROR in verdicts or not verdicts:
        return ERROR, 2
    return PASS, 0
