"""Build progress where nobody watches a terminal (CI logs).

A fake ``make`` on PATH prints kbuild lines slowly and then goes silent (as
the final link does); with a short interval the periodic progress line must
appear anyway, objects counted against the tree's largest recorded build.
"""
import io
import itertools
import re
import threading

import pytest

from harness.errors import BuildError
from harness.kernel import kernel as build

FAKE_MAKE = """#!/bin/sh
# fake make: six kbuild lines, 0.1 s apart, then a silent stretch, then the link
for f in a b c d e f; do echo "  CC      mm/$f.o"; sleep 0.1; done
echo "warning: not a kbuild line"
sleep {silence}
echo "  LD      vmlinux"
exit {rc}
"""
LINE = re.compile(r"^\[build\] (\d+)(/~?\d+)? objects( \(\d+%\))?, \d+ s elapsed(, last .*)?$")


@pytest.fixture
def fake_make(tmp_path, monkeypatch, private_cache):
    """Returns make(silence, rc, interval, clock) -> (Make, stderr lines, exc)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    outdir = tmp_path / "o"
    outdir.mkdir()

    def run(capsys, silence=0.6, rc=0, interval=0.1, clock=None, progress=None):
        script = bin_dir / "make"
        script.write_text(FAKE_MAKE.format(silence=silence, rc=rc))
        script.chmod(0o755)
        kw = {"clock": clock} if clock else {}
        maker = build.Make(tmp_path, outdir, build.BuildRequest(jobs=1), progress,
                           interval=interval, **kw)
        error = None
        try:
            maker.build_image()
        except BuildError as e:
            error = e
        err = capsys.readouterr().err
        run.err = err
        return maker, [l for l in err.splitlines() if l.startswith("[build]")], error

    return run


def test_periodic_lines_without_a_terminal(fake_make, capsys):
    # progress=None (the default): isatty() decides; under pytest stderr is no
    # terminal, as in CI
    maker, lines, error = fake_make(capsys)
    assert error is None
    ticks = [l for l in lines if "make finished" not in l]
    assert len(ticks) >= 3, lines             # ~1.2 s of make at a 0.1 s interval
    for l in ticks:
        assert LINE.match(l), l
    assert not any("\r" in l or "\033" in l for l in lines)   # plain lines for a log
    # the silent stretch is reported: 6 objects done, the last one named
    assert any(l.startswith("[build] 6/~1300 objects (0%)") and
               l.endswith("last CC mm/f.o") for l in ticks), ticks
    assert re.match(r"\[build\] make finished: 7 objects in \d+ s$", lines[-1])
    # the largest build is recorded and is the next build's yardstick
    assert (maker.outdir / ".harness-steps").read_text() == "7"
    _, lines, _ = fake_make(capsys, silence=0.3)
    assert any(re.match(r"\[build\] 6/7 objects \(85%\)", l) for l in lines), lines


def test_elapsed_comes_from_the_injected_clock(fake_make, capsys):
    ticks = itertools.count(0, 30)            # each reading 30 s after the last
    _, lines, _ = fake_make(capsys, silence=0.3, clock=lambda: next(ticks))
    elapsed = [int(m.group(1)) for l in lines
               for m in [re.search(r", (\d+) s elapsed", l)] if m]
    assert elapsed and all(e % 30 == 0 and e > 0 for e in elapsed)
    assert elapsed == sorted(elapsed)


def test_a_failed_make_stops_the_ticker(fake_make, capsys):
    _, lines, error = fake_make(capsys, silence=0.2, rc=2)
    assert error is not None and "make exit 2" in str(error)
    assert not [t for t in threading.enumerate() if t.name == "build-progress"]
    assert lines  # progress was shown up to the failure


def test_live_terminal_line_is_redrawn(fake_make, capsys):
    fake_make(capsys, silence=0.2, progress=True)
    err = fake_make.err
    # one physical line, redrawn with \r at each object; no "make finished" line
    build_part = err[err.index("\r\033[K[build]"):]
    assert build_part.count("\n") == 1 and build_part.endswith("\n")
    assert "\r\033[K[build] 7/~1300 objects (0%)" in build_part
    assert "make finished" not in err


def test_line_format_with_a_fake_clock():
    now = [100.0]
    out = io.StringIO()
    p = build.BuildProgress(10, clock=lambda: now[0], interval=60, stream=out)
    assert p.line() == "[build] 0/10 objects (0%), 0 s elapsed"
    for name in "abc":
        p.step("CC", f"mm/{name}.o")
    now[0] += 45
    assert p.line() == "[build] 3/10 objects (30%), 45 s elapsed, last CC mm/c.o"
    p.tick()
    assert out.getvalue() == p.line() + "\n"
    est = build.BuildProgress(5, estimated=True, clock=lambda: 0.0)
    for _ in range(7):
        est.step("CC", "x.o")
    # past the estimate: the count alone, never "7/~5" (over 100 %) nor a bogus %
    assert est.line() == "[build] 7 objects, 0 s elapsed, last CC x.o"
    exact = build.BuildProgress(3, clock=lambda: 0.0)
    for _ in range(3):
        exact.step("CC", "x.o")
    assert exact.line() == "[build] 3/3 objects, 0 s elapsed, last CC x.o"
    exact.step("LD", "vmlinux")
    assert exact.line() == "[build] 4 objects, 0 s elapsed, last LD vmlinux"


def test_default_interval_is_under_the_ci_bound():
    assert 0 < build.PROGRESS_INTERVAL <= 30


def test_quiet_build_prints_no_progress_but_records_the_yardstick(fake_make, capsys):
    maker, lines, error = fake_make(capsys, silence=0.3, progress=False)   # -q
    assert error is None and lines == [] and "[build]" not in fake_make.err
    assert (maker.outdir / ".harness-steps").read_text() == "7"
    assert not [t for t in threading.enumerate() if t.name == "build-progress"]
