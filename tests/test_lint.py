"""`make lint` as tests: ruff finds nothing in the tree, mypy --strict nothing
in the modules pyproject.toml lists (both configured there)."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def tool(name: str):
    return pytest.mark.skipif(importlib.util.find_spec(name) is None,
                              reason=f"{name} is not installed "
                                     f"(pip install -e '.[test]' adds it)")


@tool("ruff")
def test_ruff_is_clean():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache",
                           "--output-format", "concise", "."],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


@tool("mypy")
def test_mypy_is_clean():
    proc = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
