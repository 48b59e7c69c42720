"""Guest image (initramfs) builder.

The base image holds Debian's arm64 busybox-static and dropbear-bin (with the
dependency closure apt resolves), a few /etc files, ``guest-scripts/init`` as
``/init`` and all of ``guest-scripts/`` under ``/harness``. It is cached by
content under ``cache_root()/guest-image`` and shared between runs; its size
and sha256 sit beside it (``.json``) and are checked on every reuse. The run's
SSH key goes into a separate tiny cpio.gz; the kernel unpacks concatenated
gzip'd cpio archives as one initramfs, so ``compose_initrd`` just concatenates.

Debian packages are only fetched (``apt-get download``) and unpacked
(``dpkg-deb -x``) into a staging folder: never installed on the host.
"""
from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import json
import os
import shutil
import stat
import tempfile
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from harness import progress
from harness.errors import INFRA, HarnessError
from harness.host import cache_root, require_tool, run
from harness.kernel.kernel import cache_message, check_file, file_record

BUILDER_VERSION = 1
ARCH = "arm64"
ROOT_PACKAGES = ("busybox-static", "dropbear-bin")
from harness.paths import GUEST_SCRIPTS  # noqa: E402  (checkout or shipped copy)

# Not needed in the guest: docs, man pages, lintian/initramfs-tools hooks, and
# glibc's iconv modules (20 MB; nothing in the image calls iconv).
PRUNE = ("usr/share", "usr/lib/aarch64-linux-gnu/gconv")
DEPENDS_ARGS = ("--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
                "--no-breaks", "--no-replaces", "--no-enhances")
GZIP_LEVEL = 6

STATIC_DIRS = {"proc": 0o555, "sys": 0o555, "dev": 0o755, "tmp": 0o1777,
               "run": 0o755, "root": 0o700, "root/.ssh": 0o700, "sbin": 0o755,
               "usr/bin": 0o755, "usr/sbin": 0o755, "etc/dropbear": 0o700,
               "var/log": 0o755, "harness": 0o755}
STATIC_FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
    "etc/group": "root:x:0:\ntty:x:5:\n",
    "etc/shells": "/bin/sh\n/bin/ash\n",
    "etc/nsswitch.conf": "passwd: files\ngroup: files\nshadow: files\nhosts: files\n",
    "etc/hosts": "127.0.0.1 localhost\n10.0.2.15 harness-guest\n",
    "etc/profile": ("export PATH=/usr/sbin:/usr/bin:/sbin:/bin:/harness\n"
                    "export HOME=/root\nexport PS1='# '\ncd /root\n"),
}


@dataclass(frozen=True)
class GuestImage:
    """A built initramfs. ``key`` is the base image's content hash;
    ``packages`` the Debian package names in it."""

    path: Path
    key: str
    packages: tuple[str, ...]
    size: int

    def __fspath__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class DebRef:
    """One resolved .deb: what ``apt-get download --print-uris`` reports."""

    package: str
    version: str
    filename: str
    size: int
    sha256: str


# ---------------------------------------------------------------- cpio (newc)

@dataclass(frozen=True)
class CpioEntry:
    """One archive member; ``data`` is the file body or the symlink target."""

    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def _newc_header(ino: int, e: CpioEntry) -> bytes:
    name = e.name.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(e.mode) else 1
    fields = (ino, e.mode, 0, 0, nlink, 0, len(e.data), 0, 0,
              e.rdev[0], e.rdev[1], len(name), 0)
    head = b"070701" + b"".join(b"%08X" % f for f in fields) + name
    return head + _pad(len(head))


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


def newc_bytes(entries: Iterable[CpioEntry]) -> bytes:
    """A newc archive: uid/gid 0, mtime 0, one inode per entry, trailer."""
    out = []
    members = list(entries) + [CpioEntry("TRAILER!!!", 0)]
    for ino, e in enumerate(members, start=1):
        out += [_newc_header(0 if e.name == "TRAILER!!!" else ino, e),
                e.data, _pad(len(e.data))]
    return b"".join(out)


