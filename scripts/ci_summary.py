"""The verdict table of a CI job, Markdown for $GITHUB_STEP_SUMMARY.

    .venv/bin/python scripts/ci_summary.py --title "debian 4k-48" reports/debian-4k-48

One row per method of every report folder given (a folder holding report.json,
or one whose sub-folders do): its verdict, the seconds of its steps and the
checks that did not pass with their first evidence line. A folder without a
report (the build failed, or the job stopped before the run wrote one) is a
row saying so. Exit 0 always: the job's own steps carry its result.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _cell(text: str, width: int = 160) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= width else text[:width - 3] + "..."


def folders(path: Path) -> list[Path]:
    if (path / "report.json").is_file():
        return [path]
    return sorted(p.parent for p in path.rglob("report.json"))


def rows(path: Path) -> list[str]:
    found = folders(path)
    if not found:
        return [f"| `{path.name}` | — | **no report** | | the build or the run stopped "
                "before writing one: see the job log (and the build-log artifact) |"]
    out = []
    for folder in found:
        try:
            data = json.loads((folder / "report.json").read_text())
        except (OSError, ValueError) as e:
            out.append(f"| `{folder.name}` | — | **unreadable** | | {_cell(str(e))} |")
            continue
        for m in data.get("methods") or ():
            seconds = sum(s.get("seconds") or 0 for s in m.get("steps") or ())
            bad = [f"{c['name']} {c['verdict']}: {c.get('evidence', '').strip().splitlines()[0]}"
                   if c.get("evidence", "").strip() else f"{c['name']} {c['verdict']}"
                   for c in m.get("checks") or () if c.get("verdict") not in ("PASS", "SKIP")]
            error = (m.get("run") or {}).get("error")
            if error:
                bad.append(f"run stopped in {error.get('step')} ({error.get('blame')}): "
                           f"{error.get('message')}")
            verdict = m.get("verdict", "?")
            shown = verdict if verdict == "PASS" else f"**{verdict}**"
            out.append(f"| `{folder.name}` | {m.get('method')} | {shown} | {seconds:.1f} | "
                       + "<br>".join(_cell(b) for b in bad) + " |")
        if data.get("interrupted"):
            out.append(f"| `{folder.name}` | — | **interrupted** | | "
                       f"{_cell(', '.join(data.get('not_run') or ()))} not run |")
    return out


def table(paths: list[Path], title: str = "") -> str:
    lines = [f"### {title}" if title else "### hotplug-harness", "",
             "| report | method | verdict | seconds | checks not passed |",
             "|---|---|---|---|---|"]
    for p in paths:
        lines += rows(p)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("reports", nargs="+", type=Path, metavar="DIR")
    ap.add_argument("--title", default="")
    args = ap.parse_args(argv)
    sys.stdout.write(table(args.reports, args.title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
