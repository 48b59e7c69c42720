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
    text = race.loop_script([0x80000000, 0x88000000], 0x8000000, 30, "online_movable", 25)
    body = text.splitlines()
    assert body[2] == "now; start=$t; end=$(( start + 30 )); n=0; tasks; p0=$p"
    assert body[4] == "while [ $n -lt 25 ] && now && [ $t -lt $end ]; do"
    assert "  if [ $n -gt 1 ]; then     # the first round starts from online" in body
    assert "  if [ $((n % 4)) -eq 1 ]; then   # a full round: online, offline (migration)" \
        in body
    assert ("    [ $n -eq 1 ] || echo online_movable > /sys/devices/system/memory/memory17/"
            "state || fail 'online 0x88000000'") in body
    assert ("  echo 0x80000000 > /sys/devices/system/memory/remove "
            "|| fail 'remove 0x80000000'") in body
    assert body[-1] == "now; tasks; echo race-done $n $(( t - start )) $(( p - p0 ))"


def faked_loop(tmp_path, seconds: int, iterations: int = race.ITERATIONS) -> str:
    """The loop for one block, against a fake sysfs in tmp_path/memory."""
    root = tmp_path / "memory"
    (root / "memory16").mkdir(parents=True)
    script = race.loop_script([0x80000000], 0x8000000, seconds, "online_movable", iterations)
    script = script.replace("/sys/devices/system/memory", str(root))
    return script.replace("/tmp/race-iter", str(tmp_path / "iter"))


def test_loop_script_runs_in_a_shell(tmp_path):
    """The loop's control flow in a real sh, against a fake sysfs: the first
    round offlines and removes what is online, later rounds probe and remove,
    every 4th onlines and offlines in between."""
    root = tmp_path / "memory"
    script = faked_loop(tmp_path, 2)
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "race-iter 1 ok" and lines[-1].startswith("race-done ")
    assert (root / "remove").read_text().strip() == "0x80000000"


def test_loop_script_stops_at_its_rounds_before_its_bound(tmp_path):
    """A count, not a time: 3 rounds against a fake sysfs end the loop long
    before its 60 s bound, and race-done says how many and how long."""
    script = faked_loop(tmp_path, 60, 3)
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:3] == ["race-iter 1 ok", "race-iter 2 ok", "race-iter 3 ok"]
    n, seconds, tasks = lines[-1].split()[1:]
    assert n == "3" and int(seconds) < 10 and int(tasks) >= 0


def test_loop_and_load_start_no_process(tmp_path):
    """The loop and the load run in shell builtins only (a process exiting
    while hot-remove rewrites memblock meets the stock kernel's race, see
    checks.STOCK_REPORTS): with no PATH at all, both still run, and nothing is
    'not found'. The loop's task count comes from /proc/stat."""
    loop = faked_loop(tmp_path, 60, 3)
    dump, wx, load_dir = tmp_path / "dump", tmp_path / "wx", tmp_path / "race"
    dump.write_text("a\nb\n")
    wx.write_text("SUCCESS\n")
    load_dir.mkdir()
    load = race.load_script(readers=1, pressure_mb=1).split("mkdir -p /tmp/race; ", 1)[1]
    load = load.replace(race.PTDUMP, str(dump)).replace(race.WX, str(wx))
    load = load.replace(race.LOAD_DIR, str(load_dir))
    empty = {"PATH": str(tmp_path / "no-commands-here")}
    shell = subprocess.run(["sh", "-c", "command -v sh"], capture_output=True,
                           text=True).stdout.strip()
    started = subprocess.run([shell, "-c", load], capture_output=True, text=True,
                             timeout=30, env=empty)
    try:
        assert started.stdout.strip() == "started" and not started.stderr, started
        out = subprocess.run([shell, "-c", loop], capture_output=True, text=True,
                             timeout=30, env=empty)
        assert out.returncode == 0 and not out.stderr, out
        assert out.stdout.splitlines()[-1].startswith("race-done 3 ")
        def counted() -> str:
            count = load_dir / "reads-0"
            return count.read_text().strip() if count.exists() else ""
        seen = False
        for _ in range(100):       # the reader read, the pressure job wrote
            seen = (load_dir / "fill").exists() and counted().isdigit()
            if seen:
                break
            subprocess.run(["sleep", "0.05"], check=True)
        assert seen, (list(load_dir.iterdir()), counted())
    finally:
        (load_dir / "stop").touch()

