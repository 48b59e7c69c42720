"""--series: a real ``git format-patch --stdout`` mbox split, its Subjects kept,
its cover letter skipped, applied mail after mail; a mail that does not apply
named by place, Subject, file and hunk. The last test builds the default kernel
with a two-mail series made from patches/repro (marked kernel)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from harness import progress
from harness.errors import HarnessError, PatchError
from harness.kernel import series
from harness.kernel import source as src

LONG = ("arm64/mm: a subject long enough to be folded, with a non-ASCII "
        "character (é) so that git encodes it")
GIT_ENV = {"GIT_AUTHOR_NAME": "Ann Author", "GIT_AUTHOR_EMAIL": "ann@example.org",
           "GIT_COMMITTER_NAME": "Ann Author", "GIT_COMMITTER_EMAIL": "ann@example.org",
           "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
           "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z", "GIT_CONFIG_NOSYSTEM": "1"}


def git(repo, *args):
    env = dict(os.environ, HOME=str(repo.parent), **GIT_ENV)
    return subprocess.run(["git", "-C", str(repo), *args], check=True, env=env,
                          capture_output=True).stdout


def lines(n, changed=None):
    changed = changed or {}
    return "".join(changed.get(i, f"line {i}") + "\n" for i in range(1, n + 1))


@pytest.fixture
def repo(tmp_path):
    """A small git tree shaped like a kernel's, with three commits on a base:
    the second edits the line the first edited (so it applies only on it)."""
    repo = tmp_path / "repo"
    mm = repo / "arch" / "arm64" / "mm"
    mm.mkdir(parents=True)
    (mm / "mmu.c").write_text(lines(40))
    (repo / "README").write_text("hello\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "base")
    git(repo, "tag", "base")
    (mm / "mmu.c").write_text(lines(40, {10: "line 10 first"}))
    git(repo, "commit", "-qam", f"{LONG}\n\nFrom here on, a line that looks like an mbox "
                                "separator to mailbox.mbox.\n\nSigned-off-by: Ann")
    (mm / "mmu.c").write_text(lines(40, {10: "line 10 second", 30: "line 30 second"}))
    git(repo, "commit", "-qam", "arm64/mm: second edit of line 10")
    (repo / "README").write_text("hello, world\n")
    git(repo, "commit", "-qam", "README: greet the world")
    return repo


@pytest.fixture
def mbox(repo, tmp_path):
    path = tmp_path / "v2.mbx"
    path.write_bytes(git(repo, "format-patch", "--stdout", "--cover-letter", "-v2", "base"))
    return path


@pytest.fixture
def pristine(repo, tmp_path):
    """The base commit as a plain tree (what the series applies to)."""
    tree = tmp_path / "pristine"
    tree.mkdir()
    archive = git(repo, "archive", "--format=tar", "base")
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def test_split_keeps_subjects_and_skips_the_cover_letter(mbox):
    raw = mbox.read_bytes()
    assert raw.count(b"\nFrom here on") == 1          # git does not escape it
    found = series.split(raw)
    assert found.messages == 4 and found.announced == 3
    assert found.subjects() == [LONG, "arm64/mm: second edit of line 10",
                                "README: greet the world"]
    assert [m.part for m in found.mails] == ["1/3", "2/3", "3/3"]
    assert found.skipped == ('the cover letter "*** SUBJECT HERE ***"',)
    # each mail keeps its whole message: the commit text and the diff
    assert b"From here on, a line" in found.mails[0].data
    assert b"+line 10 first" in found.mails[0].data
    assert b"+line 10 first" not in found.mails[1].data


def test_subject_prefixes_and_encoded_words():
    assert series.clean_subject("[PATCH v2 3/5] arm64: mm: fix") == ("arm64: mm: fix", "3/5")
    assert series.clean_subject("Re: [RFC PATCH 07/12] [net-next] x: y") == ("x: y", "7/12")
    assert series.clean_subject("[PATCH] mm: one") == ("mm: one", "")
    # a b4-style mbox: "From git@z" separators, a folded, q-encoded Subject,
    # a quoted-printable body, and no cover letter
    mail = (b"From git@z Thu Jan  1 00:00:00 1970\n"
            b"Subject: [PATCH v3 1/1] =?utf-8?q?mm=3A_caf=C3=A9_and_a_long_subject_that?=\n"
            b" =?utf-8?q?_is_folded?=\n"
            b"From: Someone <s@example.org>\n"
            b"Content-Type: text/plain; charset=utf-8\n"
            b"Content-Transfer-Encoding: quoted-printable\n\n"
            b"Text.\n---\n"
            b"--- a/README\n+++ b/README\n@@ -1 +1 @@\n-hello\n+hello=2C world\n")
    found = series.split(mail)
    assert found.subjects() == ["mm: café and a long subject that is folded"]
    assert found.mails[0].part == "1/1"
    assert b"+hello, world\n" in found.mails[0].data


def test_load_patches_splits_a_series_in_order(private_cache, mbox):
    patches = src.load_patches([series.SeriesFile(str(mbox))])
    assert [p.subject for p in patches] == [LONG, "arm64/mm: second edit of line 10",
                                           "README: greet the world"]
    assert [p.part for p in patches] == ["1/3", "2/3", "3/3"]
    assert {p.mbox for p in patches} == {str(mbox)}
    assert patches[0].name.startswith("0001-arm64-mm-a-subject-long")
    assert all(p.path.is_relative_to(private_cache) for p in patches)
    # content-addressed: the same file again gives the same patches (the cache key)
    assert src.load_patches([series.SeriesFile(str(mbox))]) == patches


def test_cache_clean_all_removes_the_split_mails(private_cache, mbox):
    from harness.kernel.kernel import clean_cache
    src.load_patches([series.SeriesFile(str(mbox))])
    assert (private_cache / "series").is_dir()
    assert str(private_cache / "series") in clean_cache(everything=True)
    assert not (private_cache / "series").exists()


def test_a_series_applies_mail_after_mail(private_cache, mbox, pristine, tmp_path):
    patches = src.load_patches([series.SeriesFile(str(mbox))])
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    out = src.apply_in_scratch(pristine, patches, scratch)
    assert out["arch/arm64/mm/mmu.c"] == lines(
        40, {10: "line 10 second", 30: "line 30 second"}).encode()
    assert out["README"] == b"hello, world\n"


def test_a_mail_that_does_not_apply_is_named_by_subject_and_hunk(
        private_cache, mbox, pristine, tmp_path):
    (pristine / "arch/arm64/mm/mmu.c").write_text(lines(40, {31: "line 31 elsewhere"}))
    patches = src.load_patches([series.SeriesFile(str(mbox))])
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(PatchError) as e:
        src.apply_in_scratch(pristine, patches, scratch)
    msg = str(e.value)
    assert '2/3 "arm64/mm: second edit of line 10"' in msg
    assert str(mbox) in msg
    assert "arch/arm64/mm/mmu.c hunk #2" in msg
    assert "+line 30 second" in e.value.evidence        # the failing hunk shown
    assert str(patches[1].path) in e.value.evidence     # the mail as applied
    assert e.value.exit_code == 2


def test_a_patch_file_of_several_mails_is_a_series_and_says_so(private_cache, mbox):
    rec = progress.Recording(level=progress.NORMAL)
    old = progress.install(rec)
    try:
        patches = src.load_patches([str(mbox)])
    finally:
        progress.install(old)
    assert len(patches) == 3 and patches[2].subject == "README: greet the world"
    said = [text for _, stage, text in rec.lines if stage == "patch"]
    assert said and said[0].startswith(f"{mbox}: a series of 3 patches (1/3 {LONG}; ")
    assert "applied one by one, as --series does" in said[0]
    assert 'skipped the cover letter "*** SUBJECT HERE ***"' in said[0]


def test_a_single_patch_file_is_unchanged(private_cache, repo, tmp_path):
    one = tmp_path / "one.patch"
    one.write_bytes(git(repo, "format-patch", "--stdout", "-1", "HEAD"))
    (patch,) = src.load_patches([str(one)])
    assert patch.path == one.resolve() and not patch.subject
    assert patch.label == str(one.resolve())


def test_series_refuses_a_file_without_patch_mails(private_cache, tmp_path):
    plain = tmp_path / "plain.diff"
    plain.write_text("--- a/README\n+++ b/README\n@@ -1 +1 @@\n-a\n+b\n")
    with pytest.raises(HarnessError, match="--series .*plain.diff: no patch in it"):
        src.load_patches([series.SeriesFile(str(plain))])
    with pytest.raises(HarnessError, match="--series .*nope.mbx: no such file"):
        src.load_patches([series.SeriesFile(str(tmp_path / "nope.mbx"))])


@pytest.mark.parametrize("command", ["build", "boot", "run", "matrix", "bisect-run"])
def test_series_and_patch_keep_the_command_line_order(command):
    from harness.cli import parser
    args = parser().parse_args([command, "--patch", "a.patch", "--series", "v2.mbx",
                                "--patch", "b.patch"])
    assert args.patch == ["a.patch", "v2.mbx", "b.patch"]
    assert [isinstance(p, series.SeriesFile) for p in args.patch] == [False, True, False]


def test_the_report_shows_the_series(private_cache):
    from harness.cli.run import kernel_identity
    from harness.kernel.kernel import KernelArtifacts
    from harness.verdict import report
    fields = dict(image="I", vmlinux="V", system_map="S", config="C", build_log="L",
                  cache_key="k" * 64, source="tarball:x@y", fragments=("base",),
                  patches=(("0001-a.patch", "1" * 64), ("0001-arm64-mm-x.patch", "2" * 64)),
                  config_digest="d", kernel_release="6.12.0", toolchain="gcc")
    old = KernelArtifacts.from_dict(fields)          # a meta.json from before --series
    assert old.series == () and "series" not in kernel_identity(old)
    art = KernelArtifacts.from_dict(json.loads(json.dumps(dict(
        fields, series=[["0001-arm64-mm-x.patch", "1/2", "arm64/mm: x", "v2.mbx"]]))))
    kernel = kernel_identity(art)
    assert kernel["series"] == [{"name": "0001-arm64-mm-x.patch", "part": "1/2",
                                 "subject": "arm64/mm: x", "from": "v2.mbx"}]
    assert "  series 1/2: arm64/mm: x (0001-arm64-mm-x.patch)" in report._kernel_line(kernel)


# ------------------------------------------------------------ real kernel ---

FROM_ = b"From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
TWO = ("0012-ptdump-without-hotplug-lock.patch", "0020-bootmem-offline-allowed.patch")


@pytest.mark.kernel
def test_the_default_kernel_builds_with_a_two_mail_series(tmp_path):
    """Two seeded regressions (each a git format-patch mail, on different files)
    in one mbox, as format-patch --stdout writes a series (a mail saved without
    its From_ line gets one)."""
    mbx = tmp_path / "two.mbx"
    mails = [(ROOT / "patches" / "repro" / n).read_bytes() for n in TWO]
    mbx.write_bytes(b"".join(m if series.FROM_LINE.match(m) else FROM_ + m for m in mails))
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "build", "--series",
                           str(mbx), "--json"], cwd=ROOT, capture_output=True, text=True,
                          timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    art = json.loads(proc.stdout)
    subjects = [s[2] for s in art["series"]]
    # 0012's Subject is folded over two lines in its header
    assert subjects == ["REPRO: mm/ptdump: walk the page tables without the hotplug lock",
                        "REPRO: arm64: mm: let boot memory go offline"], art
    assert [s[1] for s in art["series"]] == ["1/2", "2/2"]
    assert [p[0] for p in art["patches"][-2:]] == [s[0] for s in art["series"]]
    assert f"{mbx}: a series of 2 patches (1/2 REPRO: mm/ptdump: walk" in proc.stderr
    meta = json.loads((Path(art["image"]).parent / "meta.json").read_text())
    assert [s[2] for s in meta["series"]] == subjects
