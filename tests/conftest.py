"""Shared fixtures. Unit tests get a private cache; tests marked ``kernel`` or
``qemu`` use the real one (~/.cache/hotplug-harness) so a built kernel is reused."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
sys.path.insert(0, str(ROOT))


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("HOTPLUG_HARNESS_CACHE", str(cache))
    return cache


@pytest.fixture
def fake_tree(tmp_path):
    """A tiny directory that passes for a kernel tree."""
    tree = tmp_path / "linux"
    (tree / "arch" / "arm64" / "mm").mkdir(parents=True)
    (tree / "Makefile").write_text("all:\n")
    (tree / "arch" / "arm64" / "mm" / "mmu.c").write_text(
        "".join(f"line {i}\n" for i in range(1, 41)))
    (tree / "README").write_text("hello\n")
    return tree
