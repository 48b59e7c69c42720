"""Kernel source + patch series -> a prepared tree.

The source is never modified in place. A tarball (Debian's linux-source-6.12
by default) is unpacked once into the cache as the *pristine* copy; a directory
given by the user is the pristine copy. Builds happen in a *work copy*, one per
tarball identity or per tree *path* (not per content: a reviewer's tree gets
one work copy that follows its edits). A tarball's work copy is hard links to
the unpacked copy. A directory's is kept in sync file by file
(``sync_work_copy``): at each build only the files whose size or mtime changed
since the last sync are compared, and only those whose content differs are
rewritten (with the current time, so make rebuilds what depends on them and
nothing else); files gone from the tree are removed.

Patches are applied in a scratch folder holding copies of only the files they
touch. Only when the whole series applies are the work copy's files updated,
and only those whose content changes: files the patches do not touch keep
their mtimes, so make rebuilds just what the patches changed.

The ``O=`` folders live inside the work copy, as direct children
(``.harness-o-KEY``): kbuild then names sources relative to the object tree
(``srctree := ..``), so compiler command lines are the same for every work
copy and ccache is shared across trees and paths.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat as stat_mod
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from harness import progress
from harness.errors import HarnessError, PatchError
from harness.host import (
    DEBIAN_SOURCE_PACKAGE,
    DEBIAN_SOURCE_TARBALL,
    cache_root,
    require_file,
    require_tool,
    run,
)
from harness.kernel import series, versions
from harness.paths import PATCH_DIR  # noqa: E402  (checkout or shipped copy)

SERIES_FILE = PATCH_DIR / "series"


# ---------------------------------------------------------------- source ----

@dataclass(frozen=True)
class Source:
    kind: str        # "tarball" | "dir"
    path: Path
    identity: str    # sha256 hex of what decides the content
    # a plain tree's files as its identity was taken from them (tree_files):
    # the work copy is synced from the same listing, not from a second walk
    listing: Optional[dict] = field(default=None, compare=False, repr=False)

    @property
    def short(self) -> str:
        return self.identity[:16]

    def describe(self) -> str:
        return f"{self.kind}:{self.path}@{self.short}"

    @property
    def tree_key(self) -> str:
        """Names the work copy: a tarball's content, a directory's path."""
        if self.kind == "dir":
            return "p" + hashlib.sha256(str(self.path).encode()).hexdigest()[:15]
        return self.short


def resolve_source(spec: str = "debian") -> Source:
    """``debian``, a directory, or a tarball path -> Source with its identity."""
    if spec == "debian":
        path = require_file(DEBIAN_SOURCE_TARBALL, DEBIAN_SOURCE_PACKAGE,
                            "Debian kernel source tarball")
        return Source("tarball", path, _file_identity(path))
    debian = versions.debian_source(spec)     # debian-6.1: installed when asked
    if debian is not None:
        path = versions.ensure_debian_source(debian)
        return Source("tarball", path, _file_identity(path))
    path = Path(spec).expanduser().resolve()
    if path.is_dir():
        if not (path / "Makefile").is_file() or not (path / "arch" / "arm64").is_dir():
            raise HarnessError(f"{path} does not look like a kernel source tree "
                               "(no Makefile or arch/arm64)", step="source")
        return Source("dir", path, *_dir_identity(path))
    if path.is_file():
        return Source("tarball", path, _file_identity(path))
    raise HarnessError(f"--kernel-src {spec}: no such file or directory "
                       "(use 'debian', 'debian-6.1', a kernel tree, or a tarball)",
                       step="source")


def _file_identity(path: Path) -> str:
    """sha256 of a file, memoised by (path, size, mtime) in the cache."""
    st = path.stat()
    memo_file = cache_root() / "file-hashes.json"
    memo = _read_json(memo_file, {})
    stamp = f"{path}:{st.st_size}:{st.st_mtime_ns}"
    if stamp in memo:
        return memo[stamp]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    memo[stamp] = h.hexdigest()
    _write_json(memo_file, memo)
    return memo[stamp]


def _dir_identity(path: Path) -> tuple:
    """(identity, listing). A git tree: HEAD + its uncommitted changes (no
    listing); otherwise every file's stat, and the listing it was taken from."""
    h = hashlib.sha256(str(path).encode())
    if (path / ".git").exists() and shutil.which("git"):
        git = ["git", "-C", str(path)]
        head = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True)
        if head.returncode == 0:
            h.update(head.stdout)
            h.update(subprocess.run(git + ["diff", "HEAD", "--binary"],
                                    capture_output=True).stdout)
            untracked = subprocess.run(
                git + ["ls-files", "-o", "--exclude-standard", "-z"],
                capture_output=True).stdout
            for name in sorted(filter(None, untracked.split(b"\0"))):
                h.update(name + _hash_file(path / name.decode()).encode())
            return h.hexdigest(), None
    listing = tree_files(path)
    for name, (size, mtime, _link) in sorted(listing.items()):
        h.update(f"{name}:{size}:{mtime}\n".encode())
    return h.hexdigest(), listing


