"""Prepared tree + config fragments -> KernelArtifacts, cached by content.

The cache key covers everything that decides the kernel: the source identity,
every patch's bytes, the merged fragments, the toolchain's version and this
recipe's version. The same key again runs no make at all. Otherwise the build
reuses one ``O=`` tree per (source, config, toolchain), so a changed patch
rebuilds only what it touches.

Every stored file's size and sha256 are recorded in ``meta.json`` and checked
on each reuse (a full digest every time, see ``verify_entry``); an entry that
fails, or that has no record, is rebuilt.
"""
from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from harness import progress as progress_mod
from harness.errors import BuildError, HarnessError
from harness.host import cache_root, require_tool, show_command
from harness.kernel import applied, kconfig, versions
from harness.kernel import cache as cache_mod
from harness.kernel import source as src
from harness.kernel.layout import KernelLayout

RECIPE_VERSION = "1"
ARCH = "arm64"
CROSS = "aarch64-linux-gnu-"
PRODUCTS = {"image": "arch/arm64/boot/Image", "vmlinux": "vmlinux",
            "system_map": "System.map", "config": ".config"}
DEFAULT_STEPS = 1300  # kbuild lines of a cold default build, for progress
# Seconds between progress lines during make: CI logs have no terminal to
# redraw, and must not stay silent for the minutes a cold build takes (<= 30 s).
PROGRESS_INTERVAL = 20.0
FIXED_ENV = {"KBUILD_BUILD_TIMESTAMP": "Thu Jan  1 00:00:00 UTC 2026",
             "KBUILD_BUILD_USER": "harness", "KBUILD_BUILD_HOST": "harness"}


@dataclass(frozen=True)
class BuildRequest:
    kernel_src: str = "debian"
    configs: tuple = ()           # extra fragment names or paths
    patches: tuple = ()           # extra patch paths, after patches/series
    llvm: bool = False
    series: bool = True           # apply patches/series first
    jobs: int = 0                 # 0: os.cpu_count()


@dataclass(frozen=True)
class KernelArtifacts:
    image: str
    vmlinux: str
    system_map: str
    config: str
    build_log: str
    cache_key: str
    source: str
    patches: tuple               # ((name, sha256), ...)
    fragments: tuple             # fragment names
    config_digest: str
    kernel_release: str
    toolchain: str
    seconds: float = 0.0
    rebuilt: bool = False
    series: tuple = ()           # ((name, "3/5", subject, series file), ...): mails of a series

    def to_dict(self) -> dict:
        d = asdict(self)
        d["patches"] = [list(p) for p in self.patches]
        d["fragments"] = list(self.fragments)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> KernelArtifacts:
        d = dict(d)
        d.pop("files", None)  # meta.json's integrity record (see verify_entry)
        d["patches"] = tuple(tuple(p) for p in d["patches"])
        d["fragments"] = tuple(d["fragments"])
        d["series"] = tuple(tuple(s) for s in d.get("series", ()))
        return cls(**d)

    @functools.cached_property
    def kconfig(self) -> dict:
        """The final .config, parsed once per artifact."""
        return kconfig.parse_config_text(Path(self.config).read_text(), self.config)

    @functools.cached_property
    def layout(self) -> KernelLayout:
        """The kernel's layout from its .config and vmlinux symbols, learned once
        and carried to the stages after the build (harness.kernel.layout)."""
        return KernelLayout.from_files(self.kconfig, self.vmlinux)


# ------------------------------------------------------------- inputs -------