@pytest.mark.parametrize("script", [
    race.loop_script([0x80000000, 0x88000000], 0x8000000, 30, "online_movable"),
    race.load_script(), race.stop_script()])
def test_scripts_are_valid_posix_sh(script):
    subprocess.run(["sh", "-n", "-c", script], check=True)


def test_load_records_pids_and_stop_waits_for_them_with_a_bound():
    load = race.load_script(readers=2, pressure_mb=16, wx_readers=1)
    assert load.count("echo $! >> /tmp/race/pids;") == 4
    assert "while read -r l; do :; done < /sys/kernel/debug/kernel_page_tables" in load
    assert ("if [ -e /sys/kernel/debug/check_wx_pages ]; then (n=0; while [ ! -e "
            "/tmp/race/stop ]; do read -r l < /sys/kernel/debug/check_wx_pages && ") in load
    assert "while [ $j -lt 1024 ]" in load and "cat " not in load and "dd " not in load
    stop = race.stop_script(readers=2, wait_s=5, wx_readers=1)
    assert stop.startswith("touch /tmp/race/stop; end=$(( $(date +%s) + 5 ));")
    assert stop.endswith("echo reads $(cat /tmp/race/reads-0 2>/dev/null || echo 0) "
                         "$(cat /tmp/race/reads-1 2>/dev/null || echo 0) "
                         "wx $(cat /tmp/race/wx-0 2>/dev/null || echo 0)")
    assert "wx" not in race.stop_script(readers=1, wx_readers=0)


@pytest.mark.parametrize("line,counts", [
    ("reads 11 13 wx 7\n", (24, 7)), ("reads 11 13 wx 0", (24, 0)), ("reads 3 4", (7, 0))])
def test_reads_and_wx_walks_are_counted_apart(line, counts):
    assert race.parse_reads(line) == counts


@pytest.mark.parametrize("wx_there", [False, True])
def test_the_load_runs_in_a_shell(tmp_path, wx_there):
    """The load and its stop in a real sh, the dump and check_wx_pages plain
    files: the readers count; without check_wx_pages (a kernel without it)
    the W+X walkers never start and the stop reports 0."""
    dump, wx = tmp_path / "dump", tmp_path / "wx"
    dump.write_text("x\n")
    if wx_there:
        wx.write_text("SUCCESS\n")
    load = race.load_script(readers=1, pressure_mb=1).replace(race.PTDUMP, str(dump))
    load = load.replace(race.WX, str(wx)).replace(race.LOAD_DIR, str(tmp_path / "race"))
    stop = race.stop_script(readers=1, wait_s=5).replace(race.LOAD_DIR, str(tmp_path / "race"))
    assert subprocess.run(["sh", "-c", load], capture_output=True, text=True,
                          timeout=30).stdout.strip() == "started"
    subprocess.run(["sleep", "0.5"], check=True)
    out = subprocess.run(["sh", "-c", stop], capture_output=True, text=True, timeout=30)
    reads, walks = race.parse_reads(out.stdout)
    assert reads >= 1 and (walks >= 1) == wx_there, out.stdout


def test_race_is_named_only_and_runs_without_gdb():
    assert runner.METHODS["race"] is race.METHOD and "race" not in runner.ORDER
    assert race.METHOD.order_checks is False
    opts = runner.method_options(race.METHOD, runner.RunOptions(race_seconds=12,
                                                                race_iterations=5))
    assert (opts.seconds, opts.iterations) == (12, 5)


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
