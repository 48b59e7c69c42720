"""The layout shows the stages, and imports run one way, stage by stage
(ARCHITECTURE.md's picture): a module imports only from its own layer or
from layers below it. Read from the source with ast; no harness import."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT / "harness"

# lowest first; a module's layer is its longest matching dotted prefix
LAYERS = (
    ("base", ("harness", "harness.errors", "harness.progress", "harness.paths",
              "harness.host", "harness.signals")),
    ("build", ("harness.kernel",)),
    ("machine", ("harness.machine",)),
    ("inspect", ("harness.inspect",)),
    ("records", ("harness.records",)),
    ("session", ("harness.session",)),
    ("drive", ("harness.drive",)),
    ("runner", ("harness.runner",)),
    ("verdict", ("harness.verdict",)),
    ("cli", ("harness.cli", "harness.pytest_plugin")),
)
RANK = {name: i for i, (name, _) in enumerate(LAYERS)}
STAGE_PACKAGES = ("kernel", "machine", "inspect", "drive", "verdict", "cli")


def layer(module: str) -> str:
    best, found = -1, None
    for name, prefixes in LAYERS:
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, found = len(p), name
    assert found is not None, module
    return found


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Dotted harness modules (or packages) ``path`` imports, anywhere in it."""
    mod = module_name(path)
    pkg = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = (pkg[:len(pkg) - (node.level - 1)] if node.level else [])
            src = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                full = f"{src}.{alias.name}"
                target = Path(ROOT, *full.split("."))
                out.add(full if target.with_suffix(".py").exists() or target.is_dir()
                        else src)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m == "harness" or m.startswith("harness.")}


def sources() -> list[Path]:
    return sorted(p for p in HARNESS.rglob("*.py") if "_data" not in p.parts)


def test_every_stage_is_a_package_that_says_what_it_takes_and_gives():
    for name in STAGE_PACKAGES:
        init = HARNESS / name / "__init__.py"
        assert init.exists(), f"harness/{name}/ is not a package"
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.split()) >= 12, f"harness/{name}/__init__.py needs a docstring"


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_run_one_way(path):
    mod = module_name(path)
    here = layer(mod)
    upward = sorted(f"{t} ({layer(t)})" for t in imports(path)
                    if RANK[layer(t)] > RANK[here])
    assert not upward, f"{mod} ({here}) imports a later stage: {', '.join(upward)}"


def test_the_layers_are_the_ones_architecture_md_draws():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    for name in STAGE_PACKAGES:
        assert f"harness/{name}/" in text, f"ARCHITECTURE.md does not show harness/{name}/"
