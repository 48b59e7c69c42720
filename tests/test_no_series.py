"""--no-series wherever a kernel is built: build, boot, run, repro, matrix,
bisect-run (tests/test_cli_bisect.py) and the pytest plugin's --hh-no-series /
hh_no_series (no kernel: the build is replaced by a recorder)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness import cli
from harness.cli import repro as cli_repro
from harness.cli import run as cli_run
from harness.verdict import geomatrix

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("command", ["build", "boot", "run"])
def test_kernel_options_commands(command):
    for given, series in ((["--no-series"], False), ([], True)):
        args = cli.parser().parse_args([command, *given])
        assert cli.build_request(args).series is series


def recording_run_to_report(monkeypatch):
    seen = []

    def run_to_report(kernel_src, configs, patches, append, methods, cycles, folder,
                      order_check="on", series=True, cpu="max"):
        seen.append(series)
        return {}
    monkeypatch.setattr(cli_run, "run_to_report", run_to_report)
    return seen


@pytest.mark.parametrize("given,series", [(["--no-series"], False), ([], True)])
def test_matrix(monkeypatch, tmp_path, given, series):
    seen = recording_run_to_report(monkeypatch)

    def run_matrix(geos, methods, out, run, progress, **kw):
        run(("4k-48",), methods, out / "4k-48")
        raise SystemExit(0)          # what the matrix does with it is not the point
    monkeypatch.setattr(geomatrix, "run_matrix", run_matrix)
    with pytest.raises(SystemExit):
        cli.main(["matrix", "--geometry", "4k-48", "--method", "probe",
                  "--report", str(tmp_path / "m"), *given])
    assert seen == [series]


@pytest.mark.parametrize("given,series", [(["--no-series"], False), ([], True)])
def test_repro(monkeypatch, given, series):
    seen = recording_run_to_report(monkeypatch)
    args = cli.parser().parse_args(["repro", "--all", *given])
    cli_repro._runner(args.kernel_src, not args.no_series)((), (), (), ("probe",), 1,
                                                           Path("x"))
    assert seen == [series]


CONFTEST = """\
import json
from pathlib import Path

import harness.kernel.kernel as kernel


class Art:
    rebuilt = False
    kernel_release = ""


def build(req, progress=None):
    Path(__file__).with_name("request.json").write_text(json.dumps({"series": req.series}))
    return Art()


kernel.build = build
"""


def plugin_series(project: Path, *args: str) -> bool:
    (project / "request.json").unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                           *args], cwd=project, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return json.loads((project / "request.json").read_text())["series"]


def test_pytest_plugin_no_series(tmp_path):
    """--hh-no-series on the command line, hh_no_series in the ini file."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "conftest.py").write_text(CONFTEST)
    (project / "test_k.py").write_text("def test_k(hh_kernel):\n    pass\n")
    (project / "pytest.ini").write_text("[pytest]\n")
    assert plugin_series(project) is True
    assert plugin_series(project, "--hh-no-series") is False
    (project / "pytest.ini").write_text("[pytest]\nhh_no_series = true\n")
    assert plugin_series(project) is False


def test_ci_workflow_input():
    """ci.yml's no-series input reaches build and run through the environment
    (NO_SERIES), never written into a run: script."""
    text = (ROOT / ".github" / "workflows" / "ci.yml").read_text()
    inputs = text.split("    inputs:\n", 1)[1].split("\npermissions:", 1)[0]
    assert "      no-series:\n" in inputs and "type: boolean" in inputs.split(
        "      no-series:\n", 1)[1].split("default:", 1)[0]
    assert "  NO_SERIES: ${{ inputs.no-series && '--no-series' || '' }}\n" in text
    scripts = text.split("run: |")[1:]
    assert not any("inputs.no-series" in s.split("\n      - ", 1)[0] for s in scripts)
    for command in ("harness.cli build", "harness.cli run"):
        assert f'{command} --kernel-src "$KERNEL_SRC" $NO_SERIES' in text, command
