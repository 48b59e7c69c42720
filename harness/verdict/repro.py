"""Seeded regressions (``patches/repro/``) and the detection matrix.

Each regression is one patch whose header carries trailers the harness reads::

    Repro-Point: a. free before clear, PTE level (free_pte_table)
    Repro-Config: 16k-47            # fragments (comma-separated), optional
    Repro-Append: rodata=full       # kernel parameters, optional
    Repro-Methods: probe            # methods that can see it
    Repro-Expect: no-table-freed-while-linked, no-kernel-splat
    Repro-Cycles: 2                 # optional

``Repro-Cpu: cortex-a57`` (optional) boots it on that QEMU CPU model instead
of ``max`` (harness.machine.qemu.CPU_MODELS; its clean row too).

``Repro-Expect: -`` marks a regression no scenario of the harness catches yet;
``Repro-Why:`` then says why. It is run and shown, and does not count against
the exit code. Adding a regression is adding one patch file.

``patches/history/`` holds the same kind of patch for upstream fixes: each
undoes one fix's effect on the kernel the harness builds and names it with
``Upstream-Fix: <sha> ("<title>")`` (:data:`HISTORY_DIR`, ``repro --history``,
``repro --upstream SHA``). Two more trailers serve a fix the kernel does not
carry yet: ``Repro-Kernel: stock`` (the row runs the stock kernel: the patch
file holds a header only) and ``Repro-Clean-Patch: FILE`` (relative to the
patch's folder, repeatable with commas: the clean row of that shape carries
it, e.g. a backport of the fix, so that the clean row can pass).

:func:`run_matrix` builds each regression (incrementally: one ``O=`` tree per
configuration), runs the scenarios that can see it, judges them, and runs the
clean kernel once per (configuration, parameters, methods) used, for the
matrix's baseline rows. The result is plain data (``MatrixRow``), printed as a
table (:func:`matrix_text`), JSON, or Markdown (:func:`matrix_markdown`, what
the README's table is generated from).
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from harness.errors import KERNEL, HarnessError
from harness.kernel.versions import NotApplicable
from harness.paths import PATCH_DIR
from harness.records import Verdict

REPRO_DIR = PATCH_DIR / "repro"
HISTORY_DIR = PATCH_DIR / "history"
_TRAILER = re.compile(r"^Repro-([A-Za-z-]+):\s*(.*?)\s*$")
_UPSTREAM = re.compile(r"^Upstream-Fix:\s*([0-9a-f]{7,40})\b\s*(.*?)\s*$")
CAUGHT, MISSED, NOT_EXPECTED, CLEAN_PASS, CLEAN_FAIL, ERROR = (
    "caught", "MISSED", "not expected", "clean", "CLEAN FAILED", "ERROR")
NOT_APPLICABLE = "n/a"     # the patch or shape cannot work on the source's kernel version


@dataclass(frozen=True)
class Regression:
    """One seeded regression, as its patch header describes it."""
    name: str
    path: str
    point: str
    methods: tuple
    expect: tuple                 # check names that must FAIL; () = not expected
    configs: tuple = ()
    append: tuple = ()
    cycles: int = 1
    why: str = ""
    upstream: str = ""            # 'SHA ("title")' of the upstream fix it undoes
    stock: bool = False           # the stock kernel is the regression (Repro-Kernel: stock)
    clean_patches: tuple = ()     # what the clean row of its shape carries
    cpu: str = ""                 # QEMU's -cpu when not max (Repro-Cpu)

    @property
    def upstream_sha(self) -> str:
        return self.upstream.split(" ", 1)[0]

    @property
    def patches(self) -> tuple:
        """The patches its row's kernel carries beyond patches/series."""
        return () if self.stock else (self.path,)

    @property
    def shape(self) -> tuple:
        """What the clean baseline must share with it."""
        return (self.configs, self.append, self.methods, self.cycles, self.cpu)


def _split(value: str) -> tuple:
    return tuple(v.strip() for v in re.split(r"[,\s]+", value) if v.strip())


def parse_header(text: str) -> dict:
    """The ``Repro-*`` trailers of a patch header (before the ``---`` line)."""
    found: dict = {}
    for line in text.splitlines():
        if line.startswith("---") or line.startswith("diff --git"):
            break
        m = _TRAILER.match(line)
        if m:
            found[m[1].lower()] = m[2]
        m = _UPSTREAM.match(line)
        if m:
            found["upstream"] = f"{m[1]} {m[2]}".strip()
    return found


