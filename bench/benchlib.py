"""Shared helpers for the bench/ scripts: run a harness command, time it,
print one figure per line with the exact command that produced it.

Conventions (every script):
* the harness is run as ``sys.executable -m harness.cli`` from the repository
  root, never through PATH;
* a figure line reads ``LABEL: VALUE (target <= T, met|MISSED)  $ COMMAND``;
* a missed target is reported, not judged: the script still exits 0;
* a command that fails ends the script with exit 2 after printing the tail of
  its stderr (temporary folders are removed on the way out).
"""
from __future__ import annotations

import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
HARNESS = [sys.executable, "-m", "harness.cli"]
TAIL_LINES = 40
LOCK_WAIT = "waiting for another run holding"


def harness_argv(*args: str) -> list:
    return HARNESS + [str(a) for a in args]


def relative_paths(text: str) -> str:
    """A command as it reads from the checkout, naming no path of the machine
    that ran it: the checkout's own prefix dropped, the home folder as ``~``,
    the temporary folder as ``$TMPDIR``."""
    for path, short in ((str(REPO) + "/", ""), (tempfile.gettempdir() + "/", "$TMPDIR/"),
                        (os.path.expanduser("~") + "/", "~/")):
        if len(path) > 2:
            text = text.replace(path, short)
    return text


def command_text(argv: Sequence[str], env: Optional[dict] = None) -> str:
    """``$ VAR=value ... argv`` as a shell would take it (run from the repo root),
    its paths relative (:func:`relative_paths`)."""
    prefix = [f"{k}={shlex.quote(str(v))}" for k, v in (env or {}).items()]
    return relative_paths("$ " + " ".join(prefix + [shlex.quote(str(a)) for a in argv]))


@dataclass
class Result:
    """One finished command: exit code, wall time, output, timed stderr lines."""
    argv: list
    env: dict
    rc: int
    wall: float
    stdout: str
    stderr_lines: list = field(default_factory=list)   # [(seconds since start, line)]

    @property
    def command(self) -> str:
        return command_text(self.argv, self.env)

    @property
    def stderr(self) -> str:
        return "".join(line for _, line in self.stderr_lines)

    def json(self):
        """stdout parsed as JSON (the harness prints exactly one object with --json)."""
        try:
            return json.loads(self.stdout)
        except ValueError:
            fail(self, "its stdout is not JSON")

    def first_time(self, pattern: str) -> Optional[float]:
        """Seconds from start to the first stderr line matching ``pattern``."""
        rx = re.compile(pattern)
        for t, line in self.stderr_lines:
            if rx.search(line):
                return t
        return None

    @property
    def waited_for_lock(self) -> bool:
        return any(LOCK_WAIT in line for _, line in self.stderr_lines)


def run(argv: Sequence[str], *, env: Optional[dict] = None, ok=(0,),
        verbose: bool = False, what: str = "", merged: bool = False) -> Result:
    """Run ``argv`` from the repo root with ``env`` added to the environment.

    stdout is kept whole; stderr is read line by line and time-stamped, so a
    script can split the wall time at lines the harness prints (``$ make ...``).
    ``merged``: stdout goes into the same pipe as stderr (for kunit.py, which
    prints its progress and its "Elapsed time" line on stdout): every line is
    time-stamped in ``stderr_lines`` and ``stdout`` stays empty.
    An exit code outside ``ok`` ends the script (exit 2).
    """
    argv = [str(a) for a in argv]
    env = dict(env or {})
    note(f"{what + ': ' if what else ''}running  {command_text(argv, env)}")
    with tempfile.TemporaryFile(mode="w+", prefix="bench-stdout-") as out:
        start = time.monotonic()
        proc = subprocess.Popen(argv, cwd=REPO, env=dict(os.environ, **env),
                                stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE if merged else out,
                                stderr=subprocess.STDOUT if merged else subprocess.PIPE,
                                text=True, errors="replace")
        lines = []
        stream = proc.stdout if merged else proc.stderr
        try:
            for line in stream:
                lines.append((time.monotonic() - start, line))
                if verbose:
                    sys.stderr.write("    | " + line)
                    sys.stderr.flush()
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        wall = time.monotonic() - start
        out.seek(0)
        result = Result(argv, env, rc, wall, out.read(), lines)
    if rc not in ok:
        fail(result)
    return result


