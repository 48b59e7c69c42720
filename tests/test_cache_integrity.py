"""Cache integrity: cached kernels and guest images are verified on reuse.

No make and no apt: ``build.build()`` runs with faked inputs, tree, configure
and ``make Image`` (the fake writes small products into the O= tree and counts
itself), so the real cache code (store, verify, rebuild) is what is tested.
Everything lives in a private cache (``HOTPLUG_HARNESS_CACHE``).
"""
import json
import os
import stat
from pathlib import Path

import pytest

from harness import cli
from harness.kernel import kconfig
from harness.kernel import kernel as build
from harness.kernel import source as src
from harness.kernel.source import PreparedTree
from harness.machine import guest_image as gi

DATA = Path(__file__).parent / "data"
IMAGE = bytes(range(256)) * 32          # 8 KiB "Image"
VMLINUX = b"\x7fELF" + bytes(range(256)) * 16


@pytest.fixture
def fake_build(private_cache, tmp_path, monkeypatch):
    """build.build() with fixed inputs and a fake ``make Image``; returns the
    list of O= trees the fake make ran in (one entry per kernel build)."""
    patch = tmp_path / "x.patch"
    patch.write_text("a")
    source = src.Source("dir", tmp_path, "0" * 64)
    frags = tuple(kconfig.resolve_fragments([]))
    inputs = build.Inputs(source, tuple(src.load_patches([patch])), frags,
                          kconfig.merge(frags), "gcc 12", False)
    monkeypatch.setattr(build, "gather_inputs", lambda req: inputs)
    monkeypatch.setattr(build.src, "prepare",
                        lambda source, patches: PreparedTree(source, tmp_path, ()))
    monkeypatch.setattr(build, "configure", lambda maker, inputs, stamp="": None)
    makes = []

    def build_image(maker):
        makes.append(maker.outdir)
        boot = maker.outdir / "arch" / "arm64" / "boot"
        boot.mkdir(parents=True, exist_ok=True)
        (boot / "Image").write_bytes(IMAGE)
        (maker.outdir / "vmlinux").write_bytes(VMLINUX)
        (maker.outdir / "System.map").write_text("ffff800080000000 T _text\n")
        (maker.outdir / ".config").write_text("CONFIG_ARM64=y\n")

    monkeypatch.setattr(build.Make, "build_image", build_image)
    return makes


def _entry(key):
    d = build.artifacts_dir(key)
    return d, f"artifacts/{d.name}"


def _built(capsys):
    art = build.build()
    return art, capsys.readouterr().err


def test_store_records_size_and_digest_of_every_file(fake_build, capsys):
    art, _ = _built(capsys)
    assert art.rebuilt and len(fake_build) == 1
    d, _ = _entry(art.cache_key)
    files = json.loads((d / "meta.json").read_text())["files"]
    assert set(files) == {"Image", "vmlinux", "System.map", ".config", "build.log"}
    assert files["Image"]["size"] == len(IMAGE)
    assert files["Image"]["sha256"] == build.sha256_file(d / "Image")
    again, err = _built(capsys)
    assert not again.rebuilt and len(fake_build) == 1 and "cache:" not in err
    assert again.image == art.image


def test_truncated_image_is_named_and_rebuilt(fake_build, capsys):
    art, _ = _built(capsys)
    d, label = _entry(art.cache_key)
    with open(d / "Image", "r+b") as f:
        f.truncate(123)
    again, err = _built(capsys)
    assert f"[cache] {label}/Image is 123 bytes, expected {len(IMAGE)}: rebuilding" in err
    assert len(fake_build) == 2 and again.rebuilt
    assert Path(again.image).read_bytes() == IMAGE       # what gets booted is whole
    third, err = _built(capsys)
    assert not third.rebuilt and len(fake_build) == 2 and "cache:" not in err


