"""Kernel versions (harness/kernel/versions.py): Debian's sources by name, a
tree's own version, the per-version series and fragments, what cannot work on
a version, and the source axis of matrix and repro. No kernel, no QEMU."""
import io
import json
import subprocess
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness import progress
from harness.cli import main
from harness.errors import HarnessError, PatchError, ToolMissing
from harness.kernel import kconfig, kernel, versions
from harness.kernel import source as src
from harness.paths import CONFIG_DIR, PATCH_DIR
from harness.verdict import geomatrix, repro

MAKEFILE_61 = ("# SPDX-License-Identifier: GPL-2.0\nVERSION = 6\nPATCHLEVEL = 1\n"
               "SUBLEVEL = 192\nEXTRAVERSION =\nNAME = Curry Ramen\n")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOTPLUG_HARNESS_CACHE", str(tmp_path / "cache"))


def fake_tree(root: Path, makefile: str = MAKEFILE_61) -> Path:
    (root / "arch" / "arm64" / "mm").mkdir(parents=True)
    (root / "Makefile").write_text(makefile)
    return root


def fake_tarball(path: Path, top: str = "linux-source-6.1", makefile: str = MAKEFILE_61,
                 before: int = 3) -> Path:
    """A kernel tarball whose top Makefile comes after ``before`` other files."""
    with tarfile.open(path, "w:xz") as tar:
        for i in range(before):
            data = f"file {i}\n".encode()
            info = tarfile.TarInfo(f"{top}/Documentation/{i}/Makefile")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo(f"{top}/Makefile")
        info.size = len(makefile.encode())
        tar.addfile(info, io.BytesIO(makefile.encode()))
    return path


# ------------------------------------------------------------ version ------

@pytest.mark.parametrize("text,version", [
    (MAKEFILE_61, "6.1"),
    ("VERSION = 6\nPATCHLEVEL = 12\nSUBLEVEL = 118\n", "6.12"),
    ("VERSION=7\nPATCHLEVEL=0\n", "7.0"),
    ("# VERSION = 6 in a comment\nall:\n", None),
    ("VERSION = 6\n", None),
])
def test_makefile_version(text, version):
    assert versions.makefile_version(text) == version


def test_a_trees_version_is_its_makefiles(tmp_path):
    tree = fake_tree(tmp_path / "linux")
    assert versions.tree_version(src.resolve_source(str(tree))) == "6.1"
    (tree / "Makefile").write_text("all:\n")
    assert versions.tree_version(src.resolve_source(str(tree))) == ""


def test_a_tarballs_version_is_read_from_its_top_makefile_once(tmp_path, monkeypatch):
    tarball = fake_tarball(tmp_path / "linux-6.1.tar.xz")
    source = src.resolve_source(str(tarball))
    assert source.kind == "tarball"
    assert versions.tree_version(source) == "6.1"
    memo = json.loads((tmp_path / "cache" / versions.VERSIONS_FILE).read_text())
    assert memo == {source.identity: "6.1"}
    # remembered by identity: the tarball is not read again
    monkeypatch.setattr(versions, "tarball_makefile", lambda p: pytest.fail("read again"))
    assert versions.tree_version(source) == "6.1"


