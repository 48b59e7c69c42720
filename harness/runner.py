"""Run hotplug methods against a built kernel: one fresh guest per method,
``RunOptions.jobs`` guests side by side (each method in its own thread, its
progress lines labelled ``[method]``; the report keeps the methods' order)."""
from __future__ import annotations

import errno
import json
import os
import signal
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

from harness import progress as ui
from harness import signals
from harness.drive import method as registry
from harness.drive.common import Recorder
from harness.drive.method import Method
from harness.errors import HarnessError
from harness.host import cache_root
from harness.kernel import source as src
from harness.kernel.kernel import KernelArtifacts
from harness.machine.crashwatch import KernelCrash
from harness.records import (
    CheckOptions,
    Crash,
    Geometry,
    KselftestResult,
    MethodRun,
    RunError,
)
from harness.session import BootOptions, boot

# a write that failed for want of room or a writable disk: the machine's fault
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)

# name -> Method: the registry itself (harness.drive.method; a test may put a
# stand-in into it), and what --method all runs
METHODS = registry.load()
ORDER = registry.default_order()


@dataclass(frozen=True)
class RunOptions:
    methods: tuple = ORDER
    boot: BootOptions = BootOptions()
    cycles: int = 1
    online_type: str = "online_movable"
    dimms: int = 2
    dimm_mb: int = 0                  # 0: the method's default
    walk: bool = True
    order_check: str = "on"           # gdb around removals: "on", "full", "sampled", "off"
    race_seconds: int = 240           # the race method's add/remove loop: its time bound
    race_iterations: int = 30         # ... and the rounds it aims at
    jobs: int = 1                     # guests side by side (see default_jobs)


MAX_JOBS = 2    # guests at once: each is a 2-vCPU TCG guest with ~1-2 GiB of RAM


def default_jobs(methods: tuple) -> int:
    """Guests side by side when not asked: one per method, at most MAX_JOBS and
    at most one per host CPU."""
    return max(1, min(MAX_JOBS, os.cpu_count() or 1, len(methods)))


def select_names(spec: str, known, what: str, step: str, everything=None,
                 listed: str = "") -> tuple:
    """``NAME[,NAME]|all`` against ``known``: 'all' is ``everything`` (default:
    every known name); an unknown name is refused with the choices (``listed``,
    default: the known names)."""
    if spec == "all":
        return tuple(known if everything is None else everything)
    names = tuple(s.strip() for s in spec.split(",") if s.strip())
    unknown = [n for n in names if n not in known]
    if unknown:
        raise HarnessError(f"unknown {what}(s) {', '.join(unknown)}; choose from "
                           f"{listed or ', '.join(known)}", step=step)
    return names


def resolve_methods(spec: str) -> tuple:
    return select_names(spec, METHODS, "method", "run", everything=ORDER,
                        listed=f"{', '.join(ORDER)} or all")


def method_options(method: Method[Any], ropts: RunOptions,
                   art: Optional[KernelArtifacts] = None) -> Any:
    """The method's Options: the run options it honours (method.honours), and
    the kernel's source tree from the artifacts if it asks for it."""
    values = {"cycles": ropts.cycles, "online_type": ropts.online_type,
              "dimms": ropts.dimms, "dimm_mb": ropts.dimm_mb or None,
              "seconds": ropts.race_seconds, "iterations": ropts.race_iterations}
    if "kernel_tree" in method.honours:
        if art is None:
            raise HarnessError(f"{method.name} needs the kernel's source tree: no "
                               "artifacts given", step="source")
        values["kernel_tree"] = str(kernel_tree(art))
    return method.make_options(values)


def kernel_tree(art: KernelArtifacts) -> Path:
    """The unpatched source tree ``art`` was built from (for files a method
    copies into the guest): ``art.source`` is ``Source.describe()``,
    ``KIND:PATH@SHORT``; a tarball is unpacked into the cache once, as the
    build did (``pristine_tree`` needs the kind, the path and the identity's
    short form, which is all describe() keeps)."""
    kind, _, rest = art.source.partition(":")
    path, _, short = rest.rpartition("@")
    if kind not in ("dir", "tarball") or not path or not short:
        raise HarnessError(f"cannot tell the kernel's source tree from the artifacts' "
                           f"source {art.source!r}", step="source")
    return src.pristine_tree(src.Source(kind, Path(path), short))


