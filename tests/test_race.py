"""The race method's guest scripts (harness.drive.race) and its wiring. The
scenario itself runs against the real kernel in tests/test_qemu.py
(test_race_method_runs_under_load) and its detection rate of repro 0012 is
measured by bench/bench_race.py (README, "Races")."""
import subprocess
from dataclasses import replace

import pytest

from harness import runner
from harness.drive import race
from harness.records import MethodRun
from harness.verdict import checks, report


def test_loop_script_starts_from_online_then_cycles_both_blocks():
    text = race.loop_script([0x80000000, 0x88000000], 0x8000000, 30, "online_movable")
    body = text.splitlines()
    assert body[0] == "end=$(( $(date +%s) + 30 )); n=0"
    assert "  if [ $n -gt 1 ]; then     # the first round starts from online" in body
    assert "  if [ $((n % 4)) -eq 1 ]; then   # a full round: online, offline (migration)" \
        in body
    assert ("    [ $n -eq 1 ] || echo online_movable > /sys/devices/system/memory/memory17/"
            "state || fail 'online 0x88000000'") in body
    assert ("  echo 0x80000000 > /sys/devices/system/memory/remove "
            "|| fail 'remove 0x80000000'") in body
    assert body[-1] == "echo race-done $n"


def test_loop_script_runs_in_a_shell(tmp_path):
    """The loop's control flow in a real sh, against a fake sysfs: the first
    round offlines and removes what is online, later rounds probe and remove,
    every 4th onlines and offlines in between."""
    root = tmp_path / "memory"
    root.mkdir()
    script = race.loop_script([0x80000000], 0x8000000, 2, "online_movable")
    script = script.replace("/sys/devices/system/memory", str(root))
    script = script.replace("/tmp/race-iter", str(tmp_path / "iter"))
    (root / "memory16").mkdir()
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "race-iter 1 ok" and lines[-1].startswith("race-done ")
    assert (root / "remove").read_text().strip() == "0x80000000"


@pytest.mark.parametrize("script", [
    race.loop_script([0x80000000, 0x88000000], 0x8000000, 30, "online_movable"),
    race.load_script(), race.stop_script()])
def test_scripts_are_valid_posix_sh(script):
    subprocess.run(["sh", "-n", "-c", script], check=True)


def test_load_records_pids_and_stop_waits_for_them_with_a_bound():
    load = race.load_script(readers=2, pressure_mb=16)
    assert load.count("echo $! >> /tmp/race/pids;") == 3
    assert "cat /sys/kernel/debug/kernel_page_tables > /dev/null" in load
    assert "bs=1M count=16" in load
    stop = race.stop_script(readers=2, wait_s=5)
    assert stop.startswith("touch /tmp/race/stop; end=$(( $(date +%s) + 5 ));")
    assert stop.endswith("echo reads $(cat /tmp/race/reads-0 2>/dev/null || echo 0) "
                         "$(cat /tmp/race/reads-1 2>/dev/null || echo 0)")


def test_race_is_named_only_and_runs_without_gdb():
    assert runner.METHODS["race"] is race.METHOD and "race" not in runner.ORDER
    assert race.METHOD.order_checks is False
    opts = runner.method_options(race.METHOD, runner.RunOptions(race_seconds=12))
    assert opts.seconds == 12


def test_summary_says_why_order_checks_are_off_for_race():
    run = MethodRun("race", {}, options={"walker": True, "order_check": "off"})
    rep = report.build_report({}, [run], {"race": checks.judge(run)})
    text = report.summary(rep)
    assert "order checks: off (race: gdb stops would serialise the concurrency it " \
           "needs) for race" in text


@pytest.mark.parametrize("page,visible,movable,block", [
    ("CONFIG_ARM64_4K_PAGES", 1024, 256, 128), ("CONFIG_ARM64_16K_PAGES", 1024, 256, 128),
    ("CONFIG_ARM64_64K_PAGES", 2048, 1024, 512)])
def test_probe_layout_follows_the_kernels_block_size(page, visible, movable, block):
    """arch/arm64/include/asm/sparsemem.h: 512 MiB sections with 64K pages; a
    whole movable boot block free of early reservations needs 2 of 4 blocks."""
    from harness.drive import probe
    from harness.session import BootOptions
    kconfig = {page: "y"}
    assert probe.layout(kconfig) == (visible, movable, block)
    opts = probe.boot_options(BootOptions(), kconfig)
    assert opts.mem_mb == visible + probe.HIDDEN_MB
    assert f"mem={visible}M" in opts.cmdline and f"movablecore={movable}M" in opts.cmdline
    assert race.boot_options(BootOptions(), kconfig) == replace(opts, tcg_thread="multi")


def test_race_runs_its_vcpus_on_host_threads_unless_told():
    """MTTCG for the race (readers truly alongside the removals); the user's
    --tcg-thread wins."""
    from harness.session import BootOptions
    assert race.boot_options(BootOptions()).tcg_thread == "multi"
    assert race.boot_options(BootOptions(tcg_thread="single")).tcg_thread == "single"
