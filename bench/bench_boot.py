"""Time guest boots and measure QEMU's resident memory.

Boot times: N runs (default 5) of 'hotplug-harness boot --check --json
--no-snapshot' in ACPI mode (and DT mode with --dt), so that the kernel really
boots each time; then N restores of the snapshot one more, untimed boot saves
(the same command without --no-snapshot: what 'run' does for a guest whose
command line booted before); for each of

  boot_to_ready_s   QEMU start -> the guest's HARNESS-READY console line
  boot_to_ssh_s     QEMU start -> the first SSH answer      target (issue 13)
                                                    <= 2 s ACPI, <= 1.5 s DT
  shutdown_s        QMP quit -> QEMU gone
  total_s           the harness's own boot+check+shutdown time
  wall              the whole command, as this script measured it (includes
                    Python start-up and the kernel cache lookup)

the median is printed with min and max. The kernel is built (or found in the
cache) once first, so no boot waits for a build.

QEMU memory (not through the CLI): the Python API boots the same default
guest in-process, with

  art = harness.kernel.kernel.build(BuildRequest())
  with harness.session.boot(art, BootOptions(), out_dir) as guest: ...

and reads /proc/<guest.machine.proc.pid>/status (VmRSS, VmHWM, and the split
RssAnon/RssFile/RssShmem: guest RAM is a shared file on /dev/shm, so touched
guest pages count as RssShmem) right after boot and after one command.
'--rss-only' reproduces just that figure.

Exit: 0 whether or not targets are met; 2 if a command fails.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import benchlib as bl  # noqa: E402

SSH_TARGETS = {"acpi": 2.0, "dt": 1.5}     # issue 13: boot -> SSH
KEYS = ("boot_to_ready_s", "boot_to_ssh_s", "shutdown_s", "total_s")
STATUS_KEYS = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--runs", type=int, default=5, metavar="N",
                   help="boots per mode (default 5)")
    p.add_argument("--dt", action="store_true",
                   help="also time DT boots (--mode dt); ACPI is always timed")
    p.add_argument("--no-rss", action="store_true",
                   help="skip the QEMU resident-memory measurement")
    p.add_argument("--rss-only", action="store_true",
                   help="only the QEMU resident-memory measurement")
    p.add_argument("--boot-timeout", type=float, default=60.0, metavar="S",
                   help="passed to the harness (default 60)")
    bl.add_common(p)
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    if args.no_rss and args.rss_only:
        p.error("--no-rss and --rss-only exclude each other")
    return args


# ---------------------------------------------------------------- boot times

def prime(args) -> None:
    r = bl.run(bl.harness_argv("build", "--json"), verbose=args.verbose,
               what="kernel (cache lookup or build)")
    art = r.json()
    extra = f"rebuilt={str(art.get('rebuilt')).lower()}, {art.get('kernel_release')}"
    bl.figure("kernel ready", r.wall, None, r.command, extra)


def boot_times(args, mode: str, tmp: Path, restore: bool = False) -> None:
    """N boots (``--no-snapshot``: the kernel boots every time), or with
    ``restore`` N restores of the snapshot the first, untimed run saves."""
    what = "restore" if restore else "boot"
    samples = {k: [] for k in KEYS + ("wall",)}
    command = ""
    extra = [] if restore else ["--no-snapshot"]
    if restore:     # the first boot of this command line saves the snapshot
        bl.run(bl.harness_argv("boot", "--check", "--json", "--mode", mode,
                               "--boot-timeout", f"{args.boot_timeout:g}",
                               "--out", tmp / f"{what}-{mode}-0"),
               verbose=args.verbose, what=f"{mode} snapshot (untimed)")
    for i in range(1, args.runs + 1):
        out = tmp / f"{what}-{mode}-{i}"
        argv = bl.harness_argv("boot", "--check", "--json", "--mode", mode, *extra,
                               "--boot-timeout", f"{args.boot_timeout:g}",
                               "--out", out)
        r = bl.run(argv, verbose=args.verbose, what=f"{mode} {what} {i}/{args.runs}")
        data = r.json()
        if restore and "restored_s" not in data:
            bl.die(f"{mode} restore {i}: the guest was booted, not restored "
                   f"(no snapshot was saved?): {data}")
        command = command or r.command
        for k in KEYS:
            samples[k].append(data.get(k))
        samples["wall"].append(r.wall)
        bl.note(f"{mode} {what} {i}: " + ", ".join(
            f"{k} {bl.fmt_s(data.get(k))}" for k in KEYS) + f", wall {bl.fmt_s(r.wall)}")
    print(f"{mode} {what}s ({args.runs} runs; 'median' below; the command of run 1 "
          f"is shown, later runs differ only in --out):")
    for k in KEYS + ("wall",):
        s = bl.spread(samples[k])
        ssh = k == "boot_to_ssh_s"
        target = SSH_TARGETS[mode] if ssh and not restore else None
        bl.figure(f"  {mode} {what} {k} median", s["median"], target,
                  command if k == KEYS[0] or ssh else "", bl.spread_text(s),
                  key=f"{what}_{mode}_{k}", readme=ssh)
    if not all(v is not None for v in samples["boot_to_ssh_s"]):
        print(f"  {mode}: some runs printed no boot_to_ssh_s (SSH not brought up?)")


# ------------------------------------------------------------------- memory

def read_status(pid: int) -> dict:
    """The memory lines of /proc/PID/status, in KiB."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in STATUS_KEYS:
                values[key] = int(rest.split()[0])
    return values


