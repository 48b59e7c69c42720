"""Saved reports as KCIDB JSON, the report format of KernelCI's common results
database (``report DIR --kcidb FILE``, ``matrix``/``repro --kcidb FILE``).

One report folder gives

* a **checkout**: the kernel source (``tree_name``: the tarball's or the tree's
  name), its git commit when it was built from a git tree, and the
  ``patchset_hash`` of the patches applied (KCIDB's definition: sha256 over
  the newline-terminated sha256 of each patch, in the order applied; the
  report keeps each patch's sha256);
* a **build**: arm64, the config fragments (``config_name`` ``base+4k-48``),
  the geometry, the toolchain, how long the build took in this run, and the
  tail of the build log when the folder has one (``build.log``);
* **tests**: ``hotplug.METHOD`` per method (its verdict, the time of its
  steps) and ``hotplug.METHOD.CHECK`` per check (``PASS``/``FAIL``/``SKIP``/
  ``ERROR``; the evidence as ``log_excerpt``, the time of the step it names);
  a run stopped by an error is ``hotplug.METHOD.run``.

Ids are ``ORIGIN:...`` (KCIDB's rule): the checkout's from the source's content
identity, commit and patch set, the build's the artifact cache key, a test's
from the recorded run (``MethodRun`` JSON), so exporting the same folder again,
also after ``report`` re-judged it with newer rules, names the same objects.
A matrix or repro folder holds one report per kernel: their objects are merged,
the same checkout and build once.

Written for schema 5.0 (``version``); ``tests/test_kcidb.py`` validates the
output with the ``kcidb-io`` package's own schema. Pure: no network; submitting
is ``kcidb-submit`` (docs/kcidb.md).
"""
from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional

from harness.records import ERROR, FAIL, PASS, SKIP

Json = dict[str, Any]
SCHEMA_VERSION = {"major": 5, "minor": 0}
DEFAULT_ORIGIN = "hotplug_harness"
ORIGIN_RE = re.compile(r"^[a-z0-9_]+$")          # KCIDB's origin pattern
PATH_PART_RE = re.compile(r"[^a-zA-Z0-9_-]+")    # what a test path node may not hold
EXCERPT_MAX = 16384                               # KCIDB's log_excerpt maxLength
BUILD_LOG = "build.log"                           # a report folder's copy of the build log
STATUS = {PASS: "PASS", FAIL: "FAIL", ERROR: "ERROR", SKIP: "SKIP"}
ENVIRONMENT = "qemu-system-aarch64 -M virt -cpu max (TCG), one fresh guest per method"


def check_origin(origin: str) -> str:
    """``origin`` when KCIDB takes it (lower-case letters, digits, ``_``), else ValueError."""
    if not ORIGIN_RE.match(origin or ""):
        raise ValueError(f"KCIDB origin {origin!r}: lower-case letters, digits and _ only")
    return origin


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _clean(text: str) -> str:
    """No NUL characters (KCIDB's string pattern)."""
    return str(text).replace("\0", "\ufffd")


def excerpt(text: str, tail: bool = False) -> str:
    """At most EXCERPT_MAX characters: the head, or with ``tail`` the end (a
    build log's last lines say why it stopped), cut at a line."""
    text = _clean(text)
    if len(text) <= EXCERPT_MAX:
        return text
    if tail:
        cut = text[-(EXCERPT_MAX - 4):]
        return "...\n" + cut.split("\n", 1)[-1] if "\n" in cut else cut
    return text[:EXCERPT_MAX - 4] + "\n..."


def path_part(name: str) -> str:
    """A method's or check's name as one node of a KCIDB test path."""
    return PATH_PART_RE.sub("_", name).strip("_") or "_"


def patchset_hash(digests: Iterable[str]) -> str:
    """KCIDB's patchset hash of patches given by their sha256 (hex), in order;
    ``""`` for none."""
    digests = list(digests)
    if not digests:
        return ""
    return _sha("".join(d + "\n" for d in digests))


def _source_parts(source: str) -> tuple[str, str, str]:
    """(kind, tree name, identity) of a source string ``kind:PATH@identity``."""
    kind, _, rest = (source or "").partition(":")
    path, _, ident = rest.rpartition("@") if "@" in rest else (rest, "", "")
    name = Path(path).name if path else ""
    if kind == "tarball":
        name = re.sub(r"\.tar(\.\w+)?$|\.t[gx]z$", "", name)
    return kind, name or kind or "unknown", ident