@dataclass(frozen=True)
class Inputs:
    source: src.Source
    patches: tuple
    fragments: tuple
    requested: dict
    toolchain: str
    llvm: bool

    @property
    def cache_key(self) -> str:
        return _sha({"recipe": RECIPE_VERSION, "source": self.source.identity,
                     "patches": [(p.name, p.sha256) for p in self.patches],
                     "config": kconfig.render(self.requested),
                     "toolchain": self.toolchain, "llvm": self.llvm})

    @property
    def outdir_key(self) -> str:
        """One O= tree per work copy, config and toolchain: patches, and a
        tree's own edits, reuse it."""
        return _sha({"source": self.source.tree_key,
                     "config": kconfig.render(self.requested),
                     "toolchain": self.toolchain, "llvm": self.llvm})


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def gather_inputs(req: BuildRequest) -> Inputs:
    source = src.resolve_source(req.kernel_src)
    # the tree's own version picks the series and fragments (kernel/versions.py)
    version = versions.tree_version(source)
    versions.check_applicable(version, "geometry", req.configs)
    # the series' patches that the tree already carries are skipped, and said so
    paths = (applied.series_to_apply(source, src.read_series(versions.series_file(version)))
             if req.series else []) + list(req.patches)
    patches = tuple(src.load_patches(paths))
    fragments = tuple(kconfig.resolve_fragments(req.configs, version=version))
    return Inputs(source, patches, fragments, kconfig.merge(fragments),
                  toolchain_version(req.llvm), req.llvm)


def toolchain_version(llvm: bool = False) -> str:
    tools = ["clang", "ld.lld"] if llvm else [CROSS + "gcc", CROSS + "ld"]
    lines = []
    for tool in tools:
        require_tool(tool)
        out = subprocess.run([tool, "--version"], capture_output=True, text=True)
        lines.append(out.stdout.splitlines()[0] if out.stdout else tool)
    return " | ".join(lines)


# -------------------------------------------------------------- cache -------

def artifacts_dir(key: str) -> Path:
    return cache_root() / "artifacts" / key[:24]


def lookup(key: str):
    """Cached artifacts for a key, verified; or None (with a message on
    stderr naming the file and the fault when an entry exists but is bad)."""
    art, problem = verify_entry(key)
    if problem:
        cache_message(f"{problem}: rebuilding")
    return art


def verify_entry(key: str):
    """(artifacts, None) for a sound entry, (None, None) when there is none,
    (None, "what is wrong") for a truncated, corrupt or unverifiable one.

    Sizes first (a stat), then full sha256 digests of every stored file. No
    (size, mtime, inode) shortcut: the default kernel's 6.8 MB Image + 8.1 MB
    vmlinux (no debug info) hash in ~15 ms from the page cache (~1 GB/s on a
    host without SHA extensions; a 100 MB debug vmlinux would be ~0.1 s),
    nothing next to a boot, and a shortcut would miss corruption that leaves
    size and mtime alone (a bad disk, a copy that keeps mtimes). Entries stored before
    digests were recorded are rebuilt, not digested once: hashing what is
    there would bless a file that may already be truncated, and the rebuild
    reuses the O= tree and ccache (a near no-op make).
    """
    dest = artifacts_dir(key)
    label = f"artifacts/{dest.name}"
    meta = dest / "meta.json"
    if not meta.exists():
        return None, (f"{label} has no meta.json (an interrupted store?)"
                      if dest.is_dir() else None)
    try:
        raw = json.loads(meta.read_text())
        art = KernelArtifacts.from_dict(raw)
    except (OSError, ValueError, TypeError, KeyError) as e:
        return None, f"{label}/meta.json is unreadable ({type(e).__name__}: {e})"
    files = raw.get("files")
    if not isinstance(files, dict) or not files:
        return None, (f"{label} has no recorded sizes or digests (stored before "
                      f"the cache verified its files)")
    needed = {Path(rel).name for rel in PRODUCTS.values()}
    if not needed <= set(files):
        return None, (f"{label}/meta.json records no size or digest for "
                      f"{', '.join(sorted(needed - set(files)))}")
    for field, rel in PRODUCTS.items():
        if getattr(art, field) != str(dest / Path(rel).name):
            return None, (f"{label}/meta.json names {getattr(art, field)} as its "
                          f"{field}, not the verified file in its folder")
    for name, record in sorted(files.items()):
        problem = check_file(dest / name, record, f"{label}/{name}")
        if problem:
            return None, problem
    return art, None


def cache_message(text: str) -> None:
    progress_mod.warn(text, "cache")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_record(path: Path) -> dict:
    """What ``check_file`` verifies later: the file's size and sha256."""
    return {"size": Path(path).stat().st_size, "sha256": sha256_file(path)}


