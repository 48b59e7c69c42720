"""Kernel versions: Debian's kernel sources by name, a tree's own version, and
what the harness does differently per version.

``--kernel-src`` names Debian's sources: ``debian`` (``linux-source-6.12``, the
default; ``debian-6.12`` is the same), ``debian-6.1`` (``linux-source-6.1``,
Debian 12's own kernel). ``make deps`` installs 6.12's; any other is installed
with apt the first time it is asked for (``ensure_debian_source``), or named
when it cannot be (not root and no password-less sudo, apt failing, or
``HOTPLUG_HARNESS_NO_INSTALL=1``).

What differs per version is chosen from the tree's *own* version, the
``VERSION``/``PATCHLEVEL`` lines of its top ``Makefile`` (``tree_version``), never
from the name it was given by, so a tree or tarball of 6.1 from anywhere gets
6.1's choices:

- the default patch series: ``patches/X.Y/series`` when it exists, else
  ``patches/series`` (``series_file``);
- config fragments: ``kernel-configs/X.Y/NAME.config`` replaces
  ``kernel-configs/NAME.config`` for that version when it exists
  (``fragment_dir``; none is needed for 6.1 today: every option of every
  fragment survives its olddefconfig);
- geometries and methods that cannot work on a version (``NOT_APPLICABLE``): a
  build or run asking for one stops with :class:`NotApplicable` naming the
  reason, which ``matrix`` and ``repro`` show as a row (``N/A``), not an error.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from harness import progress
from harness.errors import HarnessError, ToolMissing
from harness.host import DEBIAN_SOURCE_PACKAGE, DEBIAN_SOURCE_TARBALL, cache_root
from harness.paths import CONFIG_DIR, PATCH_DIR

NO_INSTALL_ENV = "HOTPLUG_HARNESS_NO_INSTALL"
VERSIONS_FILE = "kernel-versions.json"     # tarball identity -> "X.Y" (memo)


class NotApplicable(HarnessError):
    """What was asked cannot work on this kernel version (a geometry the
    version cannot build, a method it lacks, a patch written for another
    version): a row with its reason in a matrix, exit 2 on its own."""


@dataclass(frozen=True)
class DebianSource:
    name: str            # the --kernel-src name
    version: str         # "6.12"
    tarball: Path
    package: str


def _debian(version: str) -> DebianSource:
    if version == "6.12":       # host.py's names (tests point them elsewhere)
        return DebianSource("debian", version, DEBIAN_SOURCE_TARBALL, DEBIAN_SOURCE_PACKAGE)
    return DebianSource(f"debian-{version}", version,
                        Path(f"/usr/src/linux-source-{version}.tar.xz"),
                        f"linux-source-{version}")


DEBIAN_VERSIONS = ("6.12", "6.1")      # bookworm's: linux-source-6.12 (security), 6.1
DEBIAN_NAMES = ("debian",) + tuple(f"debian-{v}" for v in DEBIAN_VERSIONS)


def debian_source(spec: str) -> Optional[DebianSource]:
    """The Debian source a ``--kernel-src`` name stands for, or None (a path)."""
    if spec == "debian":
        return _debian("6.12")
    m = re.fullmatch(r"debian-(\d+\.\d+)", spec)
    if m and m[1] in DEBIAN_VERSIONS:
        return _debian(m[1])
    if m:
        raise HarnessError(f"--kernel-src {spec}: Debian 12 has the kernel sources "
                           f"{', '.join(DEBIAN_NAMES)} (linux-source-"
                           f"{{{','.join(DEBIAN_VERSIONS)}}})", step="source")
    return None


def parse_sources(text: str) -> list:
    """``debian,debian-6.1`` -> ["debian", "debian-6.1"]: the source axis of
    ``matrix`` and ``repro`` (comma-separated; each a name, a tree or a
    tarball; duplicates dropped, order kept)."""
    names = [s.strip() for s in str(text).split(",") if s.strip()]
    if not names:
        raise HarnessError(f"--kernel-src {text!r}: no kernel source named", step="source")
    return list(dict.fromkeys(names))


# ------------------------------------------------------------ installing ---

def ensure_debian_source(ds: DebianSource, runner=subprocess.run) -> Path:
    """The tarball of ``ds``, installed with apt first when it is missing
    (as root, or through password-less sudo); ToolMissing naming the package
    when it cannot be."""
    if ds.tarball.exists():
        return ds.tarball
    why = _cannot_install()
    if why:
        raise _missing(ds, why)
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = sudo + ["apt-get", "install", "-y", "-q", "--no-install-recommends",
                      ds.package]
    progress.info(f"--kernel-src {ds.name}: {ds.package} is not installed "
                  f"({ds.tarball} missing); installing it", "source")
    for attempt in ("install", "update"):
        progress.info("$ " + " ".join(install), "source")
        proc = runner(install, env=env, capture_output=True, text=True)
        if proc.returncode == 0 and ds.tarball.exists():
            return ds.tarball
        if attempt == "update":   # apt's lists may predate the package: once, then give up
            break
        progress.info("$ " + " ".join(sudo + ["apt-get", "update", "-q"]), "source")
        runner(sudo + ["apt-get", "update", "-q"], env=env, capture_output=True, text=True)
    tail = "\n".join(((proc.stdout or "") + (proc.stderr or "")).splitlines()[-8:])
    raise _missing(ds, f"apt-get install {ds.package} failed (exit {proc.returncode})"
                       + (f":\n{tail}" if tail else ""))


def _cannot_install() -> str:
    if os.environ.get(NO_INSTALL_ENV) == "1":
        return f"{NO_INSTALL_ENV}=1"
    if shutil.which("apt-get") is None:
        return "no apt-get on this host"
    if os.geteuid() != 0 and (shutil.which("sudo") is None or subprocess.run(
            ["sudo", "-n", "true"], capture_output=True).returncode != 0):
        return "not root and no password-less sudo"
    return ""


def _missing(ds: DebianSource, why: str) -> ToolMissing:
    e = ToolMissing(f"Debian kernel source tarball ({ds.tarball})", ds.package)
    e.message = (f"--kernel-src {ds.name}: {ds.tarball} not found and not installed "
                 f"({why.splitlines()[0]}): install the Debian package '{ds.package}' "
                 f"(apt-get install {ds.package})")
    e.evidence = "\n".join(why.splitlines()[1:])
    return e


# ------------------------------------------------------------- versions ----

_VERSION = re.compile(r"^VERSION\s*=\s*(\d+)\s*$", re.M)
_PATCHLEVEL = re.compile(r"^PATCHLEVEL\s*=\s*(\d+)\s*$", re.M)


def makefile_version(text: str) -> Optional[str]:
    """"6.1" from a kernel's top Makefile (its VERSION and PATCHLEVEL lines)."""
    v, p = _VERSION.search(text), _PATCHLEVEL.search(text)
    return f"{v[1]}.{p[1]}" if v and p else None


