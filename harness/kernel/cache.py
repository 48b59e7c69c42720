"""What the cache holds, how big each entry is, when it was last used, and
pruning it back under a size cap, least recently used first.

Entries (each removable on its own):

* ``kernel``   ``artifacts/KEY``: one built kernel (Image, vmlinux, System.map,
  .config, build log); its source, patches and fragments are in ``meta.json``;
* ``tree``     ``trees/KEY``: the work copy of one source (a tarball's content,
  or a tree's path) with its ``O=`` folders inside, plus, for a tarball, its
  unpacked copy ``src/KEY``;
* ``snapshot`` ``snapshots/KEY``: a booted guest saved for fast boots;
* ``series``   ``series/KEY``: the patches of one ``--series`` mbox, split;
* ``ccache``   the compiler cache (capped by ccache itself, ``CCACHE_MAXSIZE``).

"Last used" is the entry folder's mtime, moved by :func:`touch` whenever a
build or a boot uses the entry. The cap is ``HOTPLUG_HARNESS_CACHE_MAX``
(default 20G; ``0`` turns automatic pruning off); a build that stored
something new prunes to it. Sizes count disk blocks, each inode once (a
tarball's work copy is hard links to its unpacked copy).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from harness import progress
from harness.errors import HarnessError
from harness.host import cache_root

DEFAULT_MAX = "20G"
ENV_MAX = "HOTPLUG_HARNESS_CACHE_MAX"


@dataclass
class Entry:
    kind: str            # kernel | tree | snapshot | series | ccache
    key: str
    paths: tuple         # folders removed together
    size: int            # bytes on disk
    last_used: float     # epoch seconds
    holds: str           # one line: what it is
    orphan: bool = False  # a work copy whose tree is gone

    def to_dict(self) -> dict:
        return {"kind": self.kind, "key": self.key, "paths": [str(p) for p in self.paths],
                "bytes": self.size, "last_used": round(self.last_used, 1),
                "holds": self.holds}


def parse_size(text: str) -> int:
    """'20G', '500M', '1.5T', '0', '123' (bytes) -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)i?[bB]?\s*", str(text))
    if not m:
        raise HarnessError(f"cache size {text!r}: use a number with K, M, G or T "
                           f"(e.g. 20G)", step="cache")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    return int(float(m.group(1)) * scale[m.group(2).lower()])


def max_bytes() -> int:
    return parse_size(os.environ.get(ENV_MAX, DEFAULT_MAX))


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit in ("B", "KiB", "MiB") else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def touch(path: Path) -> None:
    """Mark an entry folder as used now."""
    try:
        os.utime(path)
    except OSError:
        pass


def disk_usage(paths, seen: set | None = None) -> int:
    """Bytes on disk under ``paths``, each inode counted once."""
    seen = set() if seen is None else seen
    total = 0
    stack = [Path(p) for p in paths if os.path.lexists(p)]
    while stack:
        path = stack.pop()
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        total += st.st_blocks * 512
        if os.path.isdir(path) and not os.path.islink(path):
            try:
                with os.scandir(path) as it:
                    stack.extend(Path(e.path) for e in it)
            except OSError:
                continue
    return total


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def entries(sizes: bool = True) -> list:
    """Every removable entry, most recently used first."""
    root = cache_root()
    seen: set = set()
    found = []

    def size(paths) -> int:
        return disk_usage(paths, seen) if sizes else 0

    for folder in sorted((root / "artifacts").glob("*")):
        if not folder.is_dir():
            continue
        holds = "kernel (no readable meta.json)"
        try:
            meta = json.loads((folder / "meta.json").read_text())
            holds = (f"kernel {meta.get('kernel_release', '?')} "
                     f"[{'+'.join(meta.get('fragments', []))}] from "
                     f"{_short_source(meta.get('source', '?'))}, "
                     f"{_patch_names(meta.get('patches', []))}")
        except (OSError, ValueError, AttributeError):
            pass
        found.append(Entry("kernel", folder.name, (folder,), size([folder]),
                           _mtime(folder), holds))
    for folder in sorted((root / "trees").glob("*")):
        if not folder.is_dir():
            continue
        origin = _first_line(folder / "source") or (
            "a tree (being copied)" if folder.name.startswith("p") else
            f"tarball:{_first_line(root / 'src' / folder.name / '.complete') or '?'}")
        paths = [folder]
        unpacked = root / "src" / folder.name
        if unpacked.is_dir():
            paths.append(unpacked)
        outdirs = sorted((folder / "linux").glob(".harness-o-*"))
        gone = origin.startswith("dir:") and not Path(origin[4:]).is_dir()
        holds = (f"work copy of {origin}, {len(outdirs)} O= folder(s)"
                 + (", and its unpacked copy" if unpacked.is_dir() else "")
                 + (" (that tree is gone: pruned first)" if gone else ""))
        found.append(Entry("tree", folder.name, tuple(paths), size(paths),
                           _mtime(folder), holds, orphan=gone))
    tree_keys = {e.key for e in found if e.kind == "tree"}
    for folder in sorted((root / "src").glob("*")):
        if folder.is_dir() and folder.name not in tree_keys:
            found.append(Entry("tree", folder.name, (folder,), size([folder]),
                               _mtime(folder), "unpacked source with no work copy"))
    for folder in sorted((root / "snapshots").glob("*")):
        if folder.is_dir() and not folder.name.startswith("."):
            found.append(Entry("snapshot", folder.name, (folder,), size([folder]),
                               _mtime(folder), "a booted guest, saved for fast boots"))
    for folder in sorted((root / "series").glob("*")):
        if folder.is_dir():
            mails = sorted(q.name for q in folder.glob("*.patch"))
            found.append(Entry("series", folder.name, (folder,), size([folder]),
                               _mtime(folder), f"a series split into {len(mails)} "
                               f"patch(es)" + (f": {mails[0]}..." if mails else "")))
    old_builds = root / "build"
    if old_builds.is_dir():    # O= folders of the layout before work copies held them
        found.append(Entry("tree", "build", (old_builds,), size([old_builds]),
                           _mtime(old_builds), "O= folders of an older cache layout"))
    found.sort(key=lambda e: -e.last_used)
    ccache = root / "ccache"
    if ccache.is_dir():
        found.append(Entry("ccache", "ccache", (ccache,), size([ccache]), _mtime(ccache),
                           "compiler cache (ccache caps it itself)"))
    return found


