"""An example user test (the pytest plugin's fixtures): probe one hidden block,
online it, offline and remove it, and judge the removal with the harness's checks.

    .venv/bin/python -m pytest examples/ [--hh-patch my-fix.patch] [--hh-config 64k-42]
"""
import pytest

pytestmark = [pytest.mark.kernel, pytest.mark.qemu]


def test_probe_online_remove_one_block(hh_guest):
    g = hh_guest(method="probe")             # DT boot, 1 GiB hidden with mem=, rodata=full
    before = g.phase("before")
    addr, size = max(end for _, end in before.system_ram), g.block_size()
    block = f"/sys/devices/system/memory/memory{addr // size}"
    g.step("probe", f"echo {addr:#x} > /sys/devices/system/memory/probe")
    g.step("online", f"echo online_movable > {block}/state")
    g.phase("online")
    g.step("remove", f"echo {addr:#x} > /sys/devices/system/memory/remove")  # offlines first
    g.removed(g.phase("removed-1").name, addr, addr + size)
    g.assert_pass("no-stale-linear-map", "no-stale-vmemmap", "tables-freed",
                  "online-memory-mapped", "no-kernel-splat")