def tarball_makefile(path: Path) -> str:
    """The top Makefile of a kernel tarball (``DIR/Makefile`` or ``Makefile``),
    read by streaming the archive up to it (~2 s for 6.12's, whose Makefile
    comes after Documentation/)."""
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                if re.fullmatch(r"(\./)?([^/]+/)?Makefile", member.name) and member.isfile():
                    f = tar.extractfile(member)
                    return f.read().decode(errors="replace") if f else ""
    except (OSError, tarfile.TarError) as e:
        raise HarnessError(f"{path}: cannot read the kernel's Makefile from it ({e})",
                           step="source") from e
    return ""


def tree_version(source) -> str:
    """The kernel version ("6.1") of a ``build.source.Source``: its tree's top
    Makefile; "" when it has no VERSION/PATCHLEVEL lines (then nothing is
    chosen per version). A tarball's is read once and remembered by its
    identity."""
    if source.kind == "dir":
        try:
            text = (Path(source.path) / "Makefile").read_text(errors="replace")
        except OSError:
            text = ""
        version = makefile_version(text)
    else:
        memo_file = cache_root() / VERSIONS_FILE
        memo = _read_json(memo_file)
        version = memo.get(source.identity)
        if version is None:
            version = makefile_version(tarball_makefile(Path(source.path)))
            if version:
                memo[source.identity] = version
                _write_json(memo_file, memo)
    return version or ""


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


# ------------------------------------------------------- per version -------

def series_file(version: str, patch_dir: Path = PATCH_DIR) -> Path:
    """The default series for a kernel version: patches/X.Y/series, else
    patches/series."""
    own = Path(patch_dir) / version / "series"
    return own if version and own.is_file() else Path(patch_dir) / "series"


def fragment_dir(version: str, name: str, config_dir: Path = CONFIG_DIR) -> Path:
    """Where fragment ``name`` is read from for a kernel version:
    kernel-configs/X.Y/ when it holds NAME.config, else kernel-configs/."""
    own = Path(config_dir) / version
    return own if (own / f"{name}.config").is_file() else Path(config_dir)


# (version, "geometry" | "method", name) -> why it cannot work on that version
NOT_APPLICABLE: dict = {
    ("6.1", "geometry", "4k-52"):
        "52-bit VA with 4K pages (LPA2, 5 levels of tables) came in 6.9; 6.1's "
        "ARM64_VA_BITS_52 needs 64K pages and its tables have at most 4 levels",
}


def not_applicable(version: str, kind: str, name: str) -> str:
    """Why ``name`` (a geometry or a method) cannot work on ``version``, or ""."""
    return NOT_APPLICABLE.get((version, kind, name), "")


def check_applicable(version: str, kind: str, names) -> None:
    """Raise NotApplicable for the first of ``names`` that cannot work on ``version``."""
    for name in names:
        why = not_applicable(version, kind, name)
        if why:
            raise NotApplicable(f"{kind} {name} is not applicable on {version}: {why}",
                                step="config" if kind == "geometry" else "run")


# The kernel version the seeded regressions (patches/repro) and the upstream
# reverts (patches/history) are written against.
PATCHES_VERSION = "6.12"


def foreign_patch(version: str, error: HarnessError, patches) -> Optional[NotApplicable]:
    """A patch of ``patches`` (a regression, a revert: written for
    PATCHES_VERSION) that does not apply to a tree of another ``version``:
    NotApplicable naming it and the hunk, for a matrix row. None when the
    failure is anything else (then it is an error)."""
    from harness.errors import PatchError
    if version == PATCHES_VERSION or not isinstance(error, PatchError):
        return None
    names = [Path(p).name for p in patches]
    if not any(name in error.message for name in names):
        return None
    return NotApplicable(f"not applicable on {version}: {error.message} (written for "
                         f"{PATCHES_VERSION})", step="patch", evidence=error.evidence)
