"""patches/series already in the tree: detected with git apply --reverse --check
(patch -R -f without git), skipped and said so, the answer cached (no kernel)."""
from __future__ import annotations

import difflib
import shutil
import subprocess
from pathlib import Path

import pytest

from harness import progress
from harness.kernel import applied
from harness.kernel import kernel as build_mod
from harness.kernel import source as src

needs_patch = pytest.mark.skipif(shutil.which("patch") is None, reason="no patch")

MMU = "".join(f"line {i}\n" for i in range(1, 41))


def diff(folder: Path, name: str, rel: str, old: str | None, new: str) -> Path:
    """A git-style -p1 patch of ``rel`` from ``old`` (None: a new file) to ``new``."""
    lines = difflib.unified_diff((old or "").splitlines(True), new.splitlines(True),
                                 "/dev/null" if old is None else f"a/{rel}", f"b/{rel}")
    path = folder / f"{name}.patch"
    path.write_text(f"Subject: {name}\n---\ndiff --git a/{rel} b/{rel}\n"
                    + "".join(lines))
    return path


@pytest.fixture
def series(tmp_path, fake_tree):
    """Three patches in order: 1 edits mmu.c, 2 edits the line 1 added, 3 adds a file."""
    patches = tmp_path / "patches"
    patches.mkdir()
    rel = "arch/arm64/mm/mmu.c"
    one = MMU.replace("line 20\n", "line 20 (one)\n")
    two = one.replace("line 20 (one)\n", "line 20 (one, two)\n")
    return fake_tree, [diff(patches, "0001-one", rel, MMU, one),
                       diff(patches, "0002-two", rel, one, two),
                       diff(patches, "0003-new", "mm/new.c", None, "new\n")]


def apply(tree: Path, patch: Path) -> None:
    """Apply ``patch`` as a user would (``patch`` writes new files: hard links stay)."""
    subprocess.run(["patch", "-p1", "-s", "-d", str(tree), "-i", str(patch)], check=True)


@needs_patch
def test_nothing_applied(series):
    tree, patches = series
    assert applied.in_tree(tree, patches) == set()


@needs_patch
def test_applied_prefix_and_stacked_patches(series):
    """A patch the next one edits is found too: the series is checked from its
    end, each patch found reversed (in a scratch copy) before the one before it."""
    tree, patches = series
    apply(tree, patches[0])
    assert applied.in_tree(tree, patches) == {0}
    apply(tree, patches[1])
    assert applied.in_tree(tree, patches) == {0, 1}
    apply(tree, patches[2])
    before = (tree / "arch/arm64/mm/mmu.c").read_text()
    assert applied.in_tree(tree, patches) == {0, 1, 2}
    assert (tree / "arch/arm64/mm/mmu.c").read_text() == before    # only read


@needs_patch
def test_without_git_patch_reverses(series, monkeypatch):
    tree, patches = series
    apply(tree, patches[0])
    real_which = shutil.which
    monkeypatch.setattr(applied.shutil, "which",
                        lambda name, *a, **k: None if name == "git" else real_which(name))
    assert applied.in_tree(tree, patches) == {0}


@needs_patch
def test_a_tree_inside_another_git_work_tree(series, tmp_path):
    """git apply must not take the tree for part of an enclosing repository."""
    if shutil.which("git") is None:
        pytest.skip("no git")
    tree, patches = series
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    apply(tree, patches[0])
    assert applied.in_tree(tree, patches) == {0}


@needs_patch
def test_series_to_apply_says_so_and_caches(series, private_cache, monkeypatch):
    tree, patches = series
    apply(tree, patches[0])
    source = src.resolve_source(str(tree))
    rec = progress.Recording()
    old = progress.install(rec)
    try:
        assert applied.series_to_apply(source, patches) == patches[1:]
        # the second time from the cache: no git apply at all
        monkeypatch.setattr(applied, "in_tree", lambda *a: pytest.fail("not cached"))
        assert applied.series_to_apply(source, patches) == patches[1:]
    finally:
        progress.install(old)
    said = [text for _, _, text in rec.lines]
    assert said == ["patches/series: 0001-one.patch already in the tree, skipped"] * 2
    assert (private_cache / applied.CACHE_FILE).is_file()


@needs_patch
def test_gather_inputs_skips_the_series_patches_in_the_tree(series, private_cache,
                                                             monkeypatch):
    tree, patches = series
    for p in patches[:2]:
        apply(tree, p)
    monkeypatch.setattr(src, "read_series", lambda *a: list(patches))
    monkeypatch.setattr(build_mod, "toolchain_version", lambda llvm=False: "gcc")
    names = lambda req: [p.name for p in build_mod.gather_inputs(req).patches]  # noqa: E731
    req = build_mod.BuildRequest(kernel_src=str(tree))
    assert names(req) == ["0003-new.patch"]
    extra = build_mod.BuildRequest(kernel_src=str(tree), patches=(str(patches[0]),),
                                   series=False)
    assert names(extra) == ["0001-one.patch"]      # --no-series; --patch never skipped
