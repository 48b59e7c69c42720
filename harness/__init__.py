"""QEMU-backed integration test harness for arm64 memory hot-remove.

Data flows one way: build -> boot -> drive -> inspect -> verdict -> report.
"""


def _version() -> str:
    """The installed distribution's version (pyproject.toml is its one source)."""
    try:
        from importlib.metadata import PackageNotFoundError, version
        try:
            return version("hotplug-harness")
        except PackageNotFoundError:
            pass
    except ImportError:  # pragma: no cover - Python < 3.8
        pass
    # Not installed (a checkout on PYTHONPATH): read pyproject.toml next to us.
    import re
    from pathlib import Path
    try:
        text = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
        m = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)
        if m:
            return m.group(1)
    except OSError:
        pass
    return "0+unknown"


__version__ = _version()
