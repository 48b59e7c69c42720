"""bench/bench_objects.py: the Kbuild-line parser, the option map, the cold-build
timing estimate and the table, on a small SYNTHETIC source tree and O= tree
written by the tests (no kernel, no build). The last tests check the script's
own tables against kernel-configs/base.config."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import bench_objects as bo  # noqa: E402

from harness.kernel import kconfig  # noqa: E402


def entries(text):
    return {(e.kind, e.name, e.option, e.composite) for e in bo.parse_kbuild(text)}


# ------------------------------------------------------------ parser -------

def test_parse_obj_lines_dirs_and_continuations():
    text = """# SPDX comment
obj-y += core.o util.o   # trailing comment
obj-$(CONFIG_FOO) += foo.o \\
\tbar.o sub/
obj-$(subst m,y,$(CONFIG_BAZ)) += baz/
lib-y := libthing.o
obj-$(CONFIG_A)$(CONFIG_B) += ab.o
obj-$(foo-y) += ignored.o
obj-y += $(addprefix x/, y.o)
ccflags-y += -DX
"""
    assert entries(text) == {
        ("obj", "core.o", None, ""), ("obj", "util.o", None, ""),
        ("obj", "foo.o", "FOO", ""), ("obj", "bar.o", "FOO", ""),
        ("dir", "sub", "FOO", ""), ("dir", "baz", "BAZ", ""),
        ("obj", "libthing.o", None, ""), ("obj", "ab.o", "A", ""),
    }   # tokens of other make functions ($(addprefix ...)) are skipped


def test_parse_composites():
    text = """obj-$(CONFIG_BIG) += big.o
big-y := one.o two.o
big-$(CONFIG_EXTRA) += extra.o
small-objs := s1.o
"""
    assert entries(text) == {
        ("obj", "big.o", "BIG", ""),
        ("part", "one.o", None, "big"), ("part", "two.o", None, "big"),
        ("part", "extra.o", "EXTRA", "big"), ("part", "s1.o", None, "small"),
    }


def test_parse_if_blocks():
    text = """ifdef CONFIG_OUTER
obj-y += in_outer.o
ifeq ($(CONFIG_INNER),y)
obj-y += in_inner.o
else
obj-y += in_else.o
endif
obj-$(CONFIG_OWN) += own.o
endif
ifneq ($(CONFIG_NE),)
obj-y += ne.o
endif
ifeq ($(CONFIG_NEG),)
obj-y += neg.o
endif
obj-y += after.o
"""
    got = {e.name: e.option for e in bo.parse_kbuild(text)}
    assert got == {"in_outer.o": "OUTER", "in_inner.o": "INNER", "in_else.o": "OUTER",
                   "own.o": "OWN", "ne.o": "NE", "neg.o": None, "after.o": None}


def test_parse_root_relative_paths():
    text = "libs-$(CONFIG_EFI_STUB) += $(objtree)/drivers/firmware/efi/libstub/lib.a\n" \
           "obj-y += arch/$(SRCARCH)/\n"
    assert entries(text) == {("dir", "drivers/firmware/efi/libstub", "EFI_STUB", ""),
                             ("dir", "arch/arm64", None, "")}


def test_parse_selects_and_prompts():
    text = """config ACPI
\tbool "ACPI support"
\tselect PNP
\tselect IRQ_DOMAIN if OF
\t# a comment inside the block
\tselect THING

menu "Something"

config PNP
\tbool

