"""The only module that wires the stages together: artifacts -> booted guest.

``boot(art, opts)`` is a context manager yielding a ``Guest``: the Machine (the
QEMU process, its QMP connection and console reader), the serial console, the
SSH transport (unless disabled) and the console's one crash watcher, which sees
every console line whichever transport runs the steps. A crash on the console
ends an SSH step or a QMP wait through a ``console.CrashGate`` naming the
guest's current step.
"""
from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any, Optional, Union

from harness import faults, progress
from harness import progress as ui
from harness.errors import TRANSPORT_STEPS, HarnessError, MachineError
from harness.host import Deadline
from harness.kernel.kernel import KernelArtifacts
from harness.machine import guest_image, snapshot
from harness.machine.console import SETTLE_S, ConsoleReader, CrashGate, SerialConsole
from harness.machine.crashwatch import CrashReport, CrashWatcher
from harness.machine.qemu import Machine, VmSpec, free_port, make_run_dir, with_fresh_ports
from harness.machine.ssh import KeyPair, SshTransport, SshUnavailable, generate_key
from harness.machine.transport import CommandResult, Transport

# how long SSH may take to answer once the guest said it is ready (its init
# starts dropbear and checks it listens first)
SSH_CONNECT_S = 20.0


@dataclass(frozen=True)
class BootOptions:
    mode: str = "acpi"                 # acpi | dt
    transport: str = "ssh"             # ssh | serial: what scenario steps use
    mem_mb: int = 1024
    slots: int = 4
    maxmem_mb: int = 8192
    smp: int = 2
    cpu: str = "max"                   # QEMU's -cpu (harness.machine.qemu.CPU_MODELS)
    tcg_thread: Optional[str] = None   # single | multi; None: the method's choice,
                                       # else single (harness.machine.qemu.TCG_THREADS)
    cmdline: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    boot_timeout: float = 60.0
    ssh: bool = True                   # bring up SSH at all
    gdb: bool = False                  # a gdbstub on 127.0.0.1 (the ordering checks)
    snapshot: bool = True              # restore a booted guest when one is cached


@dataclass
class Guest:
    """A booted guest: the machine, both transports, the console's one crash
    watcher, and the step being run (which a KernelCrash blames)."""

    machine: Machine
    console: SerialConsole
    ssh: Optional[SshTransport]
    watcher: CrashWatcher
    transport: Transport
    out_dir: Path
    times: dict[str, float] = field(default_factory=dict)
    step: str = "boot"
    snapshot: str = ""          # the key of the snapshot it was restored from

    @property
    def reader(self) -> ConsoleReader:
        """The console pipeline (numbered lines, listeners, raw bytes)."""
        return self.console.reader

    def console_line(self) -> int:
        """Lines the console has shown so far (CrashReport.first_line_no counts
        the same lines: console.log's)."""
        return self.reader.lines_seen

    def run(self, command: str, deadline: Union[Deadline, float] = 30.0,
            via: Optional[Transport] = None) -> CommandResult:
        """Run a command over the scenario transport (or ``via``)."""
        transport = via or self.transport
        progress.detail(f"{transport.name}$ {command}")
        return transport.run(command, deadline)

    def check(self, command: str, deadline: Union[Deadline, float] = 30.0, step: str = "",
              blame: Optional[str] = None) -> str:
        return self.run(command, deadline).check(step or self.step, blame=blame).stdout

    def crashes(self) -> tuple[CrashReport, ...]:
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
        line = f"harness: step {step}"
        if self.ssh is not None and self.transport is self.ssh and "\n" not in step:
            progress.detail(f"ssh kmsg< {line}")
            self.ssh.kmsg_line(line)
            return
        self.run(f"echo '{line}' > /dev/kmsg", 10)


def _sigterm_as_interrupt() -> Any:
    """SIGTERM unwinds like Ctrl-C, so every ``with`` block cleans up."""
    from harness.signals import Terminated, installed
    if installed():   # the CLI's handler does this already (and more)
        return None

    def handler(signum: int, frame: Optional[FrameType]) -> None:
        raise Terminated()
    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not in the main thread
        return None


