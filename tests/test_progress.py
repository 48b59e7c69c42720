"""The one progress printer (harness.progress): levels, stage prefixes, and
injection (a test or an embedding program installs its own printer)."""
from __future__ import annotations

import io

import pytest

from harness import progress


@pytest.fixture
def recording():
    rec = progress.Recording(level=progress.NORMAL)
    old = progress.install(rec)
    yield rec
    progress.install(old)


def test_levels_and_stages_go_through_the_installed_printer(recording):
    progress.info("booting (acpi)", "probe")
    progress.detail("ssh$ ls")               # verbose only: dropped at NORMAL
    progress.warn("waiting for another run holding x.lock", "build")
    progress.stage("cache").info("hit abc")
    assert recording.lines == [
        (progress.NORMAL, "probe", "booting (acpi)"),
        (progress.QUIET, "build", "waiting for another run holding x.lock"),
        (progress.NORMAL, "cache", "hit abc")]


def test_set_level_and_queries_act_on_the_installed_printer(recording):
    progress.set_level(progress.QUIET)
    assert progress.quiet() and not progress.verbose() and recording.level == 0
    progress.info("not shown")
    progress.warn("shown", "cache")
    assert recording.lines == [(progress.QUIET, "cache", "shown")]


def test_printer_formats_one_way():
    out = io.StringIO()
    p = progress.Printer(level=progress.NORMAL, stream=out)
    p.emit("make finished", "build")
    p.emit("$ qemu-system-aarch64 ...")
    p.emit("console| hello", "", progress.VERBOSE)
    assert out.getvalue() == "[build] make finished\n$ qemu-system-aarch64 ...\n"


def test_modules_report_through_it(recording, tmp_path):
    """build's cache messages and lock waits, the source unpack note and the
    machine's stale-folder note all reach the installed printer."""
    from harness.build import kernel as build
    build.cache_message("x/Image is missing: rebuilding")
    assert recording.lines[-1] == (progress.QUIET, "cache", "x/Image is missing: rebuilding")
