"""A saved run as a plain-text block for a reply on a mailing list.

``hotplug-harness report DIR --mail`` and ``run --mail`` print it: the kernel
(release; the commit when it was built from a git tree, else the source it
came from), the patches and the series' Subjects, the config and geometry, the
scenarios (methods, cycles, removals), each failing check with the first line
of its evidence, the checks that could not look (named "could not check",
never as failures), and a ``Tested-by:`` trailer only when the verdict is
PASS. Lines are wrapped at 72 columns, as mail wants.

The trailer's name comes from ``--tested-by "Name <email>"`` or from
``git config user.name`` / ``user.email``; with neither, a line says how to
add one (no trailer is made up).
"""
from __future__ import annotations

import re
import subprocess
import textwrap
from pathlib import Path
from typing import Any, Optional

from harness.records import ERROR, FAIL, PASS, SKIP

Json = dict[str, Any]
WIDTH = 72
EVIDENCE_CHARS = 240          # the first evidence line, cut: a reply is not the report
LABEL = 11                    # "Scenarios: " - the labels' column
IDENTITY = re.compile(r"^[^<>]+ <[^<>@\s]+@[^<>\s]+>$")


# ---------------------------------------------------------------- identity

def _git(cwd: Optional[Path], *args: str) -> Optional[str]:
    try:
        proc = subprocess.run(["git", *(["-C", str(cwd)] if cwd else []), *args],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_commit(source: str) -> Optional[Json]:
    """For a kernel built from a directory (``dir:PATH@identity``) that is the top
    of a git tree: its HEAD (``sha``, ``subject``) and whether tracked files
    differ from it (``dirty``); else None."""
    kind, _, rest = source.partition(":")
    if kind != "dir":
        return None
    path = Path(rest.rsplit("@", 1)[0])
    top = _git(path, "rev-parse", "--show-toplevel") if path.is_dir() else None
    if not top or Path(top).resolve() != path.resolve():
        return None
    sha = _git(path, "rev-parse", "--verify", "-q", "HEAD")
    if not sha:
        return None
    status = _git(path, "status", "--porcelain", "--untracked-files=no")
    return {"sha": sha, "subject": _git(path, "log", "-1", "--format=%s") or "",
            "dirty": bool(status)}


def tested_by(given: Optional[str] = None, cwd: Optional[Path] = None) -> Optional[str]:
    """``Name <email>``: as given (checked), else from git config; None when
    neither says."""
    if given is not None:
        text = " ".join(given.split())
        if not IDENTITY.match(text):
            raise ValueError(f"--tested-by {given!r}: expected \"Name <email>\"")
        return text
    name, email = _git(cwd, "config", "user.name"), _git(cwd, "config", "user.email")
    return f"{name} <{email}>" if name and email else None


# ---------------------------------------------------------------- rendering

def _wrap(text: str, indent: str = "", first: Optional[str] = None) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=indent if first is None else first,
                         subsequent_indent=indent, break_long_words=False,
                         break_on_hyphens=False) or [(first or indent).rstrip()]


def _field(label: str, values: list[str]) -> list[str]:
    """``Label:    value``, further values (each wrapped) under the first."""
    out: list[str] = []
    pad = " " * LABEL
    for i, value in enumerate(values):
        out += _wrap(value, pad, f"{label + ':':<{LABEL}}" if i == 0 else pad)
    return out


def _short(text: str) -> str:
    line = " ".join((text or "").strip().split("\n", 1)[0].split())
    return line if len(line) <= EVIDENCE_CHARS else line[:EVIDENCE_CHARS - 3] + "..."


def _source(kernel: Json) -> str:
    source = str(kernel.get("source") or "")
    kind, _, rest = source.partition(":")
    path, _, ident = rest.rpartition("@")
    commit = kernel.get("commit")
    if commit:
        text = f"commit {commit['sha'][:12]} (\"{commit.get('subject', '')}\")"
        return text + (", with local changes" if commit.get("dirty") else "")
    if kind == "tarball" and path:
        return f"{Path(path).name} (sha256 {ident})"
    if kind == "dir" and path:
        return f"tree {path} (not a git tree; content {ident})"
    return source or "(source not recorded)"


def _patches(kernel: Json) -> tuple[list[str], list[str]]:
    """(patch file names not from a series, "[3/5] Subject" of the series)."""
    mails = list(kernel.get("series") or ())
    from_mail = {m.get("name") for m in mails}
    names = [str(p[0] if isinstance(p, (list, tuple)) else p)
             for p in kernel.get("patches") or ()]
    plain = [n for n in names if n not in from_mail]
    return plain, [f"[{m.get('part', '?')}] {m.get('subject', '')}" for m in mails]


def _geometry(report: Json) -> str:
    kernel = report.get("kernel") or {}
    fragments = " + ".join(kernel.get("fragments") or ()) or "(fragments not recorded)"
    for method in report.get("methods", ()):
        geo = (method.get("run") or {}).get("geometry") or {}
        if geo.get("granule"):
            shape = [f"{geo['granule'] // 1024}K pages"]
            if geo.get("va_bits"):
                shape.append(f"{geo['va_bits']}-bit VA")
            if geo.get("levels"):
                shape.append(f"{geo['levels']} levels")
            return f"{fragments}: {', '.join(shape)}"
    return fragments


