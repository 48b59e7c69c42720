"""The QEMU machine: VmSpec -> argv (pure), and Machine, a context manager.

Machine owns the QEMU process and what a run creates for it: a private run
folder (mode 0700, on /dev/shm) holding the QMP and console sockets and the
guest-RAM files, the process, the QMP connection, and the console reader
(``harness.machine.console.ConsoleReader``, started on the serial socket once QEMU
connects; the console pipeline itself lives there). Leaving the ``with``
block, normally or by exception, SIGINT or SIGTERM, shuts QEMU down (QMP
``quit``, then SIGKILL), closes the console and removes the folder. QEMU also
gets PR_SET_PDEATHSIG, so it cannot outlive a harness that is killed outright.

The QEMU process is watched from launch to shutdown (:class:`QemuWatch`: a
pidfd for its exit, its process state for a freeze). Its first fault is kept
as a :class:`QemuFault` naming the guest's step and what the harness was doing
(``Machine.doing``), and every wait reaches it: a frozen QEMU (stopped by
SIGSTOP or a debugger for ``FREEZE_S``) is killed, so every socket it holds
closes and each wait (SSH, QMP, console, gdb) ends at once; whatever noticed
first, ``Machine.explain`` turns its error into the fault, the true cause.
"""
from __future__ import annotations

import ctypes
import os
import select
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional

from harness import progress
from harness.errors import GuestCrash, HarnessError, MachineError
from harness.host import FIRMWARE, FIRMWARE_PACKAGE, Deadline, require_file, require_tool
from harness.machine.console import ConsoleReader, SocketStream

RAM_BASE = 0x40000000          # guest physical address of RAM on QEMU virt
SHM = Path("/dev/shm")


@dataclass(frozen=True)
class VmSpec:
    """Everything that decides the QEMU command line."""
    kernel: str
    initrd: str
    run_dir: str
    mode: str = "acpi"                 # "acpi" (edk2 + ACPI) or "dt"
    mem_mb: int = 1024
    slots: int = 4
    maxmem_mb: int = 8192
    smp: int = 2
    cpu: str = "max"                   # -cpu: one of CPU_MODELS
    # TCG's vCPU threads: "single" runs every vCPU on one host thread, round
    # robin; "multi" gives each vCPU its own (MTTCG, QEMU's default for arm64
    # on x86). See TCG_THREADS.
    tcg_thread: str = "single"
    ssh_port: int = 0                  # 0: no network
    cmdline: tuple[str, ...] = ()      # extra kernel parameters
    devices: tuple[str, ...] = ()      # extra argv pairs, e.g. ("-device", "...")
    firmware: str = str(FIRMWARE)
    qemu: str = "qemu-system-aarch64"
    gdb_port: Optional[int] = None     # QEMU gdbstub on 127.0.0.1:PORT (harness.inspect.gdb)

    @property
    def ram_path(self) -> str:
        return str(Path(self.run_dir) / "ram0")

    @property
    def qmp_path(self) -> str:
        return str(Path(self.run_dir) / "qmp.sock")

    @property
    def console_path(self) -> str:
        return str(Path(self.run_dir) / "console.sock")

    def kernel_cmdline(self) -> str:
        base = ["console=ttyAMA0", "panic=-1", "nokaslr", "rdinit=/init"]
        return " ".join(base + list(self.cmdline))


# -accel tcg,thread=...: "single" is the harness's default. Measured on a
# 2-core host (`run -q --method all` timed by the shell, two guests of 2 vCPUs):
# 9.3-9.9 s and 10 s of QEMU CPU with "single", 15.9-17.6 s and 19.7 s with
# "multi": four vCPU threads on two cores (most likely spinning on each other:
# locks held by a descheduled vCPU, cross-vCPU TLB flush rendezvous; not
# traced). One guest alone is faster
# too (probe 5.3 s against 5.7 s). The guest still has -smp CPUs; only the race
# method, whose readers must run truly alongside the removals, asks for "multi".
TCG_THREADS = ("single", "multi")
# -cpu: 'max' (every feature TCG has, 48-bit PA or more) by default; the
# others are older cores whose smaller physical address range (cortex-a53 40
# bits, cortex-a57/a72 44) makes a KASLR kernel randomise its linear region
CPU_MODELS = ("max", "cortex-a57", "cortex-a72", "cortex-a53")


