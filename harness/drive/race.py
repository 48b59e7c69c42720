"""race: add/remove loops under concurrent page-table readers and memory pressure.

Review point (g) of the 2017 review asked who else walks the kernel's tables
while a removal frees them. On 6.12 the answer is the memory hotplug lock:
``ptdump_walk_pgd()`` takes ``get_online_mems()``, so a read of
``/sys/kernel/debug/kernel_page_tables`` never overlaps ``free_empty_tables()``.
A kernel that drops it (``patches/repro/0012``) walks table pages while they are
freed: a use-after-free that only shows when the two really run at once.

Flow (DT boot, the probe flow: ``mem=`` hides 1 GiB, ``rodata=full`` so every
removal frees 64 PTE tables per 128 MiB block: the most frees per removal):

1. phase ``before``;
2. start the load in the guest, in the background (after the probe, before
   the online): :data:`READERS` loops reading the page-table dump,
   :data:`WX_READERS` loops reading ``/sys/kernel/debug/check_wx_pages`` (the
   other caller of ``ptdump_walk_pgd()``: ``ptdump_check_wx()``, a walk of
   the whole kernel half that prints nothing but its one-line result, read
   with the shell's ``read``, no process per walk; where the kernel has the
   file; one dump reader and two W+X walkers caught
   upstream 59305202c67f undone 5 times in 5, two and one once in 5), one
   loop writing and deleting 64 MiB files in /tmp (memory pressure: page
   cache and reclaim next to the hotplug paths);
3. the first round step by step (probe both hidden blocks, phase ``added``,
   online them under load, phase ``online``: what blocks-lifecycle and
   online-memory-mapped judge), then one guest-side loop (no round trip per
   step, so removals come as fast as the guest can do them): probe both
   blocks and remove them again, until :attr:`Options.iterations` rounds are
   done or :attr:`Options.seconds` have passed, whichever comes first (a
   count, not a time: on a loaded host a time-bound loop made 9 rounds in
   45 s where an idle one made 30, and the race is one chance per removal);
   every :data:`FULL_EVERY`-th round (the first included) onlines and
   offlines them in between (page migration under load), the others go
   straight from add to remove (the linear map and its tables exist from the
   add: every removal frees them, which is what the readers race with); each
   iteration prints one line (``race-iter N ok`` or the failing operation);
4. stop the load; phase ``removed-1`` against ``before`` (the removal checks
   then judge the end state as for any method); the number of iterations, the
   seconds they took and the completed reads go to the run's notes, so a pass
   says how much concurrency it was made of (and that the bound cut it short,
   when it did).

What catches a race is the kernel itself: boot the ``kasan`` and ``debug-vm``
fragments (KASAN reports a use-after-free of a freed table page in the walker;
soft-lockup, hung-task and RCU-stall detectors turn a deadlock into a kernel
report the crash watcher blames on the kernel) and ``no-kernel-splat`` FAILs.
The gdb ordering checks are not run here: a breakpoint stop per free would
serialise the very concurrency this scenario needs (``order_checks=False``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Optional

from harness.drive import probe
from harness.drive.common import (
    MEMROOT,
    PTDUMP,
    REMOVAL_CHECKS,
    Recorder,
    blocks_in,
    check_section_size,
    set_state,
)
from harness.drive.method import Method, register
from harness.drive.probe import HIDDEN_MB, raise_missing
from harness.errors import KERNEL, HarnessError
from harness.session import BootOptions

READERS = 1                # concurrent page-table dump readers
WX_READERS = 2             # concurrent readers of check_wx_pages (where it exists)
WX = "/sys/kernel/debug/check_wx_pages"
PRESSURE_MB = 64           # written and deleted in a loop by the pressure job
LOAD_DIR = "/tmp/race"
LOOP = "/tmp/race-loop.sh"   # outside LOAD_DIR, which load_script recreates
FULL_EVERY = 4              # every 4th round onlines and offlines; the others
# only add and remove (the linear map exists from the add: each removal frees
# its tables), so removals come several times faster under KASAN
ITER_FILE = "/tmp/race-iter"   # iterations done, for a loop a kernel report ended
_ITER = re.compile(r"^race-iter (\d+) (ok|FAIL .*)$", re.M)
_DONE = re.compile(r"^race-done (\d+) (\d+)(?: (\d+))?$", re.M)
ITERATIONS = 30            # add/remove rounds the loop aims at
SECONDS = 240              # ... within this bound


@dataclass(frozen=True)
class Options:
    blocks: int = 2
    seconds: int = SECONDS     # the add/remove loop's time bound
    iterations: int = ITERATIONS   # ... and the rounds after which it stops
    online_type: str = "online_movable"


def boot_options(base: BootOptions, kconfig: Optional[dict] = None) -> BootOptions:
    """The probe method's boot: mem= hides 1 GiB, rodata=full; and one host
    thread per vCPU (MTTCG) unless --tcg-thread says otherwise: the readers and
    the pressure must run truly alongside the removals, not in turns."""
    opts = probe.boot_options(base, kconfig)
    return opts if opts.tcg_thread else replace(opts, tcg_thread="multi")


def load_script(readers: int = READERS, pressure_mb: int = PRESSURE_MB,
                wx_readers: int = WX_READERS) -> str:
    """Start the background load; each reader counts its rounds in a file
    (``reads-I``, ``wx-I``) and each job's PID goes to ``pids`` (for
    stop_script). The W+X walkers start only where the kernel has the file.

    Every job runs in shell builtins (``read``, ``printf``, ``:``): no process
    starts or exits while the loop runs. A process that exits frees its pgd
    with ``free_page()``, whose ``VM_BUG_ON(!virt_addr_valid())`` looks the
    page up in memblock without a lock; hot-remove's ``memblock_remove()``
    splits the boot region and, for a moment, memblock holds none of boot
    memory: the stock 6.12 kernel BUGs (``checks.STOCK_REPORTS``, docs/running.md
    "A race of the stock kernel"). That race is
    not the one this method is for, so the load does not offer it."""
    def reader(read: str, count: str) -> str:
        return (f"(n=0; while [ ! -e {LOAD_DIR}/stop ]; do {read} && "
                f"n=$((n+1)); echo $n > {LOAD_DIR}/{count}; done) "
                f"</dev/null >/dev/null 2>&1 & echo $! >> {LOAD_DIR}/pids;")
    # the whole dump, line by line with the shell's read (cat would be a process)
    jobs = [reader(f"while read -r l; do :; done < {PTDUMP}", f"reads-{i}")
            for i in range(readers)]
    if wx_readers:     # the shell's read: its one line without a process per walk
        jobs.append(f"if [ -e {WX} ]; then "
                    + " ".join(reader(f"read -r l < {WX}", f"wx-{i}")
                               for i in range(wx_readers)) + " fi;")
    # pressure: pressure_mb MiB of page cache written in 16 KiB pieces with the
    # shell's printf, then truncated away (dd and rm would be processes)
    chunks = pressure_mb * 64
    jobs.append(f"(c=0123456789abcdef; i=0; while [ $i -lt 10 ]; do c=$c$c; i=$((i+1)); "
                f"done; while [ ! -e {LOAD_DIR}/stop ]; do j=0; while [ $j -lt {chunks} ] "
                f"&& [ ! -e {LOAD_DIR}/stop ]; do printf %s \"$c\" >> {LOAD_DIR}/fill; "
                f"j=$((j+1)); done; : > {LOAD_DIR}/fill; done) </dev/null >/dev/null 2>&1 & "
                f"echo $! >> {LOAD_DIR}/pids;")
    return f"rm -rf {LOAD_DIR}; mkdir -p {LOAD_DIR}; " + " ".join(jobs) + " echo started"


def stop_script(readers: int = READERS, wait_s: int = 60, wx_readers: int = WX_READERS) -> str:
    """Stop the load, wait (bounded) for its jobs, print each reader's reads
    (``reads A B [wx C]``; a W+X walker that never started counts 0)."""
    def count(name: str) -> str:
        return f"$(cat {LOAD_DIR}/{name} 2>/dev/null || echo 0)"
    counts = " ".join(count(f"reads-{i}") for i in range(readers))
    if wx_readers:
        counts += " wx " + " ".join(count(f"wx-{i}") for i in range(wx_readers))
    return (f"touch {LOAD_DIR}/stop; end=$(( $(date +%s) + {wait_s} )); "
            f"for p in $(cat {LOAD_DIR}/pids); do while kill -0 $p 2>/dev/null && "
            f"[ $(date +%s) -lt $end ]; do sleep 0.2; done; done; "
            f"rm -f {LOAD_DIR}/fill; echo reads {counts}")


def parse_reads(stopped: str) -> tuple[int, int]:
    """(dump reads, W+X walks) from stop_script's line."""
    dump, _, wx = stopped.strip().removeprefix("reads").partition(" wx ")
    return (sum(int(x) for x in dump.split() if x.isdigit()),
            sum(int(x) for x in wx.split() if x.isdigit()))


