"""A real ``git bisect run hotplug-harness bisect-run`` over a small kernel history.

The history is Debian's linux-source-6.12 made a git tree (a hard-linked copy
of the unpacked source the default kernel is built from, so nothing is
unpacked again), with commits on top:

  c1 series   patches/series applied, as in a reviewer's tree (bisect's good end;
              bisect-run finds both patches in the tree and skips them, saying so)
  c2 comment  a comment in mmu.c                                     good
  c3 broken   mmu.c does not compile                                 skip (125)
  c4 fixed    c3 reverted                                            good
  c5 bad      patches/repro/0002 (the linear map of removed memory
              kept): acpi-dimm FAILs no-kernel-splat                 bad (1)
  c6 hang     arch_remove_memory() sleeps forever (the removal
              never returns, the guest runs on): DEVICE_DELETED
              never comes                                            bad (1): a hang

``git bisect start c6 c1; git bisect run ... bisect-run`` must name c5 as the
first bad commit; every commit it visits must get its expected verdict, and
the commits it does not visit among c3 and c6 are run directly, so each kind
is seen once for real (plus ``--hang-is skip`` on c6 and ``--no-series`` on c4).

The tree lives at a fixed place in the harness cache (``test-bisect-history/``)
with fixed commit dates, so a second run finds the same commits, hence the
same work copy and cached kernels: cold, the first run adds the tree to git
(about a minute for 86k files), copies it into its work copy and builds it
once, then each visited commit incrementally; warm, it costs the guest runs.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.kernel, pytest.mark.qemu, pytest.mark.repro]

HISTORY_VERSION = "1"          # change to rebuild the history
MMU = "arch/arm64/mm/mmu.c"
REPRO_BAD = ROOT / "patches" / "repro" / "0002-stale-linear-map.patch"
GIT_ENV = {"GIT_AUTHOR_NAME": "Bisect Test", "GIT_AUTHOR_EMAIL": "bisect@example.invalid",
           "GIT_COMMITTER_NAME": "Bisect Test",
           "GIT_COMMITTER_EMAIL": "bisect@example.invalid",
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}
GIT_OPTS = ["-c", "core.hooksPath=/dev/null", "-c", "commit.gpgSign=false",
            "-c", "core.autocrlf=false", "-c", "gc.auto=0"]

COMMENT = ("\tunsigned long nr_pages = size >> PAGE_SHIFT;\n\n",
           "\tunsigned long nr_pages = size >> PAGE_SHIFT;\n\n"
           "\t/* the linear map and vmemmap go after the pages */\n")
BROKEN = ("void arch_remove_memory(u64 start, u64 size,",
          "this is not C;\nvoid arch_remove_memory(u64 start, u64 size,")
HANG = ("\t/* the linear map and vmemmap go after the pages */\n",
        "\t/* the linear map and vmemmap go after the pages */\n"
        "\twhile (!signal_pending(current))\t/* never, for a kworker */\n"
        "\t\tmsleep_interruptible(1000);\n")
HANG_HEADERS = ("#include <linux/pkeys.h>\n",
                "#include <linux/pkeys.h>\n#include <linux/delay.h>\n"
                "#include <linux/sched/signal.h>\n")


def git(repo: Path, *args: str, date: int = 0, **kw) -> str:
    env = dict(os.environ, **GIT_ENV)
    if date:
        env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = f"@{date} +0000"
    proc = subprocess.run(["git", *GIT_OPTS, "-C", str(repo), *args], env=env,
                          capture_output=True, text=True, **kw)
    assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-2000:])
    return proc.stdout.strip()


def unshare(path: Path) -> None:
    """Give ``path`` an inode of its own before it is written: the tree's files
    are hard links to the harness's unpacked source."""
    tmp = path.with_name(path.name + ".unshare")
    shutil.copy2(path, tmp)
    os.replace(tmp, path)


def edit(repo: Path, rel: str, *pairs: tuple) -> None:
    path = repo / rel
    unshare(path)
    text = path.read_text()
    for old, new in pairs:
        assert text.count(old) == 1, (rel, old)
        text = text.replace(old, new)
    path.write_text(text)


def apply(repo: Path, patch: Path) -> None:
    for line in patch.read_text().splitlines():
        if line.startswith("+++ b/"):
            unshare(repo / line[6:])
    git(repo, "apply", str(patch))


