"""Write a run's results: ``report.json``, ``junit.xml``, per-method artefacts,
and a terminal summary.

Layout of a report directory::

    DIR/report.json             verdict, exit_code, kernel, methods[], extra keys
    DIR/junit.xml               one testsuite per method, one testcase per check
    DIR/report.html             the run pictured, from report.json alone (htmlreport)
    DIR/METHOD/steps.txt        each step: seconds, transport, ok, detail
    DIR/METHOD/ptdump-P.txt     the page-table dump of phase P
    DIR/METHOD/ptdump-A-to-B.diff   Linear Mapping and vmemmap changes A -> B

``report.json`` keeps every ``MethodRun`` whole, so :func:`rejudge` can apply
changed rules to a saved run without booting anything.
"""
from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Optional

from harness.errors import HarnessError
from harness.inspect import ptdump
from harness.records import ERROR, FAIL, SKIP, Check, MethodRun, Phase
from harness.verdict import checks as rules

REPORT_JSON, JUNIT_XML = "report.json", "junit.xml"
INTERRUPTED_EXIT = {"SIGINT": 130, "SIGTERM": 143}
RESERVED = ("verdict", "exit_code", "kernel", "methods")
Json = dict[str, Any]      # a report.json object as read or written
_XML_BAD = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


# ---------------------------------------------------------------- report dict

def method_entry(run: MethodRun, checks: Iterable[Check]) -> Json:
    checks = list(checks)
    return {"method": run.method, "verdict": rules.method_verdict(run, checks),
            "steps": [{"name": s.name, "seconds": s.seconds, "transport": s.transport}
                      for s in run.steps],
            "checks": [c.to_dict() for c in checks], "run": run.to_dict()}


def build_report(kernel: Json, runs: Iterable[MethodRun],
                 checks: Optional[Mapping[str, list[Check]]] = None,
                 extra: Optional[Json] = None) -> Json:
    """The report.json content; a method missing from ``checks`` is judged here."""
    judged = checks or {}
    extra = extra or {}
    methods = [method_entry(r, judged[r.method] if r.method in judged else rules.judge(r))
               for r in runs]
    verdict, code = rules.overall_verdict([m["verdict"] for m in methods])
    if extra.get("interrupted"):   # a partial run: ERROR, exit 130/143
        verdict, code = ERROR, INTERRUPTED_EXIT.get(str(extra.get("signal")), 130)
    clash = sorted(set(extra) & set(RESERVED))
    if clash:
        raise HarnessError(f"extra report keys clash with {', '.join(clash)}",
                           step="report")
    return {"verdict": verdict, "exit_code": code, "kernel": kernel,
            "methods": methods, **extra}


def write_report(dir: Path, kernel: Json, runs: list[MethodRun],
                 checks: Optional[Mapping[str, list[Check]]] = None,
                 extra: Optional[Json] = None) -> Path:
    """Write everything under ``dir`` (created); returns the report.json path."""
    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    context = _console_context(out, runs)
    if context:      # the console lines around each splat, for report.html
        extra = {**(extra or {}), "console_context": context}
    report = build_report(kernel, runs, checks, extra)
    for run in runs:
        write_method_files(out / safe_name(run.method), run)
    return _write_main(out, report)


def _write_main(out: Path, report: Json) -> Path:
    (out / JUNIT_XML).write_text(junit_xml(report))
    path = out / REPORT_JSON
    path.write_text(json.dumps(report, indent=1) + "\n")
    _write_html(out, report)
    return path


def _write_html(out: Path, report: Json) -> None:
    """report.html next to report.json; a page that cannot be drawn is said,
    never a reason to lose the report itself."""
    from harness import progress
    from harness.verdict import htmlreport
    try:
        htmlreport.write_report_html(out, report)
    except Exception as exc:     # the JSON report is what counts
        progress.warn(f"report.html not written: {type(exc).__name__}: {exc}", "report")


def _console_context(out: Path, runs: list[MethodRun]) -> Json:
    from harness.verdict import htmlreport
    found = {r.method: htmlreport.console_context(out / safe_name(r.method), r)
             for r in runs}
    return {k: v for k, v in found.items() if v}


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "_"


# ---------------------------------------------------------------- method files

def write_method_files(folder: Path, run: MethodRun) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "steps.txt").write_text(steps_text(run))
    dumped = [p for p in run.phases if p.ptdump is not None]
    for phase in dumped:
        assert phase.ptdump is not None
        (folder / f"ptdump-{safe_name(phase.name)}.txt").write_text(
            ptdump.format_snapshot(phase.ptdump))
    for a, b in zip(dumped, dumped[1:]):
        name = f"ptdump-{safe_name(a.name)}-to-{safe_name(b.name)}.diff"
        (folder / name).write_text(ptdump_diff_text(a, b))