def load(path: Path) -> Regression:
    path = Path(path)
    t = parse_header(path.read_text(errors="replace"))
    missing = [k for k in ("point", "methods", "expect") if k not in t]
    if missing:
        lacks = ", Repro-".join(m.title() for m in missing)
        raise HarnessError(f"{path}: header lacks Repro-{lacks}"
                           " (see harness/repro.py for the trailers)", step="repro")
    expect = () if t["expect"].strip() in ("-", "none") else _split(t["expect"])
    kernel = t.get("kernel", "patched").strip()
    if kernel not in ("patched", "stock"):
        raise HarnessError(f"{path}: Repro-Kernel: {kernel!r} is neither 'stock' nor "
                           "'patched'", step="repro")
    clean = tuple(str((path.parent / c).resolve()) if not Path(c).is_absolute() else c
                  for c in re.split(r"\s*,\s*", t.get("clean-patch", "").strip()) if c)
    for c in clean:
        if not Path(c).is_file():
            raise HarnessError(f"{path}: Repro-Clean-Patch {c} does not exist", step="repro")
    cpu = t.get("cpu", "").strip()
    if cpu == "max":
        cpu = ""
    from harness.machine.qemu import CPU_MODELS
    if cpu and cpu not in CPU_MODELS:
        raise HarnessError(f"{path}: Repro-Cpu: {cpu!r} is not one of "
                           f"{', '.join(CPU_MODELS)}", step="repro")
    return Regression(name=path.stem, path=str(path), point=t["point"],
                      methods=_split(t["methods"]), expect=expect,
                      configs=_split(t.get("config", "")), append=_split(t.get("append", "")),
                      cycles=int(t.get("cycles", "1")), why=t.get("why", ""),
                      upstream=t.get("upstream", ""), stock=kernel == "stock",
                      clean_patches=clean, cpu=cpu)


def discover(names: Iterable[str] = (), folder: Path = REPRO_DIR) -> list[Regression]:
    """Every regression in ``folder`` (sorted), or those whose name or number
    prefix is given (``0005`` or ``0005-free-pte-table-before-pmd-clear``)."""
    paths = sorted(Path(folder).glob("*.patch"))
    names = list(names)
    if names:
        chosen = []
        for n in names:
            hits = [p for p in paths if p.stem == n or p.stem.split("-", 1)[0] == n
                    or p == Path(n)]
            if not hits:
                raise HarnessError(f"no regression {n!r} in {folder}; have: "
                                   + ", ".join(p.stem for p in paths), step="repro")
            chosen += hits
        paths = chosen
    return [load(p) for p in paths]


def find_upstream(sha: str, folder: Path = HISTORY_DIR) -> Regression:
    """The history patch registered for the upstream fix ``sha`` (a prefix of 7
    characters or more, as ``Upstream-Fix:`` gives it)."""
    sha = sha.strip().lower()
    regs = discover((), folder)
    hits = [r for r in regs if len(sha) >= 7 and r.upstream_sha
            and (r.upstream_sha.startswith(sha) or sha.startswith(r.upstream_sha))]
    if len(hits) != 1:
        known = ", ".join(r.upstream for r in regs if r.upstream)
        raise HarnessError(f"{'no' if not hits else 'more than one'} history patch for "
                           f"upstream {sha!r} in {folder}"
                           + ("" if len(sha) >= 7 else " (give 7 hex digits or more)")
                           + f"; registered: {known}", step="repro")
    return hits[0]


# ---------------------------------------------------------------- results

@dataclass(frozen=True)
class Cell:
    verdict: str
    evidence: str = ""            # the first evidence line
    method: str = ""


@dataclass(frozen=True)
class MatrixRow:
    """One kernel (a regression, or the clean kernel of a shape) judged."""
    name: str
    point: str
    expect: tuple
    status: str                   # caught / MISSED / not expected / clean / ...
    cells: dict = field(default_factory=dict)     # check -> Cell (the worst per method)
    methods: tuple = ()
    configs: tuple = ()
    append: tuple = ()
    exit_code: int = 0
    error: str = ""
    seconds: float = 0.0
    why: str = ""
    cycles: int = 1
    upstream: str = ""            # the upstream fix a history row undoes
    patches: tuple = ()           # the row's patches beyond patches/series (file names)
    source: str = ""              # its --kernel-src, on a source axis (repro --kernel-src A,B)
    cpu: str = ""                 # QEMU's -cpu when not max

    @property
    def label(self) -> str:
        """How the matrix names the row: on a source axis, with its source."""
        return f"{self.name} @{self.source}" if self.source else self.name

    def to_dict(self) -> dict:
        d = asdict(self)
        d["cells"] = {k: asdict(v) for k, v in self.cells.items()}
        return d