def check_file(path: Path, record, label: str):
    """None if ``path`` matches its record, else what is wrong, naming ``label``.
    The size is checked first (free), then the full digest."""
    try:
        size, digest = int(record["size"]), str(record["sha256"])
    except (TypeError, KeyError, ValueError):
        return f"{label} has a malformed size/digest record: {record!r}"
    try:
        actual = Path(path).stat().st_size
    except FileNotFoundError:
        return f"{label} is missing"
    except OSError as e:
        return f"{label} cannot be read ({e.strerror})"
    if actual != size:
        return f"{label} is {actual} bytes, expected {size}"
    try:
        got = sha256_file(path)
    except OSError as e:
        return f"{label} cannot be read ({e.strerror})"
    if got != digest:
        return (f"{label} has sha256 {got[:16]}..., expected {digest[:16]}... "
                f"(right size, corrupt content)")
    return None


@contextmanager
def locked(name: str, wait: bool = True):
    """An exclusive lock shared by every harness process on this machine.
    Yields True once held; with ``wait=False`` it yields False at once (the
    lock not taken) when another run holds it."""
    path = cache_root() / "locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            progress_mod.warn(f"waiting for another run holding {path}", "build")
            fcntl.flock(f, fcntl.LOCK_EX)
        yield True


# -------------------------------------------------------------- build -------

def build(req: BuildRequest = BuildRequest(), progress=None) -> KernelArtifacts:
    """Return artifacts for the request, building only if nothing cached fits."""
    start = time.monotonic()
    inputs = gather_inputs(req)
    key = inputs.cache_key
    cached, problem = verify_entry(key)
    if cached:
        cache_mod.touch(artifacts_dir(key))
        return _replace(cached, seconds=time.monotonic() - start, rebuilt=False)
    if problem:
        cache_message(f"{problem}: rebuilding")
    # one lock per work copy (a tree path's, a tarball's): every state of a
    # reviewer's tree is built in the same work copy
    with locked(f"source-{inputs.source.tree_key}"):
        cached, again = verify_entry(key)  # built by another run while we waited?
        if cached:
            cache_mod.touch(artifacts_dir(key))
            return _replace(cached, seconds=time.monotonic() - start, rebuilt=False)
        if again and again != problem:
            cache_message(f"{again}: rebuilding")
        tree = src.prepare(inputs.source, list(inputs.patches))
        outdir = outdir_path(tree.path, inputs)
        outdir.mkdir(parents=True, exist_ok=True)
        maker = Make(tree.path, outdir, req, progress)
        configure(maker, inputs, _config_stamp(inputs, tree))
        maker.build_image()
        art = store(inputs, outdir, maker.log_path, time.monotonic() - start)
        cache_mod.touch(tree.path.parent)
    cache_mod.auto_prune(keep=(artifacts_dir(key), tree.path.parent))
    return art


def outdir_path(tree: Path, inputs: Inputs) -> Path:
    """The O= folder: a direct child of the work copy, so kbuild names every
    source relative to it (``srctree := ..``) and compiler command lines, hence
    ccache's keys, do not depend on where the work copy is."""
    return tree / f".harness-o-{inputs.outdir_key[:16]}"


def _replace(art: KernelArtifacts, **changes) -> KernelArtifacts:
    d = art.to_dict()
    d.update(changes)
    return KernelArtifacts.from_dict(d)


def _config_stamp(inputs: Inputs, tree) -> str:
    """What decides the .config in a given O= tree: the requested options and
    any Kconfig file the patches change (the source and toolchain are fixed
    per O= tree)."""
    kconfigs = [(name, digest) for name, digest in tree.patched
                if Path(name).name.startswith("Kconfig")]
    return _sha({"config": kconfig.render(inputs.requested), "kconfig": kconfigs})