def ptdump_diff_text(a: Phase, b: Phase) -> str:
    """Unified-style diff of the Linear Mapping and vmemmap regions of two phases
    (both with a ptdump)."""
    lines = [f"--- ptdump-{a.name}.txt", f"+++ ptdump-{b.name}.txt"]
    assert a.ptdump is not None and b.ptdump is not None
    for region in rules.REGIONS:
        if region not in a.ptdump.regions and region not in b.ptdump.regions:
            lines.append(f"@@ {region} @@ (in neither dump)")
            continue
        changed = ptdump.diff(a.ptdump, b.ptdump, region)
        lines.append(f"@@ {region} @@" + ("" if changed else " (identical)"))
        lines += changed
    return "\n".join(lines) + "\n"


def steps_text(run: MethodRun) -> str:
    lines = [f"# method {run.method}: {len(run.steps)} steps, "
             f"{sum(s.seconds for s in run.steps):.1f}s"]
    for s in run.steps:
        lines.append(f"{s.seconds:8.2f}s  {s.transport:6s}  {'ok  ' if s.ok else 'FAIL'}"
                     f"  {s.name}")
        lines += ["            " + d for d in s.detail.splitlines()]
    if run.error:
        lines.append(f"# error ({run.error.blame}) in step "
                     f"{run.error.step}: {run.error.message}")
    lines += [f"# note: {n}" for n in run.notes]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- junit

def _xml_text(text: str) -> str:
    return _XML_BAD.sub("\ufffd", text or "")


def _first_line(text: str) -> str:
    return (text or "").strip().split("\n", 1)[0]


def _testcase(suite: ET.Element, method: str, check: Json) -> None:
    case = ET.SubElement(suite, "testcase", classname=method, name=check["name"])
    tag = {FAIL: "failure", ERROR: "error", SKIP: "skipped"}.get(check["verdict"])
    if tag:
        node = ET.SubElement(case, tag, message=_xml_text(_first_line(check["evidence"])))
        node.text = _xml_text(check["evidence"])


def _run_error_case(suite: ET.Element, method: str, error: Json) -> None:
    case = ET.SubElement(suite, "testcase", classname=method, name="run")
    tag = "failure" if error.get("blame") == "kernel" else "error"
    node = ET.SubElement(case, tag, message=_xml_text(str(error.get("message", ""))),
                         type=str(error.get("blame", "")))
    node.text = _xml_text(f"step {error.get('step')}: {error.get('message')}\n"
                          f"{error.get('evidence') or ''}".rstrip())


def _suite(root: ET.Element, method: Json) -> None:
    cases = list(method["checks"])
    error = method["run"].get("error")
    counts = {v: sum(c["verdict"] == v for c in cases) for v in (FAIL, ERROR, SKIP)}
    if error:
        counts[FAIL if error.get("blame") == "kernel" else ERROR] += 1
    suite = ET.SubElement(
        root, "testsuite", name=method["method"], tests=str(len(cases) + bool(error)),
        failures=str(counts[FAIL]), errors=str(counts[ERROR]), skipped=str(counts[SKIP]),
        time=f"{sum(s['seconds'] for s in method['steps']):.3f}")
    for check in cases:
        _testcase(suite, method["method"], check)
    if error:
        _run_error_case(suite, method["method"], error)


def junit_xml(report: Json) -> str:
    root = ET.Element("testsuites", name="hotplug-harness")
    for method in report["methods"]:
        _suite(root, method)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


# ---------------------------------------------------------------- summary

def _method_lines(method: Json) -> list[str]:
    seconds = sum(s["seconds"] for s in method["steps"])
    lines = [f"{method['method']:<24} {method['verdict']:<6} {seconds:8.1f}s"]
    for c in method["checks"]:
        first = _first_line(c["evidence"])
        first = first if len(first) <= 100 else first[:97] + "..."
        lines.append(f"  {c['verdict']:<6} {c['name']:<26} {first}")
    error = method["run"].get("error")
    if error:
        lines.append(f"  {'ERROR' if error.get('blame') != 'kernel' else 'FAIL':<6} "
                     f"{'run':<26} {_first_line(str(error.get('message', '')))}")
    return lines


def _detail_blocks(method: Json) -> list[str]:
    """Full evidence of FAIL and ERROR checks, ready to paste into a mail;
    the error that stopped the run first (the cause: checks that could not
    look are its consequences)."""
    out = []
    error = method["run"].get("error")
    if error:
        evidence = error.get("evidence")
        out.append(f"ERROR: method {method['method']}, step {error.get('step')}, run "
                   f"stopped ({error.get('blame')}): {error.get('message')}"
                   + ("\n" + _indent_all(evidence) if evidence else ""))
    for c in method["checks"]:
        if c["verdict"] in (FAIL, ERROR):
            step = f", step {c['step']}" if c["step"] else ""
            out.append(f"{c['verdict']}: method {method['method']}{step}, "
                       f"check {c['name']}:\n" + _indent_all(c["evidence"]))
    return out