def test_flipped_byte_is_detected_by_digest(fake_build, capsys):
    art, _ = _built(capsys)
    d, label = _entry(art.cache_key)
    st = (d / "vmlinux").stat()
    with open(d / "vmlinux", "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0x01]))
    os.utime(d / "vmlinux", ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back
    again, err = _built(capsys)
    assert f"[cache] {label}/vmlinux has sha256 " in err
    assert "(right size, corrupt content): rebuilding" in err
    assert len(fake_build) == 2 and Path(again.vmlinux).read_bytes() == VMLINUX


def test_entry_without_digest_record_is_rebuilt(fake_build, capsys):
    art, _ = _built(capsys)
    d, label = _entry(art.cache_key)
    meta = json.loads((d / "meta.json").read_text())
    del meta["files"]                        # as stored before this change
    (d / "meta.json").write_text(json.dumps(meta))
    assert build.lookup(art.cache_key) is None
    assert f"[cache] {label} has no recorded sizes or digests" in capsys.readouterr().err
    again, err = _built(capsys)
    assert "has no recorded sizes or digests" in err and again.rebuilt
    assert len(fake_build) == 2
    assert "files" in json.loads((d / "meta.json").read_text())


def test_missing_file_and_unreadable_meta_are_rebuilt(fake_build, capsys):
    art, _ = _built(capsys)
    d, label = _entry(art.cache_key)
    (d / "System.map").unlink()
    _, err = _built(capsys)
    assert f"[cache] {label}/System.map is missing: rebuilding" in err
    (d / "meta.json").write_text('{"image": ')  # truncated
    _, err = _built(capsys)
    assert f"[cache] {label}/meta.json is unreadable" in err
    assert len(fake_build) == 3


def test_lookup_of_an_absent_key_is_silent(private_cache, capsys):
    assert build.lookup("ef" * 32) is None
    assert capsys.readouterr().err == ""


def test_check_file_messages(tmp_path):
    f = tmp_path / "blob"
    f.write_bytes(b"12345")
    rec = build.file_record(f)
    assert rec == {"size": 5, "sha256": build.sha256_file(f)}
    assert build.check_file(f, rec, "x/blob") is None
    f.write_bytes(b"1234")
    assert build.check_file(f, rec, "x/blob") == "x/blob is 4 bytes, expected 5"
    f.write_bytes(b"12346")
    assert "x/blob has sha256" in build.check_file(f, rec, "x/blob")
    f.unlink()
    assert build.check_file(f, rec, "x/blob") == "x/blob is missing"
    assert "malformed" in build.check_file(f, {"size": 5}, "x/blob")


# ---------------------------------------------------------------- guest image

def _scripts(tmp_path):
    d = tmp_path / "guest-scripts"
    d.mkdir(exist_ok=True)
    (d / "init").write_bytes(b"#!/bin/busybox sh\necho hi\n")
    (d / "init").chmod(0o755)
    return d


@pytest.fixture
def fake_guest(private_cache, tmp_path, monkeypatch):
    """build_base_image() with apt faked (recorded answers) and a small image
    instead of unpacked .debs; returns the list of images built."""
    refs = gi.parse_print_uris((DATA / "apt-get-print-uris-dropbear.txt").read_text())
    monkeypatch.setattr(gi, "resolve", lambda roots, cache_dir: refs)
    built = []

    def fake_build(refs, scripts, cache_dir, dest):
        built.append(dest)
        entries = {"bin/busybox": gi.CpioEntry("bin/busybox", stat.S_IFREG | 0o755,
                                               bytes(range(256)) * 64)}
        gi.write_cpio_gz(entries, dest)

    monkeypatch.setattr(gi, "_build", fake_build)
    scripts = _scripts(tmp_path)
    cache_dir = private_cache / "guest-image"
    return lambda: gi.build_base_image(scripts_dir=scripts, cache_dir=cache_dir), built


def test_guest_image_records_and_reuses(fake_guest, capsys):
    make, built = fake_guest
    image = make()
    record = json.loads(image.path.with_name(image.path.name + ".json").read_text())
    assert record == build.file_record(image.path)
    assert make() == image and len(built) == 1
    assert "cache:" not in capsys.readouterr().err


def test_truncated_guest_image_is_named_and_rebuilt(fake_guest, capsys):
    make, built = fake_guest
    image = make()
    size = image.size
    with open(image.path, "r+b") as f:
        f.truncate(size // 2)
    again = make()
    err = capsys.readouterr().err
    assert (f"[cache] guest-image/{image.path.name} is {size // 2} bytes, "
            f"expected {size}: rebuilding") in err
    assert len(built) == 2 and again.size == size
    assert gi.read_initrd(again.path)["bin/busybox"].data == bytes(range(256)) * 64


def test_corrupt_or_unrecorded_guest_image_is_rebuilt(fake_guest, capsys):
    make, built = fake_guest
    image = make()
    data = bytearray(image.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    image.path.write_bytes(bytes(data))
    make()
    assert f"guest-image/{image.path.name} has sha256" in capsys.readouterr().err
    image.path.with_name(image.path.name + ".json").unlink()  # stored before records
    make()
    assert (f"[cache] guest-image/{image.path.name} has no recorded size or digest"
            in capsys.readouterr().err)
    assert len(built) == 3


# ---------------------------------------------------------------- cache clean

def test_cache_clean_all_leaves_only_locks(fake_build, fake_guest, private_cache, capsys):
    build.build()
    fake_guest[0]()
    for name in ("build", "trees", "src", "ccache", "debs"):
        (private_cache / name / "x").mkdir(parents=True, exist_ok=True)
    (private_cache / "file-hashes.json").write_text("{}")
    assert {"artifacts", "guest-image", "locks"} <= set(os.listdir(private_cache))
    capsys.readouterr()

    assert cli.main(["cache", "clean"]) == 0          # kernels only
    assert "artifacts" not in os.listdir(private_cache)
    assert "guest-image" in os.listdir(private_cache)

    assert cli.main(["cache", "clean", "--all"]) == 0
    out = capsys.readouterr().out
    assert os.listdir(private_cache) == ["locks"]
    for name in ("guest-image", "debs", "build", "file-hashes.json"):
        assert f"removed {private_cache / name}\n" in out
    assert cli.main(["cache", "clean", "--all"]) == 0
    assert capsys.readouterr().out == "nothing to remove\n"


def test_cache_clean_all_leaves_what_the_harness_did_not_make(private_cache, capsys):
    (private_cache / "ccache").mkdir(parents=True)
    (private_cache / "notes.txt").write_text("mine")
    assert cli.main(["cache", "clean", "--all"]) == 0
    assert sorted(os.listdir(private_cache)) == ["locks", "notes.txt"]
    assert f"[cache] left {private_cache / 'notes.txt'}: not something" in capsys.readouterr().err