def fail(result: Result, why: str = "") -> None:
    """Print the failed command and its stderr tail; exit 2."""
    reason = why or f"exit {result.rc}"
    print(f"FAILED ({reason}) after {result.wall:.1f} s: {result.command}", flush=True)
    save_results(failed=f"{reason}: {result.command}")
    tail = result.stderr.splitlines()[-TAIL_LINES:] or \
        result.stdout.splitlines()[-TAIL_LINES:]
    if tail:
        print(f"--- last {len(tail)} lines of its "
              f"{'stderr' if result.stderr.strip() else 'stdout'} ---")
        for line in tail:
            print("    " + line)
    sys.stdout.flush()
    sys.exit(2)


def die(message: str) -> None:
    print(f"FAILED: {message}", flush=True)
    save_results(failed=message)
    sys.exit(2)


def note(text: str) -> None:
    """Progress on stderr (figures go to stdout)."""
    print(f"[bench] {text}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------- output --

def fmt_s(seconds: Optional[float]) -> str:
    if seconds is None:
        return "n/a"
    if seconds >= 10:
        return f"{seconds:.1f} s"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds:.3f} s"


def target_text(value: Optional[float], target: Optional[float], unit: str = "s",
                scale: float = 1.0) -> str:
    if target is None:
        return ""
    if value is None:
        return f" (target <= {target * scale:g} {unit}, not measured)"
    verdict = "met" if value <= target else "MISSED"
    return f" (target <= {target * scale:g} {unit}, {verdict})"


def figure(label: str, seconds: Optional[float], target: Optional[float] = None,
           command: str = "", extra: str = "", *, key: str = "",
           readme: bool = False, kunit: Optional[dict] = None) -> None:
    """``label: 12.3 s (target <= 30 s, met)  [extra]  $ command``

    The figure is also recorded for ``--json-out`` (see ``record``) under
    ``key`` (default: the label in lower case, ``_`` for the rest);
    ``readme`` marks it for README.md's performance table, ``kunit`` is
    kunit.py's figure measured next to it (``kunit_figure``).
    """
    line = f"{label}: {fmt_s(seconds)}{target_text(seconds, target)}"
    if extra:
        line += f"  [{extra}]"
    if command:
        line += f"  {command}"
    print(line, flush=True)
    record(key or slug(label), label, seconds, "s", target=target, command=command,
           extra=extra, readme=readme, kunit=kunit)


def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


# ------------------------------------------------------- machine-readable --
#
# Every figure a script prints with a ``key`` is also kept in RESULTS; with
# ``--json-out FILE`` (add_common) the script writes them at its end, also when
# it fails (then with "failed": why). run_all.py merges the scripts' files into
# one results file, and perf_readme.py turns that into README.md's
# performance section. One figure:
#
#   {"key", "label", "value", "unit" ("s", "objects", "x"),
#    "target", "target_kind" ("max": value <= target; "ratio_to_kunit":
#    value / kunit.value <= target), "met" (true/false/null), "ratio",
#    "command", "extra", "readme", "kunit": {"label", "value", "unit",
#    "command", "extra"} or null}

SCHEMA = 1
RESULTS: list = []
JSON_OUT: dict = {"path": None, "script": "", "argv": []}


def kunit_figure(label: str, value: Optional[float], command: str, extra: str = "",
                 unit: str = "s") -> dict:
    return {"label": label, "value": value, "unit": unit, "command": command,
            "extra": extra}


def record(key: str, label: str, value: Optional[float], unit: str, *,
           target: Optional[float] = None, target_kind: str = "max",
           command: str = "", extra: str = "", readme: bool = False,
           kunit: Optional[dict] = None) -> dict:
    ratio = None
    if kunit and value is not None and kunit.get("value"):
        ratio = value / kunit["value"]
    met: Optional[bool] = None
    if target is not None:
        got = ratio if target_kind == "ratio_to_kunit" else value
        met = None if got is None else got <= target
    fig = {"key": key, "label": label, "value": value, "unit": unit,
           "target": target, "target_kind": target_kind, "met": met, "ratio": ratio,
           "command": command, "extra": extra, "readme": readme, "kunit": kunit}
    RESULTS[:] = [f for f in RESULTS if f["key"] != key] + [fig]
    return fig