def _indent_all(text: str) -> str:
    return "\n".join("    " + line for line in str(text).rstrip().splitlines())


def _kernel_line(kernel: Json) -> str:
    parts = [f"{k} {kernel[k]}" for k in ("release", "source") if kernel.get(k)]
    commit = kernel.get("commit")
    if commit:
        parts.append(f"commit {commit['sha'][:12]}"
                     + (" with local changes" if commit.get("dirty") else ""))
    if kernel.get("fragments"):
        parts.append("config " + "+".join(kernel["fragments"]))
    if kernel.get("cache_key"):
        parts.append(f"cache_key {kernel['cache_key'][:16]}")
    line = "kernel: " + (", ".join(parts) or "(unknown)")
    patches = [p[0] if isinstance(p, (list, tuple)) else str(p)
               for p in kernel.get("patches") or ()]
    if patches:
        line += "\npatches: " + ", ".join(patches)
    for mail in kernel.get("series") or ():
        line += f"\n  series {mail.get('part', '?')}: {mail.get('subject', '')}" \
                f" ({mail.get('name', '?')})"
    return line


def _options_lines(report: Json) -> list[str]:
    """What the run was told not to look at, said up front."""
    def off(key: str) -> list[str]:
        return [m["method"] for m in report["methods"]
                if (m.get("run", {}).get("options") or {}).get(key) in (False, "off")]
    lines = []
    if off("walker"):
        lines.append(f"walker: off (--no-walker) for {', '.join(off('walker'))}: judged "
                     "from the kernel's ptdump and memstart_addr only; the walker's "
                     "checks were not required")
    if off("order_check"):
        methods = off("order_check")
        why = ("race: gdb stops would serialise the concurrency it needs"
               if methods == ["race"] else "--no-order-check"
               + (", race cannot run them" if "race" in methods else ""))
        lines.append(f"order checks: off ({why}) for {', '.join(methods)}: no gdb around "
                     "removals; a table freed while linked or before its TLB flush goes "
                     "unseen")
    sampled = [m["method"] for m in report["methods"]
               if (m.get("run", {}).get("options") or {}).get("order_check") == "sampled"]
    if sampled:
        recs = [o for m in report["methods"] if m["method"] in sampled
                for o in (m.get("run", {}).get("order") or ())]
        full = sum(1 for o in recs if o.get("flush_check"))
        lines.append(f"order checks: sampled (--order-check sampled) for "
                     f"{', '.join(sampled)}: {full} of {len(recs)} removals followed in "
                     "full (the first of each method), the others' frees only")
    return lines


def summary(report: Json, path: Optional[Path] = None) -> str:
    """A terminal table: methods and checks, then FAIL/ERROR evidence in full,
    then the overall verdict and (when given) where the report is."""
    lines = [_kernel_line(report.get("kernel") or {}), *_options_lines(report), ""]
    for method in report["methods"]:
        lines += _method_lines(method)
    details = [b for m in report["methods"] for b in _detail_blocks(m)]
    if details:
        lines += ["", *"\n\n".join(details).splitlines()]
    where = f"  report: {path}" if path else ""
    if report.get("interrupted"):
        not_run = ", ".join(report.get("not_run") or ()) or "none"
        lines += ["", f"interrupted by {report.get('signal', 'a signal')}: partial "
                      f"report (methods not run: {not_run})"]
    lines += ["", f"verdict: {report['verdict']} (exit {report['exit_code']}){where}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- rejudge

def load_report(dir: Path) -> Json:
    path = Path(dir) / REPORT_JSON
    try:
        report: Json = json.loads(path.read_text())
        return report
    except (OSError, ValueError) as exc:
        raise HarnessError(f"cannot read {path}: {exc}", step="report") from None


def rejudge(dir: Path) -> tuple[Json, int]:
    """Judge the saved runs again with the current rules; rewrite report.json,
    junit.xml and report.html (the method folders do not depend on the rules).
    A report saved without the console lines around its splats gets them from
    the method folders' console.log."""
    old = load_report(dir)
    runs = [MethodRun.from_dict(m["run"]) for m in old["methods"]]
    extra = {k: v for k, v in old.items() if k not in RESERVED}
    if "console_context" not in extra:      # a report saved before report.html
        context = _console_context(Path(dir), runs)
        extra.update({"console_context": context} if context else {})
    report = build_report(old.get("kernel") or {}, runs, None, extra)
    _write_main(Path(dir), report)
    return report, report["exit_code"]