def configure(maker: Make, inputs: Inputs, stamp: str = "") -> None:
    """allnoconfig + merge fragments + olddefconfig, then validate.

    Skipped when the O= tree's .config was made from the same stamp. The
    result is generated beside .config and only replaces it when it differs,
    so an unchanged config costs make nothing.
    """
    stamp_file = maker.outdir / ".harness-config-stamp"
    final = maker.outdir / ".config"
    if stamp and final.exists() and stamp_file.exists() \
            and stamp_file.read_text() == stamp:
        return
    stamp_file.unlink(missing_ok=True)
    candidate = maker.outdir / ".config.harness"
    maker.run(["allnoconfig"], stage="config", kconfig_file=candidate)
    candidate.write_text(kconfig.apply_to(candidate.read_text(), inputs.requested))
    maker.run(["olddefconfig"], stage="config", kconfig_file=candidate)
    kconfig.validate(inputs.requested, candidate.read_text(),
                     kconfig.origins(inputs.fragments))
    if final.exists() and final.read_bytes() == candidate.read_bytes():
        candidate.unlink()
    else:
        os.replace(candidate, final)
    if stamp:
        stamp_file.write_text(stamp)


def store(inputs: Inputs, outdir: Path, log: Path, seconds: float) -> KernelArtifacts:
    """Copy the products into the content-addressed cache, with a meta.json
    recording every stored file's size and sha256 (taken from the copies)."""
    key = inputs.cache_key
    dest = artifacts_dir(key)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="art-", dir=dest.parent))
    for rel in PRODUCTS.values():
        shutil.copy2(outdir / rel, tmp / Path(rel).name)
    shutil.copy2(log, tmp / "build.log")
    files = {p.name: file_record(p) for p in sorted(tmp.iterdir())}
    release = (outdir / "include/config/kernel.release")
    art = KernelArtifacts(
        image=str(dest / "Image"), vmlinux=str(dest / "vmlinux"),
        system_map=str(dest / "System.map"), config=str(dest / ".config"),
        build_log=str(dest / "build.log"), cache_key=key,
        source=inputs.source.describe(),
        patches=tuple((p.name, p.sha256) for p in inputs.patches),
        series=tuple((p.name, p.part, p.subject, p.mbox) for p in inputs.patches
                     if p.subject),
        fragments=tuple(f.name for f in inputs.fragments),
        config_digest=kconfig.digest(inputs.requested),
        kernel_release=release.read_text().strip() if release.exists() else "",
        toolchain=inputs.toolchain, seconds=round(seconds, 2), rebuilt=True)
    # meta.json goes in before the rename: the entry appears whole or not at all
    (tmp / "meta.json").write_text(json.dumps(dict(art.to_dict(), files=files), indent=1))
    if dest.exists():
        shutil.rmtree(dest)
    os.rename(tmp, dest)
    return art


# --------------------------------------------------------------- make -------

_KBUILD_LINE = re.compile(r"^\s{2}([A-Z][A-Z0-9_]*)\s+(\S+)")
_ERROR_LINE = re.compile(r"(error:|Error \d|undefined reference|fatal error|"
                         r"No rule to make target|\*\*\*)")


class BuildProgress:
    """Progress of one ``make Image``: kbuild lines (one per object or target)
    against the tree's largest recorded build (``.harness-steps``; the
    ``DEFAULT_STEPS`` estimate, shown as ``~N``, before the first one).

    ``live`` (a terminal): one line redrawn at every object. Either way a
    ticker thread reports every ``interval`` seconds, so a silent stretch
    (a cold tree, the final link) still shows: without a terminal as a full
    line, ``[build] 412/1136 objects (36%), 95 s elapsed, last CC mm/memory.o``.
    ``quiet`` (-q): counts only. ``clock`` and ``interval`` are injectable.
    """

    def __init__(self, total: int, estimated: bool = False, live: bool = False,
                 clock=time.monotonic, interval: float = PROGRESS_INTERVAL,
                 stream=None, quiet: bool = False):
        self.total, self.estimated, self.live = total, estimated, live
        self.quiet = quiet
        self.clock, self.interval = clock, interval
        self.stream = stream
        self.steps, self.last = 0, ""
        self.start = clock()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None

    def line(self) -> str:
        total = f"~{self.total}" if self.estimated else str(self.total)
        pct = f" ({100 * self.steps // self.total}%)" \
            if 0 < self.total and self.steps < self.total else ""
        # past the total (an estimate too low): the count alone, never N/~M > 100 %
        done = f"{self.steps}" if self.steps > self.total else f"{self.steps}/{total}"
        text = (f"[build] {done} objects{pct}, "
                f"{self.clock() - self.start:.0f} s elapsed")
        return text + (f", last {self.last}" if self.last else "")

    def step(self, verb: str, target: str) -> None:
        self.steps += 1
        self.last = f"{verb} {target}"
        if self.live:
            self._write(f"\r\033[K{self.line()}"[:160])

    def tick(self) -> None:
        """One periodic report (the ticker calls this every ``interval``)."""
        self._write(f"\r\033[K{self.line()}"[:160] if self.live else self.line() + "\n")

    def _write(self, text: str) -> None:
        if self.quiet:
            return
        stream = self.stream or sys.stderr
        with self._lock:
            stream.write(text)
            stream.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.tick()

    def __enter__(self) -> BuildProgress:
        if not self.quiet:
            self._thread = threading.Thread(target=self._run, name="build-progress",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type, *_) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.live:
            self._write("\n")
        elif exc_type is None:
            self._write(f"[build] make finished: {self.steps} objects in "
                        f"{self.clock() - self.start:.0f} s\n")


