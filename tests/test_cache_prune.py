"""The cache's entries, their sizes and LRU pruning (harness.kernel.cache)."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.kernel import cache, kernel

ROOT = Path(__file__).resolve().parents[1]


def entry(folder: Path, size: int, age: float, meta: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "blob").write_bytes(b"x" * size)
    if meta is not None:
        (folder / "meta.json").write_text(json.dumps(meta))
    t = time.time() - age
    os.utime(folder, (t, t))
    return folder


@pytest.fixture
def filled(private_cache):
    meta = {"kernel_release": "6.12.0", "fragments": ["base", "4k-48"],
            "source": "dir:/src/linux@abc", "patches": [["0001-x.patch", "00"]]}
    entry(private_cache / "artifacts" / "old", 4 << 20, 3000, meta)
    entry(private_cache / "artifacts" / "new", 4 << 20, 10, meta)
    tree = entry(private_cache / "trees" / "pabc", 8 << 20, 2000)
    (private_cache.parent / "linux").mkdir(exist_ok=True)
    (tree / "source").write_text(f"dir:{private_cache.parent / 'linux'}\n")
    (tree / "linux" / ".harness-o-1234").mkdir(parents=True)
    t = time.time() - 2000
    os.utime(tree, (t, t))
    entry(private_cache / "snapshots" / "snap", 2 << 20, 1000)
    entry(private_cache / "ccache", 1 << 20, 5000)
    return private_cache


def test_parse_size():
    assert cache.parse_size("20G") == 20 << 30
    assert cache.parse_size("1.5M") == 3 << 19
    assert cache.parse_size("512") == 512
    assert cache.parse_size("10GiB") == 10 << 30
    with pytest.raises(Exception, match="use a number with K, M, G or T"):
        cache.parse_size("lots")


def test_entries_say_what_they_hold_newest_first(filled):
    found = cache.entries()
    assert [(e.kind, e.key) for e in found] == [
        ("kernel", "new"), ("snapshot", "snap"), ("tree", "pabc"), ("kernel", "old"),
        ("ccache", "ccache")]
    kernel_entry = found[0]
    assert kernel_entry.size >= 4 << 20
    assert "6.12.0 [base+4k-48] from /src/linux" in kernel_entry.holds
    assert "0001-x.patch" in kernel_entry.holds
    assert f"work copy of dir:{filled.parent / 'linux'}, 1 O= folder(s)" in found[2].holds


def test_prune_removes_least_recently_used_until_under_the_cap(filled):
    gone = cache.prune(limit=9 << 20)
    # oldest first: the old kernel (4 MiB), then the tree (8 MiB); ccache never
    assert [(e.kind, e.key) for e in gone] == [("kernel", "old"), ("tree", "pabc")]
    assert not (filled / "artifacts" / "old").exists()
    assert not (filled / "trees" / "pabc").exists()
    assert (filled / "artifacts" / "new").exists() and (filled / "ccache").exists()


def test_prune_dry_run_and_kept_and_locked_entries(filled):
    assert [e.key for e in cache.prune(limit=0, dry_run=True)] == \
        ["old", "pabc", "snap", "new"]
    assert (filled / "artifacts" / "old").exists()
    with kernel.locked("source-pabc"):       # a build is using the tree
        gone = cache.prune(limit=0, keep=(filled / "artifacts" / "new",))
    assert [e.key for e in gone] == ["old", "snap"]
    assert (filled / "trees" / "pabc").exists() and (filled / "artifacts" / "new").exists()


def test_auto_prune_says_what_it_removed(filled, monkeypatch, capsys):
    monkeypatch.setenv(cache.ENV_MAX, "16M")
    cache.auto_prune()
    assert "removed 1 least recently used entry" in capsys.readouterr().err
    monkeypatch.setenv(cache.ENV_MAX, "1M")
    cache.auto_prune()                                 # pruned a moment ago: not again
    assert (filled / "trees" / "pabc").exists()
    cache.auto_prune(every=0)
    assert not (filled / "trees" / "pabc").exists()
    entry(filled / "trees" / "new", 1 << 20, 0)
    monkeypatch.setenv(cache.ENV_MAX, "0")
    cache.auto_prune(every=0)                          # 0: never
    assert (filled / "trees" / "new").exists()


def test_hard_links_count_once(private_cache):
    a = private_cache / "src" / "k" / "f"
    a.parent.mkdir(parents=True)
    a.write_bytes(b"y" * (1 << 20))
    b = private_cache / "trees" / "k" / "linux" / "f"
    b.parent.mkdir(parents=True)
    os.link(a, b)
    (e,) = cache.entries()
    assert e.kind == "tree" and (1 << 20) <= e.size < (1 << 20) + 65536
    assert "and its unpacked copy" in e.holds


def test_cache_cli_list_and_prune(filled):
    env = dict(os.environ, HOTPLUG_HARNESS_CACHE=str(filled))
    cli = [sys.executable, "-m", "harness.cli", "cache"]
    out = subprocess.run(cli + ["list"], capture_output=True, text=True, env=env,
                         cwd=ROOT, check=True).stdout
    assert "kernel   new" in out and f"work copy of dir:{filled.parent / 'linux'}" in out
    assert "cap 20.0 GiB (HOTPLUG_HARNESS_CACHE_MAX)" in out
    out = subprocess.run(cli + ["prune", "--max-size", "9M"], capture_output=True,
                         text=True, env=env, cwd=ROOT, check=True).stdout
    assert "removed kernel   old" in out and "2 entries removed" in out


def test_split_series_are_entries(private_cache):
    folder = private_cache / "series" / "abc"
    folder.mkdir(parents=True)
    (folder / "0001-x.patch").write_text("diff\n")
    (e,) = cache.entries()
    assert (e.kind, e.key) == ("series", "abc")
    assert e.holds == "a series split into 1 patch(es): 0001-x.patch..."


def test_a_work_copy_whose_tree_is_gone_is_pruned_first(filled, tmp_path):
    gone = filled / "trees" / "pgone"
    (gone / "linux").mkdir(parents=True)
    (gone / "source").write_text(f"dir:{tmp_path / 'deleted-tree'}\n")
    (e,) = [e for e in cache.entries() if e.key == "pgone"]
    assert e.orphan and "(that tree is gone: pruned first)" in e.holds
    removed = cache.prune(limit=1 << 40)           # far under the cap: only the orphan
    assert [x.key for x in removed] == ["pgone"] and not gone.exists()
    assert (filled / "trees" / "pabc").exists()    # its tree is there