def test_a_tarball_with_the_makefile_at_its_top_level(tmp_path):
    path = tmp_path / "flat.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        data = MAKEFILE_61.encode()
        info = tarfile.TarInfo("Makefile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    assert versions.makefile_version(versions.tarball_makefile(path)) == "6.1"


def test_a_file_that_is_no_tarball_is_said(tmp_path):
    bad = tmp_path / "x.tar.xz"
    bad.write_bytes(b"not a tarball")
    with pytest.raises(HarnessError, match="cannot read the kernel's Makefile"):
        versions.tarball_makefile(bad)


# ------------------------------------------------------ Debian sources -----

def test_debian_names():
    assert versions.debian_source("debian").version == "6.12"
    assert versions.debian_source("debian-6.12").tarball == \
        versions.debian_source("debian").tarball
    d61 = versions.debian_source("debian-6.1")
    assert (d61.version, d61.package, str(d61.tarball)) == (
        "6.1", "linux-source-6.1", "/usr/src/linux-source-6.1.tar.xz")
    assert versions.debian_source("/some/tree") is None
    with pytest.raises(HarnessError, match="debian-6.1"):
        versions.debian_source("debian-5.10")


def test_an_installed_source_is_not_installed_again(tmp_path):
    ds = versions.DebianSource("debian-6.1", "6.1", fake_tarball(tmp_path / "t.tar.xz"),
                               "linux-source-6.1")
    assert versions.ensure_debian_source(ds, runner=lambda *a, **k: pytest.fail("apt")) \
        == ds.tarball


def test_a_missing_source_is_installed_with_apt(tmp_path, monkeypatch):
    ds = versions.DebianSource("debian-6.1", "6.1", tmp_path / "linux-source-6.1.tar.xz",
                               "linux-source-6.1")
    monkeypatch.setattr(versions, "_cannot_install", lambda: "")
    monkeypatch.setattr(versions.os, "geteuid", lambda: 0)
    calls = []

    def apt(argv, **kw):
        calls.append(argv)
        assert kw["env"]["DEBIAN_FRONTEND"] == "noninteractive"
        if argv[:2] == ["apt-get", "install"]:
            fake_tarball(ds.tarball)
        return subprocess.CompletedProcess(argv, 0, "", "")
    rec = progress.install(progress.Recording())
    try:
        assert versions.ensure_debian_source(ds, runner=apt) == ds.tarball
    finally:
        progress.install(rec)
    assert calls == [["apt-get", "install", "-y", "-q", "--no-install-recommends",
                      "linux-source-6.1"]]


def test_apt_lists_are_updated_once_then_the_package_is_named(tmp_path, monkeypatch):
    ds = versions.DebianSource("debian-6.1", "6.1", tmp_path / "linux-source-6.1.tar.xz",
                               "linux-source-6.1")
    monkeypatch.setattr(versions, "_cannot_install", lambda: "")
    monkeypatch.setattr(versions.os, "geteuid", lambda: 1000)
    calls = []

    def apt(argv, **kw):
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 100, "", "E: Unable to locate package")
    with pytest.raises(ToolMissing) as err:
        versions.ensure_debian_source(ds, runner=apt)
    assert [c[2:4] for c in calls] == [["apt-get", "install"], ["apt-get", "update"],
                                        ["apt-get", "install"]]
    assert all(c[:2] == ["sudo", "-n"] for c in calls)
    assert err.value.package == "linux-source-6.1" and err.value.exit_code == 2
    assert "apt-get install linux-source-6.1" in err.value.message
    assert "Unable to locate package" in err.value.evidence


def test_no_install_when_told_not_to(tmp_path, monkeypatch):
    monkeypatch.setenv(versions.NO_INSTALL_ENV, "1")
    ds = versions.DebianSource("debian-6.1", "6.1", tmp_path / "missing.tar.xz",
                               "linux-source-6.1")
    with pytest.raises(ToolMissing, match=f"{versions.NO_INSTALL_ENV}=1"):
        versions.ensure_debian_source(ds, runner=lambda *a, **k: pytest.fail("apt"))


def test_resolve_source_debian_61_goes_through_the_installer(tmp_path, monkeypatch):
    tarball = fake_tarball(tmp_path / "linux-source-6.1.tar.xz")
    seen = []
    monkeypatch.setattr(versions, "ensure_debian_source",
                        lambda ds: seen.append(ds.name) or tarball)
    source = src.resolve_source("debian-6.1")
    assert seen == ["debian-6.1"] and source.kind == "tarball" and source.path == tarball


# ------------------------------------------------ per-version choices ------

def test_the_series_is_the_versions_own_else_the_default(tmp_path):
    (tmp_path / "series").write_text("a.patch\n")
    (tmp_path / "6.1").mkdir()
    assert versions.series_file("6.1", tmp_path) == tmp_path / "series"
    (tmp_path / "6.1" / "series").write_text("../a.patch\n")
    assert versions.series_file("6.1", tmp_path) == tmp_path / "6.1" / "series"
    assert versions.series_file("6.12", tmp_path) == tmp_path / "series"
    assert versions.series_file("", tmp_path) == tmp_path / "series"


def test_the_shipped_61_series_names_patches_that_exist():
    series = src.read_series(versions.series_file("6.1"))
    assert [p.name for p in series] == [p.name for p in src.read_series()]
    assert series[0].resolve() == src.read_series()[0].resolve()     # 0001 as it is
    assert series[1].parent == PATCH_DIR / "6.1"                      # 0002 rebased


def test_a_versions_fragment_replaces_the_default_one(tmp_path):
    for name, text in (("base", "CONFIG_A=y\n"), ("4k-48", "# kind: geometry\nCONFIG_G=y\n"),
                       ("leak", "CONFIG_L=y\n")):
        (tmp_path / f"{name}.config").write_text(text)
    (tmp_path / "6.1").mkdir()
    (tmp_path / "6.1" / "leak.config").write_text("CONFIG_L=y\nCONFIG_L61=y\n")
    frags = kconfig.resolve_fragments(["leak"], tmp_path, version="6.1")
    assert [f.name for f in frags] == ["base", "4k-48", "leak"]
    assert kconfig.merge(frags)["CONFIG_L61"] == "y"
    assert "CONFIG_L61" not in kconfig.merge(kconfig.resolve_fragments(["leak"], tmp_path,
                                                                       version="6.12"))


