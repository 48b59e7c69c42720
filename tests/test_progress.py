"""The one progress printer (harness.progress): levels, stage prefixes, and
injection (a test or an embedding program installs its own printer)."""
from __future__ import annotations

import io
import logging

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
    from harness.kernel import kernel as build
    build.cache_message("x/Image is missing: rebuilding")
    assert recording.lines[-1] == (progress.QUIET, "cache", "x/Image is missing: rebuilding")


# ------------------------------------------------------------ logging

@pytest.fixture
def logging_sink():
    """The default sink (logging) at NORMAL, restored afterwards."""
    old = progress.install(progress.LoggingSink())
    progress.attach()
    progress.set_level(progress.NORMAL)
    yield
    progress.install(old)
    progress.attach()
    progress.set_level(progress.NORMAL)


def test_lines_are_records_of_harness_stage_loggers(logging_sink, caplog, capsys):
    """caplog (or an embedding program's handler) gets every line as a record of
    harness.<stage>, at WARNING/INFO/DEBUG, with its stage and the thread's label;
    stderr gets the same [stage] text lines as before."""
    caplog.set_level(logging.DEBUG, logger="harness")
    with progress.labelled("probe"):
        progress.info("booting (dt)", "machine")
        progress.detail("ssh$ ls")
    progress.warn("waiting for x.lock", "build")
    progress.info("no stage")
    got = [(r.name, r.levelno, r.getMessage(), r.stage, r.label) for r in caplog.records]
    assert got == [("harness.machine", logging.INFO, "booting (dt)", "machine", "probe"),
                   ("harness", logging.DEBUG, "ssh$ ls", "", "probe"),
                   ("harness.build", logging.WARNING, "waiting for x.lock", "build", None),
                   ("harness", logging.INFO, "no stage", "", None)]
    # the CLI's handler keeps its own level (NORMAL): no DEBUG line on stderr
    assert capsys.readouterr().err == ("[probe] [machine] booting (dt)\n"
                                       "[build] waiting for x.lock\nno stage\n")


def test_levels_map_to_the_logger_and_the_handler(logging_sink, capsys):
    progress.set_level(progress.QUIET)
    assert progress.quiet() and logging.getLogger("harness").level == logging.WARNING
    assert progress.handler().level == logging.WARNING
    progress.info("hidden", "build")
    progress.warn("shown", "cache")
    progress.set_level(progress.VERBOSE)
    assert progress.verbose() and progress.level() == progress.VERBOSE
    progress.detail("console| hi")
    assert capsys.readouterr().err == "[cache] shown\nconsole| hi\n"


def test_an_embedding_program_handles_the_records_itself(logging_sink, capsys):
    seen = []

    class Mine(logging.Handler):
        def emit(self, record):
            seen.append(f"{record.name}: {record.getMessage()}")
    mine = Mine()
    progress.detach()
    logging.getLogger("harness").addHandler(mine)
    try:
        progress.stage("cache").info("hit abc")
        logging.getLogger("harness.source").info("a record logged directly")
    finally:
        logging.getLogger("harness").removeHandler(mine)
        progress.attach()
    assert seen == ["harness.cache: hit abc", "harness.source: a record logged directly"]
    assert capsys.readouterr().err == ""           # the harness's handler was off


def test_formatter_names_the_stage_of_a_direct_record():
    fmt = progress.StageFormatter()
    record = logging.LogRecord("harness.guest-image", logging.INFO, __file__, 1,
                               "built %s", ("x.cpio",), None)
    assert fmt.format(record) == "[guest-image] built x.cpio"
    record = logging.LogRecord("harness", logging.INFO, __file__, 1, "plain", (), None)
    assert fmt.format(record) == "plain"


def test_cli_output_unchanged(tmp_path, capsys):
    """A command's stderr through logging is what the printer printed: the
    report command's [kcidb] line, -q silencing it."""
    import json
    import shutil
    from pathlib import Path

    from harness import cli
    data = Path(__file__).resolve().parent / "data" / "recorded-run-0002-stale-linear-map"
    shutil.copytree(data, tmp_path / "r")
    out = tmp_path / "k.json"
    assert cli.main(["report", str(tmp_path / "r"), "--kcidb", str(out)]) == 1
    err = capsys.readouterr().err
    doc = json.loads(out.read_text())
    assert err == (f"[kcidb] {out}: 1 checkout(s), 1 build(s), "
                   f"{len(doc['tests'])} test(s)\n")
    assert cli.main(["-q", "report", str(tmp_path / "r"), "--kcidb", str(out)]) == 1
    assert capsys.readouterr().err == ""
    progress.set_level(progress.NORMAL)