def _geometry_name(fragments: Iterable[str]) -> str:
    from harness.verdict import geomatrix
    try:
        known = set(geomatrix.geometries())
    except OSError:
        known = set()
    found = [f for f in fragments if f in known]
    return found[-1] if found else ""


def checkout(kernel: Json, origin: str) -> Json:
    kind, tree, ident = _source_parts(str(kernel.get("source", "")))
    digests = [p[1] for p in kernel.get("patches") or () if isinstance(p, (list, tuple))]
    names = [p[0] if isinstance(p, (list, tuple)) else str(p)
             for p in kernel.get("patches") or ()]
    commit = kernel.get("commit") or {}
    pset = patchset_hash(digests)
    sha = str(commit.get("sha", ""))
    out: Json = {
        "id": f"{origin}:" + _sha(json.dumps([kind, ident, sha, bool(commit.get("dirty")),
                                              pset]))[:32],
        "origin": origin, "tree_name": tree, "patchset_hash": pset, "valid": True,
    }
    if re.fullmatch(r"[0-9a-f]{40}", sha):
        out["git_commit_hash"] = sha
    comment = [f"{tree} {kernel['release']}" if kernel.get("release") else tree]
    if commit.get("subject"):
        comment.append(f"commit {sha[:12]} (\"{commit['subject']}\")"
                       + (" with local changes" if commit.get("dirty") else ""))
    if names:
        comment.append(f"{len(names)} patch(es)")
    out["comment"] = _clean(", ".join(comment))
    misc: Json = {"source": f"{kind}:{tree}@{ident}" if ident else f"{kind}:{tree}",
                  "patches": names}
    if commit:
        misc["commit"] = {k: commit[k] for k in ("sha", "subject", "dirty") if k in commit}
    if kernel.get("series"):
        misc["series"] = [{k: m.get(k) for k in ("part", "subject", "name")}
                          for m in kernel["series"]]
    out["misc"] = misc
    return out


def build(report: Json, checkout_id: str, origin: str,
          folder: Optional[Path] = None) -> Json:
    kernel = report.get("kernel") or {}
    fragments = list(kernel.get("fragments") or ())
    out: Json = {"id": f"{origin}:{kernel.get('cache_key') or _sha(json.dumps(kernel))}",
                 "checkout_id": checkout_id, "origin": origin, "architecture": "arm64",
                 "status": "PASS"}
    if fragments:
        out["config_name"] = "+".join(fragments)
    toolchain = str(kernel.get("toolchain") or "")
    if toolchain:
        out["compiler"] = _clean(toolchain.split(" | ")[0])
    if isinstance(report.get("build_seconds"), (int, float)):
        out["duration"] = float(report["build_seconds"])
    log = Path(folder) / BUILD_LOG if folder is not None else None
    if log is not None and log.is_file():
        out["log_excerpt"] = excerpt(log.read_text(errors="replace"), tail=True)
    misc: Json = {"geometry": _geometry_name(fragments)}
    for key in ("release", "config_digest"):
        if kernel.get(key):
            misc[key] = kernel[key]
    if toolchain:
        misc["toolchain"] = toolchain
    if "rebuilt" in report:
        misc["rebuilt"] = bool(report["rebuilt"])
    shape = next((m.get("run", {}).get("geometry") for m in report.get("methods") or ()
                  if m.get("run", {}).get("geometry")), None)
    if shape:
        misc["geometry_seen"] = shape
    out["misc"] = misc
    return out


def _run_id(method: Json) -> str:
    return _sha(json.dumps(method.get("run") or method, sort_keys=True, default=str))[:16]


def _test(id_prefix: str, build_id: str, origin: str, env: Json, path: str, status: str,
          **fields: Any) -> Json:
    """One KCIDB test object; fields that are None or empty are left out."""
    t: Json = {"id": id_prefix + path, "build_id": build_id, "origin": origin,
               "path": path, "status": status, "environment": env}
    t.update({k: v for k, v in fields.items() if v not in (None, "", {})})
    return t


