"""Cost of the free-time ordering checks on a real removal (and the recorder of
tests/data/order-*.jsonl).

Boots the kernel directly (DT) with ``-m 2048M`` and ``mem=1024M`` plus a QEMU
gdbstub, probes 0x80000000, onlines it movable, offlines it, then removes it
through ``/sys/devices/system/memory/remove`` with gdb attached
(``harness.inspect.gdb.attach``), and prints: stops per removal, the removal's wall
time with and without gdb, attach/detach time, walk cost per stop, and both
checks' verdicts. ``--no-gdb`` times the same removal without gdb.

Run: .venv/bin/python bench/bench_order.py [--rodata-full]
         [--patch FILE]... [--no-flush-check] [--no-gdb] [--record FILE --note TEXT]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.inspect import gdb, order, ptdump, sysfs  # noqa: E402
from harness.inspect import walker as walk_mod  # noqa: E402
from harness.kernel import kernel as build  # noqa: E402
from harness.machine.qemu import RAM_BASE, free_port  # noqa: E402
from harness.session import BootOptions, boot  # noqa: E402

MEMROOT = "/sys/devices/system/memory"
ADDR = 0x80000000


def removal_context(guest, art):
    """What the engine needs from the guest before a removal: geometry, the
    PA of swapper_pg_dir and VMEMMAP_START (from ptdump's marker)."""
    lay = art.layout
    iomem = guest.check("cat /proc/iomem")
    root = walk_mod.kimage_pa(lay.symbol("swapper_pg_dir"), lay.symbol("_text"),
                              sysfs.kernel_code(iomem)[0])
    geo = lay.geometry
    snap = ptdump.parse(guest.check("cat /sys/kernel/debug/kernel_page_tables", 60))
    vmemmap = snap.regions["vmemmap"].entries[0].start
    return geo, root, vmemmap


def one_run(art, rodata_full: bool, use_gdb: bool, flush_check: bool, out: Path,
            say) -> dict:
    port = free_port()
    cmdline = ("mem=1024M",) + (("rodata=full",) if rodata_full else ())
    opts = BootOptions(mode="dt", mem_mb=2048, cmdline=cmdline,
                       devices=("-gdb", f"tcp:127.0.0.1:{port}"))
    res = {"rodata_full": rodata_full, "gdb": use_gdb, "flush_check": flush_check,
           "kernel": art.cache_key, "patches": [p[0] for p in art.patches]}
    with boot(art, opts, out, progress=False) as guest:
        bs = int(guest.check(f"cat {MEMROOT}/block_size_bytes").strip(), 16)
        idx = ADDR // bs
        for cmd in (f"echo {ADDR:#x} > {MEMROOT}/probe",
                    f"echo online_movable > {MEMROOT}/memory{idx}/state",
                    f"echo offline > {MEMROOT}/memory{idx}/state"):
            guest.check(cmd, 120)
        geo, root, vmemmap = removal_context(guest, art)
        spec = gdb.GdbSpec.for_removal(
            art.vmlinux, port=port, out_dir=out, step=f"remove {ADDR:#x}",
            pa_start=ADDR, pa_end=ADDR + bs,
            backings=[(RAM_BASE, guest.machine.spec.ram_path)], geometry=geo,
            root_pa=root, vmemmap_start=vmemmap, flush_check=flush_check)
        remove = f"echo {ADDR:#x} > {MEMROOT}/remove"
        if use_gdb:
            t0 = time.monotonic()
            with gdb.attach(spec, progress=say) as session:
                t1 = time.monotonic()
                guest.check(remove, 600)
                res["remove_s"] = round(time.monotonic() - t1, 3)
            res["with_attach_detach_s"] = round(time.monotonic() - t0, 3)
            res["stats"] = session.stats
            verdicts = [rule(session.events, spec.step) for rule in order.RULES.values()]
            res["checks"] = {v.check: {"verdict": v.verdict, "counts": v.counts,
                                       "evidence": v.evidence.splitlines()[:4]}
                             for v in verdicts}
            res["events_path"] = spec.events_path
            res["lines"] = session.lines
            # the guest runs on after detach
            t2 = time.monotonic()
            res["after_detach_uname"] = guest.check("uname -r", 20).strip()
            res["after_detach_cmd_s"] = round(time.monotonic() - t2, 3)
            status = guest.machine.qmp_cmd("query-status")
            res["after_detach_status"] = status.get("status")
        else:
            t1 = time.monotonic()
            guest.check(remove, 600)
            res["remove_s"] = round(time.monotonic() - t1, 3)
        res["tail"] = guest.check("cat /sys/kernel/debug/kernel_page_tables | "
                                  "grep -c ' PTE ' ; dmesg | tail -3", 60)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rodata-full", action="store_true")
    ap.add_argument("--patch", action="append", default=[])
    ap.add_argument("--no-gdb", action="store_true")
    ap.add_argument("--no-flush-check", action="store_true")
    ap.add_argument("--record", help="write the event stream here (JSON lines)")
    ap.add_argument("--note", default="", help="how the recording was made (header)")
    ap.add_argument("--expect", default="{}", help="JSON counts the test must see")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    art = build.build(build.BuildRequest(patches=tuple(args.patch)))
    say = lambda line: print(line, file=sys.stderr)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="bench-order-") as tmp:
        res = one_run(art, args.rodata_full, not args.no_gdb, not args.no_flush_check,
                      Path(tmp), say)
        if args.record and res.get("lines") is not None:
            head = {"kind": "recording", "step": f"remove {ADDR:#x}",
                    "how": args.note or " ".join(sys.argv),
                    "command": ".venv/bin/python " + " ".join(
                        str(Path(a).resolve().relative_to(Path.cwd()))
                        if Path(a).is_absolute() and Path(a).resolve().is_relative_to(
                            Path.cwd()) else a for a in sys.argv),
                    "rodata_full": args.rodata_full,
                    "patches": [Path(p).name for p in args.patch],
                    "patch_text": {Path(p).name: Path(p).read_text() for p in args.patch},
                    "kernel_release": art.kernel_release,
                    "expect": json.loads(args.expect)}
            with open(args.record, "w") as f:
                f.write(json.dumps(head) + "\n")
                for d in res["lines"]:
                    f.write(json.dumps(d) + "\n")
    res.pop("lines", None)
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        s = res.get("stats", {})
        shape = "page-mapped (rodata=full)" if args.rodata_full else "block-mapped"
        print(f"shape: {shape}; patches: {res['patches'] or 'none'}; gdb: {res['gdb']}; "
              f"flush check: {res['flush_check']}")
        print(f"remove wall: {res['remove_s']} s"
              + (f"; with attach+detach {res['with_attach_detach_s']} s "
                 f"(attach {s.get('attach_s')} s, detach {s.get('detach_s')} s)"
                 if res["gdb"] else ""))
        if res["gdb"]:
            print(f"stops: {s.get('stops')} (frees {s.get('frees')}, dup __free_pages "
                  f"{s.get('free_dups')}, clears {s.get('clears')}, tlbi "
                  f"{s.get('tlbi_stops')}, other {s.get('other_stops')}); watchpoints "
                  f"{s.get('watchpoints')}, tlbi sites {s.get('tlbi_sites')}, toggles "
                  f"{s.get('tlbi_toggles')}")
            print(f"walk per stop: mean {s.get('walk_ms_mean')} ms, max "
                  f"{s.get('walk_ms_max')} ms; agent handler total {s.get('handler_s')} s; "
                  f"sizeof(struct page) {s.get('struct_page_size')} "
                  f"({s.get('struct_page_size_from')})")
            for name, c in res["checks"].items():
                print(f"{name}: {c['verdict']} {c['counts']}")
                for line in c["evidence"]:
                    print("    " + line)
            print(f"after detach: uname {res['after_detach_uname']} in "
                  f"{res['after_detach_cmd_s']} s, QMP status {res['after_detach_status']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
