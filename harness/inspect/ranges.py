"""Interval arithmetic on half-open ``[start, end)`` address ranges: merge,
subtract, clip. Pure; used by the checks (what is mapped, what should be)."""
from __future__ import annotations

from collections.abc import Iterable

Span = tuple[int, int]


def coalesce(ranges: Iterable[Span]) -> list[Span]:
    """Sorted, merged ``[start, end)`` ranges (adjacent ones joined)."""
    out: list[list[int]] = []
    for start, end in sorted(r for r in ranges if r[0] < r[1]):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]


def subtract(want: Iterable[Span], have: Iterable[Span]) -> list[Span]:
    """The parts of ``want`` not covered by ``have``."""
    covered = coalesce(have)
    out = []
    for start, end in coalesce(want):
        for h_start, h_end in covered:
            if h_end <= start or h_start >= end:
                continue
            if h_start > start:
                out.append((start, h_start))
            start = max(start, h_end)
        if start < end:
            out.append((start, end))
    return out


def clip(ranges: Iterable[Span], lo: int, hi: int) -> list[Span]:
    return coalesce((max(a, lo), min(b, hi)) for a, b in ranges)


def clip_to(ranges: Iterable[Span], within: Iterable[Span]) -> list[Span]:
    """The parts of ``ranges`` inside ``within``."""
    inside = list(within)
    return coalesce((max(a, c), min(b, d)) for a, b in ranges for c, d in inside
                    if a < d and c < b)