@contextmanager
def boot(art: KernelArtifacts, opts: BootOptions, out_dir: Path,
         progress: bool = True) -> Iterator[Guest]:
    """Boot ``art`` (or restore a snapshot of it booted with the same command
    line: harness.machine.snapshot) and yield a ready Guest; everything is torn
    down on exit."""
    previous = _sigterm_as_interrupt()
    run_dir = make_run_dir()
    try:
        key = generate_key(run_dir)
        snapshots = opts.snapshot and snapshot.enabled()
        if snapshots:      # key-less: the run's key is written in over the console
            initrd = guest_image.build_base_image().path
        else:
            initrd = guest_image.prepare_initrd(key.public_text, run_dir / "initrd.gz").path
        port = free_port() if opts.ssh else 0
        spec = VmSpec(kernel=art.image, initrd=str(initrd), run_dir=str(run_dir),
                      mode=opts.mode, mem_mb=opts.mem_mb, slots=opts.slots,
                      maxmem_mb=opts.maxmem_mb, smp=opts.smp, cpu=opts.cpu,
                      tcg_thread=opts.tcg_thread or "single", ssh_port=port,
                      cmdline=("printk.time=1",) + tuple(opts.cmdline),
                      devices=tuple(opts.devices),
                      gdb_port=free_port() if opts.gdb else None)
        snap_key = snapshot.key_for(spec) if snapshots else None
        with ExitStack() as stack:
            guest = None
            snap = snapshot.find(snap_key) if snap_key else None
            if snap is not None:
                guest = _restored(stack, snap, spec, key, opts, out_dir, progress)
                if guest is None:   # a fresh run folder (and key) for the boot
                    shutil.rmtree(run_dir, ignore_errors=True)
                    run_dir = make_run_dir()
                    key = generate_key(run_dir)
                    spec = with_fresh_ports(replace(spec, run_dir=str(run_dir)))
            if guest is None:
                machine = Machine(spec, out_dir, boot_timeout=opts.boot_timeout)
                if progress:    # the parameter (show the command line), not the module
                    ui.info("$ " + " ".join(machine.argv), "machine")
                stack.enter_context(machine)
                try:
                    guest = _bring_up(machine, key, opts, out_dir,
                                      save_as=snap_key if snapshots else None,
                                      key_over_console=snapshots)
                except HarnessError as e:      # QEMU's own fault first
                    cause = machine.explain(e)
                    if cause is e:
                        raise
                    raise cause from e
            try:
                yield guest
            finally:
                guest.close()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _restored(stack: ExitStack, snap: snapshot.Snapshot, spec: VmSpec, key: KeyPair,
              opts: BootOptions, out_dir: Path, progress: bool) -> Optional[Guest]:
    """The guest restored from ``snap``, or None (then the snapshot is removed and
    the caller boots): a snapshot that does not restore is a stale cache entry,
    not the kernel's fault."""
    restore_spec = replace(spec, devices=spec.devices + ("-incoming", "defer"))
    try:
        snapshot.prepare(snap, spec.run_dir)
        machine = Machine(restore_spec, out_dir, boot_timeout=opts.boot_timeout,
                          console_prelude=snap.console())
    except (OSError, ValueError, KeyError) as e:
        ui.warn(f"snapshot {snap.key} unreadable ({e}): booting instead", "machine")
        snap.remove()
        return None
    if progress:
        ui.info("$ " + " ".join(machine.argv), "machine")
    inner = ExitStack()
    try:
        inner.enter_context(machine)
        restore_s = snapshot.restore(machine, snap)
        guest = _bring_up(machine, key, opts, out_dir, key_over_console=True)
    except MachineError as e:
        fault = machine.fault
        inner.close()
        if fault is not None and fault.signal not in (None, signal.SIGABRT) \
                or fault is not None and fault.kind == "frozen" \
                or isinstance(e, SshUnavailable):
            # killed or stopped from outside: not a stale snapshot
            raise machine.explain(e) from e
        ui.warn(f"snapshot {snap.key} did not restore ({e.message}): booting instead",
                "machine")
        snap.remove()
        return None
    except BaseException:          # a crash blamed on the kernel, Ctrl-C: QEMU goes
        inner.close()
        raise
    stack.push(inner)
    guest.times["restored_s"] = round(restore_s, 3)
    guest.snapshot = snap.key
    return guest


def _bring_up(machine: Machine, key: KeyPair, opts: BootOptions, out_dir: Path,
              save_as: Optional[str] = None, key_over_console: bool = False) -> Guest:
    """Wait for the guest to be ready; ``save_as``: snapshot it then (under that
    key); ``key_over_console``: write the run's SSH key into it over the serial
    console (a key-less image); then connect SSH. A failure on the way names
    the step 'boot', not the transport it came through."""
    try:
        return _ready_guest(machine, key, opts, out_dir, save_as, key_over_console)
    except HarnessError as e:
        if not e.step or e.step in TRANSPORT_STEPS:
            e.step = "boot"
        raise


def _ready_guest(machine: Machine, key: KeyPair, opts: BootOptions, out_dir: Path,
                 save_as: Optional[str], key_over_console: bool) -> Guest:
    deadline = Deadline(opts.boot_timeout)
    reader = machine.reader
    assert reader is not None, "a launched Machine has a console reader"
    console = SerialConsole(reader, settle=SETTLE_S)
    times = {}
    try:
        ready = console.wait_ready(deadline)
    except MachineError as e:
        raise machine.explain(MachineError("the guest never became ready: " + e.message,
                                           step="boot", evidence=machine.console_tail())
                              ) from e
    faults.point("ready", "boot", machine=machine, console=reader)
    times["boot_to_ready_s"] = time.monotonic() - machine.times.launched
    words = ready.split()
    if "uptime" in words[:-1]:   # the guest's own clock: kernel + init time
        times["guest_uptime_at_ready_s"] = float(words[words.index("uptime") + 1])
    guest = Guest(machine, console, None, reader.watcher, console, out_dir, times)
    gate = CrashGate(reader, settle=SETTLE_S, step_of=lambda: guest.step)
    machine.crash_check = gate     # QMP waits end at a crash too
    machine.step_of = lambda: guest.step    # a QEMU fault names the step
    if save_as is not None:
        try:
            start = time.monotonic()
            snapshot.save(machine, save_as, machine.console_log)
            times["snapshot_save_s"] = round(time.monotonic() - start, 3)
        except (MachineError, HarnessError, OSError) as e:   # the run goes on without
            ui.warn(f"could not save a snapshot of the booted guest: {e}", "machine")
            if not machine.alive():
                raise
    if key_over_console:
        console.run(snapshot.key_command(key.public_text), deadline).check("boot")
    if opts.ssh:
        ssh = SshTransport(machine.spec.ssh_port, key, crash_check=gate,
                           alive_check=lambda: machine.check_alive(
                               f"running step {guest.step!r}", grace=0.5),
                           gone=lambda: machine.fault is not None)
        # dropbear listens before the guest says it is ready: SSH answers in
        # well under a second then; SSH_CONNECT_S bounds a forward that never does
        ssh.connect(deadline.sub(SSH_CONNECT_S),
                    alive=lambda: machine.check_alive("connecting SSH"))
        times["boot_to_ssh_s"] = time.monotonic() - machine.times.launched
        guest.ssh = ssh
        if opts.transport == "ssh":
            guest.transport = ssh
    return guest