def loop_script(addrs: list, bs: int, seconds: int, online_type: str,
                iterations: int = ITERATIONS) -> str:
    """The add/remove loop, run in the guest as one command: ``iterations``
    rounds, or fewer if ``seconds`` run out first; its last line says how many,
    in how many seconds, and how many tasks the guest created meanwhile
    (``race-done N S T``: /proc/stat's ``processes``, kernel threads included).
    Shell builtins only, like the load: the clock is /proc/uptime read with
    ``read``, not ``date``."""
    def blocks(a: int) -> str:       # one block per address (bs apart)
        return f"memory{a // bs}"

    lines = ["now() { read -r t _ < /proc/uptime; t=${t%%.*}; }",
             "tasks() { while read -r k v _; do [ \"$k\" = processes ] && p=$v; "
             "done < /proc/stat; }",
             f"now; start=$t; end=$(( start + {seconds} )); n=0; tasks; p0=$p",
             "fail() { echo \"race-iter $n FAIL $1\"; exit 1; }",
             f"while [ $n -lt {iterations} ] && now && [ $t -lt $end ]; do",
             "  n=$((n+1))",
             "  if [ $n -gt 1 ]; then     # the first round starts from online"]
    for a in addrs:
        lines.append(f"    echo {a:#x} > {MEMROOT}/probe || fail 'probe {a:#x}'")
    lines.append("  fi")
    lines.append(f"  if [ $((n % {FULL_EVERY})) -eq 1 ]; then   # a full round: online, "
                 "offline (migration)")
    for a in addrs:
        lines.append(f"    [ $n -eq 1 ] || echo {online_type} > {MEMROOT}/{blocks(a)}/state "
                     f"|| fail 'online {a:#x}'")
    for a in addrs:
        lines.append(f"    echo offline > {MEMROOT}/{blocks(a)}/state "
                     f"|| fail 'offline {a:#x}'")
    lines.append("  fi")
    for a in addrs:
        lines.append(f"  echo {a:#x} > {MEMROOT}/remove || fail 'remove {a:#x}'")
    lines += ["  echo \"race-iter $n ok\"", f"  echo $n > {ITER_FILE}", "done",
              "now; tasks; echo race-done $n $(( t - start )) $(( p - p0 ))"]
    return "\n".join(lines)


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _note_progress(rec: Recorder, seconds: int) -> None:
    """Best effort, after the loop was cut short: the iterations it finished
    (the guest may be past answering; then nothing is added)."""
    try:
        done = rec.guest.run(f"cat {ITER_FILE} 2>/dev/null || echo 0", 5).stdout.strip()
        reads = rec.guest.run(f"cat {LOAD_DIR}/reads-* {LOAD_DIR}/wx-* 2>/dev/null",
                               5).stdout.split()
    except Exception:
        return
    total = sum(int(r) for r in reads if r.isdigit())
    rec.notes.append(f"race: {done or '?'} add/remove iteration(s) finished before the "
                     f"loop was cut short (bound {seconds} s), {total} page-table dump "
                     "reads and W+X walks meanwhile")