def git_commit() -> tuple:
    """(short HEAD, dirty) of the checkout the bench runs from."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain",
                                "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
    except OSError:
        return "", False
    return head, bool(dirty)


def machine_line() -> str:
    """Host, CPUs, memory, OS, kernel and load, as one line."""
    model, mem_gib, os_name = "", None, ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    parts = [platform.node(), f"{os.cpu_count()} CPUs" + (f" ({model})" if model else "")]
    if mem_gib is not None:
        parts.append(f"{mem_gib:.0f} GiB RAM")
    if os_name:
        parts.append(os_name)
    parts.append(f"Linux {platform.release()}")
    if hasattr(os, "getloadavg"):
        parts.append("load {:.2f} {:.2f} {:.2f} at start".format(*os.getloadavg()))
    return ", ".join(parts)


def results_document(script: str, argv: Sequence[str], figures: list,
                     failed: str = "") -> dict:
    head, dirty = git_commit()
    doc = {"schema": SCHEMA, "script": script,
           "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
           "commit": head, "dirty": dirty, "machine": machine_line(),
           "command": command_text(argv), "figures": figures}
    if failed:
        doc["failed"] = failed
    return doc


def start_results_for(args, script_file: str, argv: Optional[Sequence[str]]) -> None:
    """``start_results`` from a script's parsed arguments (``add_common``'s
    ``--json-out``) and its command line."""
    name = Path(script_file).name
    args_list = sys.argv[1:] if argv is None else list(argv)
    start_results(name, getattr(args, "json_out", None),
                  [sys.executable, f"bench/{name}"] + [str(a) for a in args_list])


def start_results(script: str, path: Optional[Path], argv: Sequence[str]) -> None:
    """Remember where ``save_results`` writes (``--json-out``); the header's
    machine line is taken now, before anything runs."""
    RESULTS.clear()
    head, dirty = git_commit()
    JSON_OUT.update(path=path, script=script, argv=list(argv), machine=machine_line(),
                    date=time.strftime("%Y-%m-%d %H:%M:%S %Z"), commit=head, dirty=dirty)


def save_results(failed: str = "") -> None:
    path = JSON_OUT.get("path")
    if not path:
        return
    doc = results_document(JSON_OUT["script"], JSON_OUT["argv"], list(RESULTS), failed)
    for k in ("machine", "date", "commit", "dirty"):   # as when the script started
        if JSON_OUT.get(k) is not None:
            doc[k] = JSON_OUT[k]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(doc, indent=1) + "\n")
    note(f"figures written to {path}")


def spread(values: Sequence[float]) -> dict:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"n": 0, "median": None, "min": None, "max": None}
    return {"n": len(vals), "median": statistics.median(vals),
            "min": min(vals), "max": max(vals)}


def spread_text(s: dict) -> str:
    if not s["n"]:
        return "no samples"
    return f"min {fmt_s(s['min'])}, max {fmt_s(s['max'])}, n={s['n']}"


def header(title: str) -> None:
    """What the figures were measured on."""
    cache = os.environ.get("HOTPLUG_HARNESS_CACHE") or \
        str(Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
            / "hotplug-harness")
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"],
                               capture_output=True, text=True).stdout.strip()
    except OSError:
        head, dirty = "", ""
    load = ""
    if hasattr(os, "getloadavg"):
        load = " load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    print(f"== {title} ==", flush=True)
    print(f"   {time.strftime('%Y-%m-%d %H:%M:%S')}  {platform.node()}  "
          f"{os.cpu_count()} CPUs{load}  python {platform.python_version()}  "
          f"commit {head or '?'}{' (dirty)' if dirty else ''}", flush=True)
    print(f"   repo {REPO}  cache {cache}", flush=True)


def add_common(parser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="echo the harness's stderr (commands it runs, "
                             "progress) while it runs")
    parser.add_argument("--keep", action="store_true",
                        help="keep temporary folders (patches, reports, boot "
                             "output) and print where they are")
    parser.add_argument("--json-out", type=Path, default=None, metavar="FILE",
                        help="also write the figures as JSON to FILE (run_all.py "
                             "collects these; bench/perf_readme.py reads them)")


def entry(main) -> None:
    """The scripts' ``__main__``: exit with main()'s code, 130 on Ctrl-C."""
    try:
        rc = main()
        save_results()
        sys.exit(rc)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
