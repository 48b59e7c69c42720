"""Source identity, series parsing and patch application on a tiny fake tree."""
import os
import shutil
import subprocess
import time

import pytest

from harness.errors import HarnessError, PatchError
from harness.kernel import source as src

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


# ------------------------------------------------- a tree's own work copy ---

def _mtimes(tree):
    return {p.relative_to(tree).as_posix(): p.stat().st_mtime_ns
            for p in tree.rglob("*") if p.is_file()}


def test_work_copy_is_one_per_path_and_follows_edits_file_by_file(
        private_cache, fake_tree):
    (fake_tree / "scripts").mkdir()
    script = fake_tree / "scripts" / "gen.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    (fake_tree / "arch" / "arm64" / "link").symlink_to("mm/mmu.c")
    first = src.prepare(src.resolve_source(str(fake_tree)), [])
    tree = first.path
    assert (tree / "README").read_text() == "hello\n"
    assert os.access(tree / "scripts" / "gen.sh", os.X_OK)
    assert os.readlink(tree / "arch" / "arm64" / "link") == "mm/mmu.c"
    before = _mtimes(tree)
    time.sleep(0.01)
    # an edit, a new file, a removed file, a touch with no change
    (fake_tree / "README").write_text("edited\n")
    (fake_tree / "arch" / "arm64" / "mm" / "new.c").write_text("int x;\n")
    script.unlink()
    os.utime(fake_tree / "arch" / "arm64" / "mm" / "mmu.c")
    second = src.prepare(src.resolve_source(str(fake_tree)), [])
    assert second.path == tree                       # same work copy, new content
    assert set(second.changed) == {"README", "arch/arm64/mm/new.c", "scripts/gen.sh"}
    after = _mtimes(tree)
    assert after["README"] > before["README"]
    assert after["arch/arm64/mm/mmu.c"] == before["arch/arm64/mm/mmu.c"]
    assert "scripts/gen.sh" not in after
    assert (tree / "README").read_text() == "edited\n"
    # nothing changed: nothing written
    assert src.prepare(src.resolve_source(str(fake_tree)), []).changed == ()
    assert _mtimes(tree) == after
    assert len(list((private_cache / "trees").iterdir())) == 1


def test_work_copy_with_patches_follows_edits_of_patched_files(
        private_cache, fake_tree, tmp_path):
    ok = src.load_patches([write(tmp_path, "ok.patch", PATCH_OK)])
    tree = src.prepare(src.resolve_source(str(fake_tree)), ok).path
    mmu = fake_tree / "arch" / "arm64" / "mm" / "mmu.c"
    mmu.write_text(mmu.read_text().replace("line 30\n", "line 30 edited\n"))
    result = src.prepare(src.resolve_source(str(fake_tree)), ok)
    text = (tree / "arch/arm64/mm/mmu.c").read_text()
    assert "line 10 patched" in text and "line 30 edited" in text
    assert result.changed == ("arch/arm64/mm/mmu.c",)
    # the patch dropped: the file is the tree's own again
    src.prepare(src.resolve_source(str(fake_tree)), [])
    assert (tree / "arch/arm64/mm/mmu.c").read_text() == mmu.read_text()
    assert "patched" not in mmu.read_text()


def test_tree_built_in_place_is_refused_unless_git_says_what_is_source(
        private_cache, fake_tree):
    (fake_tree / ".config").write_text("CONFIG_X=y\n")
    with pytest.raises(HarnessError, match=r"built in place \(\.config present\).*"
                                           r"make mrproper"):
        src.prepare(src.resolve_source(str(fake_tree)), [])


@pytest.mark.skipif(not shutil.which("git"), reason="needs git")
def test_git_tree_copies_what_git_lists_not_build_products(private_cache, fake_tree):
    (fake_tree / ".gitignore").write_text("*.o\n.config\n")
    run = lambda *a: subprocess.run(["git", "-C", str(fake_tree), *a], check=True,  # noqa: E731
                                    capture_output=True)
    run("init", "-q")
    run("add", "-A")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base")
    (fake_tree / ".config").write_text("CONFIG_X=y\n")
    (fake_tree / "arch" / "arm64" / "mm" / "mmu.o").write_bytes(b"\0")
    (fake_tree / "untracked.c").write_text("int y;\n")
    tree = src.prepare(src.resolve_source(str(fake_tree)), []).path
    assert (tree / "untracked.c").exists() and (tree / "README").exists()
    assert not (tree / ".config").exists() and not (tree / "arch/arm64/mm/mmu.o").exists()
    assert not (tree / ".git").exists()


def test_outdir_is_a_child_of_the_work_copy(private_cache, fake_tree):
    from harness.kernel import kernel
    inputs = kernel.Inputs(src.resolve_source(str(fake_tree)), (), (), {}, "gcc", False)
    tree = src.work_tree(inputs.source)
    out = kernel.outdir_path(tree, inputs)
    assert out.parent == tree and out.name.startswith(".harness-o-")