def drive(rec: Recorder, opts: Options) -> None:
    have = rec.guest.run(f"test -e {MEMROOT}/probe && test -e {MEMROOT}/remove", 10)
    if not have.ok:
        raise_missing(rec)
    before = rec.phase("before")
    bs = check_section_size(rec, probe.layout(rec.art.kconfig)[2])
    if opts.blocks * bs > HIDDEN_MB << 20:
        raise HarnessError(f"{opts.blocks} blocks of {bs >> 20} MiB do not fit in the "
                           f"{HIDDEN_MB} MiB hidden with mem=", step="race")
    base = probe.hidden_base(before)
    addrs = [base + i * bs for i in range(opts.blocks)]
    for a in addrs:
        rec.step(f"probe {a:#x}", lambda a=a: rec.sh(f"echo {a:#x} > {MEMROOT}/probe",
                                                    blame=KERNEL))
    rec.phase("added")
    rec.step("start load", lambda: rec.sh(load_script()))
    for a in addrs:
        rec.step(f"online {a:#x}", lambda a=a: set_state(
            rec, blocks_in(rec, a, a + bs), opts.online_type))
    rec.phase("online")                  # under load already
    script = loop_script(addrs, bs, opts.seconds, opts.online_type, opts.iterations)
    rec.step("copy the loop", lambda: rec.guest.put_text(LOOP, script))
    # the kernel's clock at the loop's start: a report's console timestamp minus
    # this is how long the race took to show (bench/bench_race.py)
    uptime = rec.sh("cut -d' ' -f1 /proc/uptime").strip()
    loop_step = f"add/remove loop ({opts.iterations} rounds, {opts.seconds} s at most)"
    rec.notes.append(f"race: loop started at uptime {uptime} s")
    try:
        result = rec.step(loop_step, lambda: rec.guest.run(f"sh {LOOP}", opts.seconds + 120))
    except HarnessError:          # e.g. a kernel report ended the step: say how far
        _note_progress(rec, opts.seconds)
        raise
    stopped = rec.step("stop load", lambda: rec.sh(stop_script(), 90))
    reads, walks = parse_reads(stopped)
    done = _ITER.findall(result.stdout)
    ok = sum(1 for _, what in done if what == "ok")
    took = _DONE.search(result.stdout)
    span = (f"in {took[2]} s" if took else f"within {opts.seconds} s") + (
        f" (the {opts.seconds} s bound came before {opts.iterations})"
        if took and ok < opts.iterations else "")
    rec.notes.append(f"race: {ok} add/remove iteration(s) of {len(addrs)} blocks {span}, "
                     f"under {reads} concurrent page-table dump reads ({_n(READERS, 'reader')}), "
                     f"{walks} W+X check walks ({_n(WX_READERS, 'reader')}"
                     f"{'' if walks else ', no check_wx_pages'}) and a {PRESSURE_MB} MiB "
                     "page-cache write/truncate loop"
                     + (f"; {_n(int(took[3]), 'task')} created in the guest meanwhile "
                        "(kernel threads included: the load itself starts none)"
                        if took and took[3] else ""))
    if not result.ok:
        failed = next((what for _, what in done if what != "ok"), "")
        # leave what is still plugged for the end phase: it shows as a FAIL there
        raise HarnessError(f"add/remove loop stopped at iteration {len(done)}: "
                           f"{failed or 'exit code ' + str(result.exit_code)}",
                           step=loop_step, blame=KERNEL,
                           evidence=(result.stdout + result.stderr)[-2000:])
    if ok == 0:
        raise HarnessError("the add/remove loop ran no iteration: nothing was raced",
                           step=loop_step,
                           evidence=result.stdout[-2000:])
    rec.phase("removed-1")
    for a in addrs:
        if blocks_in(rec, a, a + bs):
            raise HarnessError(f"block at {a:#x} still present after the loop",
                               step="race", blame=KERNEL)
    rec.removed("removed-1", addrs[0], addrs[-1] + bs, baseline="before")


METHOD = register(Method(
    name="race", mode=probe.MODE, options=Options, drive=drive, boot_options=boot_options,
    summary="probe-flow add/remove loop of --race-iterations rounds (within "
            "--race-seconds) under concurrent page-table dump and W+X check readers and "
            "memory pressure; build with --config kasan --config debug-vm so a race "
            "becomes a kernel report",
    required_checks=REMOVAL_CHECKS,
    order_checks=False,        # gdb stops would serialise the race (see above)
    honours=frozenset({"seconds", "iterations", "online_type"}),
    own_memory=probe.METHOD.own_memory,
    rank=60))