_BAD = (Verdict.FAIL, Verdict.ERROR)
_ORDER = {Verdict.FAIL: 0, Verdict.ERROR: 1, Verdict.SKIP: 2, Verdict.PASS: 3}


def cells_of(report: dict) -> dict:
    """check name -> the worst Cell over the report's methods."""
    cells: dict = {}
    for m in report.get("methods", ()):
        for c in m.get("checks", ()):
            first = (c.get("evidence") or "").strip().split("\n", 1)[0]
            cell = Cell(c["verdict"], first[:200], m["method"])
            old = cells.get(c["name"])
            if old is None or _ORDER.get(cell.verdict, 9) < _ORDER.get(old.verdict, 9):
                cells[c["name"]] = cell
        error = (m.get("run") or {}).get("error")
        if error:
            verdict = Verdict.FAIL if error.get("blame") == KERNEL else Verdict.ERROR
            cells.setdefault("run", Cell(verdict, str(error.get("message", ""))[:200],
                                         m["method"]))
    return cells


def status_of(reg: Optional[Regression], report: dict) -> str:
    """Caught when every expected check FAILed; a clean row passes or not."""
    cells = cells_of(report)
    if reg is None:
        return CLEAN_PASS if report.get("exit_code") == 0 else CLEAN_FAIL
    if not reg.expect:
        return NOT_EXPECTED
    if all(cells.get(n, Cell("")).verdict == Verdict.FAIL for n in reg.expect):
        return CAUGHT
    if report.get("exit_code") == 2 and not any(c.verdict == Verdict.FAIL
                                                for c in cells.values()):
        return ERROR
    return MISSED


def matrix_exit_code(rows: list[MatrixRow]) -> int:
    """0: every expected regression caught and every clean kernel passed;
    1: one was missed or a clean kernel failed; 2: a row could not be judged."""
    if any(r.status in (MISSED, CLEAN_FAIL) for r in rows):
        return 1
    if any(r.status == ERROR for r in rows):
        return 2
    return 0


# ---------------------------------------------------------------- running

RunFn = Callable[..., dict]    # (configs, patches, append, methods, cycles, folder[, cpu=])


def run_matrix(regs: list[Regression], out: Path, run_fn: RunFn,
               progress: Callable[[str], None] = lambda s: None,
               clean: bool = True) -> list[MatrixRow]:
    """Run each regression and (``clean``) the clean kernel once per shape.
    ``run_fn(configs, patches, append, methods, cycles, out_dir) -> report dict``
    builds and runs one kernel (the CLI passes the real thing; tests a fake);
    a shape on another CPU model than max adds ``cpu=MODEL``."""
    import time
    rows: list[MatrixRow] = []
    shapes = list(dict.fromkeys((r.shape, r.clean_patches) for r in regs)) if clean else []
    todo = [(None, s, cp) for s, cp in shapes] + [(r, r.shape, r.patches) for r in regs]
    for reg, (configs, append, methods, cycles, cpu), patches in todo:
        names = tuple(Path(p).stem for p in patches)
        name = reg.name if reg else "clean " + _shape_name(configs, append, methods, cycles,
                                                           names, cpu)
        progress(f"[repro] {name}: {', '.join(methods)}"
                 + (f" ({'+'.join(configs)})" if configs else "")
                 + (f" [{' '.join(append)}]" if append else "")
                 + (f" on {cpu}" if cpu else ""))
        start = time.monotonic()
        folder = Path(out) / (reg.name if reg else "clean-" + _shape_slug(configs, append,
                                                                          methods, names, cpu))
        error, blame = "", ""
        try:
            report = run_fn(configs, patches, append, methods, cycles, folder,
                            **({"cpu": cpu} if cpu else {}))
        except HarnessError as e:      # e.g. the kernel does not build
            report, error, blame = {"exit_code": e.exit_code, "methods": []}, e.message, e.blame
            blame = "n/a" if isinstance(e, NotApplicable) else blame
        status = status_of(reg, report)
        if error and status != CAUGHT:
            status = MISSED if (reg and blame == "kernel" and reg.expect) else \
                NOT_APPLICABLE if blame == "n/a" else ERROR
        row = MatrixRow(name=name, point=reg.point if reg else "(clean kernel)",
                        expect=reg.expect if reg else (), status=status,
                        cells=cells_of(report), methods=methods, configs=configs,
                        append=append, exit_code=report.get("exit_code", 2), error=error,
                        seconds=round(time.monotonic() - start, 1),
                        why=reg.why if reg else "", cycles=cycles,
                        upstream=reg.upstream if reg else "",
                        patches=tuple(Path(p).name for p in patches), cpu=cpu)
        progress(f"[repro] {name}: {row.status} in {row.seconds:.0f}s")
        rows.append(row)
    return rows