def tests(report: Json, build_id: str, origin: str) -> list[Json]:
    out: list[Json] = []
    for method in report.get("methods") or ():
        name = str(method.get("method", "?"))
        run = method.get("run") or {}
        base = f"hotplug.{path_part(name)}"
        rid = _run_id(method)
        steps = {s.get("name"): s.get("seconds") for s in method.get("steps") or ()}
        env = {"comment": ENVIRONMENT, "misc": {"geometry": run.get("geometry") or {}}}
        test = functools.partial(_test, f"{origin}:{rid}:", build_id, origin, env)
        lines = [f"{c['verdict']:<6} {c['name']}" for c in method.get("checks") or ()]
        out.append(test(base, STATUS.get(method.get("verdict"), "ERROR"),
                        duration=float(sum(s.get("seconds") or 0
                                           for s in method.get("steps") or ())),
                        comment=f"{name}: {method.get('verdict')}",
                        log_excerpt=excerpt("\n".join(lines) + "\n") if lines else None,
                        misc={"steps": len(steps), "notes": list(run.get("notes") or ())}))
        for check in method.get("checks") or ():
            evidence = str(check.get("evidence") or "")
            step = check.get("step") or ""
            seconds = steps.get(step)
            out.append(test(f"{base}.{path_part(str(check['name']))}",
                            STATUS.get(check.get("verdict"), "ERROR"),
                            duration=float(seconds) if isinstance(seconds, (int, float))
                            else None,
                            comment=_clean(evidence.strip().split("\n", 1)[0][:200]),
                            log_excerpt=excerpt(evidence) if evidence else None,
                            misc={"step": step} if step else None))
        error = run.get("error")
        if error:
            text = f"step {error.get('step')}: {error.get('message')}\n" \
                   f"{error.get('evidence') or ''}".rstrip() + "\n"
            out.append(test(f"{base}.run",
                            "FAIL" if error.get("blame") == "kernel" else "ERROR",
                            comment=_clean(str(error.get("message", ""))[:200]),
                            log_excerpt=excerpt(text),
                            misc={"blame": error.get("blame"), "step": error.get("step")}))
    return out


def from_report(report: Json, folder: Optional[Path] = None,
                origin: str = DEFAULT_ORIGIN) -> Json:
    """KCIDB JSON of one report.json (``folder``: where its build.log is). A
    report without a kernel (a build interrupted before it finished) gives no
    objects."""
    check_origin(origin)
    doc: Json = {"version": dict(SCHEMA_VERSION), "checkouts": [], "builds": [],
                 "tests": []}
    kernel = report.get("kernel") or {}
    if not kernel:
        return doc
    co = checkout(kernel, origin)
    b = build(report, co["id"], origin, folder)
    doc["checkouts"].append(co)
    doc["builds"].append(b)
    doc["tests"] += tests(report, b["id"], origin)
    return doc


def merge(docs: Iterable[Json]) -> Json:
    """One KCIDB document of several, each object once (by id, the first kept)."""
    out: Json = {"version": dict(SCHEMA_VERSION), "checkouts": [], "builds": [],
                 "tests": []}
    seen: set[tuple[str, str]] = set()
    for doc in docs:
        for kind in ("checkouts", "builds", "tests"):
            for obj in doc.get(kind) or ():
                if (kind, obj["id"]) not in seen:
                    seen.add((kind, obj["id"]))
                    out[kind].append(obj)
    return out


def report_folders(folder: Path) -> list[Path]:
    """The report folders under ``folder`` (itself when it holds report.json;
    else every folder below that does: a matrix's or repro's runs), sorted."""
    folder = Path(folder)
    if (folder / "report.json").is_file():
        return [folder]
    return sorted(p.parent for p in folder.rglob("report.json"))


def from_folder(folder: Path, origin: str = DEFAULT_ORIGIN) -> Json:
    """KCIDB JSON of a report folder, or of every report under a matrix's or
    repro's folder."""
    docs = []
    for f in report_folders(folder):
        report = json.loads((f / "report.json").read_text())
        docs.append(from_report(report, f, origin))
    return merge(docs)


def write(path: Path, doc: Json) -> Path:
    path = Path(path)
    if path.parent != Path(""):
        path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def counts(doc: Json) -> str:
    """``1 checkout, 1 build, 11 tests`` for a progress line."""
    n = {k: len(doc.get(k) or ()) for k in ("checkouts", "builds", "tests")}
    return (f"{n['checkouts']} checkout(s), {n['builds']} build(s), "
            f"{n['tests']} test(s)")