def _hash_file(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return "-"


def pristine_tree(source: Source) -> Path:
    """The unmodified source tree (a tarball is unpacked once into the cache)."""
    if source.kind == "dir":
        return source.path
    dest = cache_root() / "src" / source.short
    if (dest / ".complete").exists():
        return _single_subdir(dest)
    require_tool("tar")
    require_tool("xz")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{source.short}.", dir=dest.parent))
    progress.info(f"unpacking {source.path} into the cache (once)", "source")
    try:
        run(["tar", "-C", tmp, "-xf", source.path])
    except subprocess.CalledProcessError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        tail = "\n".join((e.stderr or b"").decode(errors="replace").strip().splitlines()[-5:])
        raise HarnessError(f"unpacking {source.path} into the cache failed (tar exit "
                           f"{e.returncode}){_space_note(dest.parent)}", step="source",
                           blame="infra", evidence=tail) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (tmp / ".complete").write_text(str(source.path) + "\n")
    try:
        os.rename(tmp, dest)
    except OSError:  # another run unpacked it first
        shutil.rmtree(tmp, ignore_errors=True)
    return _single_subdir(dest)


def _space_note(folder: Path) -> str:
    """``: no space left in FOLDER's filesystem (N MiB free)`` when that is
    the likely cause (under 1 GiB free; a 6.12 tree is 1.7 GB), else ""."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    if free >= 1 << 30:
        return ""
    return (f": the cache's filesystem ({folder}) has {free >> 20} MiB free, a kernel "
            "tree needs about 1.7 GB (HOTPLUG_HARNESS_CACHE chooses the cache folder; "
            "'hotplug-harness cache prune' frees space)")


def _single_subdir(folder: Path) -> Path:
    subdirs = [p for p in folder.iterdir() if p.is_dir()]
    if len(subdirs) == 1 and not (folder / "Makefile").exists():
        return subdirs[0]
    return folder


# ---------------------------------------------------------------- patches ---

@dataclass(frozen=True)
class Patch:
    path: Path
    sha256: str
    subject: str = ""     # a mail of a series (build.series): its Subject, prefix removed
    part: str = ""        # its place in the series, "3/5"
    mbox: str = ""        # the series file it came from

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def label(self) -> str:
        """How errors name it: the file, or the series mail by place and Subject."""
        if not self.subject:
            return str(self.path)
        return f'{self.part} "{self.subject}" of {self.mbox}'


def read_series(series_file: Path = SERIES_FILE) -> list:
    """Patch paths listed in a quilt-style series file, in order."""
    if not series_file.exists():
        return []
    paths = []
    for number, raw in enumerate(series_file.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name = line.split()[0]  # quilt allows options such as -p1 after the name
        path = series_file.parent / name
        if not path.is_file():
            raise HarnessError(f"{series_file}:{number}: patch '{name}' not found",
                               step="patch")
        paths.append(path)
    return paths


def load_patches(paths: Iterable) -> list:
    """Patch records for patch files and series files (``series.SeriesFile``,
    from ``--series``). A ``--patch`` file that holds several mails is a series
    too, split the same way and said so: each mail applies on the previous one
    and keeps its Subject."""
    patches = []
    for p in paths:
        option = "--series" if isinstance(p, series.SeriesFile) else "--patch"
        path = Path(p).expanduser().resolve()
        if not path.is_file():
            raise HarnessError(f"{option} {p}: no such file", step="patch")
        raw = path.read_bytes()
        if option == "--series" or series.is_series(raw):
            patches.extend(_series_patches(path, raw, option))
        else:
            patches.append(Patch(path, hashlib.sha256(raw).hexdigest()))
    return patches


def _series_patches(path: Path, raw: bytes, option: str) -> list:
    found = series.split(raw)
    if not found.mails:
        raise HarnessError(f"{option} {path}: no patch in it ({found.messages} mail(s), none "
                           "with a diff); --series takes 'git format-patch --stdout' "
                           "output or b4 am's .mbx, --patch takes a plain diff",
                           step="patch")
    progress.info(series.describe(path, found)
                  + ("" if option == "--series" else "; applied one by one, as --series does"),
                  "patch")
    return [Patch(file, hashlib.sha256(mail.data).hexdigest(), mail.subject, mail.part,
                  str(path))
            for mail, file in series.materialise(found, raw, cache_root() / "series")]


def touched_files(patch_text: str) -> list:
    """Files a -p1 patch reads or writes, in order of appearance."""
    files = []
    for line in patch_text.splitlines():
        m = re.match(r"^(?:---|\+\+\+) (\S+)", line)
        m2 = re.match(r"^(?:rename|copy) (?:from|to) (\S+)", line)
        if m and m.group(1) != "/dev/null":
            name = m.group(1).split("/", 1)[1] if "/" in m.group(1) else m.group(1)
        elif m2:
            name = m2.group(1)
        else:
            continue
        if name not in files:
            files.append(name)
    return files


def hunk_text(patch_text: str, file: str, number: int) -> str:
    """The text of hunk ``number`` (1-based) of ``file`` in a patch."""
    current, count, out = None, 0, []
    for line in patch_text.splitlines():
        m = re.match(r"^\+\+\+ (?:b/)?(\S+)", line)
        if m:
            current, count = m.group(1), 0
            continue
        if line.startswith("@@"):
            count += 1
            if out:
                break
        if current == file and count == number and not line.startswith("diff "):
            out.append(line)
    return "\n".join(out[:40])


def explain_patch_failure(patch: Patch, output: str) -> PatchError:
    """Turn GNU patch's output into an error naming patch, file and hunk."""
    text = patch.path.read_text(errors="replace")
    current, failures = None, []
    for line in output.splitlines():
        m = re.match(r"^(?:patching|checking) file '?([^']+?)'?$", line)
        if m:
            current = m.group(1)
        m = re.match(r"^Hunk #(\d+) FAILED at (\d+)", line)
        if m:
            failures.append((current, int(m.group(1)), int(m.group(2))))
        if "can't find file to patch" in line or "No file to patch" in line:
            failures.append((current, 0, 0))
    if patch.subject:   # a mail of a series: the file it was written to, to look at
        output = f"(patch {patch.part} as applied: {patch.path})\n" + output
    if not failures:
        return PatchError(f"patch {patch.label} does not apply", step="patch",
                          evidence=output)
    first = failures[0]
    where = ", ".join(f"{f} hunk #{n} (at line {at})" if n else f"{f} (missing)"
                      for f, n, at in failures)
    evidence = output.rstrip()
    if first[1]:
        evidence += f"\n\nfirst failing hunk ({first[0]} #{first[1]}):\n" \
                    + hunk_text(text, first[0], first[1])
    return PatchError(f"patch {patch.label} does not apply: {where}",
                      step="patch", evidence=evidence)


def apply_in_scratch(pristine: Path, patches: list, scratch: Path) -> dict:
    """Apply the series to copies of the touched files in ``scratch``.

    Returns {relpath: bytes or None (deleted)} for every touched file.
    Raises PatchError naming the first patch that fails; nothing else changes.
    """
    require_tool("patch")
    touched: list = []
    for patch in patches:
        for name in touched_files(patch.path.read_text(errors="replace")):
            if name not in touched:
                touched.append(name)
                src = pristine / name
                if src.is_file():
                    (scratch / name).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, scratch / name)
    for patch in patches:
        proc = subprocess.run(
            ["patch", "-p1", "--batch", "--forward", "--fuzz=0", "-r", "-",
             "--no-backup-if-mismatch", "-d", str(scratch), "-i", str(patch.path)],
            capture_output=True, text=True)
        if proc.returncode != 0:
            raise explain_patch_failure(patch, proc.stdout + proc.stderr)
    return {name: ((scratch / name).read_bytes() if (scratch / name).is_file() else None)
            for name in touched}


