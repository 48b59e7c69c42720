#!/usr/bin/env python3
"""Faults at every phase: the matrix of faults x phases, each cell a real run.

Each cell runs ``run --method M --report <tmp>`` on the default (cached) kernel
with one fault injected (``HOTPLUG_HARNESS_FAULT``, harness/faults.py) at one
point of the run, and prints one row:

  fault x phase     the cell
  verdict s         seconds from the fault to the harness's exit (the bound:
                    5 s; a cell that ends in a pass has no bound)
  exit              the exit code (0 pass, 1 the kernel, 2 the machine or the
                    harness, 130 Ctrl-C), and whether it is the one expected
  first cause       the first line of the cause the run reported (report.json's
                    stopping error, else the first ERROR/FAIL line printed)
  artifacts         report.json and the method's console.log kept
  left              processes of the cell still running (QEMU, gdb: found by a
                    marker in their environment) and its /dev/shm run folders

and a last line: cells within their bound with the expected exit code and
nothing left, of all cells. The cells that need it get the report folder on a
small tmpfs (``fill``: mounted by the bench, root only, else skipped) or a
private snapshot cache (``cache-corrupt``: the other cache folders are the
real cache's, linked).

  .venv/bin/python bench/bench_faults.py
  .venv/bin/python bench/bench_faults.py --only qemu-kill,qemu-stop

Exit: 0 whatever the figures; 2 if a cell could not run at all.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import benchlib as bl

BOUND_S = 5.0
MARK = "HH_FAULT_CELL"


@dataclass(frozen=True)
class Cell:
    fault: str            # the matrix row
    phase: str            # the matrix column
    spec: str             # HOTPLUG_HARNESS_FAULT ("" for a fault the bench makes)
    method: str = "probe"
    exit: tuple = (2,)    # the exit codes that are right
    cause: str = ""       # a word the first cause line must hold
    args: tuple = ()
    needs: str = ""       # "tmpfs", "snapshots"


CELLS = (
    Cell("qemu-kill", "boot", "qemu-kill@launched+0.3", cause="QEMU exited"),
    Cell("qemu-kill", "ssh step", "qemu-kill@ssh~online", cause="QEMU exited"),
    Cell("qemu-kill", "qmp wait", "qemu-kill@qmp-wait", "acpi-dimm", cause="QEMU exited"),
    Cell("qemu-kill", "qmp wait (virtio-mem)", "qemu-kill@qmp-wait~0 MiB", "virtio-mem",
         cause="QEMU exited"),
    Cell("qemu-kill", "gdb attaching", "qemu-kill@gdb-attach+0.3", cause="QEMU exited"),
    Cell("qemu-kill", "gdb removal", "qemu-kill@removal+0.5", cause="QEMU exited"),
    Cell("qemu-kill", "host walk", "qemu-kill@walk", cause="QEMU exited"),
    Cell("qemu-stop", "boot", "qemu-stop@launched+0.3", cause="QEMU froze"),
    Cell("qemu-stop", "ssh step", "qemu-stop@ssh~online", cause="QEMU froze"),
    Cell("qemu-stop", "qmp wait", "qemu-stop@qmp-wait", "acpi-dimm", cause="QEMU froze"),
    Cell("qemu-stop", "gdb removal", "qemu-stop@removal+0.5", cause="QEMU froze"),
    Cell("qemu-stop", "host walk", "qemu-stop@walk", cause="QEMU froze"),
    Cell("panic", "boot", "panic@ready", exit=(1,), cause="panic"),
    Cell("panic", "ssh step", "panic@ssh~online", exit=(1,), cause="panic"),
    Cell("panic", "qmp wait", "panic@qmp-wait", "acpi-dimm", exit=(1,), cause="panic"),
    Cell("panic", "gdb removal", "panic@removal", exit=(1,), cause="panic"),
    Cell("gdb-kill", "gdb attaching", "gdb-kill@gdb-attach", cause="gdb"),
    Cell("gdb-kill", "gdb removal", "gdb-kill@removal", cause="gdb exited"),
    Cell("sshd-kill", "boot", "sshd-kill@ready", cause="SSH"),
    Cell("sshd-kill", "ssh step", "sshd-kill@ssh~online", cause="SSH server"),
    Cell("forward-refuse", "boot", "forward-refuse@ready", cause="refuses"),
    Cell("fill", "ssh step", "fill@ssh~online", cause="No space", needs="tmpfs"),
    Cell("fill", "report", "fill@report", cause="No space", needs="tmpfs"),
    Cell("cache-corrupt", "boot", "", exit=(0,), cause="snapshot", needs="snapshots"),
    Cell("sigint", "build", "sigint@build", exit=(130,), cause="SIGINT"),
    Cell("sigint", "boot", "sigint@launched+0.3", exit=(130,), cause="SIGINT"),
    Cell("sigint", "ssh step", "sigint@ssh~online", exit=(130,), cause="SIGINT"),
    Cell("sigint", "qmp wait", "sigint@qmp-wait", "acpi-dimm", exit=(130,), cause="SIGINT"),
    Cell("sigint", "gdb removal", "sigint@removal", exit=(130,), cause="SIGINT"),
    Cell("sigint", "host walk", "sigint@walk", exit=(130,), cause="SIGINT"),
    Cell("sigint", "report", "sigint@report", exit=(130,), cause="SIGINT"),
)


@dataclass
class Outcome:
    cell: Cell
    code: int = -1
    seconds: Optional[float] = None      # fault -> exit
    wall: float = 0.0
    cause: str = ""
    artifacts: str = ""
    left: list = field(default_factory=list)
    skipped: str = ""

    @property
    def ok(self) -> bool:
        c = self.cell
        in_bound = self.seconds is not None and (self.seconds <= BOUND_S or self.code == 0)
        return (not self.skipped and self.code in c.exit and in_bound and not self.left
                and c.cause.lower() in self.cause.lower())


def marked_processes(mark: str) -> list:
    """Processes whose environment holds ``MARK=mark`` (the cell's, at any depth)."""
    found = []
    needle = f"{MARK}={mark}".encode()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            found.append(f"{comm}[{pid}]")
    return found


def shm_of(pid: int) -> list:
    """Run folders on /dev/shm whose owner file names ``pid``."""
    left = []
    for path in Path("/dev/shm").glob("hotplug-harness-*"):
        try:
            if (path / "owner").read_text().split()[0] == str(pid):
                left.append(path.name)
        except (OSError, IndexError):
            continue
    return left


def first_cause(report: Optional[dict], stdout: str) -> str:
    if report:
        for m in report.get("methods", ()):
            err = (m.get("run") or {}).get("error")
            if err:
                # the guest command a crash interrupted is not the cause (it can
                # carry the run's key and guest paths): cut at its quote
                return str(err.get("message", "")).splitlines()[0].split(
                    ' (while running "')[0]
    for line in stdout.splitlines():
        if line.startswith(("ERROR:", "FAIL:", "hotplug-harness:")):
            return line
    return ""


def private_cache(tmp: Path) -> Path:
    """A cache whose snapshots are its own (empty), every other folder the real
    cache's: a snapshot can be corrupted without touching anyone else's."""
    sys.path.insert(0, str(bl.REPO))
    from harness.host import cache_root
    real = cache_root()
    mine = tmp / "cache"
    mine.mkdir()
    for entry in real.iterdir():
        if entry.name != "snapshots":
            (mine / entry.name).symlink_to(entry)
    (mine / "snapshots").mkdir()
    return mine


def mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                           str(path)], capture_output=True, text=True)
    return proc.returncode == 0


