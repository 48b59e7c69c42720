"""Which patches of ``patches/series`` a kernel tree already carries.

A reviewer's tree often has the series committed already; applying it again
would fail ("Reversed (or previously applied) patch detected"). Before a build,
``series_to_apply`` drops every series patch that is already in the tree and
says so (``patches/series: NAME already in the tree, skipped``).

A patch is in the tree when ``git apply --reverse --check`` accepts it
(``patch -R -f --dry-run`` where git is not installed). The
series is checked from its last patch to its first on a scratch copy of the
files it touches, reversing each patch found there before checking the one
before it, so a patch that a later one edits is still recognised. The tree is
only read. ``git apply`` works on any folder (``GIT_CEILING_DIRECTORIES`` keeps
it from treating a folder inside some other git work tree as part of it).

The answer is cached in the harness cache (``series-applied.json``) by the
source's identity and each patch's sha256: a tarball's tree need not even be
unpacked to build from a cached kernel.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from harness import progress
from harness.host import cache_root
from harness.kernel import source as src

CACHE_FILE = "series-applied.json"
CACHE_ENTRIES = 256            # the most recent answers kept


def series_to_apply(source, paths: Sequence) -> list:
    """``paths`` (the series, in order) without the patches ``source``'s tree
    already carries; each one left out is said (progress.info)."""
    paths = [Path(p) for p in paths]
    if not paths:
        return []
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    key = _key(source.identity, digests)
    memo = _read_memo()
    found = memo.get(key)
    if found is None:
        found = sorted(in_tree(src.pristine_tree(source), paths))
        memo[key] = found
        _write_memo(memo)
    skipped = set(found)
    for i in sorted(skipped):
        progress.info(f"patches/series: {paths[i].name} already in the tree, skipped",
                      "patch")
    return [p for i, p in enumerate(paths) if i not in skipped]


def in_tree(tree: Path, patches: Sequence[Path]) -> set:
    """Indexes of the ``patches`` (a series, in order) that ``tree`` already
    carries. Reads ``tree`` only."""
    patches = [Path(p) for p in patches]
    touched: list = []
    for patch in patches:
        for name in touched_files(patch.read_text(errors="replace")):
            if name not in touched:
                touched.append(name)
    found: set = set()
    with tempfile.TemporaryDirectory(prefix="series-applied-") as scratch:
        work = Path(scratch)
        for name in touched:
            if (tree / name).is_file() and not (tree / name).is_symlink():
                (work / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(tree / name, work / name)
        for index in reversed(range(len(patches))):
            if _reverse(work, patches[index], check=True):
                _reverse(work, patches[index])       # check the one before on this
                found.add(index)
    return found


def touched_files(patch_text: str) -> list:
    """Files a git-style -p1 patch names (old and new sides), in order."""
    files: list = []
    for line in patch_text.splitlines():
        if line.startswith(("--- ", "+++ ")):
            name = line[4:].split("\t", 1)[0].strip()
            if name == "/dev/null" or "/" not in name:
                continue
            name = name.split("/", 1)[1]
            if name not in files:
                files.append(name)
    return files


def _reverse(folder: Path, patch: Path, check: bool = False) -> bool:
    """Reverse ``patch`` in ``folder`` (only check that it would, with
    ``check``): ``git apply --reverse``, or without git ``patch -R -f`` (-f:
    never guess that a patch is reversed and apply it forward instead)."""
    if shutil.which("git"):
        argv = ["git", "apply", "--reverse", *(["--check"] if check else []),
                str(patch.resolve())]
    else:
        argv = ["patch", "-p1", "-R", "-f", "-s", "--fuzz=0", "--no-backup-if-mismatch",
                "-r", "-", *(["--dry-run"] if check else []), "-i", str(patch.resolve())]
    env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(folder.parent))
    env.pop("GIT_DIR", None)
    env.pop("GIT_WORK_TREE", None)
    try:
        proc = subprocess.run(argv, cwd=folder, env=env, capture_output=True,
                              stdin=subprocess.DEVNULL, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def _key(identity: str, digests: Iterable[str]) -> str:
    return hashlib.sha256(json.dumps([identity, list(digests)]).encode()).hexdigest()


def _read_memo() -> dict:
    try:
        data = json.loads((cache_root() / CACHE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_memo(memo: dict) -> None:
    keep = dict(list(memo.items())[-CACHE_ENTRIES:])
    path = cache_root() / CACHE_FILE
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(keep, indent=0))
        os.replace(tmp, path)
    except OSError:        # a read-only cache: detect again next time
        tmp.unlink(missing_ok=True)
