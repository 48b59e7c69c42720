"""kunit.py from the default kernel's own tree, timed the way the bench times
the harness (issue 13: every target next to kunit.py, same invocation).

The tree is the *pristine* source the harness builds its default kernel from
(Debian's linux-source-6.12, unpacked once into the harness cache): the
artifacts of ``build --json`` name it (``"source": "tarball:PATH@SHORT"``) and
``harness.runner.kernel_tree`` finds it, as a method that copies files from
the kernel tree does. kunit.py runs as

  CCACHE_DISABLE=1 PYTHONDONTWRITEBYTECODE=1 python3 TREE/tools/testing/kunit/kunit.py \\
      run --arch=arm64 --cross_compile=aarch64-linux-gnu- --build_dir=BUILD

with BUILD = ``$HOTPLUG_HARNESS_CACHE/kunit/SHORT/build`` (default cache
``~/.cache/hotplug-harness``): outside the checkout and outside the source
tree, one per source identity. kunit.py builds with ``make O=BUILD``, so the
tree is only read; PYTHONDONTWRITEBYTECODE keeps its ``__pycache__`` out of
the tree too. CCACHE_DISABLE is what bench_build.py's cold build sets (kunit.py
does not use ccache either way; the variable only keeps the two commands
alike).

* cold: BUILD is removed first (a fresh, empty build dir);
* warm: BUILD as the last run left it (built first, untimed, when it is not
  there).

Figures: the command's wall time, kunit.py's own split from its last line
``Elapsed time: 324.123s total, 3.2s configuring, 301.9s building, 19.0s
running`` (``parse_elapsed``), the tests it ran (``Ran 493 tests: ...``) and,
cold, the objects built (``*.o`` under BUILD). kunit.py's output is kept in
``BUILD/../last-cold.log`` / ``last-warm.log``. A kunit.py failure (any exit
other than 0, also failing tests) is a failed bench command: exit 2 with the
tail of its output.
"""
from __future__ import annotations

import fcntl
import os
import re
import shutil
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import benchlib as bl  # noqa: E402