def run_method(name: str, art: KernelArtifacts, ropts: RunOptions,
               out: Path) -> MethodRun:
    method = METHODS[name]
    out.mkdir(parents=True, exist_ok=True)
    if not method.order_checks:    # e.g. race: gdb would serialise it
        ropts = replace(ropts, order_check="off")
    bopts = method.boot(replace(ropts.boot, gdb=ropts.order_check != "off"), art.kconfig)
    state = {"rec": None, "error": None, "crashes": (), "offset": 0,
             "required": tuple(method.required_checks),
             "options": _recorded_options(method, ropts)}
    _progress(f"[{name}] booting ({bopts.mode})")
    try:
        opts = method_options(method, ropts, art)
        with boot(art, bopts, out, progress=ui.verbose()) as guest:
            rec = Recorder(guest, art, walk=ropts.walk, progress=_progress,
                           order_check=ropts.order_check)
            if guest.snapshot:
                rec.notes.append(restored_note(guest))
            state["rec"] = rec
            try:
                method.drive(rec, opts)
            except HarnessError as e:
                state["error"] = true_cause(guest, e)
            except OSError as e:
                if e.errno not in DISK_ERRNOS:
                    raise
                state["error"] = HarnessError(   # the machine's disk, not the harness
                    f"{e.strerror} in {e.filename or out} during step {guest.step!r}",
                    step=guest.step, blame="infra")
            finally:
                ssh = getattr(guest, "ssh", None)
                if ssh is not None:       # transient faults retried: in the report
                    rec.notes.extend(r.note() for r in ssh.retries)
                _settle(guest)
                if guest.watcher.open_kind is not None:   # a report still arriving
                    guest.watcher.flush()
                state["crashes"] = guest.watcher.reports
    except HarnessError as e:
        state["error"] = state["error"] or e
        if isinstance(e, KernelCrash) and not state["crashes"]:
            state["crashes"] = e.reports
    except KeyboardInterrupt as e:   # SIGINT/SIGTERM: keep what was recorded
        rec = state["rec"]
        step = rec.guest.step if rec else "boot"
        done = bool(rec and rec.steps and rec.steps[-1].name == step and rec.steps[-1].ok)
        state["error"] = state["error"] or HarnessError(
            f"interrupted by {signals.signame(e)} {'after' if done else 'during'} "
            f"step {step!r}", step=step, blame="interrupted")
        e.run = _method_run(name, state, out)
        raise
    return _method_run(name, state, out)


def restored_note(guest: Any) -> str:
    """What a report says of a guest restored from a snapshot instead of booted."""
    return (f"guest restored from snapshot {guest.snapshot} (a guest of this kernel and "
            f"QEMU command line, saved once it was ready; restored in "
            f"{guest.times.get('restored_s', 0):.2f}s; --no-snapshot boots it instead); "
            "the console log starts with that boot")


def _recorded_options(method: Method[Any], ropts: RunOptions) -> dict:
    """The options the checks must know: was the walker asked for, how many
    cycles does this method run."""
    return {"walker": ropts.walk,
            "cycles": ropts.cycles if "cycles" in method.honours else 1,
            "order_check": ropts.order_check}


def true_cause(guest: Any, error: HarnessError) -> HarnessError:
    """``error``, or QEMU's own fault (it exited or froze) when there was one:
    that comes first, whatever wait noticed it (``Machine.explain``)."""
    explain = getattr(guest.machine, "explain", None)
    return explain(error) if explain is not None else error


def _settle(guest) -> None:
    """Give late kernel messages (a WARN after a step) a moment to arrive."""
    try:
        guest.console.drain(2.0, quiet=0.3)
    except Exception:
        pass


def _method_run(name: str, state: dict, out: Path) -> MethodRun:
    """The run as recorded: typed records (a method's dict, e.g. kselftest's
    ``rec.kselftest``, is read as its record here)."""
    rec: Optional[Recorder] = state["rec"]
    err = state["error"]
    error = RunError.from_error(err) if err is not None else None
    required = tuple(state.get("required", ()))
    options = CheckOptions.from_dict(state.get("options") or {})
    if rec is None:
        crashes = tuple(Crash.from_dict(_crash_dict(c, rec)) for c in state["crashes"])
        return MethodRun(method=name, geometry=Geometry.unknown(), crashes=crashes,
                         error=error, required=required, options=options)
    return recorded_run(name, rec, state["crashes"], error=error, required=required,
                        options=options)


