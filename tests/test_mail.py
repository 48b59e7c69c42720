"""report DIR --mail / run --mail: the reply block, on recorded runs
(tests/data/recorded-*): Tested-by only on PASS, failing checks named with their
first evidence line, checks that could not look named "could not check", the
series' Subjects and the commit; wrapped at 72 columns. The last test runs the
probe method twice (clean, then a seeded regression) under QEMU."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import DATA, ROOT

from harness.cli import main
from harness.records import MethodRun
from harness.verdict import checks, mail, report

KERNEL = {"source": "tarball:/usr/src/linux-source-6.12.tar.xz@585a4a074597aefa",
          "patches": [["0001-arm64-Kconfig-allow-the-memory-probe-sysfs-interface.patch",
                       "d7" * 32],
                      ["0001-arm64-mm-one.patch", "aa" * 32],
                      ["0002-arm64-mm-two.patch", "bb" * 32]],
          "series": [{"name": "0001-arm64-mm-one.patch", "part": "1/2",
                      "subject": "arm64/mm: one", "from": "v2.mbx"},
                     {"name": "0002-arm64-mm-two.patch", "part": "2/2",
                      "subject": "arm64/mm: two, with a subject long enough to wrap "
                                 "past the seventy-second column", "from": "v2.mbx"}],
          "config_digest": "c0ffee", "cache_key": "0123456789abcdef" * 4,
          "release": "6.12.117", "fragments": ["base", "4k-48"]}
ME = "Ann Author <ann@example.org>"


def recorded(path: str) -> MethodRun:
    return MethodRun.from_dict(json.loads((DATA / path).read_text()))


def make_report(*runs: MethodRun, kernel=None) -> dict:
    return report.build_report(kernel or KERNEL, list(runs))


def assert_wrapped(text: str) -> None:
    long = [line for line in text.splitlines() if len(line) > 72 and " " in line.strip()]
    assert not long, long


def test_a_pass_gets_the_trailer_and_says_what_was_tested():
    text = mail.render(make_report(recorded("recorded-4k-48-probe/probe.json"),
                                   recorded("recorded-4k-48-acpi-dimm/methodrun.json")), ME)
    assert text.rstrip().endswith(f"Tested-by: {ME}")
    assert "Kernel:    6.12.117, linux-source-6.12.tar.xz (sha256 585a4a074597aefa)" in text
    assert "Patches:\n  0001-arm64-Kconfig-allow-the-memory-probe-sysfs-interface.patch\n" \
        "Series:" in text
    # the series by Subject, not by file name; the folded line stays in its column
    assert "Series:    [1/2] arm64/mm: one\n           [2/2] arm64/mm: two, with" in text
    assert "0001-arm64-mm-one.patch" not in text
    assert "Config:    base + 4k-48: 4K pages, 48-bit VA, 4 levels" in text
    assert "Scenarios: probe (1 cycle, 2 removals)" in text
    assert "Result:    PASS" in text
    assert "FAIL" not in text and "Could not check" not in text
    assert_wrapped(text)


def test_a_fail_names_the_check_and_its_evidence_and_has_no_trailer():
    data = make_report(recorded("recorded-4k-48-probe/probe.json"),
                       recorded("recorded-repro/acpi-dimm-0003-stale-vmemmap.json"))
    text = mail.render(data, ME)
    assert "Tested-by" not in text
    assert "Result:    FAIL" in text
    assert "FAIL: acpi-dimm, no-stale-vmemmap" in text
    assert "FAIL: acpi-dimm, tables-freed" in text
    evidence = next(c for m in data["methods"] for c in m["checks"]
                    if c["name"] == "no-stale-vmemmap")["evidence"]
    first_words = evidence.split("\n", 1)[0].split()[:4]
    block = text.split("FAIL: acpi-dimm, no-stale-vmemmap", 1)[1]
    assert " ".join(first_words) in " ".join(block.split()[:12])
    assert "FAIL: probe" not in text          # the method that passed is not a failure
    assert_wrapped(text)


def test_a_check_that_could_not_look_is_not_a_failure():
    run = recorded("recorded-4k-48-probe/probe.json")
    run = dataclasses.replace(run, required=tuple(run.required) + ("kselftest",))
    assert any(c.verdict == "ERROR" for c in checks.judge(run))
    text = mail.render(make_report(run), ME)
    assert "Could not check: probe, kselftest" in text
    assert "FAIL" not in text and "Tested-by" not in text
    assert "Result:    could not be judged (ERROR" in text


def test_the_recorded_run_folder_with_a_splat(tmp_path, capsys):
    folder = tmp_path / "r"
    shutil.copytree(DATA / "recorded-run-0002-stale-linear-map", folder)
    code = main(["report", str(folder), "--mail", "--tested-by", ME])
    out = capsys.readouterr().out
    assert code == 1
    assert out.startswith("Tested with hotplug-harness")
    assert "FAIL: acpi-dimm, no-kernel-splat (step remove dimm1):\n    2 kernel reports" in out
    assert "FAIL: acpi-dimm, the run stopped in step remove dimm1:" in out
    assert "Tested-by" not in out
    assert_wrapped(out)


def test_a_commit_is_named_when_the_tree_is_a_git_tree(tmp_path):
    tree = tmp_path / "linux"
    (tree / "arch" / "arm64").mkdir(parents=True)
    (tree / "Makefile").write_text("all:\n")
    env = dict(os.environ, GIT_AUTHOR_NAME="A", GIT_AUTHOR_EMAIL="a@example.org",
               GIT_COMMITTER_NAME="A", GIT_COMMITTER_EMAIL="a@example.org")
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "arm64: mm: the fix"]):
        subprocess.run(["git", "-C", str(tree), *args], check=True, env=env)
    commit = mail.git_commit(f"dir:{tree}@0123456789abcdef")
    assert commit and commit["subject"] == "arm64: mm: the fix" and not commit["dirty"]
    (tree / "Makefile").write_text("all: x\n")
    commit = mail.git_commit(f"dir:{tree}@0123456789abcdef")
    assert commit["dirty"]
    # a folder inside someone else's git tree is not a commit of the kernel
    (tree / "arch" / "arm64" / "Makefile").write_text("\n")
    assert mail.git_commit(f"dir:{tree / 'arch'}@0123456789abcdef") is None
    assert mail.git_commit(KERNEL["source"]) is None
    kernel = dict(KERNEL, source=f"dir:{tree}@0123456789abcdef", commit=commit)
    text = mail.render(make_report(recorded("recorded-4k-48-probe/probe.json"),
                                   kernel=kernel), ME)
    assert f'Kernel: 6.12.117, commit {commit["sha"][:12]} ("arm64: mm: the fix"), ' \
           "with local changes" in " ".join(text.split())
    assert f"commit {commit['sha'][:12]} with local changes" in report._kernel_line(kernel)


def test_the_trailer_name_comes_from_git_config_or_the_option(tmp_path, monkeypatch):
    config = tmp_path / "gitconfig"
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.chdir(tmp_path)                  # not inside a repository
    assert mail.tested_by() is None
    passed = make_report(recorded("recorded-4k-48-probe/probe.json"))
    text = mail.render(passed, mail.tested_by())
    assert "Tested-by:" not in text
    assert "set git config user.name and user.email, or give --tested-by" in " ".join(
        text.split())
    config.write_text("[user]\n\tname = Git Person\n\temail = git@example.org\n")
    assert mail.tested_by() == "Git Person <git@example.org>"
    assert mail.tested_by("  Ann   Author <ann@example.org> ") == ME
    for bad in ("Ann Author", "<ann@example.org>", "Ann <ann>"):
        with pytest.raises(ValueError):
            mail.tested_by(bad)


def test_run_and_report_take_mail_and_tested_by():
    from harness.cli import parser
    args = parser().parse_args(["run", "--method", "probe", "--mail", "--tested-by", ME])
    assert args.mail and args.tested_by == ME
    args = parser().parse_args(["report", "DIR", "--mail"])
    assert args.mail and args.tested_by is None


# --------------------------------------------------------- kernel + QEMU ----

FAILING = "patches/repro/0020-bootmem-offline-allowed.patch"   # bootmem-not-removable


@pytest.mark.kernel
@pytest.mark.qemu
def test_probe_pass_gets_tested_by_and_a_seeded_regression_does_not(tmp_path):
    """run --method probe twice (order checks off: quick), then report --mail on
    each folder: the clean kernel's reply ends with the trailer, the seeded
    regression's names bootmem-not-removable and has none."""
    base = [sys.executable, "-m", "harness.cli"]
    replies = {}
    for name, extra, code in (("clean", [], 0), ("bootmem", ["--patch", FAILING], 1)):
        folder = tmp_path / name
        proc = subprocess.run(base + ["run", "--method", "probe", "--order-check", "off",
                                      "--report", str(folder), "-q", *extra],
                              cwd=ROOT, capture_output=True, text=True, timeout=3600)
        assert proc.returncode == code, proc.stdout[-3000:] + proc.stderr[-3000:]
        proc = subprocess.run(base + ["report", str(folder), "--mail", "--tested-by", ME],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == code, proc.stderr[-3000:]
        replies[name] = proc.stdout
    assert replies["clean"].rstrip().endswith(f"Tested-by: {ME}")
    assert "Result:    PASS" in replies["clean"]
    assert "Tested-by" not in replies["bootmem"]
    assert "FAIL: probe, bootmem-not-removable" in replies["bootmem"]
    assert "0020-bootmem-offline-allowed.patch" in replies["bootmem"]
    for text in replies.values():
        assert "Scenarios: probe (1 cycle, " in text and "ordering checks off" in text
        assert_wrapped(text)