def _shape_name(configs: tuple, append: tuple, methods: tuple = (), cycles: int = 1,
                patches: tuple = (), cpu: str = "") -> str:
    parts = ["+".join(configs) or "4k-48"] + list(append) + [",".join(methods)]
    return (" ".join(p for p in parts if p) + (f" x{cycles}" if cycles > 1 else "")
            + (f" on {cpu}" if cpu else "") + "".join(f" + {_short(p)}" for p in patches))


def _short(patch: str) -> str:
    """A patch's file name, without its .patch suffix, cut to its number and
    first words (the clean row of a history shape names the fix it carries)."""
    stem = Path(patch).name.removesuffix(".patch")
    return stem if len(stem) <= 24 else stem[:24]


def _shape_slug(configs: tuple, append: tuple, methods: tuple, patches: tuple = (),
                cpu: str = "") -> str:
    return re.sub(r"[^A-Za-z0-9.+-]", "_", "-".join(
        ["+".join(configs) or "default", *append, *methods, *([cpu] if cpu else []),
         *map(_short, patches)]))


def run_folder(row: dict) -> str:
    """The run folder, under the matrix's, that :func:`run_matrix` gave a row
    (a ``MatrixRow.to_dict()``)."""
    if row.get("source"):      # a source axis: each source's rows in a folder of its own
        from harness.verdict.geomatrix import source_folder
        return f"{source_folder(row['source'])}/" + run_folder({**row, "source": ""})
    if row.get("point") != "(clean kernel)":
        return str(row.get("name", ""))
    return "clean-" + _shape_slug(tuple(row.get("configs", ())), tuple(row.get("append", ())),
                                  tuple(row.get("methods", ())), tuple(row.get("patches", ())),
                                  row.get("cpu", ""))


# ---------------------------------------------------------------- output

def _columns(rows: list[MatrixRow]) -> list[str]:
    wanted = [n for r in rows for n in r.expect]
    failed = [n for r in rows for n, c in r.cells.items() if c.verdict in _BAD]
    return list(dict.fromkeys(wanted + failed))


def _mark(row: MatrixRow, check: str) -> str:
    cell = row.cells.get(check)
    if cell is None:
        return "-"
    mark = {Verdict.FAIL: "FAIL", Verdict.PASS: "pass", Verdict.SKIP: "skip",
            Verdict.ERROR: "ERR"}.get(cell.verdict, cell.verdict)
    return mark + ("*" if check in row.expect else "")


