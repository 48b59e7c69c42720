"""Boot once, restore many: a snapshot of a booted, ready guest per
(kernel, QEMU command line, guest image, QEMU, firmware).

A guest booted from the key-less base image is saved right after it printed
``HARNESS-READY`` (before anything else happens in it): QEMU migrates its device
and CPU state to a file (``x-ignore-shared``: the guest RAM, a shared file on
/dev/shm that the host walker reads, is not in the stream; its data extents are
copied next to it instead), together with the console output so far. A later
boot with the same key starts QEMU with ``-incoming defer``, copies the RAM
data into the new run's RAM file, feeds the saved console output through the
console pipeline (numbered lines, the crash watcher, console.log: a restored
run's log reads like a booted one's, and a warning printed at boot is seen
again) and takes the migration stream: the guest resumes at the moment it
became ready, ~0.3 s after QEMU starts instead of 1-2.5 s of booting under TCG.
The run's own SSH key is then written into the guest over the serial console,
with fresh bytes for /dev/urandom (every restore starts from the same RNG
state).

The key covers everything that decides the saved state: the QEMU command line
with the run's own paths and ports taken out, the kernel image and the base
guest image (by path, size and mtime: both live in content-addressed cache
entries), QEMU's binary and version, the firmware, and ``FORMAT``. Any change
makes another key; a snapshot that cannot be restored is removed and the guest
boots instead (the session says so). ``cache clean`` removes them all.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from harness import progress
from harness.errors import HarnessError, MachineError
from harness.host import cache_root
from harness.machine.qemu import VmSpec, qemu_argv

FORMAT = 1                       # bump when what a snapshot holds changes
STATE = "state.mig"              # QEMU's migration stream (devices, CPUs, ROMs)
CONSOLE = "console.log"          # the console output up to the snapshot
META = "meta.json"
SAVE_TIMEOUT_S = 30.0
KEEP = 24                        # snapshots kept (the newest used); ~50-80 MiB each


def snapshots_dir() -> Path:
    return cache_root() / "snapshots"


def enabled() -> bool:
    """Off with HOTPLUG_HARNESS_SNAPSHOTS=0 (or BootOptions.snapshot=False)."""
    return os.environ.get("HOTPLUG_HARNESS_SNAPSHOTS", "1") != "0"


def key_for(spec: VmSpec) -> str:
    """The snapshot key of a guest booted from ``spec``."""
    files = [spec.kernel, spec.initrd] + ([spec.firmware] if spec.mode == "acpi" else [])
    return snapshot_key(qemu_argv(spec), spec.run_dir, spec.qemu, files)


def key_command(public_key: str) -> str:
    """The guest command that installs the run's SSH key (and stirs fresh host
    bytes into /dev/urandom: every restore starts from the same RNG state)."""
    text = public_key.strip()
    if not text.startswith("ssh-") or any(c in text for c in "'\n\\"):
        raise HarnessError("not an SSH public key", step="boot")
    return (f"umask 077; mkdir -p /root/.ssh && echo '{text}' > /root/.ssh/authorized_keys"
            f" && echo {os.urandom(32).hex()} > /dev/urandom")


@functools.lru_cache(maxsize=4)
def _qemu_identity(qemu: str) -> tuple[str, str]:
    path = shutil.which(qemu) or qemu
    try:
        version = subprocess.run([path, "--version"], capture_output=True, text=True,
                                 timeout=10).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        version = "?"
    return path, version


def _file_identity(path: str) -> list[Any]:
    try:
        st = os.stat(path)
    except OSError:
        return [path, None]
    return [os.path.realpath(path), st.st_size, st.st_mtime_ns]


def normalized_argv(argv: list[str], run_dir: str) -> list[str]:
    """The QEMU command line without what differs from run to run: the run
    folder, the SSH forward's port and the gdbstub's port."""
    out = []
    for arg in argv:
        arg = arg.replace(run_dir, "{run_dir}")
        if "hostfwd=tcp:127.0.0.1:" in arg:
            head, _, rest = arg.partition("hostfwd=tcp:127.0.0.1:")
            arg = head + "hostfwd=tcp:127.0.0.1:{port}" + rest[rest.index("-"):]
        if arg.startswith("tcp:127.0.0.1:"):
            arg = "tcp:127.0.0.1:{port}"
        out.append(arg)
    return out


def snapshot_key(argv: list[str], run_dir: str, qemu: str, files: list[str]) -> str:
    """The key of a guest booted with ``argv``; ``files``: the kernel image, the
    initrd and the firmware the command line names."""
    ident = {"format": FORMAT, "argv": normalized_argv(argv, run_dir),
             "qemu": _qemu_identity(qemu), "files": [_file_identity(f) for f in files]}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


def shared_ram_files(argv: list[str], run_dir: str) -> list[str]:
    """The run folder's files that back guest RAM (``mem-path=`` of every
    memory backend on the command line), by name."""
    names = []
    for arg in argv:
        for part in arg.split(","):
            if part.startswith("mem-path=") and part[len("mem-path="):].startswith(run_dir):
                names.append(Path(part[len("mem-path="):]).name)
    return names


def copy_data(src: Path, dst: Path) -> int:
    """Copy ``src``'s data extents into ``dst`` (same size, holes kept); returns
    the bytes copied. A guest's 1 GiB RAM file holds ~50-80 MiB of data."""
    size = src.stat().st_size
    copied = 0
    with open(src, "rb") as f, open(dst, "wb") as g:
        g.truncate(size)
        fd, off = f.fileno(), 0
        while off < size:
            try:
                start = os.lseek(fd, off, os.SEEK_DATA)
            except OSError:          # ENXIO: no data after off
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            f.seek(start)
            g.seek(start)
            left = end - start
            while left:
                chunk = f.read(min(left, 1 << 22))
                if not chunk:
                    break
                g.write(chunk)
                left -= len(chunk)
                copied += len(chunk)
            off = end
    return copied


