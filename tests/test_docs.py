"""The README and docs/: every command and option they show exists (read from
each subcommand's --help), every page they link exists, the README stays a
quick start; and no tracked text file holds an absolute path of the machine
that measured it, or words about how the project was developed."""
from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

import pytest

from harness import cli

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *sorted((ROOT / "docs").glob("*.md")),
         ROOT / "bench" / "README.md"]
# hotplug-harness SUB ..., python -m harness.cli SUB ... (global -q/-v before SUB)
COMMAND = re.compile(r"(?<![\w/.-])(?:hotplug-harness|-m harness\.cli)((?:[ \t]+-[qv])*)[ \t]+"
                     r"([a-z][a-z-]*)(?![\w:-])((?:[^`\n]|\\\n)*)")
PROSE = {"command"}      # "the hotplug-harness command" in prose and layout listings
GLOBAL = {"--help", "--version", "--quiet", "--verbose"}


def helps() -> dict[str, str]:
    """{subcommand: its --help and that of its own subcommands}."""
    out = {}
    for action in cli.parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                text = sub.format_help()
                for inner in sub._actions:
                    if isinstance(inner, argparse._SubParsersAction):
                        text += "".join(p.format_help() for p in inner.choices.values())
                out[name] = text
    return out


def shown_commands() -> list[tuple[str, str, str]]:
    """(page, subcommand, the rest of the line) of every command the pages show
    in code (fenced blocks and inline spans)."""
    found = []
    for page in PAGES:
        text = page.read_text()
        code = re.findall(r"```.*?```", text, re.S) + re.findall(r"`[^`\n]+`", text)
        for block in code:
            for m in COMMAND.finditer(block):
                found.append((page.relative_to(ROOT).as_posix(), m.group(2), m.group(3)))
    return found


def options_in(rest: str) -> set[str]:
    rest = rest.split("#", 1)[0]          # a comment after the command
    return {m.group(1) for m in re.finditer(r"(?<![\w-])(--[a-z][a-z0-9-]*)", rest)}


def test_every_command_and_option_shown_exists():
    known = helps()
    commands = shown_commands()
    assert len(commands) > 50, len(commands)
    bad = []
    for page, sub, rest in commands:
        if sub in PROSE:
            continue
        if sub not in known:
            bad.append(f"{page}: no command 'hotplug-harness {sub}'")
            continue
        for opt in sorted(options_in(rest) - GLOBAL):
            if not re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", known[sub]):
                bad.append(f"{page}: 'hotplug-harness {sub}' has no option {opt}")
    assert not bad, "\n".join(bad)


def test_the_check_catches_a_made_up_option():
    known = helps()
    assert "--kcidb" in known["report"] and "--max-size" in known["cache"]
    assert options_in("run --patch x.patch --no-such-thing  # --commented") == \
        {"--patch", "--no-such-thing"}


def test_links_between_pages_resolve():
    bad = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            if not (page.parent / target).exists():
                bad.append(f"{page.relative_to(ROOT)}: {target}")
    assert not bad, bad


def test_readme_is_a_quick_start():
    text = (ROOT / "README.md").read_text()
    lines = text.splitlines()
    assert len(lines) < 200, len(lines)
    first_screen = "\n".join(lines[:40])
    assert "run --patch" in first_screen
    assert "--kernel-src" in first_screen and "inside the tree" in first_screen
    assert "docs/report-" in text and (ROOT / "docs" / "report-stale-vmemmap.png").exists()
    for page in ("install", "running", "checks", "ordering", "geometries", "repro",
                 "bisect", "pytest-plugin", "ci", "performance", "troubleshooting",
                 "building", "reports", "series", "kcidb"):
        assert f"docs/{page}.md" in text, page
        assert (ROOT / "docs" / f"{page}.md").is_file(), page


# ------------------------------------------------------------ hygiene

# Absolute paths that belong to a measuring machine. Paths inside the guest
# (its initramfs: /tmp, /root/.ssh) and inside the documented container (its
# cache volume) are not the host's, and are allowed as they are named here.
MACHINE = re.compile(r"/(?:root|home|tmp|work)/")
ALLOWED = re.compile(
    r"/tmp[/](?:harness-|race|mem-on-off-test|fill\b|log\b)"       # in the guest
    r"|/root[/]\.ssh|chmod 700 /root "                              # the guest's root
    r"|(?<=hotplug-harness-cache:)/root[/]\.cache/hotplug-harness")  # the container's volume
# ([/] keeps this file's own patterns from matching themselves)
# words about how the work was organised, not what the project does
DEVELOPMENT = re.compile(r"\b(?:sessions? \d+|in (?:this|a previous|the last) session)\b",
                         re.I)


def tracked_text_files() -> list[Path]:
    try:
        names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                               check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    out = []
    for name in filter(None, names):
        path = ROOT / name
        if path.is_symlink() or not path.is_file():
            continue
        head = path.read_bytes()[:8192]
        if b"\0" in head:
            continue          # binary
        out.append(path)
    return out


def test_no_machine_paths_in_tracked_files():
    bad = []
    for path in tracked_text_files():
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for m in MACHINE.finditer(line):
                if not ALLOWED.match(line, m.start()):
                    bad.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:120]}")
                    break
    assert not bad, "\n".join(bad)


def test_no_words_about_how_it_was_developed():
    bad = [f"{p.relative_to(ROOT)}:{n}: {line.strip()[:120]}"
           for p in tracked_text_files()
           for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
           if DEVELOPMENT.search(line)]
    assert not bad, "\n".join(bad)


def test_the_hygiene_patterns():
    assert MACHINE.search("see " + "/ro" + "ot/.cache/x") and MACHINE.search("/wo" + "rk/x")
    line = "dd if=/dev/zero of=" + "/tm" + "p/harness-fill"
    assert ALLOWED.match(line, MACHINE.search(line).start())
    assert DEVELOPMENT.search("measured at the end of sess" + "ion 6")
