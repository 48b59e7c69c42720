"""Time the serial transport on a real guest (one DT guest, through the Python API).

For each of ``--rounds`` guests (the first may boot and save a snapshot, the
others restore it): the boot figures the session records (boot_to_ssh_s,
restored_s), then over the serial console

  true_ms      one ``true`` round trip (send the framed line, read both markers)
  echo_ms      ``echo hello``
  output_ms    a command printing about 100 KB (``seq 1 20000``)
  upload_ms    a 5 KB command (goes through the base64 upload)

each the median of ``--repeat`` runs, printed as ``LABEL: median (min-max)``.
Run it under the machine's QEMU lock when others share the machine.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.kernel.kernel import BuildRequest, build  # noqa: E402
from harness.session import BootOptions, boot  # noqa: E402

COMMANDS = {
    "true_ms": "true",
    "echo_ms": "echo hello",
    "output_ms": "seq 1 20000",
    "upload_ms": "echo " + "x" * 5000 + " | wc -c",
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="guests (default 3)")
    p.add_argument("--repeat", type=int, default=50, help="runs per command (default 50)")
    args = p.parse_args(argv)
    art = build(BuildRequest())
    figures: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as out, \
                boot(art, BootOptions(mode="dt"), Path(out), progress=False) as guest:
            for key in ("boot_to_ssh_s", "restored_s"):
                if key in guest.times:
                    figures.setdefault(key, []).append(guest.times[key])
            for label, command in COMMANDS.items():
                for _ in range(args.repeat):
                    start = time.perf_counter()
                    guest.console.run(command, 30).check("bench")
                    figures.setdefault(label, []).append(
                        (time.perf_counter() - start) * 1000)
    for label, values in figures.items():
        print(f"{label}: {statistics.median(values):.2f} "
              f"({min(values):.2f}-{max(values):.2f}, n={len(values)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