def qemu_argv(spec: VmSpec) -> list[str]:
    """The QEMU command line for a spec. Pure: no I/O, no randomness."""
    if spec.mode not in ("acpi", "dt"):
        raise HarnessError(f"unknown boot mode {spec.mode!r} (acpi or dt)", step="boot")
    if spec.tcg_thread not in TCG_THREADS:
        raise HarnessError(f"unknown TCG threading {spec.tcg_thread!r} "
                           f"({' or '.join(TCG_THREADS)})", step="boot")
    if spec.cpu not in CPU_MODELS:
        raise HarnessError(f"unknown CPU model {spec.cpu!r} ({', '.join(CPU_MODELS)})",
                           step="boot")
    argv = [spec.qemu, "-M", "virt,gic-version=3,memory-backend=ram0",
            "-cpu", spec.cpu, "-accel", f"tcg,thread={spec.tcg_thread}", "-smp", str(spec.smp),
            "-m", f"{spec.mem_mb}M,slots={spec.slots},maxmem={spec.maxmem_mb}M",
            "-object", f"memory-backend-file,id=ram0,size={spec.mem_mb}M,"
                       f"mem-path={spec.ram_path},share=on",
            "-nodefaults", "-display", "none", "-no-reboot",
            "-chardev", f"socket,id=qmp0,path={spec.qmp_path}",
            "-mon", "chardev=qmp0,mode=control",
            "-chardev", f"socket,id=ser0,path={spec.console_path}",
            "-serial", "chardev:ser0",
            "-kernel", spec.kernel, "-initrd", spec.initrd,
            "-append", spec.kernel_cmdline()]
    if spec.mode == "acpi":
        # edk2 loads the kernel and hides the DT: Linux boots with ACPI, and
        # QEMU only creates the GED device that pc-dimm hotplug needs when
        # firmware is loaded.
        argv += ["-bios", spec.firmware]
    if spec.ssh_port:
        # romfile= : no iPXE ROM needed (Debian ships none without ipxe-qemu).
        argv += ["-netdev", f"user,id=n0,restrict=on,"
                            f"hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22",
                 "-device", "virtio-net-pci,netdev=n0,romfile="]
    if spec.gdb_port:
        argv += ["-gdb", f"tcp:127.0.0.1:{spec.gdb_port}"]
    return argv + [a.replace("{run_dir}", spec.run_dir) for a in spec.devices]


# QEMU's stderr when a port free_port() found was taken before QEMU bound it:
# the SSH forward ("Could not set up host forwarding rule 'tcp:...'") or the
# gdbstub ("-gdb tcp:127.0.0.1:N: Failed to find an available port: Address
# already in use", seen once in make test)
PORT_TAKEN = ("host forwarding", "Failed to find an available port")


def port_taken(stderr: str) -> bool:
    return any(s in stderr for s in PORT_TAKEN)


