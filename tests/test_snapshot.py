"""harness.machine.snapshot without QEMU: the key and what it ignores, the RAM
copy, the cache entries, pruning, the key command, and the console prelude.
Saving and restoring a real guest is tested in test_qemu.py."""
from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest

from fakes import ReplayStream
from harness.errors import HarnessError
from harness.host import Deadline
from harness.machine import snapshot
from harness.machine.console import ConsoleReader
from harness.machine.qemu import VmSpec, qemu_argv


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOTPLUG_HARNESS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def spec(tmp_path, run="run-a", **kw) -> VmSpec:
    kernel = tmp_path / "Image"
    initrd = tmp_path / "base.cpio.gz"
    for f in (kernel, initrd):
        if not f.exists():
            f.write_bytes(b"x")
    base = dict(kernel=str(kernel), initrd=str(initrd), run_dir=f"/dev/shm/{run}",
                mode="dt", ssh_port=40000, gdb_port=41000)
    base.update(kw)
    return VmSpec(**base)


def test_the_key_ignores_the_runs_own_folder_and_ports(tmp_path):
    a = spec(tmp_path)
    b = spec(tmp_path, run="run-b", ssh_port=50000, gdb_port=51000)
    assert snapshot.key_for(a) == snapshot.key_for(b)
    norm = snapshot.normalized_argv(qemu_argv(b), b.run_dir)
    assert "hostfwd=tcp:127.0.0.1:{port}-:22" in " ".join(norm)
    assert "tcp:127.0.0.1:{port}" in norm and not any("run-b" in x for x in norm)


@pytest.mark.parametrize("change", [
    {"mode": "acpi"}, {"cmdline": ("movablecore=256M",)}, {"mem_mb": 2048},
    {"devices": ("-device", "virtio-mem-pci,id=vm0")}, {"ssh_port": 0}, {"gdb_port": None},
    {"smp": 1}])
def test_the_key_follows_what_decides_the_guest(tmp_path, change):
    assert snapshot.key_for(spec(tmp_path)) != snapshot.key_for(spec(tmp_path, **change))


def test_a_rebuilt_kernel_image_is_another_key(tmp_path):
    a = spec(tmp_path)
    key = snapshot.key_for(a)
    os.utime(a.kernel, ns=(1, 1))
    assert snapshot.key_for(a) != key


def test_shared_ram_files_are_the_run_folders_memory_backends(tmp_path):
    s = spec(tmp_path, devices=(
        "-object", "memory-backend-file,id=vmem0,size=1G,mem-path={run_dir}/vmem0,share=on",
        "-object", "memory-backend-file,id=x,size=1G,mem-path=/elsewhere/x,share=on"))
    assert snapshot.shared_ram_files(qemu_argv(s), s.run_dir) == ["ram0", "vmem0"]


