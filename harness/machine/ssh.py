"""SSH transport (paramiko) to the guest's dropbear, through QEMU's loopback forward.

Keys are per run: an ed25519 key pair is generated in the run's private folder
and its public half goes into the guest image's key overlay. The guest's host
key is created by dropbear at boot, so it is accepted on first sight within a
run (the forward is bound to 127.0.0.1 and lives as long as the run).

A channel that fails to open (paramiko's "Timeout opening channel": dropbear
slow to answer on a loaded host) is a transient fault when QEMU still runs
and the console shows no crash: the command never reached the guest, so it is
opened again, at most ``RETRIES`` times per command and ``RETRY_BUDGET`` times
per connection. Each retry is kept in ``SshTransport.retries`` (the report
lists them in the method's notes).
"""
from __future__ import annotations

import io
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from harness.errors import MachineError
from harness.host import Deadline
from harness.machine.transport import CommandResult, Transport


@dataclass(frozen=True)
class KeyPair:
    private_path: Path
    public_text: str


def generate_key(folder: Path) -> KeyPair:
    """A fresh ed25519 key pair, private half mode 0600 in ``folder``."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    path = Path(folder) / "id_ed25519"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    return KeyPair(path, public.decode() + " hotplug-harness\n")


# a channel that would not open is opened again this often per command, and
# this often in all per connection (a method's run)
RETRIES = 2
RETRY_BUDGET = 6
RETRY_PAUSE_S = 0.5
# how long one channel open may take (paramiko's default is 10 s too)
OPEN_TIMEOUT_S = 10.0
# after a lost exchange: how long a crash is given to show on the console
LOST_WAIT_S = 1.0
# connecting: how long the forward may refuse connections before it counts as
# gone (QEMU listens on it from its start: a refusal is never a slow guest)
REFUSED_S = 2.0


@dataclass(frozen=True)
class Retry:
    """One transient SSH fault retried: what was run, what failed, which try."""
    what: str
    error: str
    attempt: int          # the try that failed (1 = the first)
    at: float             # seconds since the connection was made

    def note(self) -> str:
        return (f"ssh retried: opening a channel for {self.what!r} failed "
                f"({self.error}) on try {self.attempt}, {self.at:.1f}s into the run; "
                "QEMU was running and the console showed no crash")


class _Watchdog:
    """Closes the SSH connection when the deadline passes, the console shows
    a crash or QEMU exited or froze, so that no paramiko call can block a step
    forever."""

    def __init__(self, ssh: SshTransport, deadline: Deadline):
        self.ssh, self.deadline = ssh, deadline
        self.reason = ""
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        gate = self.ssh.crash_check
        gone = self.ssh.gone
        while not self.stop.wait(0.1):
            if self.deadline.expired():
                self.reason = "timeout"
            elif gate is not None and getattr(gate, "pending", lambda: False)():
                self.reason = "crash"
            elif gone is not None and gone():
                self.reason = "qemu"
            if self.reason:
                transport = self.ssh.client and self.ssh.client.get_transport()
                if transport:
                    transport.close()
                return

    def __enter__(self) -> _Watchdog:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


CLOSED = "the connection closed without a banner"


class SshUnavailable(MachineError):
    """The forward refuses, or nothing answers behind it, once the guest is
    ready: not a slow guest and not a stale snapshot."""


def _refused(e: BaseException) -> bool:
    """Was the TCP connection refused (paramiko wraps the refusal)?"""
    if isinstance(e, ConnectionRefusedError):
        return True
    errors = getattr(e, "errors", None) or {}  # paramiko's NoValidConnectionsError
    return bool(errors) and all(isinstance(x, ConnectionRefusedError)
                                for x in errors.values())


class SshTransport(Transport):
    name = "ssh"

    def __init__(self, port: int, key: KeyPair, host: str = "127.0.0.1",
                 crash_check: Optional[Callable[[], None]] = None,
                 alive_check: Optional[Callable[[], None]] = None,
                 gone: Optional[Callable[[], bool]] = None):
        self.port, self.key, self.host = port, key, host
        # raises GuestCrash; a console.CrashGate also has pending() and wait()
        self.crash_check = crash_check
        self.alive_check = alive_check   # raises MachineError if QEMU died
        self.gone = gone                 # True once QEMU exited or froze
        self.client: Any = None          # a paramiko.SSHClient once connected
        self._kmsg: Optional[KmsgChannel] = None
        self.retries: list[Retry] = []   # transient faults retried (the report's)
        self.connected_at = time.monotonic()

    def connect(self, deadline: Deadline,
                alive: Callable[[], None] = lambda: None) -> float:
        """Retry until dropbear answers or the deadline passes; returns seconds."""
        start = time.monotonic()
        pkey = paramiko.Ed25519Key.from_private_key(
            io.StringIO(self.key.private_path.read_text()))
        last = None
        refused_since: Optional[float] = None
        while not deadline.expired():
            alive()
            client = paramiko.SSHClient()
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
            try:
                client.connect(self.host, port=self.port, username="root", pkey=pkey,
                               timeout=max(0.5, min(3.0, deadline.remaining())),
                               banner_timeout=3, auth_timeout=3,
                               allow_agent=False, look_for_keys=False)
                self.client = client
                self.connected_at = time.monotonic()
                return time.monotonic() - start
            except (paramiko.SSHException, OSError, EOFError) as e:
                last = e
                client.close()
                why = "refused" if _refused(e) else self.banner_missing(0.5)
                if why in ("refused", CLOSED):
                    refused_since = refused_since or time.monotonic()
                    if time.monotonic() - refused_since >= REFUSED_S:
                        raise SshUnavailable(
                            f"the SSH forward {self.host}:{self.port} refuses connections "
                            f"(for {REFUSED_S:g}s): QEMU's host forward is gone"
                            if why == "refused" else
                            f"the guest's SSH server does not answer on {self.host}:"
                            f"{self.port} ({why}, for {REFUSED_S:g}s, after the guest was "
                            "ready): sshd died or was killed", step="boot") from e
                else:
                    refused_since = None
                time.sleep(0.1)
        raise MachineError(f"no SSH answer on 127.0.0.1:{self.port} within "
                           f"{deadline.seconds:.0f}s: {last}", step="boot")

    def run(self, command: str, deadline: Union[Deadline, float] = 30.0) -> CommandResult:
        if not isinstance(deadline, Deadline):
            deadline = Deadline(deadline)
        gate = self.crash_check
        if gate:
            gate()
        if self.client is None or not self.client.get_transport() \
                or not self.client.get_transport().is_active():
            self._explain_failure()
            raise MachineError("the SSH connection is gone (the guest died or "
                               "an earlier command timed out)", step="ssh")
        start = time.monotonic()
        out, err = bytearray(), bytearray()
        code: Optional[int] = None
        failure: object = None
        with _Watchdog(self, deadline) as dog:
            try:
                code = self._exchange(command, out, err, deadline)
            except (paramiko.SSHException, OSError, EOFError) as e:
                code = None
                failure = e
        if code == -1:      # the channel died without an exit status
            code = None
            failure = "the connection closed without an exit status"
        if code is None:
            self._explain_failure()
        elif gate and dog.reason == "crash":
            gate()
        if dog.reason == "timeout" or code is None:
            if isinstance(failure, BaseException) and not str(failure):
                failure = f"{type(failure).__name__} (the connection closed)"
            why = (f"timed out after {deadline.seconds:.0f}s" if dog.reason == "timeout"
                   else f"failed: {failure}")
            raise MachineError(f"command {why} over ssh: {command}", step="ssh",
                               evidence=out.decode(errors="replace")[-2000:])
        if gate:
            gate()
        return CommandResult(command=command, stdout=out.decode(errors="replace"),
                             stderr=err.decode(errors="replace"), exit_code=code,
                             seconds=time.monotonic() - start, transport=self.name)

    def open_channel(self, what: str, deadline: Optional[Deadline] = None) -> Any:
        """A new session channel; one that fails to open is opened again while
        the fault is transient (see the module docstring), each retry kept in
        ``retries``."""
        attempt = 1
        while True:
            transport = self.client and self.client.get_transport()
            if not transport or not transport.is_active():
                raise EOFError("the SSH connection is gone")
            left = OPEN_TIMEOUT_S if deadline is None else deadline.remaining()
            try:
                return transport.open_session(timeout=max(0.5, min(OPEN_TIMEOUT_S, left)))
            except (paramiko.SSHException, OSError, EOFError) as e:
                if not self._transient(attempt, deadline):
                    raise
                self.retries.append(Retry(what, f"{type(e).__name__}: {e}".rstrip(": "),
                                          attempt, time.monotonic() - self.connected_at))
                attempt += 1
                time.sleep(RETRY_PAUSE_S)

    def _transient(self, attempt: int, deadline: Optional[Deadline]) -> bool:
        """Is a channel that did not open worth another try: tries and budget
        left, time left, QEMU running, no crash on the console, the connection
        still up?"""
        if attempt > RETRIES or len(self.retries) >= RETRY_BUDGET:
            return False
        if deadline is not None and deadline.remaining() < RETRY_PAUSE_S + 1.0:
            return False
        if self.gone is not None and self.gone():
            return False
        gate = self.crash_check
        if gate is not None and getattr(gate, "pending", lambda: False)():
            return False
        transport = self.client and self.client.get_transport()
        return bool(transport and transport.is_active())

    def _exchange(self, command: str, out: bytearray, err: bytearray,
                  deadline: Optional[Deadline] = None) -> int:
        chan = self.open_channel(command, deadline)
        chan.settimeout(0.2)
        chan.exec_command(command)
        while not chan.exit_status_ready() or chan.recv_ready() or chan.recv_stderr_ready():
            self._drain(chan, out, err)
            if chan.closed and not chan.exit_status_ready():
                raise EOFError("channel closed")
        self._drain(chan, out, err)
        code: int = chan.recv_exit_status()
        chan.close()
        return code

    @staticmethod
    def _drain(chan: Any, out: bytearray, err: bytearray) -> None:
        try:
            while chan.recv_ready():
                out += chan.recv(65536)
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
            if not chan.exit_status_ready():
                data = chan.recv(65536)
                out += data
        except socket.timeout:
            pass

    def put_text(self, remote: str, text: str, deadline: float = 30.0) -> None:
        """Write ``text`` to ``remote`` through ``cat`` on an exec channel."""
        try:
            chan = self.open_channel(f"cat > {remote}", Deadline(deadline))
        except (paramiko.SSHException, OSError, EOFError) as e:
            self._explain_failure()
            raise MachineError(f"writing {remote} over ssh failed: {e}", step="ssh") from e
        chan.settimeout(deadline)
        chan.exec_command(f"cat > '{remote}'")
        chan.sendall(text.encode())
        chan.shutdown_write()
        code = chan.recv_exit_status()
        chan.close()
        if code != 0:
            raise MachineError(f"writing {remote} over ssh failed (exit {code})",
                               step="ssh")

    def kmsg_line(self, text: str, timeout: float = 10.0) -> None:
        """Write one line into the kernel log through a long-lived channel
        (:class:`KmsgChannel`): a shell builtin loop, so no guest process per
        line (a fresh exec channel costs ~60 ms under TCG and, inside a removal
        watched by gdb, stops gdb at every page its process frees)."""
        gate = self.crash_check
        if gate:
            gate()
        try:
            if self._kmsg is None or not self._kmsg.alive():
                if self.client is None or not self.client.get_transport():
                    raise MachineError("the SSH connection is gone", step="ssh")
                self._kmsg = self._kmsg_channel()
            self._kmsg.write(text, timeout)
        except (MachineError, paramiko.SSHException, OSError, EOFError) as e:
            self._explain_failure()
            if isinstance(e, MachineError):
                raise
            raise MachineError(f"writing to /dev/kmsg over ssh failed: "
                               f"{e or type(e).__name__}", step="ssh") from e

    def _explain_failure(self) -> None:
        """A lost exchange: a crash the console shows (waited for a moment) or a
        QEMU that exited explains it, and is raised instead (GuestCrash,
        MachineError); returns if neither does."""
        gate = self.crash_check
        if gate and hasattr(gate, "wait"):
            gate.wait(LOST_WAIT_S)
        if gate:
            gate()
        if self.alive_check:
            self.alive_check()
        if self.gone is not None and not self.gone():
            why = self.banner_missing()
            if why:
                raise MachineError(
                    f"the guest's SSH server no longer answers on {self.host}:{self.port} "
                    f"({why}) while QEMU runs and the console shows no crash: "
                    + ("the guest is held stopped or far too slow" if why.startswith("no banner")
                       else "sshd died or was killed, or the forward is gone"), step="ssh")

    def banner_missing(self, timeout: float = 1.0) -> str:
        """"" if an SSH server greets on the forward within ``timeout``, else
        what happened instead (refused, closed, silent)."""
        try:
            with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
                sock.settimeout(timeout)
                data = sock.recv(64)
        except ConnectionRefusedError:
            return "connection refused"
        except socket.timeout:
            return f"no banner within {timeout:g}s"
        except OSError as e:
            return f"{type(e).__name__}: {e}"
        if not data:
            return CLOSED
        return "" if data.startswith(b"SSH-") else f"an answer that is no SSH banner: {data!r}"

    def _kmsg_channel(self) -> KmsgChannel:
        return KmsgChannel(self.open_channel("the /dev/kmsg writer", Deadline(OPEN_TIMEOUT_S)))

    def close(self) -> None:
        if self._kmsg is not None:
            self._kmsg.close()
            self._kmsg = None
        if self.client is not None:
            self.client.close()
            self.client = None


class KmsgChannel:
    """``while read -r l; do echo "$l" > /dev/kmsg; echo .; done`` on one exec
    channel: each line written is acknowledged once the kernel has it, so it is
    in the log before the caller's next action (ordered like a command)."""

    SCRIPT = 'while IFS= read -r l; do echo "$l" > /dev/kmsg; echo .; done'

    def __init__(self, chan: Any) -> None:
        self.chan = chan          # a session channel, opened by the caller
        self.chan.exec_command(self.SCRIPT)
        self.buf = b""

    def alive(self) -> bool:
        return not (self.chan.closed or self.chan.exit_status_ready())

    def write(self, text: str, timeout: float) -> None:
        if "\n" in text:
            raise ValueError("one line only")
        self.chan.settimeout(timeout)
        try:
            self.chan.sendall(text.encode() + b"\n")
            while b".\n" not in self.buf:
                data = self.chan.recv(64)
                if not data:
                    raise EOFError("channel closed")
                self.buf += data
        except (socket.timeout, paramiko.SSHException, OSError, EOFError) as e:
            self.close()
            raise MachineError(f"writing to /dev/kmsg over ssh failed: {e}",
                               step="ssh") from e
        self.buf = self.buf.split(b".\n", 1)[1]

    def close(self) -> None:
        try:
            self.chan.close()
        except Exception:
            pass
