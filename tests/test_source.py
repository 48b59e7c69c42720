"""Source identity, series parsing and patch application on a tiny fake tree."""
import os
import time

import pytest

from harness.build import source as src
from harness.errors import HarnessError, PatchError

PATCH_OK = """\
From: Someone <a@b>
Subject: [PATCH] arm64: mm: change line 10

--- a/arch/arm64/mm/mmu.c
+++ b/arch/arm64/mm/mmu.c
@@ -9,3 +9,3 @@
 line 9
-line 10
+line 10 patched
 line 11
--
2.39.5
"""

PATCH_NEWFILE = """\
--- /dev/null
+++ b/arch/arm64/mm/new.c
@@ -0,0 +1 @@
+new file
"""

PATCH_BAD = """\
--- a/arch/arm64/mm/mmu.c
+++ b/arch/arm64/mm/mmu.c
@@ -2,3 +2,3 @@
 line 2
-line 3
+line 3 patched
 line 4
@@ -30,3 +30,3 @@
 line 30
-this line is not there
+nor this
 line 32
"""


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_touched_files_and_hunks():
    assert src.touched_files(PATCH_OK) == ["arch/arm64/mm/mmu.c"]
    assert src.touched_files(PATCH_NEWFILE) == ["arch/arm64/mm/new.c"]
    assert "-this line is not there" in src.hunk_text(PATCH_BAD, "arch/arm64/mm/mmu.c", 2)


def test_series_parsing(tmp_path):
    for n in ("a.patch", "b.patch"):
        write(tmp_path, n, PATCH_OK)
    series = write(tmp_path, "series", "# comment\na.patch\n\nb.patch -p1  # quilt opts\n")
    assert [p.name for p in src.read_series(series)] == ["a.patch", "b.patch"]
    write(tmp_path, "series", "a.patch\nmissing.patch\n")
    with pytest.raises(HarnessError, match=r"series:2: patch 'missing.patch' not found"):
        src.read_series(tmp_path / "series")


def test_shipped_series_lists_existing_patches():
    names = [p.name for p in src.read_series()]
    assert names and all(n.endswith(".patch") for n in names)


def test_dir_identity_changes_with_content(private_cache, fake_tree):
    a = src.resolve_source(str(fake_tree)).identity
    assert src.resolve_source(str(fake_tree)).identity == a
    time.sleep(0.01)
    (fake_tree / "README").write_text("changed\n")
    assert src.resolve_source(str(fake_tree)).identity != a


def test_not_a_kernel_tree(tmp_path):
    with pytest.raises(HarnessError, match="does not look like a kernel source tree"):
        src.resolve_source(str(tmp_path))
    with pytest.raises(HarnessError, match="no such file"):
        src.resolve_source(str(tmp_path / "nope"))


def test_prepare_applies_switches_and_keeps_mtimes(private_cache, fake_tree, tmp_path):
    source = src.resolve_source(str(fake_tree))
    ok = src.load_patches([write(tmp_path, "ok.patch", PATCH_OK)])
    new = src.load_patches([write(tmp_path, "new.patch", PATCH_NEWFILE)])
    tree = src.prepare(source, ok).path
    mmu, readme = tree / "arch/arm64/mm/mmu.c", tree / "README"
    assert "line 10 patched" in mmu.read_text()
    old_readme = os.stat(readme).st_mtime_ns
    # the same series again changes nothing
    assert src.prepare(source, ok).changed == ()
    # another series: mmu.c back to pristine, new.c created, README untouched
    result = src.prepare(source, new)
    assert set(result.changed) == {"arch/arm64/mm/mmu.c", "arch/arm64/mm/new.c"}
    assert mmu.read_text() == (fake_tree / "arch/arm64/mm/mmu.c").read_text()
    assert (tree / "arch/arm64/mm/new.c").read_text() == "new file\n"
    assert os.stat(readme).st_mtime_ns == old_readme
    # no patches: new.c goes away
    src.prepare(source, [])
    assert not (tree / "arch/arm64/mm/new.c").exists()
    # the user's tree was never modified
    assert "patched" not in (fake_tree / "arch/arm64/mm/mmu.c").read_text()


def test_failing_patch_names_file_and_hunk_and_leaves_tree_alone(
        private_cache, fake_tree, tmp_path):
    source = src.resolve_source(str(fake_tree))
    ok = src.load_patches([write(tmp_path, "ok.patch", PATCH_OK)])
    tree = src.prepare(source, ok).path
    before = (tree / "arch/arm64/mm/mmu.c").read_text()
    bad = src.load_patches([write(tmp_path, "0002-bad.patch", PATCH_BAD)])
    with pytest.raises(PatchError) as e:
        src.prepare(source, ok + bad)
    msg = str(e.value)
    assert "0002-bad.patch" in msg
    assert "arch/arm64/mm/mmu.c hunk #2" in msg
    assert "-this line is not there" in e.value.evidence
    # nothing half-applied: hunk #1 of the bad patch is not in the tree
    assert (tree / "arch/arm64/mm/mmu.c").read_text() == before
    assert e.value.exit_code == 2


def test_missing_patch_file(tmp_path):
    with pytest.raises(HarnessError, match="--patch .*nope.patch: no such file"):
        src.load_patches([tmp_path / "nope.patch"])