def read_newc(data: bytes) -> list[CpioEntry]:
    """Parse newc archives (concatenations too, as the kernel does)."""
    entries, pos = [], 0
    while pos < len(data):
        if data[pos:pos + 4] == b"\0\0\0\0":
            pos += 4
            continue
        if data[pos:pos + 6] != b"070701":
            raise HarnessError(f"bad cpio magic at offset {pos}", step="guest-image")
        f = [int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        name_end = pos + 110 + f[11]
        name = data[pos + 110:name_end - 1].decode()
        body = name_end + (-name_end % 4)
        pos = body + f[6] + (-(body + f[6]) % 4)
        if name != "TRAILER!!!":
            entries.append(CpioEntry(name, f[1], data[body:body + f[6]], (f[9], f[10])))
    return entries


def read_initrd(path: os.PathLike) -> dict[str, CpioEntry]:
    """Members of a (possibly concatenated) cpio.gz; later ones win."""
    return {e.name: e for e in read_newc(gzip.decompress(Path(path).read_bytes()))}


def _with_parents(entries: dict[str, CpioEntry]) -> list[CpioEntry]:
    """Entries sorted by name, missing parent directories added (0755)."""
    full = dict(entries)
    for name in entries:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            full.setdefault("/".join(parts[:i]),
                            CpioEntry("/".join(parts[:i]), stat.S_IFDIR | 0o755))
    return [full[n] for n in sorted(full)]


def write_cpio_gz(entries: dict[str, CpioEntry], dest: Path) -> Path:
    """Write a deterministic gzip'd newc archive atomically."""
    blob = gzip.compress(newc_bytes(_with_parents(entries)), GZIP_LEVEL, mtime=0)
    _atomic_write(dest, blob)
    return dest


def _atomic_write(dest: Path, blob: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def tree_entries(root: Path) -> dict[str, CpioEntry]:
    """Files, dirs and symlinks under ``root`` (PRUNE skipped), keyed by name."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            if any(rel == p or rel.startswith(p + "/") for p in PRUNE):
                continue
            out[rel] = _path_entry(path, rel)
    return out


def _path_entry(path: Path, rel: str) -> CpioEntry:
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        return CpioEntry(rel, stat.S_IFLNK | 0o777, os.readlink(path).encode())
    if stat.S_ISDIR(st.st_mode):
        return CpioEntry(rel, stat.S_IFDIR | stat.S_IMODE(st.st_mode))
    if stat.S_ISREG(st.st_mode):
        return CpioEntry(rel, stat.S_IFREG | stat.S_IMODE(st.st_mode), path.read_bytes())
    raise HarnessError(f"unsupported file type in staging tree: {rel}", step="guest-image")


# ---------------------------------------------------------------- apt

def parse_depends(text: str, arch: str = ARCH) -> tuple[str, ...]:
    """Package names in ``apt-cache depends --recurse`` output (sorted).

    Only the unindented headers are the closure. ``<name>`` headers are virtual
    packages (some real package provides them, and is listed too). Headers
    without ``:arch`` are arch-all or host-arch packages, reached only through
    maintainer-script helpers (debconf, adduser...) whose own dependencies apt
    resolves for the host: we never run maintainer scripts, so they are dropped.
    """
    names = set()
    suffix = ":" + arch
    for line in text.splitlines():
        if not line or line[0] in " <" or not line.endswith(suffix):
            continue
        names.add(line[:-len(suffix)])
    return tuple(sorted(names))


def parse_print_uris(text: str) -> list[DebRef]:
    """Parse ``apt-get download --print-uris`` lines: 'URI' FILE SIZE SHA256:HEX."""
    refs = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 4 or not parts[0].startswith("'"):
            continue
        filename, size, digest = parts[1], int(parts[2]), parts[3]
        package, version, _ = urllib.parse.unquote(filename).split("_")
        refs.append(DebRef(package, version, filename, size,
                           digest.split(":", 1)[1].lower()))
    return sorted(refs, key=lambda r: r.package)


def _checked(argv: Sequence[str], what: str, cwd: Path | None = None) -> str:
    require_tool(argv[0])
    res = run(argv, cwd=cwd, check=False)
    if res.returncode != 0:
        stderr = res.stderr.decode(errors="replace")
        raise HarnessError(f"{what}: {argv[0]} exited {res.returncode}: {_headline(stderr)}",
                           step="guest-image", blame=INFRA, evidence=stderr)
    return res.stdout.decode()


def _headline(stderr: str) -> str:
    """apt's first error line ('E: ...'), else its last line."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    return next((ln for ln in lines if ln.startswith("E:")), lines[-1] if lines else "")


def resolve_closure(roots: Sequence[str]) -> tuple[str, ...]:
    """The arm64 dependency closure of ``roots``, as apt resolves it."""
    text = _checked(["apt-cache", "depends", *DEPENDS_ARGS, *(f"{r}:{ARCH}" for r in roots)],
                    f"cannot resolve {ARCH} packages {', '.join(roots)} (is '{ARCH}' "
                    f"added with dpkg --add-architecture and apt-get update run?)")
    return parse_depends(text)


def resolve_debs(packages: Sequence[str]) -> list[DebRef]:
    """Candidate versions, file names and hashes of ``packages``."""
    text = _checked(["apt-get", "download", "--print-uris", *(f"{p}:{ARCH}" for p in packages)],
                    f"cannot locate {ARCH} packages {', '.join(packages)}")
    refs = parse_print_uris(text)
    missing = set(packages) - {r.package for r in refs}
    if missing:
        raise HarnessError(f"apt printed no download for {', '.join(sorted(missing))}",
                           step="guest-image", blame=INFRA, evidence=text)
    return refs


def _apt_state() -> list:
    """What apt's answers depend on: its package lists and configuration."""
    state = []
    for top in (Path("/var/lib/apt/lists"), Path("/etc/apt"), Path("/var/lib/dpkg/arch")):
        paths = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for p in paths:
            if p.name == "lock" or "partial" in p.parts:
                continue
            with contextlib.suppress(OSError):
                st = p.stat()
                state.append([str(p), st.st_size, st.st_mtime_ns])
    return state


def resolve(roots: Sequence[str], cache_dir: Path) -> list[DebRef]:
    """Resolve roots to .debs; memoised until apt's lists or config change
    (each apt call costs ~2 s here, as apt keeps no binary cache)."""
    memo_key = _digest([BUILDER_VERSION, ARCH, list(roots), _apt_state()])
    memo = cache_dir / f"resolve-{memo_key[:16]}.json"
    if memo.exists():
        try:
            return [DebRef(**d) for d in json.loads(memo.read_text())]
        except (ValueError, TypeError) as e:  # a truncated memo: ask apt again
            cache_message(f"{cache_dir.name}/{memo.name} is unreadable ({e}): resolving again")
    _progress(f"resolving the {ARCH} closure of {', '.join(roots)}")
    refs = resolve_debs(resolve_closure(roots))
    _atomic_write(memo, json.dumps([asdict(r) for r in refs], indent=1).encode())
    return refs


def _deb_ok(path: Path, ref: DebRef) -> bool:
    if not path.is_file() or path.stat().st_size != ref.size:
        return False
    return hashlib.sha256(path.read_bytes()).hexdigest() == ref.sha256


def fetch_debs(refs: Sequence[DebRef], debs_dir: Path) -> list[Path]:
    """Download the .debs not already in ``debs_dir`` (verified by SHA-256)."""
    debs_dir.mkdir(parents=True, exist_ok=True)
    missing = [r for r in refs if not _deb_ok(debs_dir / r.filename, r)]
    if missing:
        _progress(f"downloading {len(missing)} packages into {debs_dir}")
        with tempfile.TemporaryDirectory(dir=debs_dir, prefix=".dl-") as tmp:
            _download(missing, Path(tmp), debs_dir)
    return [debs_dir / r.filename for r in refs]


def _download(refs: Sequence[DebRef], tmp: Path, debs_dir: Path) -> None:
    argv = ["apt-get", "download", "-o", "APT::Sandbox::User=root",
            *(f"{r.package}:{ARCH}={r.version}" for r in refs)]
    require_tool("apt-get")
    res = run(argv, cwd=tmp, check=False)
    bad = [r.package for r in refs if not _deb_ok(tmp / r.filename, r)]
    if res.returncode != 0 or bad:
        stderr = res.stderr.decode(errors="replace")
        raise HarnessError(f"cannot download {ARCH} package(s) "
                           f"{', '.join(bad) or '(unknown)'}: {_headline(stderr)}",
                           step="guest-image", blame=INFRA, evidence=stderr)
    for r in refs:
        os.replace(tmp / r.filename, debs_dir / r.filename)


def unpack_debs(debs: Sequence[Path], staging: Path) -> None:
    """``dpkg-deb -x`` each package into ``staging`` (never installs)."""
    _progress(f"unpacking {len(debs)} packages")
    for deb in debs:
        _checked(["dpkg-deb", "-x", str(deb), str(staging)], f"cannot unpack {deb.name}")


# ---------------------------------------------------------------- the image

def guest_script_files(scripts_dir: Path = GUEST_SCRIPTS) -> dict[str, tuple[int, bytes]]:
    """``guest-scripts`` files by relative name: (mode, bytes); dotfiles skipped."""
    if not (scripts_dir / "init").is_file():
        raise HarnessError(f"{scripts_dir / 'init'} is missing", step="guest-image")
    out = {}
    for path in sorted(scripts_dir.rglob("*")):
        rel = path.relative_to(scripts_dir)
        if path.is_dir() or any(p.startswith(".") or p == "__pycache__" for p in rel.parts):
            continue
        mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
        out[rel.as_posix()] = (mode, path.read_bytes())
    return out


def cache_key(refs: Sequence[DebRef], scripts: dict[str, tuple[int, bytes]],
              roots: Sequence[str] = ROOT_PACKAGES) -> str:
    """Content hash of everything that goes into the base image."""
    return _digest([BUILDER_VERSION, ARCH, list(roots), PRUNE, STATIC_DIRS, STATIC_FILES,
                    [[r.package, r.version, r.filename, r.sha256] for r in refs],
                    [[name, mode, hashlib.sha256(body).hexdigest()]
                     for name, (mode, body) in sorted(scripts.items())]])


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def base_entries(staging: Path, scripts: dict[str, tuple[int, bytes]]) -> dict[str, CpioEntry]:
    """Everything in the base image: packages, /etc files, /init, /harness."""
    entries = tree_entries(staging)
    for name, mode in STATIC_DIRS.items():
        entries[name] = CpioEntry(name, stat.S_IFDIR | mode)
    for name, text in STATIC_FILES.items():
        entries[name] = CpioEntry(name, stat.S_IFREG | 0o644, text.encode())
    # An initial console before devtmpfs is mounted (the kernel opens it for init).
    entries["dev/console"] = CpioEntry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    for rel, (mode, body) in scripts.items():
        entries[f"harness/{rel}"] = CpioEntry(f"harness/{rel}", stat.S_IFREG | mode, body)
    entries["init"] = CpioEntry("init", stat.S_IFREG | 0o755, scripts["init"][1])
    return entries


def build_base_image(roots: Sequence[str] = ROOT_PACKAGES,
                     scripts_dir: Path = GUEST_SCRIPTS,
                     cache_dir: Path | None = None) -> GuestImage:
    """The shared base initramfs (no SSH key), built once per content hash."""
    cache_dir = cache_dir or cache_root() / "guest-image"
    cache_dir.mkdir(parents=True, exist_ok=True)
    refs = resolve(roots, cache_dir)
    scripts = guest_script_files(scripts_dir)
    key = cache_key(refs, scripts, roots)
    dest = cache_dir / f"base-{key[:16]}.cpio.gz"
    packages = tuple(r.package for r in refs)
    problem = verify_image(dest)
    if problem is not None:
        if problem:
            cache_message(f"{problem}: rebuilding")
        with _locked(cache_dir / ".lock"):
            again = verify_image(dest)  # built by another run while we waited?
            if again is not None:
                if again and again != problem:
                    cache_message(f"{again}: rebuilding")
                _record_path(dest).unlink(missing_ok=True)
                _build(refs, scripts, cache_dir, dest)
                _atomic_write(_record_path(dest),
                              json.dumps(file_record(dest), indent=1).encode())
    return GuestImage(dest, key, packages, dest.stat().st_size)


def _record_path(image: Path) -> Path:
    """The sidecar holding the image's size and sha256, written after it."""
    return image.with_name(image.name + ".json")


def verify_image(image: Path):
    """None if the cached image matches its recorded size and sha256 (a full
    digest, ~a few MB: milliseconds); "" if there is no image at all; else
    what is wrong. An image stored before records existed is rebuilt, not
    digested once (the build is deterministic and reuses the cached .debs)."""
    label = f"{image.parent.name}/{image.name}"
    record_file = _record_path(image)
    if not record_file.exists():
        if not image.exists():
            return ""
        return f"{label} has no recorded size or digest (stored before the cache verified it)"
    try:
        record = json.loads(record_file.read_text())
    except (OSError, ValueError) as e:
        return f"{label}.json is unreadable ({type(e).__name__}: {e})"
    return check_file(image, record, label)


def _build(refs, scripts, cache_dir: Path, dest: Path) -> None:
    debs = fetch_debs(refs, cache_dir.parent / "debs")
    staging = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".staging-"))
    try:
        unpack_debs(debs, staging)
        _progress(f"writing cpio {dest}")
        write_cpio_gz(base_entries(staging, scripts), dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_key_overlay(pubkey_text: str, dest_path: Path) -> Path:
    """A tiny cpio.gz holding /root/.ssh/authorized_keys (dirs 0700, file 0600)."""
    text = pubkey_text.strip()
    if not text or "PRIVATE KEY" in text or "\0" in text:
        raise HarnessError("not an SSH public key", step="guest-image",
                           evidence=text[:80] if "PRIVATE" not in text else "")
    entries = {"root": CpioEntry("root", stat.S_IFDIR | 0o700),
               "root/.ssh": CpioEntry("root/.ssh", stat.S_IFDIR | 0o700),
               "root/.ssh/authorized_keys": CpioEntry(
                   "root/.ssh/authorized_keys", stat.S_IFREG | 0o600, (text + "\n").encode())}
    return write_cpio_gz(entries, Path(dest_path))


def compose_initrd(base: os.PathLike, overlay: os.PathLike, dest: os.PathLike) -> Path:
    """Concatenate base and overlay: the kernel unpacks both, in order."""
    dest = Path(dest)
    _atomic_write(dest, Path(base).read_bytes() + Path(overlay).read_bytes())
    return dest


def prepare_initrd(pubkey_text: str, dest: os.PathLike, **build_kw) -> GuestImage:
    """Base image (cached) + this run's key, composed at ``dest``."""
    base = build_base_image(**build_kw)
    dest = Path(dest)
    overlay = build_key_overlay(pubkey_text, dest.with_name(dest.name + ".key.cpio.gz"))
    try:
        compose_initrd(base.path, overlay, dest)
    finally:
        overlay.unlink()
    return GuestImage(dest, base.key, base.packages, dest.stat().st_size)


def _progress(msg: str) -> None:
    progress.info(msg, "guest-image")
