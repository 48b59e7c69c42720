"""The only module that wires the stages together: artifacts -> booted guest.

``boot(art, opts)`` is a context manager yielding a ``Guest``: the Machine, the
serial console, the SSH transport (unless disabled) and the console's crash
watcher, which sees every console line whichever transport runs the steps.
"""
from __future__ import annotations

import shutil
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from . import guest_image, progress
from .build import KernelArtifacts
from .console import SerialConsole
from .crashwatch import CrashWatcher, KernelCrash
from .errors import MachineError
from .host import Deadline
from .machine import Machine, VmSpec, free_port, make_run_dir
from .ssh import SshTransport, generate_key
from .transport import CommandResult, Transport

SETTLE_S = 1.5   # after a crash signature, let the report finish before raising


@dataclass(frozen=True)
class BootOptions:
    mode: str = "acpi"                 # acpi | dt
    transport: str = "ssh"             # ssh | serial: what scenario steps use
    mem_mb: int = 1024
    slots: int = 4
    maxmem_mb: int = 8192
    smp: int = 2
    cmdline: tuple = ()
    devices: tuple = ()
    boot_timeout: float = 60.0
    ssh: bool = True                   # bring up SSH at all
    gdb: bool = False                  # a gdbstub on 127.0.0.1 (the ordering checks)


@dataclass
class Guest:
    machine: Machine
    console: SerialConsole
    ssh: Optional[SshTransport]
    watcher: CrashWatcher
    transport: Transport
    out_dir: Path
    times: dict = field(default_factory=dict)
    step: str = "boot"
    line_offset: int = 0   # console lines read before the watcher was attached

    def console_line(self) -> int:
        """The crash watcher's current line number (CrashReport.first_line_no)."""
        return self.machine.tap.lines_seen - self.line_offset

    def run(self, command: str, deadline=30.0, via: Optional[Transport] = None
            ) -> CommandResult:
        """Run a command over the scenario transport (or ``via``)."""
        transport = via or self.transport
        progress.detail(f"{transport.name}$ {command}")
        return transport.run(command, deadline)

    def check(self, command: str, deadline=30.0, step: str = "",
              blame: Optional[str] = None) -> str:
        return self.run(command, deadline).check(step or self.step, blame=blame).stdout

    def crashes(self) -> tuple:
        return self.watcher.reports

    def put_text(self, path: str, text: str) -> None:
        """Write a text file in the guest (SSH, else a here-document on serial)."""
        if self.ssh is not None:
            self.ssh.put_text(path, text)
            return
        marker = "HARNESS_EOF_7f3a"
        self.console.run(f"cat > '{path}' <<'{marker}'\n{text}\n{marker}", 120
                         ).check(self.step)

    def close(self) -> None:
        if self.ssh is not None:
            self.ssh.close()
        self.console.close()

    def mark(self, step: str) -> None:
        """Name the current step, and write a marker line into the kernel log."""
        self.step = step
        self.run(f"echo 'harness: step {step}' > /dev/kmsg", 10)


class CrashGate:
    """For SSH: notices crash reports on the console (finished or still being
    printed) and raises them as KernelCrash."""

    def __init__(self, watcher: CrashWatcher, guest_ref: list, tap=None):
        self.watcher, self.guest_ref, self.tap, self.seen = watcher, guest_ref, tap, 0

    def pending(self) -> bool:
        return (len(self.watcher.reports) > self.seen
                or self.watcher.open_kind is not None)

    def wait(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for a crash to show (after a lost connection)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.pending():
                return True
            time.sleep(0.05)
        return self.pending()

    def __call__(self) -> None:
        if not self.pending():
            return
        end = time.monotonic() + SETTLE_S  # let the trace arrive
        while time.monotonic() < end and self.watcher.open_kind is not None:
            if self.tap is not None and self.tap.eof:
                break
            time.sleep(0.05)
        if self.watcher.open_kind is not None:
            self.watcher.flush()
        reports = self.watcher.reports
        new = reports[self.seen:]
        self.seen = len(reports)
        step = self.guest_ref[0].step if self.guest_ref else "boot"
        raise KernelCrash(new, step=step)


def _qemu_alive(machine: Machine, guest_ref: list) -> None:
    """MachineError with QEMU's exit code, stderr and console tail if it died."""
    step = guest_ref[0].step if guest_ref else "boot"
    for _ in range(20):   # the connection may drop just before QEMU exits
        if not machine.alive():
            break
        time.sleep(0.05)
    machine._check_alive(f"running step {step!r}")


def _sigterm_as_interrupt():
    """SIGTERM unwinds like Ctrl-C, so every ``with`` block cleans up."""
    from .signals import Terminated, installed
    if installed():   # the CLI's handler does this already (and more)
        return None

    def handler(signum, frame):
        raise Terminated()
    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not in the main thread
        return None


@contextmanager
def boot(art: KernelArtifacts, opts: BootOptions, out_dir: Path, progress=True):
    """Boot ``art`` and yield a ready Guest; everything is torn down on exit."""
    previous = _sigterm_as_interrupt()
    run_dir = make_run_dir()
    try:
        key = generate_key(run_dir)
        initrd = guest_image.prepare_initrd(key.public_text, run_dir / "initrd.gz")
        port = free_port() if opts.ssh else 0
        spec = VmSpec(kernel=art.image, initrd=str(initrd.path), run_dir=str(run_dir),
                      mode=opts.mode, mem_mb=opts.mem_mb, slots=opts.slots,
                      maxmem_mb=opts.maxmem_mb, smp=opts.smp, ssh_port=port,
                      cmdline=("printk.time=1",) + tuple(opts.cmdline),
                      devices=tuple(opts.devices),
                      gdb_port=free_port() if opts.gdb else None)
        machine = Machine(spec, out_dir, boot_timeout=opts.boot_timeout)
        if progress:
            print("$ " + " ".join(machine.argv), file=sys.stderr)
        with machine:
            guest = _bring_up(machine, key, opts, out_dir)
            try:
                yield guest
            finally:
                guest.close()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _bring_up(machine: Machine, key, opts: BootOptions, out_dir: Path) -> Guest:
    deadline = Deadline(opts.boot_timeout)
    watcher = CrashWatcher()
    offset = machine.tap.lines_seen
    machine.tap.listeners.append(watcher.feed)
    console = SerialConsole(machine.spawn(), settle=SETTLE_S)
    times = {}
    try:
        ready = console.wait_ready(deadline)
    except MachineError as e:
        raise MachineError("the guest never became ready: " + e.message,
                           step="boot", evidence=machine.console_tail()) from e
    times["boot_to_ready_s"] = time.monotonic() - machine.times.launched
    words = ready.split()
    if "uptime" in words[:-1]:   # the guest's own clock: kernel + init time
        times["guest_uptime_at_ready_s"] = float(words[words.index("uptime") + 1])
    guest_ref: list = []
    gate = CrashGate(watcher, guest_ref, machine.tap)
    machine.crash_check = gate     # QMP waits end at a crash too
    ssh = None
    if opts.ssh:
        ssh = SshTransport(machine.spec.ssh_port, key, crash_check=gate,
                           alive_check=lambda: _qemu_alive(machine, guest_ref))
        ssh.connect(deadline, alive=lambda: machine._check_alive("connecting SSH"))
        times["boot_to_ssh_s"] = time.monotonic() - machine.times.launched
    transport = ssh if (opts.transport == "ssh" and ssh) else console
    guest = Guest(machine, console, ssh, watcher, transport, out_dir, times,
                  line_offset=offset)
    guest_ref.append(guest)
    return guest