class Make:
    """Runs make for one O= tree; tees output to build.log; shows progress."""

    def __init__(self, tree: Path, outdir: Path, req: BuildRequest, progress=None,
                 clock=time.monotonic, interval: float = PROGRESS_INTERVAL):
        self.tree, self.outdir, self.req = tree, outdir, req
        self.log_path = outdir / "harness-build.log"
        self.log_path.write_text("")
        # progress None: a live line on a terminal, else (CI logs) a full line
        # every ``interval`` s; True: the live line; False: none (-q)
        self.quiet = progress is False
        self.progress = progress if progress is not None else sys.stderr.isatty()
        self.clock, self.interval = clock, interval
        self.env = dict(os.environ, **FIXED_ENV, **ccache_env())

    def argv(self, targets, kconfig_file: Path | None = None) -> list:
        jobs = self.req.jobs or os.cpu_count() or 1
        argv = ["make", "-C", str(self.tree), f"O={self.outdir}", f"ARCH={ARCH}",
                f"-j{jobs}"]
        if self.req.llvm:
            argv += ["LLVM=1", "CC=ccache clang" if _have("ccache") else "CC=clang"]
        else:
            argv += [f"CROSS_COMPILE={CROSS}"]
            if _have("ccache"):
                argv += [f"CC=ccache {CROSS}gcc"]
        if kconfig_file is not None:
            argv.append(f"KCONFIG_CONFIG={kconfig_file}")
        return argv + list(targets)

    def run(self, targets, stage: str, kconfig_file: Path | None = None) -> None:
        argv = self.argv(targets, kconfig_file)
        require_tool("make")
        show_command(argv)
        with open(self.log_path, "a") as log:
            log.write("$ " + " ".join(argv) + "\n")
            log.flush()
            rc = self._stream(argv, log, stage)
        if rc != 0:
            raise self._failure(stage, rc)

    def _stream(self, argv, log, stage) -> int:
        if stage != "build":
            return self._pump(argv, log, None)
        recorded = self._recorded_steps()
        with BuildProgress(recorded or DEFAULT_STEPS, estimated=not recorded,
                           live=self.progress, clock=self.clock,
                           interval=self.interval, quiet=self.quiet) as progress:
            rc = self._pump(argv, log, progress)
        if rc == 0 and progress.steps > recorded:
            # the largest (i.e. full) build of this tree: a progress yardstick
            (self.outdir / ".harness-steps").write_text(str(progress.steps))
        return rc

    def _pump(self, argv, log, progress) -> int:
        """Run make, copy its output to the log, count kbuild lines."""
        proc = subprocess.Popen(argv, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace")
        try:
            for line in proc.stdout:
                log.write(line)
                m = _KBUILD_LINE.match(line)
                if m and progress is not None:
                    progress.step(m.group(1), m.group(2))
            return proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise

    def _recorded_steps(self) -> int:
        try:
            return int((self.outdir / ".harness-steps").read_text())
        except (OSError, ValueError):
            return 0

    def _expected_steps(self) -> int:
        return self._recorded_steps() or DEFAULT_STEPS

    def _failure(self, stage: str, rc: int) -> HarnessError:
        lines = self.log_path.read_text(errors="replace").splitlines()
        errors = [l for l in lines if _ERROR_LINE.search(l)][:30] or lines[-30:]
        evidence = "\n".join(errors) + f"\nfull log: {self.log_path}"
        if stage == "config":
            return HarnessError(f"make {stage} failed (exit {rc})", step=stage,
                                evidence=evidence)
        return BuildError(f"the kernel does not build (make exit {rc})",
                          step="build", evidence=evidence, blame="kernel")

    def build_image(self) -> None:
        self.run(["Image"], stage="build")


CCACHE_MAXSIZE = "3G"   # ccache evicts its oldest results past this


def ccache_env() -> dict:
    """ccache's settings for kernel builds. Its folder is the harness cache's;
    ``CCACHE_BASEDIR`` turns any absolute path under the cache (work copies,
    O= folders) into one relative to the O= folder, and ``CCACHE_NOHASHDIR``
    keeps the O= folder's own path out of the key (it only reaches the debug
    info's compilation folder): the same source compiles to one ccache entry
    in every work copy. ``CCACHE_DEPEND``: a miss runs the compiler once
    (kbuild's ``-Wp,-MMD`` gives ccache the headers), not the preprocessor
    and then the compiler. Measured on 4 kernel files (CPU seconds, median
    of 3, ``bench/bench_own_tree.py --ccache-files``, docs/building.md): no
    ccache 11.1, a miss 13.9 (12.3 in depend mode), a hit 3.4. So ccache
    costs ~11-19 % on a file never compiled before and saves ~70 % on one
    compiled before anywhere: it pays once more than a sixth to a quarter of
    a build hits (a second tree, CI with a restored ccache, a bisect, a
    geometry built again after ``cache prune``).
    The user's own ``CCACHE_*`` settings win (``CCACHE_DISABLE=1`` too)."""
    env = {"CCACHE_DIR": str(cache_root() / "ccache"),
           "CCACHE_BASEDIR": str(cache_root()),
           "CCACHE_NOHASHDIR": "1",
           "CCACHE_DEPEND": "1",
           "CCACHE_MAXSIZE": CCACHE_MAXSIZE}
    return {k: v for k, v in env.items() if k not in os.environ or k == "CCACHE_DIR"}


def _have(tool: str) -> bool:
    return shutil.which(tool) is not None


# ------------------------------------------------------------- listing ------

def list_cache() -> list:
    """Every cached kernel as a KernelArtifacts (newest first)."""
    arts = []
    for meta in (cache_root() / "artifacts").glob("*/meta.json"):
        try:
            arts.append((meta.stat().st_mtime,
                         KernelArtifacts.from_dict(json.loads(meta.read_text()))))
        except (OSError, ValueError, TypeError, KeyError):
            continue
    return [a for _, a in sorted(arts, key=lambda x: -x[0])]


# What the harness keeps in cache_root(), besides locks/. ``cache clean --all``
# removes exactly these: HOTPLUG_HARNESS_CACHE pointed at a wrong folder (a
# home directory) must not lose anything the harness did not make.
CACHE_ENTRIES = ("artifacts", "build", "trees", "src", "ccache", "guest-image",
                 "debs", "file-hashes.json", "snapshots", "tlbi-sites", "kunit",
                 "method-seconds.json", "series", "kernel-versions.json")


def clean_cache(everything: bool = False) -> list:
    """Remove cached kernels; with ``everything``, all the cache holds
    (``CACHE_ENTRIES``: sources, work trees, O= trees, ccache, guest images,
    downloaded .debs, memo files) except ``locks/``: a lock file unlinked
    under a holder would let a second run take the same lock. Anything else
    found in the cache folder is left and named on stderr."""
    root = cache_root()
    removed = []
    with locked("cache-clean"):
        # snapshots of booted guests go with the kernels they booted
        for name in CACHE_ENTRIES if everything else ("artifacts", "snapshots"):
            path = root / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
            else:
                continue
            removed.append(str(path))
        if everything:
            for other in sorted(p.name for p in root.iterdir()
                                if p.name not in CACHE_ENTRIES + ("locks",)):
                cache_message(f"left {root / other}: not something the harness keeps")
    return removed
