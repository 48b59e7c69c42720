"""How tests/data/console-oops-copy-page.log was captured (see tests/data/README).

The kernel is the default one plus patches/repro/0004-over-remove-linear-map.patch
(removing a DIMM unmaps one memory block too many: the first block of the DIMM
above it). Booted with ``--mode acpi`` and the serial transport, without the
harness's movable boot memory, so that data written to tmpfs lands in the
hot-added (movable) DIMMs; two adjacent 128 MiB DIMMs are plugged over QMP,
onlined movable and filled, dimm1 is offlined and removed, then offlining dimm2
migrates its pages and copy_page() reads a page whose linear mapping is gone.

    .venv/bin/python tests/data/capture_oops_copy_page.py OUT_DIR
"""
import sys
from pathlib import Path

from harness.kernel import kernel as build
from harness.machine.crashwatch import KernelCrash
from harness.session import BootOptions, boot

ROOT = Path(__file__).resolve().parents[2]
PATCH = ROOT / "patches" / "repro" / "0004-over-remove-linear-map.patch"
SIZE = 128 << 20

out = Path(sys.argv[1])
art = build.build(build.BuildRequest(patches=(str(PATCH),)))

try:
    with boot(art, BootOptions(mode="acpi", transport="serial"), out) as guest:
        m = guest.machine
        addrs = []
        for i in (1, 2):
            m.qmp_cmd("object-add", **{"qom-type": "memory-backend-file", "id": f"mem{i}",
                                       "size": SIZE, "share": True,
                                       "mem-path": f"{m.spec.run_dir}/mem{i}"})
            m.qmp_cmd("device_add", driver="pc-dimm", id=f"dimm{i}", memdev=f"mem{i}")
            addr = next(int(d["data"]["addr"]) for d in m.qmp_cmd("query-memory-devices")
                        if d["data"].get("id") == f"dimm{i}")
            addrs.append(addr)
        block1, block2 = (f"memory{a // SIZE}" for a in addrs)
        guest.run(f"while [ ! -e /sys/devices/system/memory/{block2} ]; do sleep 0.1; done", 30)
        for b in (block1, block2):
            guest.run(f"echo online_movable > /sys/devices/system/memory/{b}/state", 30).check()
        print(guest.run("dd if=/dev/zero of=/tmp/fill bs=1M count=200 2>&1; "
                        "grep -E 'MemFree|Shmem:' /proc/meminfo", 120).check().stdout)
        guest.run(f"echo offline > /sys/devices/system/memory/{block1}/state", 60).check()
        m.qmp_cmd("device_del", id="dimm1")
        m.wait_event("DEVICE_DELETED", {"device": "dimm1"}, 30.0)
        guest.run(f"echo offline > /sys/devices/system/memory/{block2}/state", 60)
except KernelCrash as crash:
    print("kernel crash:", crash.report.summary())
else:
    sys.exit("no crash seen")
print("console.log:", out / "console.log")