def _scenario(method: Json) -> str:
    run = method.get("run") or {}
    options = run.get("options") or {}
    cycles = options.get("cycles") or 1
    removals = len(run.get("removals") or ())
    parts = [f"{cycles} cycle{'s' if cycles != 1 else ''}",
             f"{removals} removal{'s' if removals != 1 else ''}"]
    if options.get("walker") is False:
        parts.append("no host walker")
    if options.get("order_check") in ("off", False):
        parts.append("ordering checks off")
    elif options.get("order_check") == "sampled":
        parts.append("ordering checks sampled")
    return f"{method['method']} ({', '.join(parts)})"


def _problems(method: Json) -> tuple[list[str], list[str]]:
    """(FAIL blocks, could-not-check blocks) of one method, wrapped."""
    fails: list[str] = []
    errors: list[str] = []
    name = method["method"]
    for c in method.get("checks", ()):
        if c["verdict"] not in (FAIL, ERROR):
            continue
        step = f" (step {c['step']})" if c.get("step") else ""
        head = (f"FAIL: {name}, {c['name']}{step}:" if c["verdict"] == FAIL
                else f"Could not check: {name}, {c['name']}{step}:")
        block = [*_wrap(head, "  ", ""), *_wrap(_short(c.get("evidence", "")), "    ")]
        (fails if c["verdict"] == FAIL else errors).extend(block)
    error = (method.get("run") or {}).get("error")
    if error:
        kernel = error.get("blame") == "kernel"
        head = (f"FAIL: {name}, the run stopped in step {error.get('step')}:" if kernel
                else f"Could not check: {name}, the run stopped in step "
                     f"{error.get('step')} ({error.get('blame')}):")
        block = [*_wrap(head, "  ", ""), *_wrap(_short(str(error.get("message", ""))), "    ")]
        (fails if kernel else errors).extend(block)
    return fails, errors


def _passed(method: Json) -> list[str]:
    checks = method.get("checks", ())
    passed = [c["name"] for c in checks if c["verdict"] == PASS]
    skipped = sum(c["verdict"] == SKIP for c in checks)
    text = (f"{method['method']}: {len(passed)} checks passed"
            + (f" ({', '.join(passed)})" if passed else "")
            + (f"; {skipped} did not apply" if skipped else ""))
    return _wrap(text, "    ", "  ")


def render(report: Json, identity: Optional[str] = None, how_to: str = "") -> str:
    """The reply block for a report.json dict. ``identity`` ("Name <email>") is
    the trailer's, used only when the verdict is PASS; without one, a PASS
    gets a line saying how to add it (``how_to``)."""
    kernel = report.get("kernel") or {}
    methods = list(report.get("methods", ()))
    plain, mails = _patches(kernel)
    lines = ["Tested with hotplug-harness: arm64 memory hot-remove, QEMU virt (TCG)",
             ""]
    lines += _field("Kernel", [f"{kernel.get('release') or '(release not recorded)'}, "
                               f"{_source(kernel)}"])
    if plain:        # file names do not wrap: one a line, under the label
        lines += ["Patches:", *(f"  {name}" for name in plain)]
    if mails:
        lines += _field("Series", mails)
    lines += _field("Config", [_geometry(report)])
    lines += _field("Scenarios", [_scenario(m) for m in methods] or ["(no method ran)"])
    verdict = str(report.get("verdict", "?"))
    result = ("could not be judged (ERROR: the harness or the machine failed)"
              if verdict == ERROR else verdict)
    if report.get("interrupted"):
        result = f"interrupted by {report.get('signal', 'a signal')} (partial run)"
    lines += _field("Result", [result])
    fails: list[str] = []
    errors: list[str] = []
    for m in methods:
        f, e = _problems(m)
        fails += f
        errors += e
    if fails or errors:
        lines += ["", *fails, *errors]
    lines += ["", "Checks:"] + [line for m in methods for line in _passed(m)]
    if verdict == PASS and not report.get("interrupted"):
        lines += [""] + ([f"Tested-by: {identity}"] if identity else _wrap(how_to or (
            "(no trailer: no name to sign with; set git config user.name and "
            "user.email, or give --tested-by \"Name <email>\")")))
    return "\n".join(lines) + "\n"


def for_report(report: Json, given: Optional[str] = None) -> str:
    """``render`` with the trailer's identity from ``given`` or git config."""
    return render(report, tested_by(given))


def tested_by_arg(text: str) -> str:
    """argparse's type for ``--tested-by``: "Name <email>", checked before a run."""
    import argparse
    try:
        identity = tested_by(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    assert identity is not None
    return identity


MAIL_HELP = ("print a plain-text block to paste in a reply on the mailing list instead of "
             "the summary: kernel and commit, patches and the series' Subjects, config "
             "and geometry, scenarios, each failing check with its first evidence line, "
             "and a Tested-by: trailer only when the verdict is PASS")
TESTED_BY_HELP = ("with --mail: the trailer's \"Name <email>\" (default: git config "
                  "user.name and user.email)")
