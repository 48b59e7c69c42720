"""Tests for the guest image (initramfs) builder."""
from __future__ import annotations

import dataclasses
import gzip
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from harness.errors import INFRA, HarnessError, ToolMissing
from harness.machine import guest_image as gi

DATA = Path(__file__).parent / "data"
CLOSURE = ("busybox-static", "dropbear-bin", "gcc-12-base", "libc6", "libcrypt1",
           "libgcc-s1", "libgmp10", "libtomcrypt1", "libtommath1", "zlib1g")
PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH1x2y3z harness-run\n"


def _entry(name, kind, perm, data=b"", rdev=(0, 0)):
    return gi.CpioEntry(name, kind | perm, data, rdev)


SAMPLE = {e.name: e for e in [
    _entry("d", stat.S_IFDIR, 0o755),
    _entry("d/x", stat.S_IFREG, 0o644, b"x"),
    _entry("d/xy", stat.S_IFREG, 0o600, b"xy"),
    _entry("d/xyz", stat.S_IFREG, 0o755, b"xyz"),
    _entry("d/four", stat.S_IFREG, 0o644, b"1234"),
    _entry("d/empty", stat.S_IFREG, 0o644),
    _entry("d/link", stat.S_IFLNK, 0o777, b"xyz"),
    _entry("dev/console", stat.S_IFCHR, 0o600, rdev=(5, 1)),
    _entry("deep/a/b/file", stat.S_IFREG, 0o644, b"deep"),
]}


def test_newc_roundtrip(tmp_path):
    out = gi.write_cpio_gz(SAMPLE, tmp_path / "a.cpio.gz")
    got = gi.read_initrd(out)
    for name, e in SAMPLE.items():
        assert got[name] == e
    assert stat.S_ISDIR(got["deep/a/b"].mode) and stat.S_ISDIR(got["dev"].mode)
    assert list(got) == sorted(got)  # parents come before children


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio not installed")
def test_newc_readable_by_cpio_tool(tmp_path):
    raw = gzip.decompress(gi.write_cpio_gz(SAMPLE, tmp_path / "a.gz").read_bytes())
    listing = subprocess.run(["cpio", "-tv", "--quiet"], input=raw, check=True,
                             capture_output=True).stdout.decode()
    assert "d/link -> xyz" in listing
    assert any(line.startswith("crw-------") and "5,   1" in line
               for line in listing.splitlines())
    names = subprocess.run(["cpio", "-t", "--quiet"], input=raw, check=True,
                           capture_output=True).stdout.decode().split()
    assert set(SAMPLE) <= set(names)


def test_cpio_is_deterministic(tmp_path):
    a = gi.write_cpio_gz(SAMPLE, tmp_path / "a.gz").read_bytes()
    b = gi.write_cpio_gz(dict(reversed(SAMPLE.items())), tmp_path / "b.gz").read_bytes()
    assert a == b


def test_key_overlay_contents_and_modes(tmp_path):
    got = gi.read_initrd(gi.build_key_overlay(PUBKEY, tmp_path / "k.gz"))
    assert set(got) == {"root", "root/.ssh", "root/.ssh/authorized_keys"}
    assert got["root"].mode == stat.S_IFDIR | 0o700
    assert got["root/.ssh"].mode == stat.S_IFDIR | 0o700
    assert got["root/.ssh/authorized_keys"].mode == stat.S_IFREG | 0o600
    assert got["root/.ssh/authorized_keys"].data == PUBKEY.encode()


@pytest.mark.parametrize("bad", ["", "  \n", "-----BEGIN OPENSSH PRIVATE KEY-----\nabc"])
def test_key_overlay_rejects_non_public_keys(tmp_path, bad):
    with pytest.raises(HarnessError):
        gi.build_key_overlay(bad, tmp_path / "k.gz")


def test_compose_concatenates_archives(tmp_path):
    base = gi.write_cpio_gz(SAMPLE, tmp_path / "base.gz")
    overlay = gi.build_key_overlay(PUBKEY, tmp_path / "key.gz")
    out = gi.compose_initrd(base, overlay, tmp_path / "initrd.gz")
    assert out.read_bytes() == base.read_bytes() + overlay.read_bytes()
    got = gi.read_initrd(out)
    assert "d/xyz" in got and "root/.ssh/authorized_keys" in got


def _scripts(tmp_path, init=b"#!/bin/busybox sh\necho hi\n"):
    d = tmp_path / "guest-scripts"
    d.mkdir(exist_ok=True)
    (d / "init").write_bytes(init)
    (d / "init").chmod(0o755)
    (d / "helper.sh").write_bytes(b"echo helper\n")
    return d


