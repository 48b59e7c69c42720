"""The QEMU argv builder (golden) and small pure helpers of machine/runner."""
import json
import os
from pathlib import Path

import pytest

from harness import runner
from harness.errors import HarnessError
from harness.machine.qemu import VmSpec, _partial_match, qemu_argv

GOLDEN = Path(__file__).parent / "data" / "qemu-argv-golden.json"


def specs():
    base = VmSpec(kernel="/k/Image", initrd="/r/initrd.gz", run_dir="/dev/shm/run")
    return {
        "acpi-ssh": VmSpec(**{**base.__dict__, "ssh_port": 2222}),
        "dt-nossh": VmSpec(**{**base.__dict__, "mode": "dt", "cmdline": ("mem=1024M",)}),
        "dt-virtio-mem": VmSpec(**{**base.__dict__, "mode": "dt", "devices": (
            "-object", "memory-backend-file,id=vmem0,size=1024M,"
                       "mem-path={run_dir}/vmem0,share=on")}),
    }


def test_argv_golden():
    got = {name: qemu_argv(spec) for name, spec in specs().items()}
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(got, indent=1) + "\n")
    assert got == json.loads(GOLDEN.read_text())


def test_argv_is_safe_by_default():
    argv = qemu_argv(specs()["acpi-ssh"])
    net = argv[argv.index("-netdev") + 1]
    assert "restrict=on" in net and "hostfwd=tcp:127.0.0.1:2222-:22" in net
    assert "share=on" in argv[argv.index("-object") + 1]
    assert "-no-reboot" in argv and "panic=-1" in argv[argv.index("-append") + 1]
    assert "-bios" in argv
    assert "-bios" not in qemu_argv(specs()["dt-nossh"])
    assert "-netdev" not in qemu_argv(specs()["dt-nossh"])


def test_device_paths_are_placed_in_the_run_dir():
    argv = qemu_argv(specs()["dt-virtio-mem"])
    assert "mem-path=/dev/shm/run/vmem0" in argv[-1]


def test_bad_mode():
    with pytest.raises(HarnessError, match="unknown boot mode"):
        qemu_argv(VmSpec(kernel="k", initrd="i", run_dir="r", mode="uefi"))


def test_tcg_threading_is_single_by_default_and_multi_on_request():
    base = VmSpec(kernel="k", initrd="i", run_dir="r")
    argv = qemu_argv(base)
    assert argv[argv.index("-accel") + 1] == "tcg,thread=single"
    argv = qemu_argv(VmSpec(**{**base.__dict__, "tcg_thread": "multi"}))
    assert argv[argv.index("-accel") + 1] == "tcg,thread=multi"
    with pytest.raises(HarnessError, match="unknown TCG threading 'mttcg'"):
        qemu_argv(VmSpec(**{**base.__dict__, "tcg_thread": "mttcg"}))


def test_partial_match():
    assert _partial_match({"device": "dimm1"}, {"device": "dimm1", "path": "/x"})
    assert not _partial_match({"device": "dimm1"}, {"device": "dimm2"})
    assert _partial_match({"a": {"b": 1}}, {"a": {"b": 1, "c": 2}})
    assert not _partial_match({"a": {"b": 1}}, {"a": 3})


def test_methods_resolution():
    assert runner.resolve_methods("all") == runner.ORDER \
        == ("acpi-dimm", "probe", "virtio-mem", "kselftest")
    assert runner.resolve_methods("probe,virtio-mem") == ("probe", "virtio-mem")
    with pytest.raises(HarnessError, match="unknown method"):
        runner.resolve_methods("nope")


def test_method_options_take_only_what_the_method_knows():
    ropts = runner.RunOptions(cycles=3, dimms=4, dimm_mb=1024)
    opts = runner.method_options(runner.METHODS["acpi-dimm"], ropts)
    assert (opts.cycles, opts.dimms, opts.dimm_mb) == (3, 4, 1024)
    probe = runner.method_options(runner.METHODS["probe"], ropts)
    assert probe.cycles == 3 and not hasattr(probe, "dimm_mb")


def test_a_port_taken_before_qemu_bound_it_is_recognised():
    from harness.machine.qemu import port_taken
    assert port_taken("qemu-system-aarch64: -gdb tcp:127.0.0.1:51747: Failed to find an "
                      "available port: Address already in use")
    assert port_taken("qemu-system-aarch64: Could not set up host forwarding rule "
                      "'tcp:127.0.0.1:2222-:22'")
    assert not port_taken("qemu-system-aarch64: -bios x.fd: could not load firmware")


def test_a_retry_picks_new_ports_only_for_those_in_use(tmp_path, monkeypatch):
    """Machine._reset_for_retry with a fake QMP: the SSH and gdb ports are
    chosen again, a machine without network stays without."""
    from harness.machine import qemu
    ports = iter([40001, 40002, 40003])
    monkeypatch.setattr(qemu, "free_port", lambda: next(ports))

    class FakeQmp:
        def close(self):
            pass
    for spec, want in [
            (VmSpec(kernel="k", initrd="i", run_dir=str(tmp_path), ssh_port=2222,
                    gdb_port=3333), (40001, 40002)),
            (VmSpec(kernel="k", initrd="i", run_dir=str(tmp_path)), (0, None))]:
        m = qemu.Machine(spec, tmp_path / "out")
        (tmp_path / "out").mkdir(exist_ok=True)
        m.qmp = FakeQmp()
        m._reset_for_retry()
        assert (m.spec.ssh_port, m.spec.gdb_port) == want
        assert f"hostfwd=tcp:127.0.0.1:{want[0]}-:22" in " ".join(m.argv) or not want[0]
