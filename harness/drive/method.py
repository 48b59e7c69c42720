"""The method protocol and the registry of methods.

A method is one module in ``harness/drive/`` that declares one
``METHOD = register(Method(...))``: its ``--method`` name, the boot it needs
(``mode``, and ``boot_options`` for kernel parameters, devices, memory layout),
the checks that must look for it to PASS, the run options it honours (filled
into its ``Options`` dataclass by the runner), and its ``drive(rec, opts)``.
The registry imports every module of this package the first time it is asked
(:func:`load`), so a new method is one new file; ``runner.METHODS`` and
``runner.ORDER`` (``--method all``), the ``run`` command's help and its refusal
of options a method cannot honour (:func:`check_given`) all come from here.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Generic, TypeVar

from harness.errors import HARNESS, HarnessError
from harness.records import REMOVAL_CHECKS

if TYPE_CHECKING:
    from harness.drive.common import Recorder
    from harness.session import BootOptions

MODES = ("acpi", "dt")

# What the runner can fill into a method's Options (field name -> the ``run``
# option that sets it; "" when no option does: ``kernel_tree`` is the source
# tree the kernel was built from, taken from the artifacts by the runner).
RUN_OPTIONS: dict[str, str] = {
    "cycles": "--cycles",
    "online_type": "--online-type",
    "dimms": "--dimms",
    "dimm_mb": "--dimm-size",
    "seconds": "--race-seconds",
    "iterations": "--race-iterations",
    "kernel_tree": "",
}
# the options every method is judged against when the user gives them (key ->
# flag): the run options above, the boot mode, the boot memory, the gdb checks
OPTION_FLAGS: dict[str, str] = {
    "mode": "--mode", "mem_mb": "--mem", "order_check": "--order-check",
    **{k: flag for k, flag in RUN_OPTIONS.items() if flag},
}

OptionsT = TypeVar("OptionsT")


def same_boot(base: BootOptions, kconfig: dict[str, str] | None = None) -> BootOptions:
    """The default ``boot_options``: the boot as the user asked for it."""
    return base


@dataclass(frozen=True)
class Method(Generic[OptionsT]):
    """What a hotplug method declares (see ARCHITECTURE.md, "Adding a method").

    * ``name``: the ``--method`` name; ``mode``: ``"acpi"`` or ``"dt"``, the
      boot it needs (an explicit ``--mode`` other than this is refused);
    * ``summary``: one sentence for ``run --help``'s method table;
    * ``options``: a frozen dataclass; ``drive(rec, options(...))`` runs the method;
    * ``boot_options(base, kconfig)``: what the method changes in the boot
      (kernel parameters, devices, slots), sized from the kernel's config;
    * ``required_checks``: the checks that must look for the method to PASS;
    * ``order_checks``: False if gdb must stay detached (the runner then runs
      it with ``order_check="off"``; an explicit ``--order-check on|full`` is
      refused);
    * ``honours``: the fields of ``options`` the runner fills (keys of
      :data:`RUN_OPTIONS`); a run option outside it is refused when given;
    * ``own_memory``: why, if ``boot_options`` sets the boot memory itself
      (then ``--mem`` is refused); empty when it keeps ``--mem``;
    * ``rank``: its place in ``--method all`` and the help (lower first);
      ``in_all``: whether ``--method all`` runs it.
    """

    name: str
    mode: str
    summary: str
    options: type[OptionsT]
    drive: Callable[[Recorder, OptionsT], None]
    boot_options: Callable[[BootOptions, dict[str, str]], BootOptions] = same_boot
    required_checks: tuple[str, ...] = REMOVAL_CHECKS
    order_checks: bool = True
    honours: frozenset[str] = field(default_factory=frozenset)
    own_memory: str = ""
    rank: int = 100
    in_all: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"method {self.name}: mode {self.mode!r} is not one of {MODES}")
        fields = {f.name for f in dataclasses.fields(self.options)}  # type: ignore[arg-type]
        unknown = sorted(self.honours - set(RUN_OPTIONS))
        missing = sorted(self.honours - fields)
        if unknown or missing:
            raise ValueError(f"method {self.name}: honours {unknown + missing}, which "
                             f"{'are not run options' if unknown else 'its Options lacks'}")

    def boot(self, base: BootOptions, kconfig: dict[str, str]) -> BootOptions:
        """The boot this method runs on: its mode, then its ``boot_options``."""
        return self.boot_options(replace(base, mode=self.mode), kconfig)

    def make_options(self, values: Mapping[str, Any]) -> OptionsT:
        """``options`` with the honoured fields taken from ``values`` (a value of
        None keeps the field's default); the rest keep their defaults."""
        return self.options(**{k: v for k, v in values.items()
                               if k in self.honours and v is not None})

    def refusal(self, key: str, value: object) -> str:
        """Why this method cannot honour option ``key`` (a key of
        :data:`OPTION_FLAGS`) set to ``value``; empty when it can."""
        if key == "mode":
            return "" if value == self.mode else f"boots in {self.mode} mode"
        if key == "mem_mb":
            return f"sets its own boot memory: {self.own_memory}" if self.own_memory else ""
        if key == "order_check":
            return "" if value == "off" or self.order_checks else \
                "runs without gdb, so without ordering checks"
        if key in RUN_OPTIONS:
            return "" if key in self.honours else f"takes no {RUN_OPTIONS[key]}"
        return ""

    def flags(self) -> list[str]:
        """The ``run`` options it takes, in :data:`RUN_OPTIONS` order."""
        return [flag for k, flag in RUN_OPTIONS.items() if flag and k in self.honours]


# ---------------------------------------------------------------- registry

_REGISTRY: dict[str, Method[Any]] = {}
_loaded = False


def register(method: Method[OptionsT]) -> Method[OptionsT]:
    """Add ``method`` (a module's ``METHOD = register(Method(...))``). Two
    methods of one name are refused (re-importing the same module is not)."""
    old = _REGISTRY.get(method.name)
    if old is not None and old.drive.__module__ != method.drive.__module__:
        raise ValueError(f"two methods named {method.name!r}: {old.drive.__module__} "
                         f"and {method.drive.__module__}")
    _REGISTRY[method.name] = method
    return method


def load() -> dict[str, Method[Any]]:
    """Import every module of this package once (each registers its method)
    and return the registry, by rank. The dict is the registry itself
    (``runner.METHODS``): a test may put a stand-in method into it."""
    global _loaded
    if not _loaded:
        package = __name__.rpartition(".")[0]
        path = importlib.import_module(package).__path__
        for info in sorted(pkgutil.iter_modules(path), key=lambda i: i.name):
            importlib.import_module(f"{package}.{info.name}")
        ranked = sorted(_REGISTRY.values(), key=lambda m: (m.rank, m.name))
        _REGISTRY.clear()
        _REGISTRY.update((m.name, m) for m in ranked)
        _loaded = True
    return _REGISTRY


def methods() -> tuple[Method[Any], ...]:
    """Every registered method, by rank."""
    return tuple(sorted(load().values(), key=lambda m: (m.rank, m.name)))


def lookup(name: str) -> Method[Any]:
    found = load().get(name)
    if found is None:
        raise HarnessError(f"unknown method {name!r}; choose from "
                           f"{', '.join(m.name for m in methods())}", step="run")
    return found


def default_order() -> tuple[str, ...]:
    """What ``--method all`` runs, in order."""
    return tuple(m.name for m in methods() if m.in_all)


# ---------------------------------------------------------------- the CLI

def method_choices() -> str:
    """``--method``'s help: every name, and what 'all' means."""
    names = [m.name for m in methods()]
    order = default_order()
    return (f"{', '.join(names)} or all (default: all = {', '.join(order)})")


def help_table(width: int = 82) -> str:
    """``run --help``'s method table: name, summary, boot mode and options."""
    lines = []
    named = [m for m in methods() if not m.in_all]
    for m in methods():
        if m is (named[0] if named else None):
            lines.append(f"  ('all' is the {len(default_order())} above; "
                         f"{'this one is' if len(named) == 1 else 'these are'} "
                         "asked for by name:)")
        lines.append(textwrap.fill(m.summary, width, initial_indent=f"  {m.name:<11} ",
                                   subsequent_indent=" " * 14, break_on_hyphens=False))
        takes = " ".join(m.flags()) or "no scenario options"
        lines.append(" " * 14 + f"[{m.mode} boot; {takes}"
                     f"{'; no --mem' if m.own_memory else ''}"
                     f"{'; no gdb' if not m.order_checks else ''}]")
    return "\n".join(lines)


def takers(key: str, value: object) -> list[str]:
    """The registered methods that honour ``key`` = ``value``."""
    return [m.name for m in methods() if not m.refusal(key, value)]


def check_given(selected: Sequence[Method[Any]], given: Mapping[str, object]) -> list[str]:
    """Judge the options the user gave explicitly (key of :data:`OPTION_FLAGS`
    -> value) against the selected methods. An option none of them can honour
    is refused (HarnessError, blamed on the harness's input: exit 2) with the
    methods' reasons and what to do; one that only some can honour is kept for
    those, and the returned notes name the others (the run prints them).
    Defaults are never judged: pass only what the user typed."""
    notes = []
    for key, value in given.items():
        flag = OPTION_FLAGS[key]
        shown = f"{flag} {value}" if key not in ("order_check",) else f"{flag}={value}"
        why = {m.name: m.refusal(key, value) for m in selected}
        out = [name for name, reason in why.items() if reason]
        if not out:
            continue
        reasons = "; ".join(f"{name} {why[name]}" for name in out)
        if len(out) == len(selected):
            others = [n for n in takers(key, value) if n not in out]
            what = f"drop {flag}" + (f", or run a method that can: {', '.join(others)}"
                                     if others else "")
            raise HarnessError(f"{shown}: {_names(out)} cannot honour it ({reasons}); "
                               f"{what}", step="options", blame=HARNESS)
        kept = [m.name for m in selected if m.name not in out]
        notes.append(f"{shown} applies to {_names(kept)} only; {_names(out)} "
                     f"run{'s' if len(out) == 1 else ''} without it ({reasons})")
    return notes


def _names(names: Sequence[str]) -> str:
    return ", ".join(names)
