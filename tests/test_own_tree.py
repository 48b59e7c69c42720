"""A reviewer's own kernel tree, end to end: given with --kernel-src (or run
from inside it), edited to break hot-remove, edited back.

One work copy per tree path follows the edits file by file (only mmu.c is
synced), the broken edit FAILs with a named check, the tree itself is never
written, and run from inside the tree the harness finds it by itself.
Timings are bench/bench_own_tree.py's business, not this test's.
"""
import json
import shutil
import subprocess
import sys

import pytest

from harness.host import cache_root
from harness.kernel import source as src

pytestmark = [pytest.mark.kernel, pytest.mark.qemu]

MMU_C = "arch/arm64/mm/mmu.c"
UNMAP = "\t__remove_pgd_mapping(swapper_pg_dir, __phys_to_virt(start), size);\n"


def harness(*args, cwd):
    return subprocess.run([sys.executable, "-m", "harness.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=1800)


def checks(report_dir):
    data = json.loads((report_dir / "report.json").read_text())
    return {(m["method"], c["name"]): c["verdict"]
            for m in data["methods"] for c in m["checks"]}


def test_own_tree_follows_edits_in_one_work_copy(tmp_path):
    if not shutil.which("cp"):
        pytest.skip("needs cp")
    pristine = src.pristine_tree(src.resolve_source("debian"))
    tree = tmp_path / "my-linux"
    subprocess.run(["cp", "-a", str(pristine), str(tree)], check=True)
    mmu = tree / MMU_C
    original = mmu.read_text()
    assert UNMAP in original
    listing = {n: s for n, s in src.tree_files(tree).items() if n != MMU_C}

    first = harness("run", "--kernel-src", tree, "--method", "probe", "--order-check",
                    "off", "--report", tmp_path / "r1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    key = src.Source("dir", tree.resolve(), "").tree_key
    work = cache_root() / "trees" / key / "linux"
    assert (work / MMU_C).read_text() == original

    # the edit a reviewer would catch: the linear map is never unmapped
    mmu.write_text(original.replace(UNMAP, "\t/* unmap dropped */\n", 1))
    broken = harness("run", "--kernel-src", tree, "--method", "probe", "--order-check",
                     "off", "--report", tmp_path / "r2", cwd=tmp_path)
    assert broken.returncode == 1, broken.stderr[-3000:]
    assert f"1 file(s) changed since the last build ({MMU_C})" in broken.stderr
    assert checks(tmp_path / "r2")[("probe", "no-stale-linear-map")] == "FAIL"
    assert "/* unmap dropped */" in (work / MMU_C).read_text()

    # edited back, run from inside the tree with no --kernel-src: the tree
    # found by itself, the same work copy
    mmu.write_text(original)
    back = harness("run", "--method", "probe", "--order-check", "off",
                   "--report", tmp_path / "r3", cwd=tree)
    assert back.returncode == 0, back.stderr[-3000:]
    assert f"building the kernel tree in the current folder ({tree.resolve()})" \
        in back.stderr
    trees = [p for p in (cache_root() / "trees").iterdir()
             if (p / "source").is_file()
             and (p / "source").read_text().strip() == f"dir:{tree.resolve()}"]
    assert [p.name for p in trees] == [key]
    # the tree itself was never written: no file added, removed or touched
    assert {n: s for n, s in src.tree_files(tree).items() if n != MMU_C} == listing
    shutil.rmtree(cache_root() / "trees" / key)   # 1.7 GB: not worth keeping
