"""The exact leak signal: page_owner's allocation stacks before the add and
after each remove (``harness.inspect.page_owner``), instead of MemFree.

Needs a kernel built with ``--config leak`` (``kernel-configs/leak.config``:
``CONFIG_PAGE_OWNER``) and booted with :data:`CMDLINE` (``page_owner=on``).
Without either, :func:`collect` returns None and the checks SKIP, saying why.

* :func:`collect` (guest side, one SSH command): the raw ``show_stacks`` text.
* :func:`snapshot` parses it and keeps only the hotplug-path stacks (what a
  report needs to re-judge; a few records of the ~1-2 thousand).
* :func:`check` / :func:`check_cycles` (pure): a stack that populates the
  vmemmap or allocates linear-map tables and holds more pages after the remove
  than before the add is a leak; evidence names the stack and the pages.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Optional

from harness.errors import Verdict
from harness.inspect import page_owner
from harness.inspect.page_owner import Snapshot

PASS, FAIL, SKIP = Verdict.PASS, Verdict.FAIL, Verdict.SKIP

CONFIG = "leak"                    # kernel-configs/leak.config
CMDLINE = "page_owner=on"          # boot parameter: page_owner is off by default
KCONFIG = "CONFIG_PAGE_OWNER"
NAME = "no-leak-across-cycles"
NOT_ENABLED = (f"page_owner not available (build with --config {CONFIG}: "
               f"{KCONFIG}=y, and boot with {CMDLINE})")
RECORDS_MARK = "PAGE-OWNER-RECORDS"   # 6.1: no show_stacks, the per-allocation file
_READ = (f"if [ -r {page_owner.SHOW_STACKS} ]; then cat {page_owner.SHOW_STACKS}; "
         f"elif [ -r {page_owner.RECORDS} ]; then echo {RECORDS_MARK}; "
         f"cat {page_owner.RECORDS}; else echo NO-PAGE-OWNER; fi")


def for_cycles(cycles: int, configs: Sequence[str], cmdline: Sequence[str]) -> tuple:
    """(configs, cmdline, note) a run of ``cycles`` needs: from 2 cycles on, the
    leak check judges page_owner, so the ``leak`` fragment is added to the build
    and ``page_owner=on`` to the boot (note says so; empty when nothing changed).
    One cycle keeps the default kernel as it is (page_owner costs memory)."""
    configs, cmdline = tuple(configs), tuple(cmdline)
    if cycles < 2:
        return configs, cmdline, ""
    added = []
    if CONFIG not in configs:
        configs += (CONFIG,)
        added.append(f"config fragment '{CONFIG}' ({KCONFIG})")
    if CMDLINE not in cmdline:
        cmdline += (CMDLINE,)
        added.append(f"boot parameter {CMDLINE}")
    note = (f"--cycles {cycles}: {NAME} reads page_owner; adding "
            + " and ".join(added)) if added else ""
    return configs, cmdline, note


def enabled_in(kconfig: dict) -> bool:
    """Is page_owner compiled in (a KernelArtifacts.kconfig-style dict)?"""
    return kconfig.get(KCONFIG) == "y"


def collect(rec, deadline: float = 60.0) -> Optional[str]:
    """``show_stacks`` as text, or None when page_owner is absent or off.

    ``rec`` is a Recorder (or anything with ``.guest``) or a Guest. One guest
    command over the scenario transport; cost measured on 4k-48 with SSH:
    see bench/bench_leak.py (``collect`` line)."""
    guest = getattr(rec, "guest", rec)
    res = guest.run(_READ, deadline)
    out = res.check(getattr(guest, "step", "inspect")).stdout
    if out.strip() == "NO-PAGE-OWNER":
        return None
    if out.startswith(RECORDS_MARK):     # 6.1: summed per stack here, on the host
        return page_owner.from_records(out[len(RECORDS_MARK):])
    return out


def collect_timed(rec, deadline: float = 60.0) -> tuple:
    """(text or None, seconds) for callers that report the cost."""
    start = time.monotonic()
    text = collect(rec, deadline)
    return text, time.monotonic() - start


def snapshot(text: Optional[str]) -> Optional[Snapshot]:
    """Parse and keep the hotplug-path stacks only; None stays None."""
    if text is None:
        return None
    return page_owner.parse(text).hotplug()


def _as_snapshot(x) -> Optional[Snapshot]:
    if x is None or isinstance(x, Snapshot):
        return x
    if isinstance(x, str):
        return page_owner.parse(x)
    if isinstance(x, dict):
        return Snapshot.from_dict(x)
    raise TypeError(f"not a page_owner snapshot: {type(x).__name__}")


def check(before, after, after_name: str = "after", before_name: str = "before",
          page_kb: int = 4, removed: Sequence = ()) -> tuple[Verdict, str]:
    """(verdict, evidence) for one pair: PASS, FAIL or SKIP.

    ``before``/``after``: Snapshot, show_stacks text, Snapshot.to_dict() or None
    (None: page_owner was not on: SKIP). ``page_kb``: the base page size in
    kB (4, 16, 64) for the evidence's kB figures. ``removed``: the physical
    ranges ``[(pa_start, pa_end), ...]`` removed in between, named in a FAIL's
    evidence (page_owner's stacks carry no address)."""
    b, a = _as_snapshot(before), _as_snapshot(after)
    if b is None or a is None:
        return SKIP, NOT_ENABLED
    leaks = page_owner.diff(b, a)
    context = [g for g in page_owner.grown(b, a) if g.category is None]
    if leaks:
        pages = sum(g.pages for g in leaks)
        head = (f"{after_name}: {pages} pages ({pages * page_kb} kB) allocated by "
                f"hotplug paths are still allocated, {len(leaks)} stack(s) holding more "
                f"than at {before_name}")
        if removed:
            head += " (removed: " + ", ".join(f"PA {a:#x}-{b:#x}" for a, b in removed) + ")"
        head += ":"
        lines = page_owner.describe(leaks, page_kb)
        if context:
            lines.append(_context(context))
        return FAIL, head + "\n" + "\n".join("    " + l for l in lines)
    judged = [s for s in a.stacks if page_owner.category(s)]
    text = (f"{after_name}: no vmemmap or linear-map table stack holds more pages "
            f"than at {before_name} ({len(judged)} such stack(s) hold "
            f"{sum(s.nr_base_pages for s in judged)} pages, as before)")
    if context:
        text += "; " + _context(context)
    return PASS, text


def _context(context: list) -> str:
    """One line on the hotplug-path stacks that grew but are not judged (slab
    pages of sysfs and ACPI objects, page_ext): they are shared or cached."""
    pages = sum(g.pages for g in context)
    where = sorted({_first_caller(g) for g in context})
    return (f"context, not judged: {pages} more page(s) in {len(context)} other "
            f"hotplug-path stack(s) (slab/page_ext: {', '.join(where[:4])})")


def _first_caller(g) -> str:
    """The first frame past the page and slab allocators, as a function name."""
    skip = page_owner.SLAB_FUNCS | {"kmem_cache_alloc_noprof", "__kmalloc_cache_noprof",
                                    "__kmalloc_noprof", "__kmalloc_node_track_caller_noprof",
                                    "kmalloc_trace_noprof", "__kmalloc_node_noprof",
                                    "kmem_cache_alloc_node_noprof", "kstrdup", "kstrdup_const",
                                    "kmemdup_noprof"}
    for f in g.stack().top(16):
        name = page_owner.function(f)
        if name not in skip:
            return name
    return "?"


def check_cycles(before, cycles: Sequence[tuple], page_kb: int = 4,
                 removed: Sequence = ()) -> tuple[Verdict, str, str]:
    """(verdict, evidence, step) over ``[(phase name, snapshot), ...]``: each
    after-remove snapshot against ``before`` (the phase before the first add).
    FAIL at the first cycle that leaks (its name as ``step``); a leak in cycle 1
    that is the same in every later cycle still FAILs (pages never returned).
    The evidence says whether the leak grows with the cycles."""
    b = _as_snapshot(before)
    snaps = [(name, _as_snapshot(s)) for name, s in cycles]
    if b is None or not snaps or any(s is None for _, s in snaps):
        return SKIP, NOT_ENABLED, ""
    results = [(name, check(b, s, name, page_kb=page_kb, removed=removed))
               for name, s in snaps]
    failed = [(name, r) for name, r in results if r[0] == FAIL]
    if not failed:
        return PASS, "\n".join(r[1] for _, r in results), ""
    totals = [(name, sum(g.pages for g in page_owner.diff(b, s))) for name, s in snaps]
    trend = ", ".join(f"{name} +{pages}" for name, pages in totals)
    first_name, (_, evidence) = failed[0]
    last_name, (_, last_evidence) = failed[-1]
    text = f"leaked pages by cycle: {trend}\n{last_evidence}"
    return FAIL, text, first_name