@dataclass(frozen=True)
class Snapshot:
    key: str
    path: Path

    @property
    def state(self) -> Path:
        return self.path / STATE

    def console(self) -> bytes:
        return (self.path / CONSOLE).read_bytes()

    def meta(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.path / META).read_text())
        return data

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def find(key: str) -> Optional[Snapshot]:
    path = snapshots_dir() / key
    try:
        meta = json.loads((path / META).read_text())
    except (OSError, ValueError):
        return None
    if meta.get("format") != FORMAT or not (path / STATE).is_file():
        return None
    if any(not (path / name).is_file() for name in meta.get("ram", [])):
        return None
    return Snapshot(key, path)


def _migration(machine: Any, doing: str, timeout: float = SAVE_TIMEOUT_S) -> dict[str, Any]:
    """Poll query-migrate until it completes; MachineError if it fails."""
    end = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = machine.qmp_cmd("query-migrate")
        state = status.get("status")
        if state == "completed":
            return status
        if state in ("failed", "cancelled") or time.monotonic() > end:
            raise MachineError(f"{doing}: migration {state or 'timed out'}"
                               f"{': ' + status['error-desc'] if 'error-desc' in status else ''}",
                               step="boot")
        time.sleep(0.005)


def _ignore_shared(machine: Any) -> None:
    machine.qmp_cmd("migrate-set-capabilities",
                    capabilities=[{"capability": "x-ignore-shared", "state": True}])


def save(machine: Any, key: str, console_log: Path) -> Optional[Snapshot]:
    """Snapshot a guest that has just become ready (it is paused meanwhile and
    left running). Another run saving the same key at the same time wins or
    loses the final rename; either way one whole snapshot stays."""
    spec = machine.spec
    base = snapshots_dir()
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    prune(KEEP - 1)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=base))
    start = time.monotonic()
    try:
        _ignore_shared(machine)
        machine.qmp_cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 40})
        machine.qmp_cmd("migrate", uri=f"exec:cat > {shlex.quote(str(tmp / STATE))}")
        _migration(machine, "saving a snapshot")
        # paused now: the RAM files and the console are what the state expects
        ram = shared_ram_files(machine.argv, spec.run_dir)
        copied = sum(copy_data(Path(spec.run_dir) / name, tmp / name) for name in ram)
        shutil.copyfile(console_log, tmp / CONSOLE)
        (tmp / META).write_text(json.dumps({
            "format": FORMAT, "key": key, "argv": normalized_argv(machine.argv, spec.run_dir),
            "ram": ram, "ram_bytes": copied, "created": time.time(),
            "save_s": round(time.monotonic() - start, 3)}, indent=1))
        try:
            os.rename(tmp, base / key)
        except OSError:                    # another run saved it first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if machine.alive():
            machine.qmp_cmd("cont")
    progress.detail(f"saved snapshot {key} in {time.monotonic() - start:.2f}s", "machine")
    return find(key)


def prepare(snap: Snapshot, run_dir: str) -> None:
    """Before QEMU starts: the guest RAM files of the run folder from the snapshot
    (and the snapshot marked as used, for ``prune``)."""
    for name in snap.meta()["ram"]:
        copy_data(snap.path / name, Path(run_dir) / name)
    os.utime(snap.path)


def prune(keep: int = KEEP) -> list[str]:
    """Remove all but the ``keep`` most recently used snapshots (and leftovers
    of saves that died)."""
    base = snapshots_dir()
    try:
        entries = [p for p in base.iterdir() if p.is_dir()]
    except OSError:
        return []
    removed = []
    stale = [p for p in entries if p.name.startswith(".")
             and time.time() - p.stat().st_mtime > 3600]
    done = sorted((p for p in entries if not p.name.startswith(".")),
                  key=lambda p: p.stat().st_mtime, reverse=True)
    for path in stale + done[max(keep, 0):]:
        shutil.rmtree(path, ignore_errors=True)
        removed.append(str(path))
    return removed


def restore(machine: Any, snap: Snapshot) -> float:
    """Take the snapshot's migration stream into a QEMU started with
    ``-incoming defer``; the guest runs when it returns (seconds taken)."""
    start = time.monotonic()
    _ignore_shared(machine)
    machine.qmp_cmd("migrate-incoming", uri=f"exec:cat {shlex.quote(str(snap.state))}")
    _migration(machine, "restoring a snapshot")
    status = machine.qmp_cmd("query-status")
    if status.get("status") != "running":
        machine.qmp_cmd("cont")
    return time.monotonic() - start