def with_fresh_ports(spec: VmSpec) -> VmSpec:
    """``spec`` with new free ports for the SSH forward and the gdbstub it has
    (none where it has none)."""
    return replace(spec, ssh_port=free_port() if spec.ssh_port else 0,
                   gdb_port=free_port() if spec.gdb_port else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


RUN_PREFIX = "hotplug-harness-"
OWNER_FILE = "owner"           # "PID STARTTIME" of the harness process


def make_run_dir(prefix: str = RUN_PREFIX) -> Path:
    """A private folder on /dev/shm (falls back to $TMPDIR), mode 0700, naming
    its owner (PID and start time); folders of dead runs are swept first."""
    from harness.signals import start_time
    base = SHM if SHM.is_dir() and os.access(SHM, os.W_OK) else None
    sweep_run_dirs(Path(base or tempfile.gettempdir()), prefix)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    os.chmod(path, 0o700)
    (path / OWNER_FILE).write_text(f"{os.getpid()} {start_time(os.getpid())}\n")
    return path


def run_dir_owner_alive(path: Path) -> bool | None:
    """True if the harness process that made ``path`` still runs, False if it
    is gone, None if the folder names no owner (not ours to judge)."""
    from harness.signals import start_time
    try:
        words = (path / OWNER_FILE).read_text().split()
        pid = int(words[0])
    except (OSError, ValueError, IndexError):
        return None
    started = start_time(pid)
    if started is None:
        return False                      # no such process
    if len(words) > 1 and words[1] != "None":
        return str(started) == words[1]   # same PID, same process?
    try:                                  # no start time: a harness process?
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"harness" in cmdline


def sweep_run_dirs(base: Path = SHM, prefix: str = RUN_PREFIX) -> list[Path]:
    """Remove run folders (RAM files, keys, sockets) left by harness runs that
    died without cleaning up: only folders of ours (prefix, our uid, a real
    folder, an owner file) whose owner process is gone."""
    removed: list[Path] = []
    try:
        entries = list(base.iterdir())
    except OSError:
        return removed
    for path in entries:
        if not path.name.startswith(prefix):
            continue
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            continue
        if run_dir_owner_alive(path) is not False:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
        progress.warn(f"removed {path}, left by a run that died", "machine")
    return removed


# ------------------------------------------------------------ the watch -----

# A QEMU whose process stays stopped (state T: SIGSTOP, SIGTSTP; t: a
# debugger's stop) this long is taken for frozen, and killed: a stopped
# process never answers, and every wait would sit until its own timeout.
# Nothing in the harness stops QEMU's process (the guest is paused over QMP,
# which leaves the process running). HOTPLUG_HARNESS_FREEZE_S=0 turns this off
# (to stop QEMU in a debugger of your own).
FREEZE_S = float(os.environ.get("HOTPLUG_HARNESS_FREEZE_S", "1.0"))
WATCH_POLL_S = 0.1
# a QEMU whose sockets closed is waited for this long to exit (the kernel
# closes a dying process's files before its parent can wait for it)
EXIT_GRACE_S = 1.0


@dataclass(frozen=True)
class QemuFault:
    """The first thing that happened to the QEMU process on its own: it
    exited (``signal`` or ``code``) or froze, during ``step`` while ``doing``."""
    kind: str                  # "exited" or "frozen"
    at: float                  # time.monotonic() when the watch saw it
    step: str = "boot"
    doing: str = ""            # e.g. "with gdb attached"
    code: Optional[int] = None       # exit code (exited normally)
    signal: Optional[int] = None     # the signal that killed it
    state: str = ""                  # process state when frozen (T or t)

    @property
    def how(self) -> str:
        if self.kind == "frozen":
            what = "a debugger's stop" if self.state == "t" else "SIGSTOP"
            return (f"its process stopped by {what}, state {self.state}, for "
                    f"{FREEZE_S:g}s; the harness killed it")
        if self.signal is not None:
            return f"killed by signal {self.signal}, {_signame(self.signal)}"
        return f"exit code {self.code}"

    def message(self) -> str:
        """The cause, first: 'QEMU exited (killed by signal 9, SIGKILL) during
        step 'remove 0x80000000' with gdb attached'."""
        verb = "froze" if self.kind == "frozen" else "exited"
        text = f"QEMU {verb} ({self.how}) during step {self.step!r}"
        return text + (f" {self.doing}" if self.doing else "")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "step": self.step, "doing": self.doing,
                "code": self.code, "signal": self.signal, "state": self.state,
                "message": self.message()}


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return "?"


def _proc_state(pid: int) -> str:
    """The one-letter state of /proc/PID/stat ("" if gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return ""
    return data[data.rfind(b")") + 2:][:1].decode(errors="replace")


class QemuWatch:
    """One thread watching the QEMU process until ``stop()``: its exit through
    a pidfd (woken the moment it exits), a freeze through its process state.
    ``fault`` is the first fault seen (None while QEMU is well); listeners
    (``on_fault``) are called once with it, from the watch's thread."""

    def __init__(self, proc: subprocess.Popen[bytes],
                 step_of: Callable[[], str] = lambda: "boot",
                 doing_of: Callable[[], str] = lambda: "",
                 freeze_s: Optional[float] = None):
        self.proc = proc
        self.step_of, self.doing_of = step_of, doing_of
        self.freeze_s = FREEZE_S if freeze_s is None else freeze_s
        self.fault: Optional[QemuFault] = None
        self.listeners: list[Callable[[QemuFault], object]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        try:
            self._pidfd: Optional[int] = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):     # an old kernel: poll the PID
            self._pidfd = None
        self.thread = threading.Thread(target=self._watch, daemon=True,
                                       name="qemu-watch")

    def start(self) -> QemuWatch:
        self.thread.start()
        return self

    def stop(self) -> None:
        """The harness shuts QEMU down itself from now on: not a fault."""
        self._stop.set()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout=1.0)
        if self._pidfd is not None:
            try:
                os.close(self._pidfd)
            except OSError:
                pass
            self._pidfd = None

    def check(self) -> None:
        """Look now (the thread looks every WATCH_POLL_S): an exit is seen at
        once, whoever waits."""
        if self.fault is None and not self._stop.is_set():
            self._look(time.monotonic(), None)

    def _watch(self) -> None:
        stopped_since: Optional[float] = None
        poller = select.poll()
        if self._pidfd is not None:
            poller.register(self._pidfd, select.POLLIN)
        while not self._stop.is_set() and self.fault is None:
            try:
                poller.poll(int(WATCH_POLL_S * 1000)) if self._pidfd is not None \
                    else self._stop.wait(WATCH_POLL_S)
            except (OSError, ValueError):   # the pidfd was closed by stop()
                return
            if self._stop.is_set():
                return
            stopped_since = self._look(time.monotonic(), stopped_since)

    def _look(self, now: float, stopped_since: Optional[float]) -> Optional[float]:
        with self._lock:
            if self.fault is not None or self._stop.is_set():
                return None
            code = self.proc.poll()
            if code is not None:
                self._record(QemuFault("exited", now, self.step_of(), self.doing_of(),
                                       code=code if code >= 0 else None,
                                       signal=-code if code < 0 else None))
                return None
            state = _proc_state(self.proc.pid) if self.freeze_s > 0 else ""
            if state not in ("T", "t"):
                return None
            if stopped_since is None:
                return now
            if now - stopped_since < self.freeze_s:
                return stopped_since
            self._record(QemuFault("frozen", now, self.step_of(), self.doing_of(),
                                   state=state))
        try:   # every socket it holds closes: SSH, QMP, console, gdb waits end
            self.proc.kill()
        except OSError:
            pass
        return None

    def _record(self, fault: QemuFault) -> None:
        self.fault = fault
        progress.warn(fault.message(), "machine")
        for listener in list(self.listeners):
            try:
                listener(fault)
            except Exception:   # a listener must not stop the watch
                pass