def run_cell(cell: Cell, tmp: Path, args, extra_env: dict) -> Outcome:
    out = Outcome(cell)
    report = tmp / "report"
    log = tmp / "fault.log"
    mark = uuid.uuid4().hex
    env = dict(os.environ, **extra_env, **{MARK: mark})
    env.pop("HOTPLUG_HARNESS_FAULT", None)
    if cell.spec:
        env.update(HOTPLUG_HARNESS_FAULT=cell.spec, HOTPLUG_HARNESS_FAULT_LOG=str(log))
    argv = bl.harness_argv("run", "-q", "--method", cell.method, "--report", report,
                           *cell.args)
    start = time.monotonic()
    proc = subprocess.Popen(argv, cwd=bl.REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        out.cause = f"(no verdict within {args.timeout:.0f}s: killed by the bench)"
    end = time.monotonic()
    out.code, out.wall = proc.returncode, end - start
    try:
        fault_at = float(log.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        fault_at = start if not cell.spec else None
    out.seconds = None if fault_at is None else end - fault_at
    data = None
    try:
        data = json.loads((report / "report.json").read_text())
    except (OSError, ValueError):
        pass
    out.cause = out.cause or first_cause(data, stdout + "\n" + stderr)
    if not cell.spec:                     # a warning is its whole story
        out.cause = next((line for line in stderr.splitlines() if "snapshot" in line),
                         out.cause)
    kept = []
    if data is not None:
        kept.append("report.json")
        if (report / cell.method / "console.log").exists():
            kept.append("console.log")
        stopped = next(((m.get("run") or {}).get("error", {}) or {}).get("step", "")
                       for m in data.get("methods", ()) or [{}])
        if stopped:
            kept.append(f"step '{stopped}'")
        elif data.get("stopped_in"):
            kept.append(f"stopped in {data['stopped_in']}")
    out.artifacts = ", ".join(kept) or "none"
    time.sleep(0.5)
    out.left = marked_processes(mark) + shm_of(proc.pid)
    if args.verbose or not out.ok:
        (args.logs / f"{bl.slug(cell.fault + ' ' + cell.phase)}.txt").write_text(
            f"$ {' '.join(map(str, argv))}\nfault: {cell.spec}\nexit {out.code}\n"
            f"--- stdout\n{stdout}\n--- stderr\n{stderr}\n")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="", help="faults (or fault:phase) to run, "
                   "comma-separated; default all")
    p.add_argument("--timeout", type=float, default=180.0,
                   help="a cell still running after this long is killed (and fails)")
    p.add_argument("--logs", type=Path, default=None,
                   help="keep each failed cell's output here (default: a temporary folder)")
    p.add_argument("-v", "--verbose", action="store_true", help="keep every cell's output")
    args = p.parse_args()
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    cells = [c for c in CELLS if not only or c.fault in only
             or f"{c.fault}:{c.phase}" in only]
    bl.header(f"fault matrix: {len(cells)} cells, run --method M on the default kernel")
    rows: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmpdir:
        tmp = Path(tmpdir)
        args.logs = args.logs or tmp / "logs"
        args.logs.mkdir(parents=True, exist_ok=True)
        small = tmp / "small"
        mounted = False
        try:
            for i, cell in enumerate(cells):
                folder = tmp / f"cell-{i}"
                folder.mkdir()
                env: dict = {}
                if cell.needs == "tmpfs":
                    if not mounted:
                        mounted = mount_tmpfs(small, "64M")
                    if not mounted:
                        rows.append(Outcome(cell, skipped="cannot mount a tmpfs (not root?)"))
                        continue
                    shutil.rmtree(small / "cell", ignore_errors=True)
                    folder = small / "cell"
                    folder.mkdir()
                    env["HOTPLUG_HARNESS_FAULT_FILL"] = str(folder)
                if cell.needs == "snapshots":
                    cache = private_cache(folder)
                    env["HOTPLUG_HARNESS_CACHE"] = str(cache)
                    warm = run_cell(Cell("none", "boot", "", exit=(0,)), folder / "warm", args,
                                    env)    # boots, saves the snapshot
                    shutil.rmtree(folder / "warm" / "report", ignore_errors=True)
                    snaps = [s for s in (cache / "snapshots").iterdir() if s.is_dir()]
                    if warm.code != 0 or not snaps:
                        rows.append(Outcome(cell, skipped=f"the warm-up run gave exit "
                                                          f"{warm.code}, {len(snaps)} snapshot(s)"))
                        continue
                    for snap in snaps:          # a truncated migration stream
                        state = snap / "state.mig"
                        if state.exists():
                            with open(state, "r+b") as f:
                                f.truncate(max(1, state.stat().st_size // 3))
                out = run_cell(cell, folder, args, env)
                rows.append(out)
                print(row(out), flush=True)
                shutil.rmtree(folder, ignore_errors=True)
        finally:
            if mounted:
                subprocess.run(["umount", str(small)], check=False)
            if args.logs.is_relative_to(tmp) and any(args.logs.iterdir()):
                kept = Path(tempfile.gettempdir()) / f"bench-faults-logs-{os.getpid()}"
                shutil.copytree(args.logs, kept)
                bl.note(f"outputs of the cells that missed kept in {kept}")
    print()
    print(f"{'fault':<15} {'phase':<22} {'verdict':>8} {'exit':>6}  {'left':<5} first cause")
    for out in rows:
        print(row(out))
    good = sum(1 for o in rows if o.ok)
    ran = [o for o in rows if not o.skipped]
    print(f"\ncells right (exit as expected, within {BOUND_S:g}s of the fault, cause named, "
          f"nothing left): {good}/{len(ran)}" + (f"; {len(rows) - len(ran)} skipped"
                                                  if len(ran) < len(rows) else ""))
    return 0


def row(o: Outcome) -> str:
    c = o.cell
    if o.skipped:
        return f"{c.fault:<15} {c.phase:<22} {'-':>8} {'-':>6}  {'-':<5} skipped: {o.skipped}"
    secs = "?" if o.seconds is None else f"{o.seconds:.1f}s"
    mark = "" if o.code in c.exit else "!"
    left = "none" if not o.left else ",".join(o.left)
    verdict = "ok " if o.ok else "BAD"
    cause = o.cause if len(o.cause) <= 150 else o.cause[:147] + "..."
    return (f"{c.fault:<15} {c.phase:<22} {secs:>8} {o.code:>5}{mark:1}  {left:<5} "
            f"{verdict} {cause}  [{o.artifacts}]")


if __name__ == "__main__":
    raise SystemExit(main())
