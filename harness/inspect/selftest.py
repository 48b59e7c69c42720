"""The kernel selftest's log (tools/testing/selftests/memory-hotplug/
mem-on-off-test.sh) parsed into what it did to each memory block. Pure."""
from __future__ import annotations

import re
from collections import defaultdict
from typing import NamedTuple, Optional

_KS_STEP = re.compile(r"(offline->online|online->offline) memory(\d+)"
                      r"(?:\s*-> (Success|Failure))?")
_KS_RESULT = re.compile(r"-> (Success|Failure)\b")
_KS_UNEXPECTED = re.compile(r"(\w+_expect_\w+) (\d+): unexpected (\w+)")


class SelftestLog(NamedTuple):
    """What mem-on-off-test.sh did to each block."""
    touched: frozenset[int]
    offlined: frozenset[int]        # "online->offline memoryN" then "-> Success"
    offline_failed: frozenset[int]  # ... then "-> Failure"
    onlined: frozenset[int]         # "offline->online memoryN" (failures show as unexpected)
    unexpected: dict[int, list[str]]  # block -> ["online_memory_expect_success: ..."]


def parse_mem_on_off(output: str) -> SelftestLog:
    """Parse mem-on-off-test.sh output; ``-> Success`` may share the line or follow it."""
    touched: set[int] = set()
    onlined: set[int] = set()
    results: dict[int, str] = {}
    unexpected: defaultdict[int, list[str]] = defaultdict(list)
    pending: Optional[int] = None
    for line in output.splitlines():
        if m := _KS_STEP.search(line):
            touched.add(int(m[2]))
            if m[1] == "offline->online":
                onlined.add(int(m[2]))
            pending = int(m[2]) if m[1] == "online->offline" and not m[3] else None
            if m[3]:
                results[int(m[2])] = m[3]
        elif (m := _KS_RESULT.search(line)) and pending is not None:
            results[pending], pending = m[1], None
        elif m := _KS_UNEXPECTED.search(line):
            unexpected[int(m[2])].append(f"{m[1]}: unexpected {m[3]}")
    return SelftestLog(frozenset(touched),
                       frozenset(b for b, r in results.items() if r == "Success"),
                       frozenset(b for b, r in results.items() if r == "Failure"),
                       frozenset(onlined), dict(unexpected))