def test_copy_data_keeps_holes(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    with open(src, "wb") as f:
        f.truncate(64 << 20)
        f.seek(4096)
        f.write(b"a" * 8192)
        f.seek(40 << 20)
        f.write(b"b" * 4096)
    copied = snapshot.copy_data(src, dst)
    assert dst.read_bytes() == src.read_bytes()
    assert copied < 1 << 20                       # the data, not 64 MiB
    assert os.stat(dst).st_blocks * 512 < 1 << 20


def make_entry(base: Path, key: str, ram=("ram0",), fmt=snapshot.FORMAT) -> Path:
    path = base / "snapshots" / key
    path.mkdir(parents=True)
    (path / snapshot.STATE).write_bytes(b"state")
    (path / snapshot.CONSOLE).write_bytes(b"booted\n")
    for name in ram:
        (path / name).write_bytes(b"")
    (path / snapshot.META).write_text(json.dumps({"format": fmt, "ram": list(ram)}))
    return path


def test_find_only_whole_entries_of_this_format(cache):
    make_entry(cache, "good")
    assert snapshot.find("good").console() == b"booted\n"
    make_entry(cache, "old", fmt=snapshot.FORMAT - 1)
    assert snapshot.find("old") is None
    (make_entry(cache, "noram") / "ram0").unlink()
    assert snapshot.find("noram") is None
    (make_entry(cache, "nostate") / snapshot.STATE).unlink()
    assert snapshot.find("nostate") is None
    assert snapshot.find("absent") is None


def test_prune_keeps_the_most_recently_used(cache):
    now = time.time()
    for i in range(5):
        path = make_entry(cache, f"k{i}")
        os.utime(path, (now - 100 + i, now - 100 + i))
    dying = cache / "snapshots" / ".k9-partial"
    dying.mkdir()
    os.utime(dying, (now - 7200, now - 7200))
    removed = snapshot.prune(2)
    left = sorted(p.name for p in (cache / "snapshots").iterdir())
    assert left == ["k3", "k4"] and len(removed) == 4


def test_prepare_copies_the_ram_and_marks_the_entry_used(cache, tmp_path):
    path = make_entry(cache, "k")
    (path / "ram0").write_bytes(b"\0" * 4096 + b"kernel")
    os.utime(path, (1, 1))
    run = tmp_path / "run"
    run.mkdir()
    snapshot.prepare(snapshot.find("k"), str(run))
    assert (run / "ram0").read_bytes() == b"\0" * 4096 + b"kernel"
    assert path.stat().st_mtime > 1


def test_key_command_writes_the_key_and_fresh_random_bytes():
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx harness"
    a, b = snapshot.key_command(key), snapshot.key_command(key)
    assert f"echo '{key}' > /root/.ssh/authorized_keys" in a and "umask 077" in a
    assert a.endswith("> /dev/urandom") and a != b          # new bytes every time
    for bad in ("-----BEGIN OPENSSH PRIVATE KEY-----", "ssh-ed25519 AAA' ; reboot '",
                "ssh-ed25519 A\nB", ""):
        with pytest.raises(HarnessError):
            snapshot.key_command(bad)


def test_disabled_by_the_environment(monkeypatch):
    monkeypatch.setenv("HOTPLUG_HARNESS_SNAPSHOTS", "0")
    assert not snapshot.enabled()
    monkeypatch.setenv("HOTPLUG_HARNESS_SNAPSHOTS", "1")
    assert snapshot.enabled()


def test_a_restored_console_shows_the_saved_boot(tmp_path):
    """The prelude goes through the console pipeline: the log, the line count
    and the crash watcher see the saved boot (a warning at boot included)."""
    boot = (b"[    0.000000] Booting Linux\n"
            b"[    0.100000] ------------[ cut here ]------------\n"
            b"[    0.100001] WARNING: CPU: 0 PID: 1 at mm/x.c:1 f+0x1/0x2\n"
            b"[    0.100002] ---[ end trace 0000000000000000 ]---\n"
            b"HARNESS-READY 6.12 uptime 0.86\n~ # ")
    log = tmp_path / "console.log"
    reader = ConsoleReader(ReplayStream(b"after restore\n"), log)
    reader.feed(boot)
    assert reader.lines_seen == 5
    reader.start()
    reader.wait_quiet(Deadline(5.0), 0.2)
    reader.watcher.flush()
    assert [r.kind for r in reader.watcher.reports] == ["warning"]
    assert log.read_bytes().startswith(boot)


def test_cache_clean_removes_snapshots_with_the_kernels(cache):
    from harness.kernel import kernel
    make_entry(cache, "k")
    removed = kernel.clean_cache()
    assert str(cache / "snapshots") in removed and not (cache / "snapshots").exists()


def test_replace_keeps_vmspec_frozen(tmp_path):
    """The restore path adds -incoming defer through dataclasses.replace."""
    s = spec(tmp_path)
    r = replace(s, devices=s.devices + ("-incoming", "defer"))
    assert qemu_argv(r)[-2:] == ["-incoming", "defer"]
    assert snapshot.key_for(r) != snapshot.key_for(s)