def recorded_run(name: str, rec: Recorder, reports, options: CheckOptions,
                 error: Optional[RunError] = None, required: tuple = ()) -> MethodRun:
    """What ``rec`` recorded, with the console's crash ``reports``, as the
    MethodRun the checks take (the runner's, and the pytest plugin's guests')."""
    kselftest = rec.kselftest
    if isinstance(kselftest, dict):
        kselftest = KselftestResult.from_dict(kselftest)
    return MethodRun(method=name, geometry=rec.geometry, steps=tuple(rec.steps),
                     phases=tuple(rec.phases), removals=tuple(rec.removals),
                     crashes=tuple(Crash.from_dict(_crash_dict(c, rec)) for c in reports),
                     bootmem_offline=rec.bootmem, kselftest=kselftest, error=error,
                     notes=tuple(rec.notes), order=tuple(rec.order), required=required,
                     options=options, hotadds=tuple(getattr(rec, "hotadds", ())))


def _crash_dict(report, rec: Optional[Recorder]) -> dict:
    """A crash report as saved: ``CrashReport.to_dict()`` and the step it came in
    (read as a ``records.Crash`` by ``recorded_run``)."""
    d = report.to_dict()
    d["step"] = _step_at(rec, report.first_line_no) if rec else "boot"
    return d


def _step_at(rec: Recorder, line_no: int) -> str:
    """The step whose kmsg marker precedes a console line."""
    step = "boot"
    for number, name in rec.step_lines:
        if number <= line_no:
            step = name
    return step


def _progress(text: str) -> None:
    ui.info(text)


def run_all(art: KernelArtifacts, ropts: RunOptions, out: Path) -> list:
    """Every method of ``ropts`` (``ropts.jobs`` at a time); the MethodRuns in
    ``ropts.methods``' order. On SIGINT/SIGTERM the KeyboardInterrupt raised
    carries ``runs`` (what finished, and the interrupted runs) and ``not_run``."""
    if ropts.jobs > 1 and len(ropts.methods) > 1:
        return _run_side_by_side(art, ropts, out)
    runs = []
    for name in ropts.methods:
        start = time.monotonic()
        try:
            run = run_method(name, art, ropts, out / name)
        except KeyboardInterrupt as e:
            # the caller writes a partial report from e.runs
            e.runs = runs + ([e.run] if getattr(e, "run", None) else [])
            e.not_run = [m for m in ropts.methods if m not in
                         {r.method for r in e.runs}]
            _progress(f"[{name}] interrupted after {time.monotonic() - start:.1f}s")
            raise
        verdict = "error" if run.error else "done"
        _progress(f"[{name}] {verdict} in {time.monotonic() - start:.1f}s")
        runs.append(run)
    return runs


QEMU_COMM = "qemu-system-"


