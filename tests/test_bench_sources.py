"""bench/bench_sources.py: its options, the commands it runs per source and
its side-by-side table, with the harness faked (no kernel, no build)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import bench_sources as bs  # noqa: E402
import benchlib as bl  # noqa: E402


def test_defaults_are_both_debian_sources():
    args = bs.parse_args([])
    assert args.kernel_src == "debian,debian-6.1" and not args.cold and args.runs == 3


def test_warm_runs_per_source_and_the_table(monkeypatch, capsys):
    seen = []

    def fake_run(argv, *, env=None, ok=(0,), verbose=False, what=""):
        seen.append([str(a) for a in argv[3:]])
        sub = argv[3]
        wall = 20.0 if "debian-6.1" in argv else 10.0
        out = {"methods": [{"method": "probe", "verdict": "PASS"}]} if sub == "run" else {}
        return bl.Result(list(argv), env or {}, 0, wall, json.dumps(out))
    monkeypatch.setattr(bl, "run", fake_run)
    bl.RESULTS.clear()
    assert bs.main(["--runs", "2", "--guests", "1"]) == 0
    runs = [a for a in seen if a[0] == "run"]
    assert len(runs) == 2 * 3                     # one untimed + 2 per source
    assert runs[0][:3] == ["run", "--kernel-src", "debian"]
    assert "--guests" in runs[0] and runs[-1][2] == "debian-6.1"
    keys = {f["key"]: f["value"] for f in bl.RESULTS}
    assert keys == {"warm_run_debian": 10.0, "warm_run_debian_6_1": 20.0}
    out = capsys.readouterr().out
    assert "debian-6.1" in out and "2.00x" in out     # beside the first source
