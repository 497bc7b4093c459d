import pytest

from mfs import levels
from mfs.configutil import ConfigError, Section, load_yaml


def test_level_zero_is_served_first_on_targets():
    assert levels.queue_of(0) == 7 and levels.queue_of(7) == 0
    assert levels.queue_of(200) == 0  # clamped to the lowest
    assert all(levels.level_of_queue(levels.queue_of(l)) == l for l in range(8))
    assert levels.default_dscp(0) == 56 and levels.default_dscp(7) == 0


def test_section_errors_name_file_key_and_allowed(tmp_path):
    s = Section({"policy": {"K": 12, "scheduler": "lifo", "typo": 1}}, "ctl.yaml")
    p = s.section("policy")
    with pytest.raises(ConfigError) as e:
        p.integer("K", lo=2, hi=8)
    assert str(e.value) == "ctl.yaml: policy.K: 12 is out of range (allowed: 2..8)"
    with pytest.raises(ConfigError, match=r"policy.scheduler: 'lifo' is not allowed \(allowed: mfs, fair\)"):
        p.choice("scheduler", ["mfs", "fair"])
    with pytest.raises(ConfigError, match="policy.typo: unknown key"):
        p.done()
    with pytest.raises(ConfigError, match="policy.E: is required"):
        p.number("E")
    assert p.number("U", default=0.5, lo=0, lo_open=True) == 0.5


def test_bad_yaml_names_file_and_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("a: [1, 2\nb: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML at line \d+"):
        load_yaml(f)
    with pytest.raises(ConfigError, match="cannot read"):
        load_yaml(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="expected a mapping"):
        Section([1, 2], "x.yaml")


def test_duplicate_key_is_an_error_not_a_silent_override(tmp_path):
    f = tmp_path / "dup.yaml"
    f.write_text("switches:\n  - name: s1\npolicy: {K: 8}\nswitches: []\n")
    with pytest.raises(ConfigError, match=r"dup.yaml: switches: duplicate key at line 4 \(first given at line 1\)"):
        load_yaml(f)
    g = tmp_path / "ok.yaml"
    g.write_text("a: {x: 1}\nb: {x: 2}\n")
    assert load_yaml(g) == {"a": {"x": 1}, "b": {"x": 2}}