# ------------------------------------------------------------ machine -------

def _pdeathsig() -> None:  # runs in the child, before exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class MachineTimes:
    launched: float = 0.0
    shutdown_s: float = 0.0


class Machine:
    """A running QEMU guest. Use as a context manager."""

    def __init__(self, spec: VmSpec, out_dir: Path, boot_timeout: float = 60.0,
                 console_prelude: bytes = b""):
        self.spec = spec
        # shown by the console before what QEMU sends (a restored guest's boot:
        # harness.machine.snapshot)
        self.console_prelude = console_prelude
        self.out_dir = Path(out_dir)
        self.boot_timeout = boot_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        # qemu.qmp.legacy.QEMUMonitorProtocol once launched (a fake in tests)
        self.qmp: Any = None
        self.reader: ConsoleReader | None = None
        self.times = MachineTimes()
        self.argv = qemu_argv(spec)
        self.stderr_path = self.out_dir / "qemu.stderr"
        self.console_log = self.out_dir / "console.log"
        self._closed = False
        # set by the session (a console.CrashGate): raises KernelCrash when the
        # console shows one, so a QMP wait ends at once with blame on the kernel
        # (not at its timeout)
        self.crash_check: Callable[[], None] | None = None
        # set by the session: the guest's current step, named by a QemuFault
        self.step_of: Callable[[], str] = lambda: "boot"
        self._doing: list[str] = []        # what the harness is doing (doing())
        self.watch: QemuWatch | None = None

    # -- launch ------------------------------------------------------------
    def __enter__(self) -> Machine:
        try:
            self.launch()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def launch(self) -> None:
        from qemu.qmp.legacy import QEMUMonitorProtocol
        require_tool(self.spec.qemu)
        if self.spec.mode == "acpi":
            require_file(Path(self.spec.firmware), FIRMWARE_PACKAGE, "UEFI firmware")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "qemu.cmdline").write_text(
            " ".join(shlex.quote(a) for a in self.argv) + "\n")
        for attempt in range(3):
            try:
                return self._launch_once(QEMUMonitorProtocol)
            except MachineError as e:
                # another process took a free port between our probe and
                # QEMU's bind: pick others
                if not port_taken(e.evidence) or attempt == 2:
                    raise
                self._reset_for_retry()

    def _launch_once(self, qmp_class: Callable[..., Any]) -> None:
        self.qmp = qmp_class(self.spec.qmp_path, server=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.spec.console_path)
        listener.listen(1)
        try:
            self._spawn()
            self._accept(listener)
        finally:
            listener.close()

    def _reset_for_retry(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        try:
            self.qmp.close()
        except Exception:
            pass
        for path in (self.spec.qmp_path, self.spec.console_path):
            Path(path).unlink(missing_ok=True)
        self.proc = None
        self.spec = with_fresh_ports(self.spec)
        self.argv = qemu_argv(self.spec)
        (self.out_dir / "qemu.cmdline").write_text(
            " ".join(shlex.quote(a) for a in self.argv) + "\n")

    def _spawn(self) -> None:
        self.times.launched = time.monotonic()
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                         stdout=err, stderr=err,
                                         start_new_session=True,
                                         preexec_fn=_pdeathsig)
        if self.watch is not None:      # a relaunch (a port was taken)
            self.watch.stop()
        self.watch = QemuWatch(self.proc, step_of=lambda: self.step_of(),
                               doing_of=lambda: self._doing[-1] if self._doing else ""
                               ).start()
        from harness import faults
        faults.point("launched", qemu=self.proc.pid)

    def _accept(self, listener: socket.socket) -> None:
        listener.settimeout(0.1)
        deadline = Deadline(15)
        while True:
            try:
                conn, _ = listener.accept()
                break
            except socket.timeout:
                self.check_alive("connecting to the console")
                if deadline.expired():
                    raise MachineError("QEMU did not connect to the console socket",
                                       step="boot", evidence=self._stderr_tail()) from None
        conn.settimeout(None)
        self.reader = ConsoleReader(SocketStream(conn), self.console_log)
        if self.console_prelude:
            self.reader.feed(self.console_prelude)
        self.reader.start()
        try:
            self.qmp.accept(timeout=max(deadline.remaining(), 1.0))
        except Exception as e:  # qemu.qmp raises several kinds
            self.check_alive("connecting QMP")
            raise MachineError(f"QMP connection failed: {e}", step="boot",
                               evidence=self._stderr_tail()) from e

    # -- state ---------------------------------------------------------------
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_exit(self, seconds: float) -> None:
        """Give a QEMU that is on its way out up to ``seconds`` to exit."""
        end = time.monotonic() + seconds
        while self.alive() and time.monotonic() < end:
            if self.proc is not None and _proc_state(self.proc.pid) in ("T", "t"):
                end = max(end, time.monotonic() + FREEZE_S + 0.5)   # the watch kills it
            time.sleep(0.05)

    @contextmanager
    def doing(self, what: str) -> Iterator[None]:
        """Name what the harness does meanwhile ("with gdb attached"): a fault
        in the block names it after the step."""
        self._doing.append(what)
        try:
            yield
        finally:
            self._doing.remove(what)

    @property
    def fault(self) -> Optional[QemuFault]:
        """The QEMU process's first fault (exit or freeze), None while well. A
        console at its end means QEMU is on its way out: its sockets close
        before the process can be waited for, so it is given EXIT_GRACE_S."""
        if self.watch is None:
            return None
        self.watch.check()
        if self.watch.fault is None and self.reader is not None \
                and getattr(self.reader, "eof", False):
            self.wait_exit(EXIT_GRACE_S)
            self.watch.check()
        return self.watch.fault

    def fault_error(self, then: str = "") -> Optional[MachineError]:
        """The fault as the error to report (the cause first; ``then``: what
        noticed it), or None."""
        fault = self.fault
        if fault is None:
            return None
        evidence = (f"then: {then}\n" if then else "") + self._stderr_tail() \
            + "\n--- console tail ---\n" + self.console_tail()
        err = MachineError(fault.message(), step=fault.step, evidence=evidence)
        err.fault = fault       # type: ignore[attr-defined]
        return err

    def explain(self, error: HarnessError) -> HarnessError:
        """The true cause of ``error``: a kernel crash stays the kernel's; else
        a QEMU fault (exit or freeze) comes first, ``error`` kept as what
        noticed it; else ``error`` itself."""
        if isinstance(error, GuestCrash) or getattr(error, "fault", None) is not None:
            return error
        if self.crash_check is not None and self.fault is not None:
            try:               # QEMU exited after a panic: the kernel's doing
                self.crash_check()
            except GuestCrash as crash:
                return crash
        cause = self.fault_error(then=f"[{error.step}] {error.message}" if error.step
                                 else error.message)
        return cause if cause is not None else error

    def check_alive(self, doing: str, step: str = "boot", grace: float = 0.0) -> None:
        """MachineError naming QEMU's fault (how it exited or froze, the step),
        its stderr and console tail, if QEMU exited; waits up to ``grace`` s
        for it to exit (a connection may drop just before QEMU does)."""
        self.wait_exit(grace)
        cause = self.fault_error(then=doing)
        if cause is not None:
            raise cause
        if self.proc is not None and self.proc.poll() is not None:
            raise MachineError(
                f"QEMU exited with code {self.proc.returncode} while {doing}",
                step=step, evidence=self._stderr_tail() + "\n--- console tail ---\n"
                + self.console_tail())

    def _stderr_tail(self) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            text = ""
        return ("$ " + " ".join(shlex.quote(a) for a in self.argv) + "\n"
                + "\n".join(text.splitlines()[-20:]))

    def console_tail(self, lines: int = 50) -> str:
        try:
            text = self.console_log.read_bytes().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(l.rstrip("\r") for l in text.splitlines()[-lines:])

    # -- QMP -------------------------------------------------------------------
    def qmp_cmd(self, name: str, **args: Any) -> Any:
        from qemu.qmp import ExecuteError
        self._guard(f"sending QMP {name}")
        try:
            return self.qmp.cmd(name, **args)
        except ExecuteError as e:
            raise HarnessError(f"QMP {name} failed: {e}", step="qmp",
                               evidence=f"sent: {e.sent}\nreceived: {e.received}") from e
        except Exception as e:   # the connection broke: QEMU died, or the kernel
            self._qmp_lost(name, e)
            raise

    def _guard(self, doing: str) -> None:
        """Before and during QMP work: a kernel crash on the console first
        (KernelCrash: a panic also ends QEMU, and that is the kernel's fault),
        then QEMU gone (MachineError)."""
        if self.crash_check is not None:
            self.crash_check()
        self.check_alive(doing, step="qmp")

    def _qmp_lost(self, name: str, exc: Exception) -> None:
        """After a broken QMP call: a kernel crash on the console (KernelCrash),
        QEMU gone (MachineError with its exit code, stderr and console tail, as
        for an SSH step), else a MachineError naming the call."""
        self.wait_exit(2.0)      # the socket may close just before QEMU exits
        self._guard(f"running QMP {name}")
        raise MachineError(f"QMP {name}: the connection failed: "
                           f"{type(exc).__name__}: {exc}", step="qmp",
                           evidence=self._stderr_tail()) from exc

    def wait_event(self, name: str, match: dict[str, Any] | None = None,
                   deadline: Deadline | float = 10.0) -> dict[str, Any]:
        """Wait for a QMP event whose data contains ``match`` (partial dict)."""
        with self.doing(f"waiting for QMP event {name}"):
            return self._wait_event(name, match, deadline)

    def _wait_event(self, name: str, match: dict[str, Any] | None,
                    deadline: Deadline | float) -> dict[str, Any]:
        if not isinstance(deadline, Deadline):
            deadline = Deadline(deadline)
        from harness import faults
        faults.point("qmp-wait", name, machine=self, console=self.reader,
                     qemu=getattr(self.proc, "pid", None))
        while not deadline.expired():
            self._guard(f"waiting for QMP event {name}")
            try:
                event = self.qmp.pull_event(wait=float(min(deadline.remaining(), 0.2)))
            except Exception:  # asyncio.TimeoutError: nothing yet
                continue
            if event and event.get("event") == name and _partial_match(
                    match or {}, event.get("data", {})):
                return dict(event)
        raise MachineError(f"no QMP event {name} {match or ''} within "
                           f"{deadline.seconds:.0f}s", step="qmp",
                           evidence=self.console_tail(20))

    # -- shutdown --------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        start = time.monotonic()
        if self.watch is not None:
            self.watch.check()       # a fault before the shutdown is still one
            self.watch.stop()
        try:
            self._stop_qemu()
        finally:
            if self.reader is not None:
                self.reader.close()
            if self.qmp is not None:
                try:
                    self.qmp.close()
                except Exception:
                    pass
            shutil.rmtree(self.spec.run_dir, ignore_errors=True)
            self.times.shutdown_s = time.monotonic() - start

    def _stop_qemu(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if _proc_state(self.proc.pid) in ("T", "t"):    # stopped: it cannot quit
            self.proc.kill()
            self.proc.wait()
            return
        try:
            if self.qmp is not None:
                self.qmp.settimeout(2.0)
                self.qmp.cmd("quit")
        except Exception:
            pass
        try:
            self.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _partial_match(want: dict[str, Any], got: dict[str, Any]) -> bool:
    for key, value in want.items():
        if key not in got:
            return False
        if isinstance(value, dict):
            if not isinstance(got[key], dict) or not _partial_match(value, got[key]):
                return False
        elif got[key] != value:
            return False
    return True
