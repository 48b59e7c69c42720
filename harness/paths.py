"""Where the harness finds its data: ``patches/``, ``kernel-configs/``, ``guest-scripts/``.

The three folders live at the top of the source tree. From a checkout (also an
editable install, ``pip install -e .``) they are used in place, so an edit takes
effect at once. An installed copy (``pip install .``, a wheel) carries them
inside the package as ``harness/_data/<name>``: in the checkout those are
symlinks to the top-level folders, which setuptools follows when it builds the
wheel (``[tool.setuptools.package-data]`` in pyproject.toml), so the wheel holds
real copies.
"""
from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SHIPPED_DIR = PACKAGE_DIR / "_data"


def source_checkout() -> Path | None:
    """The source tree this package was imported from, or None when installed."""
    root = PACKAGE_DIR.parent
    if (root / "pyproject.toml").is_file() and (root / "patches" / "series").is_file():
        return root
    return None


def data_dir(name: str) -> Path:
    """The folder ``name`` of the checkout when there is one, else the shipped copy."""
    root = source_checkout()
    if root is not None and (root / name).is_dir():
        return root / name
    return SHIPPED_DIR / name


PATCH_DIR = data_dir("patches")
CONFIG_DIR = data_dir("kernel-configs")
GUEST_SCRIPTS = data_dir("guest-scripts")
