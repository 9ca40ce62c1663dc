"""Presets and --set overrides: a typo gets a suggestion, wrong types and ranges name the key."""

from __future__ import annotations

import pytest

from sdlora.config import apply_overrides, config_from_dict, describe_options, load_config
from sdlora.errors import SdloraError


def test_defaults_fill_every_section():
    cfg = config_from_dict({})
    assert cfg.network.rank == 16 and cfg.network.effective_alpha == 16.0
    assert cfg.network.targets == ["to_q", "to_k", "to_v", "to_out.0"]
    assert cfg.train.mixed_precision == "no" and cfg.save.format == "kohya"


def test_unknown_key_suggests_the_nearest_valid_one():
    with pytest.raises(SdloraError) as err:
        config_from_dict({"train": {"setps": 10}})
    assert "train.setps" in str(err.value) and "train.steps" in str(err.value)


def test_unknown_section_suggests_a_section():
    with pytest.raises(SdloraError, match="did you mean 'network'"):
        config_from_dict({"netwrk": {"rank": 4}})


def test_wrong_type_names_key_and_expected_type():
    with pytest.raises(SdloraError, match=r"network\.rank: expected int, got str 'big'"):
        config_from_dict({"network": {"rank": "big"}})


def test_out_of_range_value_names_key_and_range():
    with pytest.raises(SdloraError, match=r"network\.dropout: 1\.5 is out of range \[0\.0, 0\.9\]"):
        config_from_dict({"network": {"dropout": 1.5}})


def test_choice_typo_suggests_choice():
    with pytest.raises(SdloraError, match="did you mean 'bf16'"):
        config_from_dict({"train": {"mixed_precision": "bf61"}})


def test_overrides_are_typed_and_validated(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("train:\n  steps: 10\n  lr: 1e-4\n", encoding="utf-8")
    cfg = load_config(preset, ["train.steps=200", "network.rank=8", "network.targets=[to_q, to_v]"])
    assert cfg.train.steps == 200 and cfg.network.rank == 8 and cfg.train.lr == pytest.approx(1e-4)
    assert cfg.network.targets == ["to_q", "to_v"]
    with pytest.raises(SdloraError, match=rf"{preset}: train\.steps: expected int"):
        load_config(preset, ["train.steps=lots"])


def test_bad_yaml_names_file_and_line(tmp_path):
    preset = tmp_path / "bad.yaml"
    preset.write_text("train:\n  steps: [1,\n", encoding="utf-8")
    with pytest.raises(SdloraError, match=r"bad\.yaml line \d+: not valid YAML"):
        load_config(preset)


def test_override_needs_key_value():
    with pytest.raises(SdloraError, match="expected KEY=VALUE"):
        apply_overrides({}, ["train.steps"])


def test_every_option_is_documented():
    rows = describe_options()
    assert len(rows) > 50
    assert all(help_text for _, help_text, _ in rows)


@pytest.mark.parametrize("preset", ["demo", "style", "character", "sdxl"])
def test_shipped_presets_are_valid(preset):
    from pathlib import Path

    path = Path(__file__).parent.parent / "presets" / f"{preset}.yaml"
    cfg = load_config(path)
    assert cfg.name == preset


def test_lcm_mode_defaults_to_rank_64_unless_the_preset_sets_one():
    assert config_from_dict({"mode": "lcm"}).network.rank == 64
    assert config_from_dict({"mode": "lcm"}).network.effective_alpha == 64  # alpha follows the rank
    assert config_from_dict({"mode": "lcm", "network": {"rank": 16}}).network.rank == 16
    assert config_from_dict({}).network.rank == 16


def test_a_validated_config_is_frozen_and_changed_only_by_copy():
    import dataclasses

    from sdlora.config import replace_keys

    config = config_from_dict({"train": {"steps": 10}, "save": {"every": 5}, "data": {"subsets": [{"dir": "b"}]}})
    for section, key in ((config, "name"), (config.train, "steps"), (config.network.block_lr, "up"),
                         (config.data.subsets[0], "dir")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(section, key, 1)
    changed = replace_keys(config, {"train.steps": 20, "network.block_lr.up": 0.5, "name": "b"})
    assert (changed.train.steps, changed.network.block_lr.up, changed.name, changed.save.every) == (20, 0.5, "b", 5)
    assert (config.train.steps, config.network.block_lr.up, config.name) == (10, 1.0, "lora")
    with pytest.raises(SdloraError, match="unknown key 'train.stepz'"):
        replace_keys(config, {"train.stepz": 1})