def commit(repo: Path, message: str, n: int) -> str:
    git(repo, "add", "-f", "-A", ".")
    git(repo, "commit", "-q", "-m", message, date=1767225600 + 3600 * n)
    return git(repo, "rev-parse", "HEAD")


def history_stamp(pristine_identity: str) -> str:
    from harness.kernel import source as src
    h = hashlib.sha256(f"{HISTORY_VERSION}\n{pristine_identity}\n".encode())
    for p in [*src.read_series(), REPRO_BAD]:
        h.update(p.read_bytes())
    h.update(repr((COMMENT, BROKEN, HANG, HANG_HEADERS)).encode())
    return h.hexdigest()[:16]


def make_history(repo: Path, pristine: Path) -> dict:
    """The commits above, as {name: sha}; the timings on stdout."""
    from harness.kernel import source as src
    if repo.exists():
        shutil.rmtree(repo)
    repo.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    subprocess.run(["cp", "-al", str(pristine), str(repo)], check=True)
    copied = time.monotonic()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-f", "-A", ".", timeout=1800)   # Debian's .gitignore ignores "/*"
    added = time.monotonic()
    shas = {"stock": commit(repo, "linux-source-6.12 as Debian ships it", 0)}
    for patch in src.read_series():
        apply(repo, patch)
    shas["series"] = commit(repo, "patches/series: the probe interface", 1)
    edit(repo, MMU, COMMENT)
    shas["comment"] = commit(repo, "arm64: mm: a comment in arch_remove_memory", 2)
    edit(repo, MMU, BROKEN)
    shas["broken"] = commit(repo, "arm64: mm: a commit that does not compile", 3)
    edit(repo, MMU, (BROKEN[1], BROKEN[0]))
    shas["fixed"] = commit(repo, "arm64: mm: compile again", 4)
    apply(repo, REPRO_BAD)
    shas["bad"] = commit(repo, "arm64: mm: keep the linear map of removed memory", 5)
    edit(repo, MMU, HANG_HEADERS, HANG)
    shas["hang"] = commit(repo, "arm64: mm: arch_remove_memory never returns", 6)
    print(f"history: cp -al {copied - start:.1f} s, git add of the tree "
          f"{added - copied:.1f} s, commits {time.monotonic() - added:.1f} s")
    return shas


@pytest.fixture(scope="module")
def history():
    """The tree at its fixed place, made once (``HISTORY_VERSION`` and the
    inputs in its stamp), checked out at its last commit with no bisect on."""
    from harness.host import cache_root
    from harness.kernel import source as src
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    source = src.resolve_source("debian")
    pristine = src.pristine_tree(source)
    repo = cache_root() / "test-bisect-history" / "linux"
    stamp_file = repo.parent / "stamp"
    stamp = history_stamp(source.identity)
    names = ["stock", "series", "comment", "broken", "fixed", "bad", "hang"]
    if stamp_file.is_file() and stamp_file.read_text().split()[0] == stamp \
            and (repo / ".git").is_dir():
        shas = dict(zip(names, stamp_file.read_text().split()[1:]))
        subprocess.run(["git", "-C", str(repo), "bisect", "reset"],
                       capture_output=True)
        git(repo, "checkout", "-q", "-f", "main")
    else:
        stamp_file.unlink(missing_ok=True)
        shas = make_history(repo, pristine)
        stamp_file.write_text(" ".join([stamp, *(shas[n] for n in names)]) + "\n")
    mmu = (pristine / MMU).read_bytes()
    yield repo, shas
    subprocess.run(["git", "-C", str(repo), "bisect", "reset"], capture_output=True)
    assert (pristine / MMU).read_bytes() == mmu, "the unpacked source was written to"


def harness_argv(*args: str) -> list:
    """bisect-run as git bisect runs it. The ordering checks are off: no commit
    here needs them, and a gdb that fails to detach (rare, more often on a busy
    machine) leaves the guest stopped, which bisect-run rightly calls a machine
    failure and aborts on (seen once here, after a clean removal)."""
    return [sys.executable, "-m", "harness.cli", "bisect-run", "--method", "acpi-dimm",
            "--order-check", "off", *args]


def harness_env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT))


def log_lines(log: Path) -> list:
    return [line.split("\t") for line in log.read_text().splitlines()] if log.exists() \
        else []


EXPECTED = {"comment": ("good", "0"), "broken": ("skip", "125"), "fixed": ("good", "0"),
            "bad": ("bad", "1"), "hang": ("bad", "1")}


def check_line(fields: list, name: str) -> None:
    verdict, code = EXPECTED[name]
    assert (fields[2], fields[3]) == (verdict, code), (name, fields)
    reason = fields[5]
    if name == "broken":
        assert reason.startswith("untestable: the tree does not build"), reason
        assert "this is not C" in reason or "error" in reason, reason
    elif name == "bad":
        assert "acpi-dimm:no-kernel-splat" in fields[4].split(","), fields
    elif name == "hang":
        assert reason.startswith("hang, counted bad (--hang-is bad): acpi-dimm: "
                                 "step 'remove dimm1' never finished"), reason


def test_git_bisect_run_finds_the_bad_commit(history, tmp_path):
    repo, shas = history
    by_sha = {sha: name for name, sha in shas.items()}
    log, reports = tmp_path / "bisect.log", tmp_path / "reports"
    out = tmp_path / "bisect-run.out"
    git(repo, "bisect", "start", shas["hang"], shas["series"])
    start = time.monotonic()
    with open(out, "w") as f:
        proc = subprocess.run(["git", "-C", str(repo), "bisect", "run",
                               *harness_argv("--log", str(log), "--reports", str(reports))],
                              env=harness_env(), stdout=f, stderr=subprocess.STDOUT,
                              timeout=4 * 3600)
    seconds = time.monotonic() - start
    text = out.read_text()
    lines = log_lines(log)
    visited = [by_sha.get(f[1], f[1]) for f in lines]
    print(f"git bisect run: {seconds:.0f} s, visited {visited}")
    for f in lines:
        print("  " + " | ".join(f[1:6])[:300])
    assert proc.returncode == 0, text[-6000:]
    assert f"{shas['bad']} is the first bad commit" in text, text[-6000:]
    assert git(repo, "rev-parse", "refs/bisect/bad") == shas["bad"]
    for fields, name in zip(lines, visited):
        check_line(fields, name)
    assert "patches/series: 0001-arm64-Kconfig-allow-the-memory-probe-sysfs-interface.patch " \
           "already in the tree, skipped" in text, text[-6000:]
    git(repo, "bisect", "reset")

    # the kinds git bisect did not visit, run directly (the kernels are cached
    # when it did build them)
    for name in ("broken", "hang"):
        if name in visited:
            continue
        git(repo, "checkout", "-q", shas[name])
        one = subprocess.run(harness_argv("--log", str(log), "--reports", str(reports)),
                             cwd=repo, env=harness_env(), capture_output=True, text=True,
                             timeout=3600)
        fields = log_lines(log)[-1]
        print(f"{name} run directly: exit {one.returncode}: {fields[5][:200]}")
        assert one.returncode == int(EXPECTED[name][1]), one.stderr[-4000:]
        check_line(fields, name)
    git(repo, "checkout", "-q", "-f", "main")


def test_hang_is_skip_and_no_series(history, tmp_path):
    """--hang-is skip on the hang commit: 125; --no-series on a good commit that
    carries the series: good, the same kernel as with the series skipped."""
    repo, shas = history
    log, reports = tmp_path / "bisect.log", tmp_path / "reports"
    for name, extra, code, reason in [
            ("hang", ["--hang-is", "skip"], 125, "hang, skipped (--hang-is skip)"),
            ("fixed", ["--no-series"], 0, "checks passed")]:
        git(repo, "checkout", "-q", shas[name])
        proc = subprocess.run(harness_argv("--log", str(log), "--reports", str(reports),
                                           *extra),
                              cwd=repo, env=harness_env(), capture_output=True, text=True,
                              timeout=3600)
        fields = log_lines(log)[-1]
        print(f"{name} {' '.join(extra)}: exit {proc.returncode}: {fields[5][:200]}")
        assert proc.returncode == code, proc.stderr[-4000:]
        assert fields[1] == shas[name] and fields[5].startswith(reason), fields
    git(repo, "checkout", "-q", "-f", "main")
