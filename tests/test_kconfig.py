import pytest

from harness.errors import ConfigError, HarnessError
from harness.kernel import kconfig


def test_parse_set_unset_and_comments():
    opts = kconfig.parse_config_text(
        "# comment\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_S=\"x y\"\n\n")
    assert opts == {"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_S": '"x y"'}


def test_parse_rejects_garbage_with_location():
    with pytest.raises(HarnessError, match=r"frag:2: not a config line"):
        kconfig.parse_config_text("CONFIG_A=y\nFOO=1\n", "frag")


def test_merge_later_wins_and_render_roundtrip():
    a = kconfig.Fragment("a", "a", (("CONFIG_X", "y"), ("CONFIG_Y", "y")))
    b = kconfig.Fragment("b", "b", (("CONFIG_Y", "n"),))
    merged = kconfig.merge([a, b])
    assert merged == {"CONFIG_X": "y", "CONFIG_Y": "n"}
    assert kconfig.parse_config_text(kconfig.render(merged)) == merged


def test_apply_moves_requested_last_so_choices_switch():
    base = "CONFIG_VA_48=n\n# CONFIG_VA_48 is not set\nCONFIG_VA_52=y\nCONFIG_Z=y\n"
    out = kconfig.apply_to(base, {"CONFIG_VA_48": "y", "CONFIG_VA_52": "n"})
    lines = out.splitlines()
    assert lines[-2:] == ["CONFIG_VA_48=y", "# CONFIG_VA_52 is not set"]


def test_dropped_options_are_all_listed():
    requested = {"CONFIG_A": "y", "CONFIG_B": "y", "CONFIG_C": "n", "CONFIG_N": "4"}
    final = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=y\nCONFIG_N=5\n"
    with pytest.raises(ConfigError) as e:
        kconfig.validate(requested, final, {"CONFIG_B": "base"})
    assert e.value.dropped == ["CONFIG_B", "CONFIG_C", "CONFIG_N"]
    assert "CONFIG_B: requested y, got n  (from base)" in e.value.evidence
    assert "CONFIG_N: requested 4, got 5" in str(e.value)


def test_absent_option_counts_as_not_set():
    kconfig.validate({"CONFIG_GONE": "n"}, "CONFIG_A=y\n")
    with pytest.raises(ConfigError):
        kconfig.validate({"CONFIG_GONE": "y"}, "CONFIG_A=y\n")


def test_default_fragments_and_geometry_replacement():
    names = [f.name for f in kconfig.resolve_fragments([])]
    assert names == ["base", "4k-48"]
    names = [f.name for f in kconfig.resolve_fragments(["64k-42", "debug-vm"])]
    assert names == ["base", "64k-42", "debug-vm"]
    merged = kconfig.merge(kconfig.resolve_fragments(["64k-42"]))
    assert merged["CONFIG_PGTABLE_LEVELS"] == "2"
    assert "CONFIG_ARM64_VA_BITS_48" not in merged


def test_every_shipped_fragment_parses():
    for name in kconfig.available_fragments():
        frag = kconfig.load_fragment(name)
        assert frag.options, name
    geometries = [n for n in kconfig.available_fragments()
                  if kconfig.load_fragment(n).geometry]
    assert sorted(geometries) == ["16k-47", "4k-39", "4k-48", "4k-52", "64k-42", "64k-48"]


def test_unknown_fragment_names_the_known_ones():
    with pytest.raises(HarnessError, match="no config fragment 'nope'.*4k-48"):
        kconfig.load_fragment("nope")


def test_fragment_by_path(tmp_path):
    p = tmp_path / "mine.config"
    p.write_text("CONFIG_KASAN=y\n")
    frag = kconfig.load_fragment(str(p))
    assert frag.options == (("CONFIG_KASAN", "y"),) and not frag.geometry