def test_gather_inputs_takes_the_trees_series(tmp_path, monkeypatch):
    tree = fake_tree(tmp_path / "linux")
    monkeypatch.setattr(kernel, "toolchain_version", lambda llvm=False: "gcc 12")
    monkeypatch.setattr(kernel.applied, "series_to_apply", lambda source, paths: paths)
    inputs = kernel.gather_inputs(kernel.BuildRequest(kernel_src=str(tree)))
    assert [p.path.parent for p in inputs.patches] == [PATCH_DIR, PATCH_DIR / "6.1"]
    (tree / "Makefile").write_text("VERSION = 6\nPATCHLEVEL = 12\n")
    inputs = kernel.gather_inputs(kernel.BuildRequest(kernel_src=str(tree)))
    assert [p.path for p in inputs.patches] == [p.resolve() for p in src.read_series()]


def test_a_geometry_the_version_cannot_have_stops_before_the_build(tmp_path, monkeypatch):
    tree = fake_tree(tmp_path / "linux")
    monkeypatch.setattr(kernel, "toolchain_version", lambda llvm=False: "gcc 12")
    with pytest.raises(versions.NotApplicable, match="4k-52 is not applicable on 6.1: 52-bit"):
        kernel.gather_inputs(kernel.BuildRequest(kernel_src=str(tree), configs=("4k-52",)))
    assert versions.not_applicable("6.12", "geometry", "4k-52") == ""
    # every entry names a geometry or method that exists
    for (_version, kind, name) in versions.NOT_APPLICABLE:
        assert kind in ("geometry", "method")
        if kind == "geometry":
            assert (CONFIG_DIR / f"{name}.config").is_file()


def test_a_foreign_patch_is_not_applicable_only_off_its_own_version():
    e = PatchError("patch /x/patches/repro/0005-free.patch does not apply: "
                   "arch/arm64/mm/mmu.c hunk #1 (at line 900)", step="patch")
    na = versions.foreign_patch("6.1", e, ["/x/patches/repro/0005-free.patch"])
    assert isinstance(na, versions.NotApplicable)
    assert na.message.startswith("not applicable on 6.1: patch ") and "6.12" in na.message
    assert versions.foreign_patch("6.12", e, ["/x/patches/repro/0005-free.patch"]) is None
    assert versions.foreign_patch("6.1", e, ["/x/other.patch"]) is None    # the series'
    assert versions.foreign_patch("6.1", HarnessError("make", step="build"),
                                  ["/x/patches/repro/0005-free.patch"]) is None


# ------------------------------------------------------------ the axis -----

def test_parse_sources():
    assert versions.parse_sources("debian,debian-6.1") == ["debian", "debian-6.1"]
    assert versions.parse_sources(" debian , debian ,/t/linux") == ["debian", "/t/linux"]
    with pytest.raises(HarnessError):
        versions.parse_sources(" , ")


STALE_METHOD = {"method": "probe", "verdict": "PASS", "checks": [], "steps": [], "run": {}}


def test_matrix_over_two_sources(tmp_path, monkeypatch):
    calls = []

    def run_to_report(kernel_src, configs, patches, append, methods, cycles, folder,
                      order_check="on", series=True, cpu="max"):
        calls.append((kernel_src, configs, folder.relative_to(tmp_path)))
        if kernel_src == "debian-6.1" and configs == ("4k-52",):
            raise versions.NotApplicable("geometry 4k-52 is not applicable on 6.1: LPA2",
                                         step="config")
        folder.mkdir(parents=True)
        return {"methods": [dict(STALE_METHOD, method=m) for m in methods]}
    from harness.cli import run as cli_run
    monkeypatch.setattr(cli_run, "run_to_report", run_to_report)
    code = main(["matrix", "--kernel-src", "debian,debian-6.1", "--geometry", "4k-48,4k-52",
                 "--method", "probe", "--report", str(tmp_path / "m"), "--json"])
    assert code == 0
    assert [(s, g, str(f)) for s, g, f in calls] == [
        ("debian", ("4k-48",), "m/debian/4k-48"), ("debian", ("4k-52",), "m/debian/4k-52"),
        ("debian-6.1", ("4k-48",), "m/debian-6.1/4k-48"),
        ("debian-6.1", ("4k-52",), "m/debian-6.1/4k-52")]
    cells = geomatrix.from_json(json.loads((tmp_path / "m" / "matrix.json").read_text()))
    assert [(c.row, c.status) for c in cells] == [
        ("4k-48 @debian", "PASS"), ("4k-52 @debian", "PASS"),
        ("4k-48 @debian-6.1", "PASS"), ("4k-52 @debian-6.1", "N/A")]
    text = (tmp_path / "m" / "matrix.txt").read_text()
    assert "4k-52 @debian-6.1" in text and "not applicable: geometry 4k-52" in text
    table = geomatrix.matrix_markdown(cells)
    assert "- N/A 4k-52 @debian-6.1: geometry 4k-52 is not applicable on 6.1: LPA2" in table