def _run_side_by_side(art: KernelArtifacts, ropts: RunOptions, out: Path) -> list:
    """``ropts.jobs`` worker threads take the methods in order. A signal reaches
    the main thread only: it stops the workers by killing the guests they run
    (their steps then fail and every ``with`` block cleans up as usual), waits
    for them, and marks the runs they were in as interrupted."""
    kernel = getattr(art, "config_digest", "") or ""
    pending = schedule(ropts.methods, method_seconds(kernel))
    took: dict[str, float] = {}        # this run's, saved for the next one
    runs: dict[str, MethodRun] = {}
    cut: set[str] = set()              # runs that ended after the signal
    started: dict[str, float] = {}
    lock = threading.Lock()
    stopping = threading.Event()
    failures: list[BaseException] = []

    def worker(done: threading.Event) -> None:
        try:
            work()
        finally:
            done.set()

    def work() -> None:
        while not stopping.is_set():
            with lock:
                if not pending:
                    return
                name = pending.pop(0)
                started[name] = time.monotonic()
            try:
                with ui.labelled(name):
                    run = run_method(name, art, ropts, out / name)
            except BaseException as e:          # a harness bug: re-raised by the caller
                failures.append(e)
                stopping.set()
                return
            with lock:
                runs[name] = run
                if stopping.is_set():
                    cut.add(name)
                    continue
            verdict = "error" if run.error else "done"
            seconds = time.monotonic() - started[name]
            _progress(f"[{name}] {verdict} in {seconds:.1f}s")
            if not run.error:
                with lock:
                    took[name] = seconds

    # waited on through events, not Thread.join: a KeyboardInterrupt inside
    # join() can leave is_alive() False for a thread that still runs (CPython)
    finished = [threading.Event() for _ in range(min(ropts.jobs, len(pending)))]
    threads = [threading.Thread(target=worker, args=(done,), name=f"method-{i}",
                                daemon=True) for i, done in enumerate(finished)]
    running: list[threading.Event] = []
    try:
        for t, done in zip(threads, finished):   # in the try: a signal may come at once
            t.start()
            running.append(done)
        for done in running:
            while not done.wait(0.1):
                pass
    except KeyboardInterrupt as e:
        stopping.set()
        while not all(done.is_set() for done in running):   # also a QEMU started meanwhile
            _kill_guests()
            for done in running:
                done.wait(0.2)
        for name in ropts.methods:
            if name in cut:
                runs[name] = _interrupted(runs[name], e)
                _progress(f"[{name}] interrupted after "
                          f"{time.monotonic() - started[name]:.1f}s")
        e.runs = [runs[n] for n in ropts.methods if n in runs]  # type: ignore[attr-defined]
        e.not_run = [n for n in ropts.methods if n not in runs]  # type: ignore[attr-defined]
        raise
    if failures:
        raise failures[0]
    save_method_seconds(took, kernel)
    return [runs[n] for n in ropts.methods if n in runs]


def schedule(methods: tuple, took: dict[str, float]) -> list[str]:
    """The order the lanes take the methods in: longest first by the last run's
    time (unknown ones first, in the given order), so the lanes end closer."""
    return sorted(methods, key=lambda n: -took.get(n, float("inf")))


SECONDS_FILE = "method-seconds.json"


KEEP_CONFIGS = 16     # kernel configurations whose times are kept


def _seconds_file() -> dict[str, dict[str, float]]:
    """{kernel .config digest: {method: seconds}}, the most recent last; a file
    in another format (the flat one before) counts as empty."""
    try:
        data = json.loads((cache_root() / SECONDS_FILE).read_text())
        return {str(c): {str(k): float(v) for k, v in times.items()}
                for c, times in data.items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def method_seconds(config: str = "") -> dict[str, float]:
    """How long each method took the last time it ran side by side on a kernel
    of this .config (``KernelArtifacts.config_digest``: a patched kernel shares
    it, another geometry or a kasan build does not), else on the kernel that
    ran it last. The scheduling order; nothing else reads it. Per config, so
    that a run of several methods on another kernel (a matrix geometry,
    ``--cycles`` on the page_owner kernel) does not reorder the default
    kernel's next run; one method at a time (repro) writes nothing."""
    data = _seconds_file()
    took: dict[str, float] = {}
    for times in data.values():          # older first: the latest wins
        took.update(times)
    took.update(data.get(config, {}))
    return took


def save_method_seconds(took: dict[str, float], config: str = "") -> None:
    path = cache_root() / SECONDS_FILE
    data = _seconds_file()
    mine = {**data.pop(config, {}), **{k: round(v, 2) for k, v in took.items()}}
    data[config] = dict(sorted(mine.items()))
    data = dict(list(data.items())[-KEEP_CONFIGS:])
    try:
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    except OSError:
        pass


def _kill_guests() -> None:
    """SIGKILL every QEMU this process started (the workers' guests)."""
    for pid, start in signals.descendants().items():
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if comm.startswith(QEMU_COMM) and signals.start_time(pid) == start:
            signals.kill(pid, signal.SIGKILL)


def _interrupted(run: MethodRun, e: BaseException) -> MethodRun:
    """A run its guest was killed under: its error is the interruption, in the
    step it was in (a run that had finished already stays as it was)."""
    if run.error is None:
        return run
    step = run.error.step or (run.steps[-1].name if run.steps else "boot")
    done = bool(run.steps and run.steps[-1].name == step and run.steps[-1].ok)
    err = HarnessError(f"interrupted by {signals.signame(e)} {'after' if done else 'during'} "
                       f"step {step!r}", step=step, blame="interrupted")
    return replace(run, error=RunError.from_error(err))