config QUIET
\tdef_bool y
\tselect HIDDEN
endmenu
config VISIBLE
\ttristate
\tprompt "a prompt"
"""
    prompts: set = set()
    assert bo.parse_selects(text, prompts) == [
        ("ACPI", "PNP"), ("ACPI", "IRQ_DOMAIN"), ("ACPI", "THING"), ("QUIET", "HIDDEN")]
    assert prompts == {"ACPI", "VISIBLE"}


# ------------------------------------------------- a synthetic kernel -------

SOURCE = {
    "Kbuild": "obj-y += kernel/ drivers/ net/\n",
    "Makefile": "libs-y := lib/\n",
    "arch/arm64/Makefile": "libs-$(CONFIG_EFI_STUB) += $(objtree)/drivers/fw/stub/lib.a\n",
    "kernel/Makefile": "obj-y += fork.o\nobj-$(CONFIG_IKCONFIG) += configs.o\n",
    "lib/Makefile": "obj-y += string.o\n",
    "drivers/Makefile": "obj-$(CONFIG_ACPI) += acpi/\nobj-y += rtc/\n",
    "drivers/acpi/Makefile": "obj-y += acpica/ acpi.o\nacpi-y := bus.o scan.o\n"
                             "acpi-$(CONFIG_ACPI_PROCESSOR) += processor.o\n",
    "drivers/acpi/acpica/Makefile": "obj-y += ev.o ex.o hw.o\n",
    "drivers/rtc/Makefile": "obj-$(CONFIG_RTC_CLASS) += class.o\n"
                            "obj-$(CONFIG_RTC_LIB) += lib.o\n",
    "drivers/fw/stub/Makefile": "lib-y := efi-stub.o\n",
    "net/Makefile": "obj-$(CONFIG_INET) += ipv4/\n",
    "net/ipv4/Makefile": "obj-y := tcp.o udp.o\n",
    "Kconfig": "config ACPI\n\tbool \"ACPI\"\n\tselect PNP\n"
               "config ACPI_PROCESSOR\n\ttristate \"Processor\"\n\tselect THERMAL\n"
               "config THERMAL\n\tbool \"Thermal\"\n"
               "config RTC_CLASS\n\tbool \"RTC\"\n\tselect RTC_LIB\n"
               "config RTC_LIB\n\tbool\n"
               "config IKCONFIG\n\tbool \"config\"\n"
               "config INET\n\tbool \"inet\"\n",
    # another architecture's Kconfig must not count
    "arch/x86/Kconfig": "config X86\n\tbool\n\tselect RTC_CLASS\n",
}
OBJECTS = ["kernel/fork.o", "kernel/configs.o", "lib/string.o",
           "drivers/acpi/bus.o", "drivers/acpi/scan.o", "drivers/acpi/processor.o",
           "drivers/acpi/acpica/ev.o", "drivers/acpi/acpica/ex.o",
           "drivers/acpi/acpica/hw.o", "drivers/rtc/class.o", "drivers/rtc/lib.o",
           "drivers/fw/stub/efi-stub.o", "net/ipv4/tcp.o", "net/ipv4/udp.o",
           "scripts/dtc/dtc.o", "vmlinux.o"]
CONFIG = ["ACPI", "ACPI_PROCESSOR", "THERMAL", "RTC_CLASS", "RTC_LIB", "IKCONFIG",
          "INET", "EFI_STUB", "PNP"]


def write_tree(root: Path, files: dict) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def write_build(root: Path, objects, start: float = 1_000_000.0, step: float = 2.0,
                stamp: bool = True) -> Path:
    """A synthetic O= tree: .config at ``start``, object i done at
    start + step*(i+1), .harness-steps right after the last one."""
    root.mkdir(parents=True, exist_ok=True)
    (root / ".config").write_text("".join(f"CONFIG_{o}=y\n" for o in CONFIG)
                                  + "# CONFIG_VT is not set\n")
    os.utime(root / ".config", (start, start))
    t = start
    for o in objects:
        t += step
        p = root / o
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
        os.utime(p, (t, t))
    if stamp:
        (root / bo.STAMP).write_text(str(len(objects)))
        os.utime(root / bo.STAMP, (t + 1, t + 1))
    return root


@pytest.fixture
def synthetic(tmp_path):
    src = write_tree(tmp_path / "src", SOURCE)
    build = write_build(tmp_path / "build", OBJECTS)
    return src, build


def test_option_map(synthetic):
    src, _ = synthetic
    om = bo.OptionMap(src)
    got = {o: om.option(o) for o in OBJECTS}
    assert got == {
        "kernel/fork.o": bo.ALWAYS, "kernel/configs.o": "IKCONFIG",
        "lib/string.o": bo.ALWAYS,
        "drivers/acpi/bus.o": "ACPI", "drivers/acpi/scan.o": "ACPI",
        "drivers/acpi/processor.o": "ACPI_PROCESSOR",        # a composite's own part
        "drivers/acpi/acpica/ev.o": "ACPI", "drivers/acpi/acpica/ex.o": "ACPI",
        "drivers/acpi/acpica/hw.o": "ACPI",                  # inherited two levels
        "drivers/rtc/class.o": "RTC_CLASS", "drivers/rtc/lib.o": "RTC_LIB",
        "drivers/fw/stub/efi-stub.o": "EFI_STUB",            # from the arch Makefile
        "net/ipv4/tcp.o": "INET", "net/ipv4/udp.o": "INET",
        "scripts/dtc/dtc.o": bo.HOST, "vmlinux.o": bo.LINK,
    }
    assert om.dir_chain("drivers/acpi/acpica") == [None, "ACPI", None]


def test_cold_times_estimate(tmp_path):
    objs = ["a/1.o", "a/2.o", "b/3.o", "b/4.o"]
    build = write_build(tmp_path / "b", objs, start=100.0, step=3.0)
    # -j2: each object is charged the time since the object two before it
    # finished (the first two: since the .config was written)
    assert bo.cold_times(build, objs, jobs=2) == {
        "a/1.o": 3.0, "a/2.o": 6.0, "b/3.o": 6.0, "b/4.o": 6.0}
    assert bo.cold_times(build, objs, jobs=1) == {o: 3.0 for o in objs}
    # rebuilt after the cold build (mtime after .harness-steps): no estimate
    os.utime(build / "b/4.o", (500.0, 500.0))
    times = bo.cold_times(build, objs, jobs=2)
    assert times["b/4.o"] is None and times["b/3.o"] == 6.0
    assert bo.timed_fraction(build) == 0.75


def test_pick_timing_tree_prefers_the_least_disturbed_same_objects(tmp_path):
    default = write_build(tmp_path / "default", OBJECTS)
    for o in OBJECTS[:10]:                      # most rebuilt later: not cold-timed
        os.utime(default / o, (9e6, 9e6))
    slow = write_build(tmp_path / "slow", OBJECTS, step=5.0)       # same .config
    geometry = write_build(tmp_path / "geometry", OBJECTS, step=3.0)
    with open(geometry / ".config", "a") as f:                     # 2 lines away
        f.write("CONFIG_ARM64_VA_BITS_39=y\nCONFIG_PGTABLE_LEVELS=3\n")
    other = write_build(tmp_path / "other", OBJECTS[:5], step=1.0)  # other objects
    tree, diff = bo.pick_timing_tree(default, [default, other, slow, geometry])
    assert tree == geometry and diff == ["ARM64_VA_BITS_39", "PGTABLE_LEVELS"]
    assert bo.pick_timing_tree(default, [slow, other]) == (slow, [])
    # nothing alike: the nearest .config
    assert bo.pick_timing_tree(default, [other])[0] == other
    fresh = write_build(tmp_path / "fresh", OBJECTS)
    assert bo.pick_timing_tree(fresh, [slow, geometry]) == (fresh, [])


def test_object_table_by_directory(synthetic, tmp_path):
    src, build = synthetic
    kunit = write_build(tmp_path / "kunit", ["kernel/fork.o", "lib/kunit/test.o",
                                             "lib/kunit/assert.o", "lib/string.o"])
    needs = {"ACPI": "acpi boot", "INET": "ssh"}
    t = bo.object_table(build, source=src, depth=2, kunit_dir=kunit,
                        requested={"CONFIG_ACPI": "y", "CONFIG_INET": "y"}, needs=needs)
    assert t.total == len(OBJECTS) and t.kunit_total == 4
    rows = {r.key: r for r in t.rows}
    acpi = rows["drivers/acpi"]
    assert acpi.objects == 6 and acpi.share == pytest.approx(6 / 16)
    assert acpi.options == [("ACPI", 5), ("ACPI_PROCESSOR", 1)]
    assert acpi.need == "acpi boot" and acpi.origin == "base.config" and acpi.kunit == 0
    assert rows["net/ipv4"].need == "ssh"
    assert rows["lib"].kunit == 1 and rows["kernel"].kunit == 1
    assert rows["lib/kunit"].objects == 0 and rows["lib/kunit"].kunit == 2
    assert rows["scripts/dtc"].need == "build tools run on the host"
    assert [r.key for r in t.rows][0] == "drivers/acpi"       # most objects first
    # every object of the cold build is timed: 16 objects, 2 s apart, -j2:
    # the first 2 s and 4 s after the .config, the 14 others 4 s each
    assert t.timed == 16 and t.total_seconds == pytest.approx(2.0 + 4.0 + 14 * 4.0)


def test_object_table_by_option_origins_and_candidates(synthetic):
    src, build = synthetic
    needs = {"ACPI": "acpi boot", "INET": "ssh"}
    t = bo.object_table(build, source=src, by="option",
                        requested={"ACPI": "y", "INET": "y", "RTC_CLASS": "y"}, needs=needs)
    rows = {r.key: r for r in t.rows}
    assert rows["ACPI"].objects == 5 and rows["ACPI"].origin == "base.config"
    assert rows["RTC_LIB"].origin == "selected by RTC_CLASS"
    assert rows["IKCONFIG"].origin == "default" and rows["IKCONFIG"].need == "?"
    assert rows[bo.ALWAYS].objects == 2 and rows[bo.LINK].objects == 1
    # default-only options with a prompt, each with what only it selects
    cands = {r.key: r for r in t.candidates}
    assert set(cands) == {"ACPI_PROCESSOR", "IKCONFIG"}
    assert cands["ACPI_PROCESSOR"].origin == "default; with THERMAL"
    assert rows["ACPI_PROCESSOR"].need == "?"


def test_need_through_a_selecting_option():
    enabled = {"ACPI": "y", "PNP": "y", "PNPACPI": "y"}
    rev = {"PNP": {"ACPI", "X86"}, "PNPACPI": {"PNP"}}
    needs = {"ACPI": "acpi boot"}
    assert bo.need_of("PNP", enabled, rev, needs) == "via ACPI: acpi boot"
    assert bo.need_of("PNPACPI", enabled, rev, needs) == "via ACPI: acpi boot"
    assert bo.need_of("LONELY", {"LONELY": "y"}, rev, needs, prompts=set()) \
        .startswith("no prompt")
    assert bo.brings("ACPI", enabled, rev, {}) == ["PNP", "PNPACPI"]
    assert bo.brings("ACPI", enabled, rev, {"PNP": "y"}) == []


def test_format_rows_marks_untimed_and_the_rest(synthetic):
    src, build = synthetic
    t = bo.object_table(build, source=src, timing_dir=build)
    lines = bo.format_rows(t.rows, "directory", top=3, kunit=False)
    assert lines[0].split()[:4] == ["directory", "objects", "share", "~cpu"]
    assert len(lines) == 5 and lines[-1].startswith("(")
    assert sum(int(line.split()[1]) for line in lines[1:4]) + int(lines[-1].split()[2]) \
        == len(OBJECTS)


def test_compiler_of_reads_a_saved_command(tmp_path):
    (tmp_path / "mm").mkdir()
    (tmp_path / "mm" / ".slub.o.cmd").write_text(
        "savedcmd_mm/slub.o := ccache aarch64-linux-gnu-gcc -Wp,-MMD,mm/.slub.o.d\n")
    assert bo.compiler_of(tmp_path) == "ccache aarch64-linux-gnu-gcc"
    (tmp_path / "mm" / ".slub.o.cmd").write_text(
        "savedcmd_mm/slub.o := aarch64-linux-gnu-gcc -nostdinc\n")
    assert bo.compiler_of(tmp_path) == "aarch64-linux-gnu-gcc"
    assert bo.compiler_of(tmp_path / "none") == "unknown compiler"


def test_kunit_dir_found_by_source_identity(tmp_path):
    write_build(tmp_path / "kunit" / "other" / "build", ["a/x.o"])
    mine = write_build(tmp_path / "kunit" / "abc123" / "build", ["a/x.o"])
    assert bo.find_kunit_dir(tmp_path, "abc123") == mine
    assert bo.find_kunit_dir(tmp_path / "nowhere", "abc123") is None


# ------------------------------------------- the script's own tables -------

def test_every_option_base_config_asks_for_says_who_needs_it():
    base = kconfig.load_fragment("base").as_dict()
    wanted = [k.removeprefix("CONFIG_") for k, v in base.items() if v == "y"]
    missing = [o for o in wanted if o not in bo.NEEDS and o != "EXPERT"]
    assert not missing, f"add these to bench_objects.NEEDS: {missing}"


def test_proposals_name_real_base_config_lines():
    base = kconfig.load_fragment("base").as_dict()
    for prop in bo.PROPOSALS:
        assert prop.why and prop.risk and prop.unset
        for opt in prop.unset:
            # either base.config asks for it (the line to turn off) or it is a
            # default base.config does not mention yet (a line to add)
            assert base.get("CONFIG_" + opt, "y") == "y", (prop.name, opt)
    names = [p.name for p in bo.PROPOSALS + bo.APPLIED]
    assert len(names) == len(set(names))


def test_applied_proposals_are_off_in_base_config():
    base = kconfig.load_fragment("base").as_dict()
    for prop in bo.APPLIED:
        first, *rest = prop.unset          # the others depend on the first
        assert base.get("CONFIG_" + first) == "n", (prop.name, first)
        for opt in rest:
            assert base.get("CONFIG_" + opt, "n") == "n", (prop.name, opt)


def test_scenario_of_drops_via_prefixes_and_the_detail():
    assert bo.scenario_of("ssh: TCP/IPv4 to dropbear") == "ssh"
    assert bo.scenario_of("via ACPI: acpi boot (acpi-dimm): pc-dimm needs GED") == \
        "acpi boot (acpi-dimm)"
    assert bo.scenario_of("via NET: via INET: ssh: x") == "ssh"
    assert bo.scenario_of("core kernel (built whatever the config)") == \
        "core kernel (built whatever the config)"
    assert bo.scenario_of("") == "?"


def test_by_scenario_sums_options_and_puts_the_excess_first(synthetic, tmp_path):
    """SYNTHETIC tree: ACPI and its selections count for the acpi boot, INET
    for ssh; kunit.py's objects are subtracted per scenario."""
    import benchlib as bl
    src, build = synthetic
    kunit = write_build(tmp_path / "kunit", ["kernel/fork.o", "lib/string.o",
                                             "lib/kunit/test.o"])
    needs = {"ACPI": "acpi boot: GED", "INET": "ssh: dropbear"}
    t = bo.object_table(build, source=src, by="option", kunit_dir=kunit,
                        requested={"ACPI": "y", "INET": "y"}, needs=needs)
    got = {s.name: s for s in bo.by_scenario(t.rows)}
    assert got["acpi boot"].objects == 5 and got["acpi boot"].kunit == 0
    assert got["ssh"].objects == 2 and dict(got["ssh"].options) == {"INET": 2}
    assert sum(s.kunit for s in got.values()) == 3           # every kunit.py object once
    assert [s.name for s in bo.by_scenario(t.rows)][0] == "acpi boot"
    bl.RESULTS.clear()
    bo.print_scenarios(bo.by_scenario(t.rows), ["bench_objects.py"], kunit)
    figs = {f["key"]: f for f in bl.RESULTS}
    assert figs["objects_for_acpi_boot"]["value"] == 5
    assert figs["objects_for_acpi_boot"]["kunit"]["value"] == 0
    assert not figs["objects_for_acpi_boot"]["readme"]          # fewer than 10 beyond
    assert all(f["value"] > 0 for f in figs.values())           # none for nothing of ours
