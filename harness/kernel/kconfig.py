"""Kernel config fragments: parse, merge, validate against the final .config.

A fragment is a list of ``CONFIG_X=value`` and ``# CONFIG_X is not set`` lines.
Fragments are named (``kernel-configs/NAME.config``) or given as paths. A
fragment whose first line is ``# kind: geometry`` picks the page-table geometry;
requesting one replaces the default geometry instead of fighting it.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from harness.errors import ConfigError, HarnessError
from harness.kernel import versions
from harness.paths import CONFIG_DIR  # noqa: E402  (checkout or shipped copy)

DEFAULT_BASE = "base"
DEFAULT_GEOMETRY = "4k-48"

_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")
NOT_SET = "n"


@dataclass(frozen=True)
class Fragment:
    name: str
    path: str
    options: tuple  # ((symbol, value), ...) in file order; value "n" = not set
    geometry: bool = False

    def as_dict(self) -> dict:
        return dict(self.options)


def parse_config_text(text: str, origin: str = "<text>") -> dict:
    """Parse .config-style text into {CONFIG_X: value}; "n" for not-set."""
    options = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        m = _SET.match(line)
        if m:
            options[m.group(1)] = m.group(2)
            continue
        m = _UNSET.match(line)
        if m:
            options[m.group(1)] = NOT_SET
            continue
        if line.startswith("#"):
            continue
        raise HarnessError(f"{origin}:{number}: not a config line: {raw!r}",
                           step="config")
    return options


def load_fragment(spec: str, config_dir: Path = CONFIG_DIR) -> Fragment:
    """Load a fragment by name (kernel-configs/NAME.config) or by path."""
    path = Path(spec)
    if not path.is_file():
        named = config_dir / f"{spec}.config"
        if not named.is_file():
            known = ", ".join(available_fragments(config_dir))
            raise HarnessError(f"no config fragment '{spec}': not a file, and not "
                               f"one of {known}", step="config")
        path = named
    text = path.read_text()
    options = parse_config_text(text, str(path))
    first = text.splitlines()[0].strip() if text.strip() else ""
    name = path.stem if path.parent.resolve() == config_dir.resolve() else str(path)
    return Fragment(name=name, path=str(path), options=tuple(options.items()),
                    geometry=first == "# kind: geometry")


def available_fragments(config_dir: Path = CONFIG_DIR) -> list:
    return sorted(p.stem for p in config_dir.glob("*.config"))


def resolve_fragments(requested: Iterable[str], config_dir: Path = CONFIG_DIR,
                      version: str = "") -> list:
    """The default base + geometry, then the requested fragments in order.

    A requested geometry fragment replaces the default one. With the tree's
    ``version`` ("6.1"), a fragment named NAME is read from
    ``config_dir/VERSION/NAME.config`` when that exists (kernel/versions.py).
    """
    def load(spec: str) -> Fragment:
        where = versions.fragment_dir(version, spec, config_dir) if version else config_dir
        return load_fragment(spec, where)
    extra = [load(s) for s in requested]
    base = [load(DEFAULT_BASE)]
    if not any(f.geometry for f in extra):
        base.append(load(DEFAULT_GEOMETRY))
    seen, result = set(), []
    for frag in base + extra:
        if frag.path not in seen:
            seen.add(frag.path)
            result.append(frag)
    return result


def merge(fragments: Iterable[Fragment]) -> dict:
    """Later fragments override earlier ones, symbol by symbol."""
    merged: dict = {}
    for frag in fragments:
        merged.update(frag.options)
    return merged


def render(options: Mapping[str, str]) -> str:
    lines = []
    for sym, value in options.items():
        lines.append(f"# {sym} is not set" if value == NOT_SET else f"{sym}={value}")
    return "\n".join(lines) + "\n"


def digest(options: Mapping[str, str]) -> str:
    return hashlib.sha256(render(options).encode()).hexdigest()


def apply_to(config_text: str, requested: Mapping[str, str]) -> str:
    """Merge requested options over an existing .config (what merge_config -m does)."""
    current = parse_config_text(config_text, ".config")
    for sym in requested:  # move them last: in a choice, the last "y" wins
        current.pop(sym, None)
    current.update(requested)
    return render(current)


def dropped_options(requested: Mapping[str, str], final: Mapping[str, str]) -> list:
    """Requested options whose value did not survive into the final .config.

    Returns ``[(symbol, wanted, got)]``; ``got`` is "n" when absent.
    """
    dropped = []
    for sym, wanted in requested.items():
        got = final.get(sym, NOT_SET)
        if _normal(wanted) != _normal(got):
            dropped.append((sym, wanted, got))
    return dropped


def _normal(value: str) -> str:
    return value.strip('"') if value.startswith('"') else value


def validate(requested: Mapping[str, str], final_text: str,
             origins: Mapping[str, str] | None = None) -> None:
    """Raise ConfigError listing every requested option missing from .config."""
    dropped = dropped_options(requested, parse_config_text(final_text, ".config"))
    if not dropped:
        return
    lines = []
    for sym, wanted, got in dropped:
        where = f"  (from {origins[sym]})" if origins and sym in origins else ""
        lines.append(f"  {sym}: requested {wanted}, got {got}{where}")
    raise ConfigError(
        f"{len(dropped)} requested config option(s) dropped by olddefconfig "
        "(an unmet dependency, a typo, or an option missing from this tree):",
        dropped=[d[0] for d in dropped], step="config", evidence="\n".join(lines))


def origins(fragments: Iterable[Fragment]) -> dict:
    """Which fragment each symbol's final value came from."""
    where = {}
    for frag in fragments:
        for sym, _ in frag.options:
            where[sym] = frag.name
    return where