# ------------------------------------------------------------- work tree ----

@dataclass(frozen=True)
class PreparedTree:
    source: Source
    path: Path
    patches: tuple
    changed: tuple = field(default=())   # files whose content changed this time
    patched: tuple = field(default=())   # ((file, sha256), ...) differing from pristine


def tree_base(source: Source) -> Path:
    """The cache folder holding a source's work copy (``linux/``), its state
    and, inside ``linux/``, its ``O=`` folders."""
    return cache_root() / "trees" / source.tree_key


def work_tree(source: Source) -> Path:
    """The source's work copy, created on first use (a directory's is then
    kept in sync by ``prepare``)."""
    base = tree_base(source)
    tree = base / "linux"
    if (base / ".complete").exists():
        return tree
    pristine = pristine_tree(source)
    if base.exists():
        shutil.rmtree(base)
    base.mkdir(parents=True)
    (base / "source").write_text(f"{source.kind}:{source.path}\n")   # for 'cache list'
    if source.kind == "tarball":  # our own unpacked copy: hard links are safe
        run(["cp", "-al", pristine, tree])
    else:
        tree.mkdir()
        progress.info(f"copying {pristine} into a work copy (once per tree path; "
                      f"later runs copy only the files that changed)", "source")
        sync_work_copy(pristine, tree, base / SYNC_FILE, skip=(), files=source.listing)
    _write_json(base / "state.json", {"files": {}})
    (base / ".complete").write_text("")
    return tree