def test_cache_key_stability(tmp_path):
    refs = gi.parse_print_uris((DATA / "apt-get-print-uris-dropbear.txt").read_text())
    d = _scripts(tmp_path)
    key = gi.cache_key(refs, gi.guest_script_files(d))
    assert key == gi.cache_key(list(refs), gi.guest_script_files(d))
    (d / "helper.sh").write_bytes(b"echo changed\n")
    changed = gi.cache_key(refs, gi.guest_script_files(d))
    assert changed != key
    (d / "helper.sh").chmod(0o755)
    assert gi.cache_key(refs, gi.guest_script_files(d)) not in (key, changed)
    newer = [dataclasses.replace(refs[0], sha256="0" * 64)] + refs[1:]
    assert gi.cache_key(newer, gi.guest_script_files(d)) != changed


def test_guest_scripts_need_init(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(HarnessError, match="init"):
        gi.guest_script_files(tmp_path / "empty")


def test_parse_depends_recorded_dropbear():
    text = (DATA / "apt-cache-depends-dropbear.txt").read_text()
    assert gi.parse_depends(text) == CLOSURE


def test_parse_depends_drops_virtual_and_host_arch():
    names = gi.parse_depends((DATA / "apt-cache-depends-openssh-server.txt").read_text())
    assert {"openssh-server", "libc6", "libssl3", "cdebconf"} <= set(names)
    assert not any(n.startswith("<") or ":" in n for n in names)
    assert "adduser" not in names  # arch:all, listed without ':arm64'


def test_parse_print_uris_recorded():
    refs = gi.parse_print_uris((DATA / "apt-get-print-uris-dropbear.txt").read_text())
    assert tuple(r.package for r in refs) == CLOSURE
    gmp = next(r for r in refs if r.package == "libgmp10")
    assert gmp.version == "2:6.2.1+dfsg1-1.1"
    assert gmp.filename == "libgmp10_2%3a6.2.1+dfsg1-1.1_arm64.deb"
    assert len(gmp.sha256) == 64 and gmp.size > 0


def test_missing_apt_raises_tool_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolMissing) as err:
        gi.resolve_closure(["dropbear-bin"])
    assert err.value.package == "apt"


def test_undownloadable_package_blames_infra(tmp_path):
    ref = gi.DebRef("libgmp10", "9.9-does-not-exist", "libgmp10_9.9_arm64.deb", 1, "0" * 64)
    with pytest.raises(HarnessError) as err:
        gi.fetch_debs([ref], tmp_path / "debs")
    assert err.value.blame == INFRA
    assert "libgmp10" in str(err.value) and "9.9-does-not-exist" in str(err.value)


def test_init_script_is_valid_sh():
    subprocess.run(["sh", "-n", str(gi.GUEST_SCRIPTS / "init")], check=True)
    assert (gi.GUEST_SCRIPTS / "init").read_text().startswith("#!/bin/busybox sh\n")


def _is_arm64_elf(data: bytes) -> bool:
    return data[:4] == b"\x7fELF" and int.from_bytes(data[18:20], "little") == 183


def test_real_build(tmp_path):
    start = time.monotonic()
    image = gi.build_base_image()
    assert time.monotonic() - start < 60
    assert image.packages == CLOSURE and image.size == image.path.stat().st_size
    assert gi.build_base_image() == image  # cached: same file, same key
    initrd = gi.prepare_initrd(PUBKEY, tmp_path / "initrd.gz")
    got = gi.read_initrd(initrd)
    assert _is_arm64_elf(got["bin/busybox"].data)
    assert _is_arm64_elf(got["usr/sbin/dropbear"].data)
    assert any(n.startswith("usr/lib/aarch64-linux-gnu/libgmp.so.10") for n in got)
    assert stat.S_ISLNK(got["lib/ld-linux-aarch64.so.1"].mode)
    init = (gi.GUEST_SCRIPTS / "init").read_bytes()
    assert got["init"].data == init and got["init"].mode == stat.S_IFREG | 0o755
    assert got["harness/init"].data == init
    assert got["etc/passwd"].data.startswith(b"root:x:0:0:root:/root:/bin/sh")
    assert got["root/.ssh/authorized_keys"].data == PUBKEY.encode()
    assert not any(n.startswith("usr/share/") for n in got)
    assert initrd.key == image.key and not initrd.path.with_name("initrd.gz.key.cpio.gz").exists()
