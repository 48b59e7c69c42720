"""Cache keys and the cache lookup, without running make."""
import json
from pathlib import Path

from harness.kernel import kconfig
from harness.kernel import kernel as build
from harness.kernel import source as src


def inputs(tmp_path, patch_text="a", config=None, toolchain="gcc 12", llvm=False):
    p = tmp_path / "x.patch"
    p.write_text(patch_text)
    source = src.Source("dir", tmp_path, "0" * 64)
    frags = tuple(kconfig.resolve_fragments(config or []))
    return build.Inputs(source, tuple(src.load_patches([p])), frags,
                        kconfig.merge(frags), toolchain, llvm)


def test_cache_key_is_stable_and_covers_every_input(tmp_path):
    base = inputs(tmp_path).cache_key
    assert inputs(tmp_path).cache_key == base
    assert inputs(tmp_path, patch_text="b").cache_key != base
    assert inputs(tmp_path, config=["debug-vm"]).cache_key != base
    assert inputs(tmp_path, toolchain="gcc 13").cache_key != base
    assert inputs(tmp_path, llvm=True).cache_key != base


def test_outdir_is_shared_across_patch_changes(tmp_path):
    a, b = inputs(tmp_path, patch_text="a"), inputs(tmp_path, patch_text="b")
    assert a.outdir_key == b.outdir_key
    assert inputs(tmp_path, config=["64k-42"]).outdir_key != a.outdir_key


def test_lookup_roundtrip(private_cache, tmp_path):
    key = "ab" * 32
    d = build.artifacts_dir(key)
    d.mkdir(parents=True)
    names = ("Image", "vmlinux", ".config", "System.map")
    for name in names:
        (d / name).write_text("x")
    art = build.KernelArtifacts(
        image=str(d / "Image"), vmlinux=str(d / "vmlinux"), system_map=str(d / "System.map"),
        config=str(d / ".config"), build_log="", cache_key=key, source="s",
        patches=(("p", "h"),), fragments=("base",), config_digest="c",
        kernel_release="6.12", toolchain="t")
    files = {n: build.file_record(d / n) for n in names}
    (d / "meta.json").write_text(json.dumps(dict(art.to_dict(), files=files)))
    assert build.lookup(key) == art
    assert build.lookup("cd" * 32) is None
    assert [a.cache_key for a in build.list_cache()] == [key]
    (d / "Image").unlink()
    assert build.lookup(key) is None


def test_make_argv_uses_cross_compiler_and_ccache(tmp_path):
    (tmp_path / "o").mkdir()
    maker = build.Make(tmp_path, tmp_path / "o", build.BuildRequest(jobs=3), False)
    argv = maker.argv(["Image"])
    assert argv[:4] == ["make", "-C", str(tmp_path), f"O={tmp_path / 'o'}"]
    assert "ARCH=arm64" in argv and "-j3" in argv and argv[-1] == "Image"
    assert "CROSS_COMPILE=aarch64-linux-gnu-" in argv


def test_config_stamp_tracks_config_and_kconfig_patches(tmp_path):
    from harness.kernel.source import PreparedTree
    inp = inputs(tmp_path)
    src_ = inp.source
    plain = PreparedTree(src_, tmp_path, (), (), (("arch/arm64/mm/mmu.c", "aa"),))
    other_c = PreparedTree(src_, tmp_path, (), (), (("arch/arm64/mm/mmu.c", "bb"),))
    kcfg = PreparedTree(src_, tmp_path, (), (), (("arch/arm64/Kconfig", "cc"),))
    stamp = build._config_stamp(inp, plain)
    assert build._config_stamp(inp, other_c) == stamp      # C change: no reconfig
    assert build._config_stamp(inp, kcfg) != stamp         # Kconfig change: reconfig
    assert build._config_stamp(inputs(tmp_path, config=["debug-vm"]), plain) != stamp


def test_lock_serialises_two_processes(private_cache):
    import subprocess
    import sys
    import time
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import time, sys; from harness.kernel import kernel as build\n"
         "with build.locked('source-x'):\n"
         "    print('held', flush=True); time.sleep(1.0)\n"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)
    assert holder.stdout.readline().strip() == "held"
    start = time.monotonic()
    with build.locked("source-x"):
        waited = time.monotonic() - start
    holder.wait()
    assert waited > 0.5