def matrix_text(rows: list[MatrixRow]) -> str:
    """The matrix for a terminal, then each row's evidence for its expected
    (or failing) checks. ``*`` marks an expected check."""
    cols = _columns(rows)
    width = max([len(r.label) for r in rows] + [10])
    lines = ["regression × check (* = expected to FAIL)", ""]
    lines.append(f"{'':{width}}  {'status':12} " + " ".join(f"{i + 1:>6}" for i in
                                                            range(len(cols))))
    for r in rows:
        lines.append(f"{r.label:{width}}  {r.status:12} "
                     + " ".join(f"{_mark(r, c):>6}" for c in cols))
    lines += ["", "checks: " + ", ".join(f"{i + 1} {c}" for i, c in enumerate(cols)), ""]
    for r in rows:
        shown = [c for c in cols if c in r.expect or r.cells.get(c, Cell("")).verdict
                 in _BAD]
        if not shown and not r.error and not r.why:
            continue
        if r.upstream:
            lines.append(f"{r.name}: undoes upstream {r.upstream}")
        lines.append(f"{r.label} ({r.point}; {', '.join(r.methods)}"
                     + (f"; {'+'.join(r.configs)}" if r.configs else "")
                     + (f"; {' '.join(r.append)}" if r.append else "")
                     + (f"; -cpu {r.cpu}" if r.cpu else "") + "):")
        if r.why:
            lines.append(f"    not expected to be caught: {r.why}")
        if r.error:
            lines.append(f"    run stopped: {r.error}")
        for c in shown:
            cell = r.cells.get(c)
            if cell is not None:
                lines.append(f"    {cell.verdict:5} {c} [{cell.method}]: {cell.evidence}")
            else:
                lines.append(f"    ----- {c}: not judged")
    lines.append(f"exit {matrix_exit_code(rows)}: "
                 + ("every expected regression caught, every clean kernel passed"
                    if matrix_exit_code(rows) == 0 else "see MISSED / CLEAN FAILED / ERROR"))
    return "\n".join(lines) + "\n"


def matrix_markdown(rows: list[MatrixRow]) -> str:
    """The README's table: one line per regression (clean rows first). Rows
    of upstream fixes (``patches/history``) get the fix's id and title first."""
    history = any(r.upstream for r in rows)
    out = ["| kernel | review point | run with | expected to fail | result | evidence |",
           "|---|---|---|---|---|---|"]
    if history:
        out = ["| upstream fix | kernel | what goes wrong without it | run with | "
               "expected to fail | result | evidence |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        name = (r.name if r.point != "(clean kernel)" else "clean kernel") \
            + (f" @{r.source}" if r.source else "")
        if r.point == "(clean kernel)" and r.patches:
            name += " + " + ", ".join(p.removesuffix(".patch") for p in r.patches)
        run = ", ".join(r.methods)
        if r.configs:
            run += f" `--config {'+'.join(r.configs)}`"
        if r.append:
            run += f" `{' '.join(r.append)}`"
        if r.cycles > 1:
            run += f" `--cycles {r.cycles}`"
        if r.cpu:
            run += f" `--cpu {r.cpu}`"
        first = next((r.cells[c] for c in r.expect if c in r.cells), None)
        if first is None:
            first = next((c for c in r.cells.values() if c.verdict in _BAD),
                         None)
        evidence = (first.evidence if first else (r.why or r.error or "")).replace("|", "\\|")
        if history:
            fix = r.upstream.replace("|", "\\|") if r.upstream else "-"
            kernel = "stock" if (r.upstream and not r.patches) else f"`{name}`"
            out.append(f"| {fix} | {kernel} | {r.point} | {run} | "
                       f"{', '.join(f'`{c}`' for c in r.expect) or '-'} | {r.status} | "
                       f"{evidence[:160]} |")
            continue
        out.append(f"| `{name}` | {r.point} | {run} | "
                   f"{', '.join(f'`{c}`' for c in r.expect) or '-'} | {r.status} | "
                   f"{evidence[:160]} |")
    return "\n".join(out) + "\n"


def rows_from_json(data: dict) -> list[MatrixRow]:
    rows = []
    for d in data["rows"]:
        cells = {k: Cell(**v) for k, v in d["cells"].items()}
        rows.append(MatrixRow(**{**d, "cells": cells, "expect": tuple(d["expect"]),
                                 "methods": tuple(d["methods"]),
                                 "configs": tuple(d["configs"]),
                                 "append": tuple(d["append"]),
                                 "patches": tuple(d.get("patches", ()))}))
    return rows


def replace_between(text: str, block: str, tag: str = "repro-matrix") -> str:
    """Replace what lies between ``<!-- TAG:start -->`` and ``<!-- TAG:end -->``."""
    start, end = f"<!-- {tag}:start -->", f"<!-- {tag}:end -->"
    if start not in text or end not in text:
        raise HarnessError(f"markers {start} / {end} not found", step="repro")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{block}{end}{tail}"


__all__ = ["Regression", "MatrixRow", "Cell", "discover", "find_upstream", "load",
           "run_matrix", "HISTORY_DIR",
           "matrix_text", "matrix_markdown", "matrix_exit_code", "rows_from_json",
           "replace_between", "run_folder"]
