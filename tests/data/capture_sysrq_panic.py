"""How tests/data/console-panic-sysrq.log was captured (see tests/data/README).

Boots the default kernel (``hotplug-harness build``) with ``--mode dt`` and the
serial transport, runs ``echo c > /proc/sysrq-trigger`` over the serial console
and keeps the raw console.log in OUT_DIR. Run from the repository root:

    .venv/bin/python tests/data/capture_sysrq_panic.py OUT_DIR
"""
import sys
from pathlib import Path

from harness.kernel import kernel as build
from harness.machine.crashwatch import KernelCrash
from harness.session import BootOptions, boot

out = Path(sys.argv[1])
art = build.build(build.BuildRequest())
try:
    with boot(art, BootOptions(mode="dt", transport="serial"), out) as guest:
        guest.step = "crash"
        guest.run("echo c > /proc/sysrq-trigger", 30)
except KernelCrash as crash:
    print("kernel crash:", crash.report.summary())
else:
    sys.exit("no crash seen")
print("console.log:", out / "console.log")
