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


def command_text(argv: Sequence[str], env: Optional[dict] = None) -> str:
    """``$ VAR=value ... argv`` as a shell would take it (run from the repo root)."""
    prefix = [f"{k}={shlex.quote(str(v))}" for k, v in (env or {}).items()]
    return "$ " + " ".join(prefix + [shlex.quote(str(a)) for a in argv])


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
        verbose: bool = False, what: str = "") -> Result:
    """Run ``argv`` from the repo root with ``env`` added to the environment.

    stdout is kept whole; stderr is read line by line and time-stamped, so a
    script can split the wall time at lines the harness prints (``$ make ...``).
    An exit code outside ``ok`` ends the script (exit 2).
    """
    argv = [str(a) for a in argv]
    env = dict(env or {})
    note(f"{what + ': ' if what else ''}running  {command_text(argv, env)}")
    with tempfile.TemporaryFile(mode="w+", prefix="bench-stdout-") as out:
        start = time.monotonic()
        proc = subprocess.Popen(argv, cwd=REPO, env=dict(os.environ, **env),
                                stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.PIPE, text=True, errors="replace")
        lines = []
        try:
            for line in proc.stderr:
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
           command: str = "", extra: str = "") -> None:
    """``label: 12.3 s (target <= 30 s, met)  [extra]  $ command``"""
    line = f"{label}: {fmt_s(seconds)}{target_text(seconds, target)}"
    if extra:
        line += f"  [{extra}]"
    if command:
        line += f"  {command}"
    print(line, flush=True)


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


def entry(main) -> None:
    """The scripts' ``__main__``: exit with main()'s code, 130 on Ctrl-C."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