def test_one_source_keeps_the_plain_rows(tmp_path):
    cells = geomatrix.run_matrix(["4k-48"], ("probe",), tmp_path,
                                 lambda c, m, f: {"methods": [STALE_METHOD]})
    assert cells[0].row == "4k-48" and cells[0].folder == "4k-48" and cells[0].source == ""


def test_repro_over_two_sources(tmp_path, monkeypatch):
    reg = tmp_path / "0005-x.patch"
    reg.write_text("Subject: x\n\nRepro-Point: p\nRepro-Methods: probe\n"
                   "Repro-Expect: tables-freed\n---\n")
    monkeypatch.setattr(repro, "discover", lambda names, *a: [repro.load(reg)])

    def run_to_report(kernel_src, configs, patches, append, methods, cycles, folder,
                      series=True, cpu="max"):
        if patches and kernel_src == "debian-6.1":
            raise PatchError(f"patch {patches[0]} does not apply: mm/x.c hunk #1",
                             step="patch")
        failed = "FAIL" if patches else "PASS"
        return {"exit_code": 1 if patches else 0, "methods": [
            {"method": "probe", "run": {}, "checks": [
                {"name": "tables-freed", "verdict": failed, "evidence": "e"}]}]}
    from harness.cli import run as cli_run
    monkeypatch.setattr(cli_run, "run_to_report", run_to_report)
    monkeypatch.setattr(versions, "tree_version",
                        lambda source: "6.1" if "6.1" in str(source) else "6.12")
    monkeypatch.setattr(src, "resolve_source", lambda spec: SimpleNamespace(
        path=spec))
    code = main(["repro", "--all", "--kernel-src", "debian,debian-6.1",
                 "--report", str(tmp_path / "r"), "--json"])
    data = json.loads((tmp_path / "r" / "matrix.json").read_text())
    got = [(r["name"], r["source"], r["status"]) for r in data["rows"]]
    assert got == [("clean 4k-48 probe", "debian", "clean"), ("0005-x", "debian", "caught"),
                   ("clean 4k-48 probe", "debian-6.1", "clean"),
                   ("0005-x", "debian-6.1", "n/a")]
    assert code == 0
    rows = repro.rows_from_json(data)
    assert "0005-x @debian-6.1" in repro.matrix_text(rows)
    assert repro.run_folder(data["rows"][3]) == "debian-6.1/0005-x"


def test_ci_runs_both_sources_and_excludes_what_cannot_work():
    """.github/workflows/ci.yml: the kernel job's source axis (it builds and runs
    each source x geometry) defaults to debian and debian-6.1, and its excludes
    are exactly NOT_APPLICABLE's geometries."""
    import re
    text = (Path(__file__).resolve().parent.parent / ".github" / "workflows"
            / "ci.yml").read_text()
    assert text.count("""inputs.kernel-sources || '["debian", "debian-6.1"]'""") == 1
    assert """default: '["debian", "debian-6.1"]'""" in text
    excluded = re.findall(r"- source: (\S+)\n\s+geometry: (\S+)", text)
    wanted = [(f"debian-{v}", name) for (v, kind, name) in versions.NOT_APPLICABLE
              if kind == "geometry"]
    assert sorted(excluded) == sorted(wanted)          # one job builds and runs
    assert "KERNEL_SRC: ${{ matrix.source }}" in text
    for name in ("debian", "debian-6.1"):
        assert versions.debian_source(name) is not None


# ------------------------------------------------ what 6.1 lays out otherwise