KUNIT_PY = Path("tools/testing/kunit/kunit.py")
KUNIT_ARGS = ("run", "--arch=arm64", "--cross_compile=aarch64-linux-gnu-")
KUNIT_ENV = {"CCACHE_DISABLE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
ELAPSED = re.compile(r"Elapsed time: ([\d.]+)s total, ([\d.]+)s configuring, "
                     r"([\d.]+)s building, ([\d.]+)s running")
RAN = re.compile(r"Ran (\d+) tests?(?:: (.*))?$")
COST_HELP = ("kunit.py from the same kernel tree next to the harness's figures: "
             "cold ~5-6 min of both CPUs (a fresh build dir), warm ~20-30 s (one "
             "QEMU guest; ~5 min more the first time, to build it)")


@dataclass(frozen=True)
class Elapsed:
    """kunit.py's own split of a ``run`` (its "Elapsed time" line)."""
    total: float
    configuring: float
    building: float
    running: float

    @property
    def build(self) -> float:
        """Configuring + building: what compares with a harness build (which
        makes its .config too)."""
        return self.configuring + self.building


def parse_elapsed(text: str) -> Optional[Elapsed]:
    """The last "Elapsed time: ...s total, ...s configuring, ...s building,
    ...s running" line of kunit.py's output, or None."""
    found = ELAPSED.findall(text)
    if not found:
        return None
    return Elapsed(*(float(x) for x in found[-1]))


def parse_tests(text: str) -> Optional[dict[str, Any]]:
    """``Ran 493 tests: passed: 480, skipped: 13`` -> {"tests": 493,
    "passed": 480, "skipped": 13}; None without such a line."""
    result = None
    for line in text.splitlines():
        m = RAN.search(line.strip())
        if m:
            result = {"tests": int(m.group(1))}
            for part in (m.group(2) or "").split(","):
                name, _, count = part.strip().partition(":")
                if count.strip().isdigit():
                    result[name.strip()] = int(count)
    return result


def count_objects(folder: Path) -> int:
    """``*.o`` files under ``folder`` (what a make built)."""
    n = 0
    for _root, _dirs, files in os.walk(folder):
        n += sum(1 for f in files if f.endswith(".o"))
    return n


# ------------------------------------------------------------------ where --

@dataclass(frozen=True)
class KunitTree:
    tree: Path        # the pristine kernel source tree
    short: str        # its source identity (short form), keys the build dir
    source: str       # the artifacts' "source"

    @property
    def home(self) -> Path:
        from harness.host import cache_root
        return cache_root() / "kunit" / self.short

    @property
    def build_dir(self) -> Path:
        return self.home / "build"


def tree_of(art: dict[str, Any]) -> KunitTree:
    """The default kernel's pristine tree from ``build --json``'s artifacts."""
    from harness.runner import kernel_tree
    source = str(art.get("source", ""))
    short = source.rpartition("@")[2]
    if not re.fullmatch(r"[0-9a-f]{8,64}", short):
        bl.die(f"cannot tell the source identity from the artifacts' source {source!r}")
    # kernel_tree reads only .source (KIND:PATH@SHORT)
    tree = kernel_tree(types.SimpleNamespace(source=source))  # type: ignore[arg-type]
    if not (tree / KUNIT_PY).is_file():
        bl.die(f"{tree / KUNIT_PY} does not exist: no kunit.py in the kernel tree")
    return KunitTree(tree, short, source)


def python3() -> str:
    """The system python3 (kunit.py needs nothing else); $KUNIT_PYTHON wins."""
    return os.environ.get("KUNIT_PYTHON") or \
        ("/usr/bin/python3" if os.path.exists("/usr/bin/python3") else None) or \
        shutil.which("python3") or sys.executable


def argv(kt: KunitTree) -> list[str]:
    return [python3(), str(kt.tree / KUNIT_PY), *KUNIT_ARGS, f"--build_dir={kt.build_dir}"]


def command(kt: KunitTree) -> str:
    return bl.command_text(argv(kt), KUNIT_ENV)


# -------------------------------------------------------------------- run --

@dataclass
class KunitRun:
    kind: str                      # "cold" | "warm"
    result: bl.Result
    elapsed: Optional[Elapsed]
    tests: Optional[dict[str, Any]]
    objects: Optional[int]         # *.o in the build dir (cold only)
    primed: bool = False           # warm: the build dir had to be built first

    @property
    def wall(self) -> float:
        return self.result.wall

    @property
    def command(self) -> str:
        return self.result.command

    def split_text(self) -> str:
        e = self.elapsed
        if e is None:
            return "no 'Elapsed time' line"
        return (f"kunit.py: {e.total:.1f} s total = {e.configuring:.1f} s configuring "
                f"+ {e.building:.1f} s building + {e.running:.1f} s running")

    def extra(self) -> str:
        parts = [self.split_text()]
        if self.tests:
            rest = ", ".join(f"{k} {v}" for k, v in self.tests.items() if k != "tests")
            parts.append(f"{self.tests['tests']} tests" + (f" ({rest})" if rest else ""))
        if self.objects is not None:
            parts.append(f"{self.objects} objects")
        if self.primed:
            parts.append("build dir built first, untimed")
        if self.result.waited_for_lock:
            parts.append("waited for another kunit run in the same build dir")
        return "; ".join(parts)

    def to_figure(self, label: str, value: Optional[float] = None) -> dict[str, Any]:
        return bl.kunit_figure(label, self.wall if value is None else value,
                               self.command, self.extra())


class _Lock:
    """One kunit.py at a time per build dir (flock on KunitTree.home/lock)."""

    def __init__(self, kt: KunitTree):
        kt.home.mkdir(parents=True, exist_ok=True)
        self.path = kt.home / "lock"
        self.fd = -1

    def __enter__(self) -> _Lock:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            bl.note(f"waiting for another kunit.py run holding {self.path}")
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _run(kt: KunitTree, kind: str, verbose: bool) -> bl.Result:
    r = bl.run(argv(kt), env=KUNIT_ENV, verbose=verbose, merged=True, ok=(0, 1, 2, 3),
               what=f"kunit.py {kind}")
    try:
        (kt.home / f"last-{kind}.log").write_text(
            f"{r.command}\n# exit {r.rc}, wall {r.wall:.3f} s\n" + r.stderr)
    except OSError:
        pass
    if r.rc != 0:
        bl.fail(r, f"kunit.py exit {r.rc}")
    return r


def _built(kt: KunitTree) -> bool:
    b = kt.build_dir
    return (b / ".config").is_file() and (b / "arch/arm64/boot/Image.gz").is_file()


def run_cold(kt: KunitTree, verbose: bool = False) -> KunitRun:
    """kunit.py run in a fresh, empty build dir."""
    with _Lock(kt):
        if kt.build_dir.exists():
            bl.note(f"kunit.py cold: removing {kt.build_dir}")
            shutil.rmtree(kt.build_dir)
        bl.note("kunit.py cold run: ~5-6 min (configure, build ~900 objects, run)")
        r = _run(kt, "cold", verbose)
        objects = count_objects(kt.build_dir)
    return KunitRun("cold", r, parse_elapsed(r.stderr), parse_tests(r.stderr), objects)


def run_warm(kt: KunitTree, verbose: bool = False) -> KunitRun:
    """kunit.py run again with nothing to build (built first when it is not)."""
    with _Lock(kt):
        primed = not _built(kt)
        if primed:
            bl.note(f"kunit.py warm: {kt.build_dir} is not built yet; building it "
                    "first (untimed, ~5 min)")
            _run(kt, "prime", verbose)
        r = _run(kt, "warm", verbose)
    return KunitRun("warm", r, parse_elapsed(r.stderr), parse_tests(r.stderr), None,
                    primed=primed)


def print_run(kr: KunitRun, label: str, key: str) -> None:
    """One figure line for a kunit.py run (recorded under ``key``)."""
    bl.figure(label, kr.wall, None, kr.command, kr.extra(), key=key)
