"""Host helpers: tools and their Debian packages, the cache root, deadlines,
and running commands that are printed before they run."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from harness.errors import ToolMissing

# tool -> Debian package that provides it
TOOL_PACKAGES = {
    "qemu-system-aarch64": "qemu-system-arm",
    "aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu",
    "aarch64-linux-gnu-ld": "binutils-aarch64-linux-gnu",
    "aarch64-linux-gnu-nm": "binutils-aarch64-linux-gnu",
    "aarch64-linux-gnu-addr2line": "binutils-aarch64-linux-gnu",
    "clang": "clang",
    "ld.lld": "lld",
    "ccache": "ccache",
    "make": "make",
    "bc": "bc",
    "flex": "flex",
    "bison": "bison",
    "patch": "patch",
    "tar": "tar",
    "xz": "xz-utils",
    "cpio": "cpio",
    "gzip": "gzip",
    "dpkg-deb": "dpkg",
    "apt-get": "apt",
    "apt-cache": "apt",
    "ssh-keygen": "openssh-client",
}
FIRMWARE = Path("/usr/share/qemu-efi-aarch64/QEMU_EFI.fd")
FIRMWARE_PACKAGE = "qemu-efi-aarch64"
DEBIAN_SOURCE_TARBALL = Path("/usr/src/linux-source-6.12.tar.xz")
DEBIAN_SOURCE_PACKAGE = "linux-source-6.12"


def require_tool(tool: str) -> str:
    """Return the tool's path or raise ToolMissing naming its package."""
    path = shutil.which(tool)
    if path is None:
        raise ToolMissing(tool, TOOL_PACKAGES.get(tool, tool))
    return path


def require_file(path: Path, package: str, what: str) -> Path:
    if not path.exists():
        raise ToolMissing(f"{what} ({path})", package)
    return path


def cache_root() -> Path:
    """Where built kernels, unpacked sources and guest images live (never the checkout)."""
    env = os.environ.get("HOTPLUG_HARNESS_CACHE")
    if env:
        root = Path(env)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
        root = Path(base) / "hotplug-harness"
    root.mkdir(parents=True, exist_ok=True)
    return root


class Deadline:
    """An absolute point in time, passed down instead of scattered sleeps."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.end

    def sub(self, seconds: float) -> Deadline:
        """A deadline no later than this one."""
        return Deadline(min(seconds, self.remaining()))


def show_command(argv: Sequence[str], cwd: Path | None = None, stream=None) -> str:
    text = "$ " + " ".join(shlex.quote(str(a)) for a in argv)
    if cwd is not None:
        text = f"(cd {shlex.quote(str(cwd))}) " + text
    from harness import progress
    if stream is not None:
        if not progress.quiet():
            print(text, file=stream, flush=True)
    else:
        progress.info(text)
    return text


def run(argv: Sequence[str], *, cwd: Path | None = None, quiet: bool = False,
        check: bool = True, env: dict | None = None,
        input: bytes | None = None) -> subprocess.CompletedProcess:
    """Run a command (printed first unless quiet), capturing its output."""
    if not quiet:
        show_command(argv, cwd)
    return subprocess.run([str(a) for a in argv], cwd=cwd, env=env, input=input,
                          capture_output=True, check=check)
