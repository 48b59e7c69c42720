"""An example user test (the pytest plugin's fixtures): probe one hidden block,
online it, offline and remove it, and judge the removal with the harness's checks.
Parametrised over the first two hidden blocks: two tests, two guests, which
``pytest -n 2`` (pytest-xdist) runs at the same time.

    .venv/bin/python -m pytest examples/ [-n 2] [--hh-patch my-fix.patch] [--hh-config 64k-42]
"""
import pytest

pytestmark = [pytest.mark.kernel, pytest.mark.qemu]


@pytest.mark.parametrize("nth", [0, 1])              # which hidden block
def test_probe_online_remove_one_block(hh_guest, nth):
    g = hh_guest(method="probe")             # DT boot, 1 GiB hidden with mem=, rodata=full
    before = g.phase("before")
    size = g.block_size()
    addr = max(end for _, end in before.system_ram) + nth * size
    block = f"/sys/devices/system/memory/memory{addr // size}"
    g.step("probe", f"echo {addr:#x} > /sys/devices/system/memory/probe")
    g.step("online", f"echo online_movable > {block}/state")
    g.phase("online")
    g.step("remove", f"echo {addr:#x} > /sys/devices/system/memory/remove")  # offlines first
    g.removed(g.phase("removed-1").name, addr, addr + size)
    g.assert_pass("no-stale-linear-map", "no-stale-vmemmap", "tables-freed",
                  "online-memory-mapped", "no-kernel-splat")
