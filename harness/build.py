"""Prepared tree + config fragments -> KernelArtifacts, cached by content.

The cache key covers everything that decides the kernel: the source identity,
every patch's bytes, the merged fragments, the toolchain's version and this
recipe's version. The same key again runs no make at all. Otherwise the build
reuses one ``O=`` tree per (source, config, toolchain), so a changed patch
rebuilds only what it touches.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from . import kconfig, source as src
from .errors import BuildError, HarnessError
from .host import cache_root, require_tool, show_command

RECIPE_VERSION = "1"
ARCH = "arm64"
CROSS = "aarch64-linux-gnu-"
PRODUCTS = {"image": "arch/arm64/boot/Image", "vmlinux": "vmlinux",
            "system_map": "System.map", "config": ".config"}
DEFAULT_STEPS = 1300  # kbuild lines of a cold default build, for progress
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

    def to_dict(self) -> dict:
        d = asdict(self)
        d["patches"] = [list(p) for p in self.patches]
        d["fragments"] = list(self.fragments)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "KernelArtifacts":
        d = dict(d)
        d["patches"] = tuple(tuple(p) for p in d["patches"])
        d["fragments"] = tuple(d["fragments"])
        return cls(**d)

    @property
    def kconfig(self) -> dict:
        return kconfig.parse_config_text(Path(self.config).read_text(), self.config)


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
        """One O= tree per source, config and toolchain: patches reuse it."""
        return _sha({"source": self.source.identity,
                     "config": kconfig.render(self.requested),
                     "toolchain": self.toolchain, "llvm": self.llvm})


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def gather_inputs(req: BuildRequest) -> Inputs:
    source = src.resolve_source(req.kernel_src)
    paths = (src.read_series() if req.series else []) + list(req.patches)
    patches = tuple(src.load_patches(paths))
    fragments = tuple(kconfig.resolve_fragments(req.configs))
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
    """Cached artifacts for a key, or None."""
    meta = artifacts_dir(key) / "meta.json"
    try:
        art = KernelArtifacts.from_dict(json.loads(meta.read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if all(Path(p).exists() for p in (art.image, art.vmlinux, art.config)):
        return art
    return None


@contextmanager
def locked(name: str):
    """An exclusive lock shared by every harness process on this machine."""
    path = cache_root() / "locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"[build] waiting for another run holding {path}", file=sys.stderr)
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


# -------------------------------------------------------------- build -------

def build(req: BuildRequest = BuildRequest(), progress=None) -> KernelArtifacts:
    """Return artifacts for the request, building only if nothing cached fits."""
    start = time.monotonic()
    inputs = gather_inputs(req)
    key = inputs.cache_key
    cached = lookup(key)
    if cached:
        return _replace(cached, seconds=time.monotonic() - start, rebuilt=False)
    with locked(f"source-{inputs.source.short}"):
        cached = lookup(key)  # built by another run while we waited
        if cached:
            return _replace(cached, seconds=time.monotonic() - start, rebuilt=False)
        tree = src.prepare(inputs.source, list(inputs.patches))
        outdir = cache_root() / "build" / inputs.outdir_key[:24]
        outdir.mkdir(parents=True, exist_ok=True)
        maker = Make(tree.path, outdir, req, progress)
        configure(maker, inputs, _config_stamp(inputs, tree))
        maker.build_image()
        art = store(inputs, outdir, maker.log_path, time.monotonic() - start)
    return art


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


def configure(maker: "Make", inputs: Inputs, stamp: str = "") -> None:
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
    """Copy the products into the content-addressed cache (meta.json last)."""
    key = inputs.cache_key
    dest = artifacts_dir(key)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="art-", dir=dest.parent))
    for name, rel in PRODUCTS.items():
        shutil.copy2(outdir / rel, tmp / Path(rel).name)
    shutil.copy2(log, tmp / "build.log")
    if dest.exists():
        shutil.rmtree(dest)
    os.rename(tmp, dest)
    release = (outdir / "include/config/kernel.release")
    art = KernelArtifacts(
        image=str(dest / "Image"), vmlinux=str(dest / "vmlinux"),
        system_map=str(dest / "System.map"), config=str(dest / ".config"),
        build_log=str(dest / "build.log"), cache_key=key,
        source=inputs.source.describe(),
        patches=tuple((p.name, p.sha256) for p in inputs.patches),
        fragments=tuple(f.name for f in inputs.fragments),
        config_digest=kconfig.digest(inputs.requested),
        kernel_release=release.read_text().strip() if release.exists() else "",
        toolchain=inputs.toolchain, seconds=round(seconds, 2), rebuilt=True)
    (dest / "meta.json").write_text(json.dumps(art.to_dict(), indent=1))
    return art


# --------------------------------------------------------------- make -------

_KBUILD_LINE = re.compile(r"^\s{2}([A-Z][A-Z0-9_]*)\s+(\S+)")
_ERROR_LINE = re.compile(r"(error:|Error \d|undefined reference|fatal error|"
                         r"No rule to make target|\*\*\*)")


class Make:
    """Runs make for one O= tree; tees output to build.log; shows progress."""

    def __init__(self, tree: Path, outdir: Path, req: BuildRequest, progress=None):
        self.tree, self.outdir, self.req = tree, outdir, req
        self.log_path = outdir / "harness-build.log"
        self.log_path.write_text("")
        self.progress = progress if progress is not None else sys.stderr.isatty()
        self.env = dict(os.environ, **FIXED_ENV,
                        CCACHE_DIR=str(cache_root() / "ccache"))

    def argv(self, targets, kconfig_file: Path | None = None) -> list:
        jobs = self.req.jobs or os.cpu_count() or 1
        argv = ["make", "-C", str(self.tree), f"O={self.outdir}", f"ARCH={ARCH}",
                f"-j{jobs}"]
        if self.req.llvm:
            argv += ["LLVM=1", f"CC=ccache clang" if _have("ccache") else "CC=clang"]
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
        steps, total = 0, self._expected_steps() if stage == "build" else 0
        proc = subprocess.Popen(argv, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace")
        try:
            for line in proc.stdout:
                log.write(line)
                m = _KBUILD_LINE.match(line)
                if m and stage == "build":
                    steps += 1
                    self._show(steps, total, m.group(1), m.group(2))
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            if self.progress and stage == "build":
                sys.stderr.write("\n")
        if stage == "build" and rc == 0 and steps > self._recorded_steps():
            # the largest (i.e. full) build of this tree: a progress yardstick
            (self.outdir / ".harness-steps").write_text(str(steps))
        return rc

    def _recorded_steps(self) -> int:
        try:
            return int((self.outdir / ".harness-steps").read_text())
        except (OSError, ValueError):
            return 0

    def _expected_steps(self) -> int:
        return self._recorded_steps() or DEFAULT_STEPS

    def _show(self, steps, total, verb, target) -> None:
        if not self.progress:
            return
        pct = min(99, 100 * steps // max(total, 1))
        sys.stderr.write(f"\r\033[K[build] {steps:5d} steps (~{pct:2d}%) {verb} {target}"[:120])
        sys.stderr.flush()

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


def clean_cache(everything: bool = False) -> list:
    """Remove cached kernels (and with ``everything``, trees, O= dirs, ccache)."""
    root = cache_root()
    names = ["artifacts"] + (["build", "trees", "src", "ccache", "guest", "debs"]
                             if everything else [])
    removed = []
    with locked("cache-clean"):
        for name in names:
            if (root / name).exists():
                shutil.rmtree(root / name)
                removed.append(str(root / name))
    return removed