def test_kernel_code_starts_at_text_in_612_and_stext_in_61():
    """/proc/iomem's "Kernel code" is [__pa(_text), __pa(__init_begin)) in 6.12
    and [__pa(_stext), ...) in 6.1: the walker pairs the right symbol's VA with
    it (else swapper_pg_dir is read 64 KiB off)."""
    from harness.drive.phases import kernel_code_va
    from harness.kernel.layout import Geometry, KernelLayout
    syms = {"_text": 0xffff800008000000, "_stext": 0xffff800008010000,
            "__init_begin": 0xffff800008470000}
    lay = KernelLayout(Geometry(4096, 48, 4), 128, syms)
    assert kernel_code_va(lay, (0x40210000, 0x40670000)) == syms["_stext"]      # 6.1
    assert kernel_code_va(lay, (0x40200000, 0x40670000)) == syms["_text"]       # 6.12
    old = KernelLayout(Geometry(4096, 48, 4), 128, {"_text": syms["_text"]})
    assert kernel_code_va(old, (0x40210000, 0x40670000)) == syms["_text"]


def test_the_gdb_agent_gets_ptdumps_vmemmap_end():
    """6.1's VMEMMAP_END is VMEMMAP_START + VMEMMAP_SIZE, not 6.12's -1 GiB:
    the removal's gdb spec carries ptdump's "vmemmap end" to the agent."""
    from harness.inspect import gdb
    spec = gdb.GdbSpec.for_removal(
        "/nonexistent/vmlinux", port=1, out_dir=".", step="remove 0x80000000",
        pa_start=0x80000000, pa_end=0x88000000, backings=(), geometry=(4096, 48, 4, 48),
        root_pa=0x40461000, vmemmap_start=0xfffffc0000000000, flush_check=False,
        vmemmap_end=0xfffffe0000000000)
    assert spec.to_dict()["vmemmap_end"] == 0xfffffe0000000000
    # 2^47 of linear map in 4K pages, 64-byte struct pages: exactly that span
    assert (spec.vmemmap_end - spec.vmemmap_start) // ((1 << 47) >> 12) == 64


RECORDS_61 = """\
Page allocated via order 0, mask 0x0(), pid 1, tgid 1 (swapper/0), ts 95847392 ns, free_ts 0 ns
PFN 262144 type Unmovable Block 256 type Unmovable Flags 0x200(slab|zone=0)
 register_early_stack+0x20/0x40
 init_page_owner+0x3c/0x2c8

Page allocated via order 9, mask 0xcc0(GFP_KERNEL), pid 1, tgid 1 (sh), ts 1 ns, free_ts 0 ns
PFN 524288 type Unmovable Block 1024 type Movable Flags 0x0(zone=1)
Page has been migrated, last migrate reason: compaction
 vmemmap_alloc_block+0x9c/0x138
 vmemmap_populate+0x1a4/0x290
 __populate_section_memmap+0x4c/0x60

Page allocated via order 0, mask 0x0(), pid 1, tgid 1 (swapper/0), ts 95872352 ns, free_ts 0 ns
PFN 262145 type Unmovable Block 256 type Unmovable Flags 0x200(slab|zone=0)
 register_early_stack+0x20/0x40
 init_page_owner+0x3c/0x2c8
"""


def test_page_owner_records_of_61_become_show_stacks():
    """6.1 has no page_owner_stacks/show_stacks (6.10): its per-allocation
    records are summed per stack into show_stacks' form, which the leak check
    reads as it reads 6.12's."""
    from harness.inspect import page_owner
    snap = page_owner.parse(page_owner.from_records(RECORDS_61))
    assert [(s.frames[0], s.nr_base_pages) for s in snap.stacks] == [
        ("register_early_stack+0x20/0x40", 2), ("vmemmap_alloc_block+0x9c/0x138", 512)]
    assert page_owner.category(snap.stacks[1]) == "vmemmap"


def test_leakcheck_reads_61s_page_owner_file():
    from harness.inspect import leakcheck, page_owner
    assert page_owner.SHOW_STACKS in leakcheck._READ and page_owner.RECORDS in leakcheck._READ
    assert leakcheck._READ.index(page_owner.SHOW_STACKS) < \
        leakcheck._READ.index(page_owner.RECORDS + " ]")   # 6.12's when there is one

    class Guest:
        step = "inspect"

        def __init__(self, out):
            self.out = out

        def run(self, cmd, deadline):
            return SimpleNamespace(check=lambda step: SimpleNamespace(stdout=self.out))
    got = leakcheck.collect(Guest(leakcheck.RECORDS_MARK + "\n" + RECORDS_61))
    assert got == page_owner.from_records(RECORDS_61)
    assert leakcheck.collect(Guest("NO-PAGE-OWNER\n")) is None
    assert leakcheck.collect(Guest(" f+0x1/0x2\nnr_base_pages: 1\n\n")) == \
        " f+0x1/0x2\nnr_base_pages: 1\n\n"