def status_text(values: dict) -> str:
    return ", ".join(f"{k} {values[k] / 1024:.0f} MiB" for k in STATUS_KEYS
                     if k in values)


def qemu_memory(args, mode: str, tmp: Path) -> None:
    from harness.kernel.kernel import BuildRequest, build
    from harness.session import BootOptions, boot
    command = "$ " + " ".join([sys.executable, "bench/bench_boot.py", "--rss-only"]
                              + (["--dt"] if args.dt else []))
    opts = BootOptions(mode=mode, boot_timeout=args.boot_timeout)
    art = build(BuildRequest())
    out = tmp / f"rss-{mode}"
    bl.note(f"{mode}: booting in-process for QEMU's memory ({opts.mem_mb} MiB guest)")
    with boot(art, opts, out, progress=args.verbose) as guest:
        pid = guest.machine.proc.pid
        after_boot = read_status(pid)
        t0 = time.monotonic()
        guest.run("uname -r", 20).check("bench")
        took = time.monotonic() - t0
        after_cmd = read_status(pid)
    print(f"qemu memory, {mode} mode ({opts.mem_mb} MiB guest RAM, smp {opts.smp}, "
          f"pid {pid}):  {command}")
    print(f"  after boot:        {status_text(after_boot)}")
    print(f"  after one command: {status_text(after_cmd)}  ('uname -r' over "
          f"{guest.transport.__class__.__name__}, {bl.fmt_s(took)})")


# --------------------------------------------------------------------- main

def main(argv=None) -> int:
    args = parse_args(argv)
    bl.start_results_for(args, __file__, argv)
    from harness.errors import HarnessError
    modes = ["acpi"] + (["dt"] if args.dt else [])
    tmp = Path(tempfile.mkdtemp(prefix="bench-boot-"))
    bl.header("bench_boot: boot times and QEMU memory")
    try:
        prime(args)
        if not args.rss_only:
            for mode in modes:
                boot_times(args, mode, tmp)
                boot_times(args, mode, tmp, restore=True)
        if not args.no_rss:
            for mode in modes:
                try:
                    qemu_memory(args, mode, tmp)
                except HarnessError as e:
                    bl.die(f"in-process boot ({mode}): {e}\n{e.evidence}".rstrip())
                except OSError as e:
                    bl.die(f"in-process boot ({mode}): reading QEMU's status: {e}")
    finally:
        if args.keep:
            bl.note(f"kept boot output under {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    bl.entry(main)