SYNC_FILE = "synced.json"
# what an in-tree build leaves that an O= build must not see (kbuild refuses
# an O= build beside them, and make's VPATH would take stale objects)
_IN_TREE_BUILD = (".config", "include/config", "include/generated",
                  "arch/arm64/include/generated")


@dataclass
class SyncResult:
    copied: list = field(default_factory=list)    # content changed or new
    removed: list = field(default_factory=list)   # gone from the tree
    compared: int = 0                              # stat changed, content read
    listed: int = 0                                # files in the tree
    seconds: float = 0.0


def _same_content(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def tree_files(tree: Path) -> dict:
    """relpath -> (size, mtime_ns, is_link) of the files a build reads.

    A git tree: what ``git ls-files`` lists (tracked, and untracked but not
    ignored), so an in-tree build's products and .config are left out. Any
    other tree: every file but ``.git``; one built in place is refused (its
    objects would shadow the O= tree's through make's VPATH)."""
    names = None
    if (tree / ".git").exists() and shutil.which("git"):
        proc = subprocess.run(["git", "-C", str(tree), "ls-files", "-z", "-c", "-o",
                               "--exclude-standard"], capture_output=True)
        if proc.returncode == 0:
            names = sorted(set(os.fsdecode(n) for n in proc.stdout.split(b"\0") if n))
    files = {}
    if names is None:
        built = [n for n in _IN_TREE_BUILD if (tree / n).exists()]
        if built:
            raise HarnessError(
                f"{tree} has been built in place ({', '.join(built)} present): "
                f"the harness builds out of tree and cannot tell sources from "
                f"build products in a tree that is not a git checkout; run "
                f"'make mrproper' in it, or use a git tree", step="source")
        _scan(tree, "", files)
        return files
    for name in names:
        try:
            st = os.lstat(tree / name)
        except FileNotFoundError:  # deleted but still in the index
            continue
        if stat_mod.S_ISDIR(st.st_mode):  # a submodule
            continue
        files[name] = (st.st_size, st.st_mtime_ns, stat_mod.S_ISLNK(st.st_mode))
    return files


def _scan(root: Path, prefix: str, out: dict) -> None:
    with os.scandir(root / prefix if prefix else root) as it:
        for entry in it:
            rel = f"{prefix}{entry.name}"
            if entry.is_dir(follow_symlinks=False):
                if rel != ".git":
                    _scan(root, rel + "/", out)
                continue
            st = entry.stat(follow_symlinks=False)
            out[rel] = (st.st_size, st.st_mtime_ns, entry.is_symlink())


def sync_work_copy(pristine: Path, tree: Path, record: Path, skip=(),
                   files: dict | None = None) -> SyncResult:
    """Make ``tree`` hold ``pristine``'s files, writing only what changed.

    ``record`` keeps each file's (size, mtime) as last synced: a file whose
    stat is unchanged is not read. One whose stat changed is compared with the
    work copy's and rewritten only if its content differs (``git checkout``
    back and forth, ``touch``: nothing rebuilds). Written files get the current
    time (never the source's: a file restored to an older version must still
    look newer than its objects). ``skip``: files the patches own (``prepare``
    rewrites those). ``files``: ``tree_files(pristine)`` when already taken."""
    start = time.monotonic()
    result = SyncResult()
    files = tree_files(pristine) if files is None else files
    result.listed = len(files)
    old = _read_json(record, {})
    skip = set(skip)
    if not old and not any(tree.iterdir()):
        _copy_all(pristine, tree, [n for n in files if n not in skip])
        result.copied = sorted(files)
        result.compared = len(files)
        _write_record(record, files)
        result.seconds = time.monotonic() - start
        return result
    for name, stat in files.items():
        if name in skip or old.get(name) == list(stat):
            continue
        result.compared += 1
        if _sync_file(pristine / name, tree / name, stat[2]):
            result.copied.append(name)
    for name in old:
        if name not in files and name not in skip:
            target = tree / name
            if target.is_symlink() or target.exists():
                target.unlink()
                result.removed.append(name)
    if result.compared or result.removed or len(old) != len(files):
        _write_record(record, files)
    result.seconds = time.monotonic() - start
    return result


def _write_record(record: Path, files: dict) -> None:
    tmp = record.with_name(record.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({n: list(s) for n, s in files.items()},
                              separators=(",", ":")))
    os.replace(tmp, record)


def _copy_all(pristine: Path, tree: Path, names: list) -> None:
    """The first copy, in one tar pipe (a file at a time costs a minute for
    6.12's 86k files; tar about a third of that)."""
    require_tool("tar")
    tar = subprocess.Popen(["tar", "-C", str(pristine), "--null", "-T", "-", "-cf", "-"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    untar = subprocess.Popen(["tar", "-C", str(tree), "-xf", "-"], stdin=tar.stdout)
    tar.stdout.close()
    tar.stdin.write(b"".join(os.fsencode(n) + b"\0" for n in names))
    tar.stdin.close()
    # tar's exit 1 is "a file changed as we read it" (an edit, or only its
    # ctime: a hard link made): the record holds the stat from before the
    # copy, so the next sync compares that file again
    rc_tar, rc_untar = tar.wait(), untar.wait()
    if rc_tar not in (0, 1) or rc_untar != 0:
        raise HarnessError(f"copying {pristine} into the work copy {tree} failed "
                           f"(tar exit {rc_tar}/{rc_untar}){_space_note(tree)}",
                           step="source", blame="infra")


def _sync_file(src: Path, dst: Path, is_link: bool) -> bool:
    """Copy one file (or symlink) if its content differs. True if written."""
    if is_link:
        target = os.readlink(src)
        if dst.is_symlink() and os.readlink(dst) == target:
            return False
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, dst)
        return True
    if dst.is_symlink():
        dst.unlink()
    try:
        if dst.is_file() and _same_content(src, dst):
            mode = src.stat().st_mode & 0o777
            if dst.stat().st_mode & 0o777 != mode:
                os.chmod(dst, mode)
            return False
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(dst.name + ".harness-tmp")
        shutil.copyfile(src, tmp)       # copy_file_range: a reflink where the fs can
        os.chmod(tmp, src.stat().st_mode & 0o777)
    except FileNotFoundError:  # removed from the tree since it was listed
        return False
    os.replace(tmp, dst)
    return True


def prepare(source: Source, patches: list) -> PreparedTree:
    """Bring the work tree to pristine + ``patches``, touching only what changes.

    The caller holds the source's lock.
    """
    tree = work_tree(source)
    pristine = pristine_tree(source)
    state_file = tree.parent / "state.json"
    applied = _read_json(state_file, {"files": {}})["files"]
    synced: tuple = ()
    if source.kind == "dir":
        result = sync_work_copy(pristine, tree, tree.parent / SYNC_FILE, skip=applied,
                                files=source.listing)
        synced = tuple(result.copied + result.removed)
        if synced:
            shown = ", ".join(synced[:3]) + (f" and {len(synced) - 3} more"
                                             if len(synced) > 3 else "")
            progress.info(f"work copy of {pristine}: {len(synced)} file(s) changed "
                          f"since the last build ({shown}), synced in "
                          f"{result.seconds:.1f} s", "source")
    with tempfile.TemporaryDirectory(prefix="patch-", dir=tree.parent) as scratch:
        wanted = apply_in_scratch(pristine, patches, Path(scratch))
    for name in applied:
        if name not in wanted:
            src = pristine / name
            wanted[name] = src.read_bytes() if src.is_file() else None
    # Record every file we may touch before touching any: an interrupted run
    # is then repaired by the next one.
    _write_json(state_file, {"files": {n: None for n in set(applied) | set(wanted)}})
    changed = [name for name, content in sorted(wanted.items())
               if _set_content(tree / name, content, pristine / name)]
    changed = sorted(set(changed) | set(synced))
    patched = {n: _digest(c) for n, c in wanted.items()
               if c != _pristine_bytes(pristine / n)}
    _write_json(state_file, {"files": patched})
    return PreparedTree(source, tree, tuple(patches), tuple(changed),
                        tuple(sorted(patched.items(), key=lambda kv: kv[0])))


def _pristine_bytes(path: Path):
    return path.read_bytes() if path.is_file() else None


def _set_content(path: Path, content, pristine: Path) -> bool:
    """Make ``path`` hold ``content`` (None: absent). True if it changed."""
    current = path.read_bytes() if path.is_file() else None
    if current == content:
        return False
    if content is None:
        path.unlink()
        return True
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".harness-tmp")
    tmp.write_bytes(content)
    if pristine.is_file():
        os.chmod(tmp, pristine.stat().st_mode & 0o777)
    os.replace(tmp, path)  # breaks any hard link to the pristine copy
    return True


def _digest(content) -> str | None:
    return None if content is None else hashlib.sha256(content).hexdigest()


def _read_json(path: Path, default):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)
