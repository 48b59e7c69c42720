"""Integration: the real build stage on Debian's linux-source-6.12 (slow when cold)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.errors import ConfigError, PatchError
from harness.kernel import kernel as build

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def default_kernel():
    return build.build(build.BuildRequest())


def test_default_kernel_has_the_probe_and_remove_files(default_kernel):
    cfg = default_kernel.kconfig
    assert cfg["CONFIG_ARCH_MEMORY_PROBE"] == "y"
    assert cfg["CONFIG_MEMORY_HOTREMOVE"] == "y"
    assert cfg["CONFIG_PGTABLE_LEVELS"] == "4"
    symbols = Path(default_kernel.system_map).read_text()
    assert " probe_store\n" in symbols and " remove_store\n" in symbols
    assert Path(default_kernel.image).stat().st_size > 1 << 20


def test_same_inputs_run_no_make(default_kernel):
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "build", "--json"],
                          capture_output=True, text=True, cwd=ROOT, check=True)
    art = json.loads(proc.stdout)
    assert art["rebuilt"] is False
    assert art["cache_key"] == default_kernel.cache_key
    assert "$ make" not in proc.stderr


def test_dropped_option_is_named(default_kernel, tmp_path):
    frag = tmp_path / "bogus.config"
    frag.write_text("CONFIG_HARNESS_NO_SUCH_OPTION=y\n"
                    "# VIRTIO_MEM needs MEMORY_HOTREMOVE: turning it off drops it\n"
                    "# CONFIG_MEMORY_HOTREMOVE is not set\nCONFIG_VIRTIO_MEM=y\n")
    with pytest.raises(ConfigError) as e:
        build.build(build.BuildRequest(configs=(str(frag),)))
    assert set(e.value.dropped) == {"CONFIG_HARNESS_NO_SUCH_OPTION", "CONFIG_VIRTIO_MEM"}
    assert e.value.exit_code == 2


def test_broken_patch_names_file_and_hunk_and_keeps_tree(default_kernel, tmp_path):
    bad = tmp_path / "0099-broken.patch"
    bad.write_text("--- a/arch/arm64/mm/mmu.c\n+++ b/arch/arm64/mm/mmu.c\n"
                   "@@ -1,3 +1,3 @@\n-this is not the first line of mmu.c\n+x\n y\n z\n")
    with pytest.raises(PatchError) as e:
        build.build(build.BuildRequest(patches=(str(bad),)))
    assert "0099-broken.patch" in str(e.value)
    assert "arch/arm64/mm/mmu.c hunk #1" in str(e.value)
    # the next build of the default inputs is still a cache hit, tree intact
    again = build.build(build.BuildRequest())
    assert again.cache_key == default_kernel.cache_key and not again.rebuilt


def test_cache_list_shows_the_kernel(default_kernel):
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "cache", "list", "--json"],
                          capture_output=True, text=True, cwd=ROOT, check=True)
    keys = [a.get("cache_key") for a in json.loads(proc.stdout) if a["kind"] == "kernel"]
    assert default_kernel.cache_key in keys
