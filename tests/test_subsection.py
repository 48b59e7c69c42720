"""The subsection method (harness.drive.subsection): its QEMU devices, the
namespace listing it reads, and how it tells struct pages mapped. The method
itself runs against real kernels in tests/test_history_real.py (the
d4234d131b0a row and its clean row, make test-history)."""
import subprocess

import pytest

from harness import runner
from harness.drive import subsection
from harness.inspect import ptdump
from harness.session import BootOptions

VMEMMAP = """---[ vmemmap start ]---
0xfffffdffc0000000-0xfffffdffc2000000          32M PMD       RW NX SHD AF        BLK UXN
0xfffffdffc2000000-0xfffffdffc2100000           1M PTE       RW NX SHD AF            UXN
0xfffffdffc2100000-0xfffffdffc2200000           1M PTE
0xfffffdffc2200000-0xfffffe0000000000        1022M PMD
---[ vmemmap end ]---
"""


def test_two_nvdimms_on_an_nvdimm_machine():
    args = subsection.devices(2, 64)
    assert args[:2] == ("-machine", "nvdimm=on")
    assert ("-object", "memory-backend-file,id=nvmem1,size=64M,mem-path={run_dir}/nvdimm1,"
            "share=on") == args[6:8]
    assert args[-2:] == ("-device", "nvdimm,id=nvdimm1,memdev=nvmem1")
    opts = subsection.boot_options(BootOptions(mode="dt", devices=("-x", "y")))
    assert opts.mode == "acpi" and opts.devices[:2] == ("-x", "y")


def test_namespaces_by_address_with_their_driver():
    text = ("namespace1.0 0x84000000 67108864 nd_pmem\n"
            "namespace0.0 0x80000000 67108864 -\n"
            "namespace2.0 junk 1 nd_pmem\nsomething else\n")
    assert subsection.parse_namespaces(text) == [
        ("namespace0.0", 0x80000000, 64 << 20, False),
        ("namespace1.0", 0x84000000, 64 << 20, True)]


def test_the_listing_runs_in_a_shell(tmp_path):
    """LIST against a fake /sys/bus/nd: a bound and an unbound namespace."""
    root = tmp_path / "nd"
    for name, start, bound in (("namespace0.0", "0x80000000", True),
                               ("namespace1.0", "0x84000000", False)):
        ns = root / "devices" / name
        ns.mkdir(parents=True)
        (ns / "resource").write_text(start + "\n")
        (ns / "size").write_text("67108864\n")
        if bound:
            (root / "drivers" / "nd_pmem").mkdir(parents=True, exist_ok=True)
            (ns / "driver").symlink_to(root / "drivers" / "nd_pmem")
    script = subsection.LIST.replace(subsection.NS_ROOT, str(root / "devices"))
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    assert subsection.parse_namespaces(out.stdout) == [
        ("namespace0.0", 0x80000000, 64 << 20, True),
        ("namespace1.0", 0x84000000, 64 << 20, False)]


@pytest.mark.parametrize("va,gap", [
    ((0xfffffdffc2000000, 0xfffffdffc2100000), 0),          # its PTEs
    ((0xfffffdffc1f00000, 0xfffffdffc2100000), 0),          # across the block and PTEs
    ((0xfffffdffc2000000, 0xfffffdffc2200000), 1 << 20),    # half in a hole
    ((0xfffffdffc2200000, 0xfffffdffc2300000), 1 << 20)])   # all in a hole
def test_unmapped_bytes_of_a_struct_page_range(va, gap):
    dump = ptdump.parse(VMEMMAP, strict=False)
    assert subsection.unmapped(dump, va) == gap
    assert subsection.unmapped(None, va) is None


def test_the_method_is_asked_for_by_name_and_runs_without_gdb():
    m = runner.METHODS["subsection"]
    assert m is subsection.METHOD and "subsection" not in runner.ORDER
    assert m.mode == "acpi" and m.order_checks is False
    assert m.required_checks == ("no-stale-linear-map", "no-stale-vmemmap",
                                 "present-struct-pages-mapped", "no-kernel-splat")
