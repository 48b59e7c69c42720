"""Run hotplug methods against a built kernel: one fresh guest per method."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from . import progress as ui
from . import signals
from .build import KernelArtifacts
from .crashwatch import KernelCrash
from .errors import HarnessError
from .hotplug import acpi_dimm, kselftest, probe, race, split_leaf, virtio_mem
from .hotplug.common import Recorder
from .records import MethodRun
from .session import BootOptions, boot

METHODS = {m.NAME: m for m in (acpi_dimm, probe, virtio_mem, kselftest, split_leaf,
                                race)}
ORDER = ("acpi-dimm", "probe", "virtio-mem", "kselftest")


@dataclass(frozen=True)
class RunOptions:
    methods: tuple = ORDER
    boot: BootOptions = BootOptions()
    cycles: int = 1
    online_type: str = "online_movable"
    dimms: int = 2
    dimm_mb: int = 0                  # 0: the method's default
    kernel_src: str = "debian"
    walk: bool = True
    order_check: str = "on"           # gdb around every removal: "on", "full", "off"
    race_seconds: int = 45            # the race method's add/remove loop bound


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


def method_options(module, ropts: RunOptions):
    wanted = {"cycles": ropts.cycles, "online_type": ropts.online_type,
              "dimms": ropts.dimms, "dimm_mb": ropts.dimm_mb or None,
              "kernel_src": ropts.kernel_src, "seconds": ropts.race_seconds}
    names = {f.name for f in dataclasses.fields(module.Options)}
    return module.Options(**{k: v for k, v in wanted.items()
                             if k in names and v is not None})


def run_method(name: str, art: KernelArtifacts, ropts: RunOptions,
               out: Path) -> MethodRun:
    module = METHODS[name]
    out.mkdir(parents=True, exist_ok=True)
    if not getattr(module, "ORDER_CHECKS", True):    # e.g. race: gdb would serialise it
        ropts = replace(ropts, order_check="off")
    bopts = module.boot_options(replace(ropts.boot, mode=module.MODE,
                                        gdb=ropts.order_check != "off"), art.kconfig)
    state = {"rec": None, "error": None, "crashes": (), "offset": 0,
             "required": tuple(getattr(module, "REQUIRED_CHECKS", ())),
             "options": _recorded_options(module, ropts)}
    _progress(f"[{name}] booting ({bopts.mode})")
    try:
        with boot(art, bopts, out, progress=ui.verbose()) as guest:
            rec = Recorder(guest, art, walk=ropts.walk, progress=_progress,
                           order_check=ropts.order_check)
            state["rec"] = rec
            try:
                module.drive(rec, method_options(module, ropts))
            except HarnessError as e:
                state["error"] = e
            finally:
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


def _recorded_options(module, ropts: RunOptions) -> dict:
    """The options the checks must know: was the walker asked for, how many
    cycles does this method run."""
    fields = {f.name for f in dataclasses.fields(module.Options)}
    return {"walker": ropts.walk,
            "cycles": ropts.cycles if "cycles" in fields else 1,
            "order_check": ropts.order_check}


def _settle(guest) -> None:
    """Give late kernel messages (a WARN after a step) a moment to arrive."""
    try:
        guest.console.drain(2.0, quiet=0.3)
    except Exception:
        pass


def _method_run(name: str, state: dict, out: Path) -> MethodRun:
    rec: Optional[Recorder] = state["rec"]
    err = state["error"]
    error = None
    if err is not None:
        error = {"message": err.message, "step": err.step, "blame": err.blame,
                 "evidence": err.evidence[-4000:]}
    crashes = tuple(_crash_dict(c, rec) for c in state["crashes"])
    declared = {"required": state.get("required", ()), "options": state.get("options", {})}
    if rec is None:
        return MethodRun(method=name, geometry={}, crashes=crashes, error=error,
                         **declared)
    return MethodRun(method=name, geometry=rec.geometry, steps=tuple(rec.steps),
                     phases=tuple(rec.phases), removals=tuple(rec.removals),
                     crashes=crashes, bootmem_offline=rec.bootmem,
                     kselftest=rec.kselftest, error=error, notes=tuple(rec.notes),
                     order=tuple(rec.order), **declared)


def _crash_dict(report, rec: Optional[Recorder]) -> dict:
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