def _first_line(path: Path) -> str:
    try:
        return path.read_text().strip().splitlines()[0]
    except (OSError, IndexError):
        return ""


def _short_source(described: str) -> str:
    """``tarball:/usr/src/linux-source-6.12.tar.xz@abc`` -> the file's name;
    a tree's path as it is."""
    kind, _, rest = described.partition(":")
    path = rest.rpartition("@")[0] or rest
    return Path(path).name if kind == "tarball" else path


def _patch_names(patches) -> str:
    """patches/series' patches as 'series', others by name."""
    try:
        from harness.kernel.source import read_series
        series = {p.name for p in read_series()}
    except Exception:  # noqa: BLE001 - a listing must not fail on a bad series
        series = set()
    names = [n for n, _ in patches]
    own = [n for n in names if n not in series]
    parts = (["series"] if len(own) < len(names) else []) + own
    return "patches: " + ", ".join(parts) if parts else "no patches"


def prune(limit: int | None = None, dry_run: bool = False, keep=(),
          found: list | None = None) -> list:
    """Remove work copies whose tree is gone, then least recently used
    entries until the cache fits ``limit`` bytes (default: the configured
    cap). ccache is never removed here (it has its own cap). An entry whose
    lock another run holds, and ``keep`` (folders), are skipped. ``found``:
    ``entries()`` when the caller took it already. Returns the entries
    removed (or that would be)."""
    from harness.kernel.kernel import locked
    limit = max_bytes() if limit is None else limit
    found = entries() if found is None else found
    total = sum(e.size for e in found)
    keep = {Path(k) for k in keep}
    removed = []
    order = [e for e in found if e.orphan] + \
        [e for e in reversed(found) if e.kind != "ccache" and not e.orphan]
    for entry in order:
        if total <= limit and not entry.orphan:
            break
        if any(p in keep for p in entry.paths):
            continue
        if not dry_run:
            lock = locked(f"source-{entry.key}", wait=False) if entry.kind == "tree" \
                else nullcontext(True)
            with lock as got:
                if not got:
                    continue
                for path in entry.paths:
                    shutil.rmtree(path, ignore_errors=True)
        removed.append(entry)
        total -= entry.size
    return removed


AUTO_PRUNE_EVERY_S = 600   # sizing the cache walks every work copy (~1 s each)


def auto_prune(keep=(), every: float = AUTO_PRUNE_EVERY_S) -> None:
    """After a build stored something: prune to the cap, saying what went.
    At most once per ``every`` seconds (the cap is a soft one: an edit loop
    must not pay for walking every work copy at each build)."""
    limit = max_bytes()
    if limit <= 0:
        return
    stamp = cache_root() / "locks" / "last-prune"
    if every and time.time() - _mtime(stamp) < every:
        return
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.touch()
    start = time.monotonic()
    gone = prune(limit, keep=keep)
    if gone:
        freed = sum(e.size for e in gone)
        progress.info(f"cache over {human(limit)} ({ENV_MAX}): removed "
                      f"{len(gone)} least recently used entr{'y' if len(gone) == 1 else 'ies'} "
                      f"({human(freed)}) in {time.monotonic() - start:.1f} s", "cache")
