"""ui.config_form: the Train tab's form round-trips a config, and Start passes exactly what the user changed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sdlora.config import Config, config_from_dict, describe_options, load_config
from sdlora.errors import SdloraError
from ui.config_form import MAIN_KEYS, config_fields, config_to_widgets, overrides, preset_yaml, widgets_to_config

PRESETS = Path(__file__).resolve().parents[1] / "presets"


def test_every_config_option_has_a_widget_and_the_main_ones_exist():
    keys = [f.key for f in config_fields()]
    assert keys == [row[0] for row in describe_options()]
    assert set(MAIN_KEYS) <= set(keys)


@pytest.mark.parametrize("preset", sorted(PRESETS.glob("*.yaml")), ids=lambda p: p.stem)
def test_a_preset_round_trips_through_the_form(preset):
    fields = config_fields()
    config = load_config(preset)
    assert widgets_to_config(fields, config_to_widgets(fields, config)) == config
    assert overrides(config, config, fields) == []


def test_changed_fields_become_set_overrides_that_the_cli_reads_back():
    from sdlora.config import apply_overrides

    fields = config_fields()
    base = load_config(PRESETS / "demo.yaml")
    values = dict(zip([f.key for f in fields], config_to_widgets(fields, base)))
    values.update({"train.steps": 7.0, "name": "123", "sample.prompts": "a cat\n\n a dog ", "network.alpha": None,
                   "train.lr": "2e-4", "data.flip": False})
    config = widgets_to_config(fields, list(values.values()))
    sets = overrides(base, config, fields)
    assert "train.steps=7" in sets and 'name="123"' in sets
    raw = apply_overrides(yaml.safe_load((PRESETS / "demo.yaml").read_text()), sets)
    assert config_from_dict(raw) == config
    assert config.sample.prompts == ["a cat", "a dog"] and config.network.alpha is None
    assert config.train.lr == pytest.approx(2e-4)


def test_an_unset_optional_number_stays_unset():
    fields = config_fields()
    base = Config()
    widgets = config_to_widgets(fields, base)
    alpha = [f.key for f in fields].index("network.alpha")
    assert widgets[alpha] == ""  # shown empty, not as 0 (which would switch the LoRA off)
    assert widgets_to_config(fields, widgets).network.alpha is None
    widgets[alpha] = "8"
    assert widgets_to_config(fields, widgets).network.alpha == 8.0


def test_a_bad_value_names_its_key():
    fields = config_fields()
    values = dict(zip([f.key for f in fields], config_to_widgets(fields, Config())))
    values["train.optimizer"] = "sgd"
    with pytest.raises(SdloraError, match="train.optimizer"):
        widgets_to_config(fields, list(values.values()))


def test_a_saved_preset_names_only_what_differs_from_the_defaults(tmp_path):
    fields = config_fields()
    config = config_from_dict({"name": "mine", "network": {"rank": 4}, "train": {"steps": 9}})
    text = preset_yaml(config, fields, "saved from the app")
    assert text.startswith("# saved from the app\n")
    assert yaml.safe_load(text) == {"name": "mine", "model": "tiny", "network": {"rank": 4}, "train": {"steps": 9}}
    (tmp_path / "p.yaml").write_text(text)
    assert load_config(tmp_path / "p.yaml") == config


@pytest.mark.parametrize("typed,message", [("", "train.steps: the field is empty"),
                                           ("40O", "train.steps: '40O' is not a whole number"),
                                           ("4.5", "train.steps: '4.5' is not a whole number"),
                                           ("1e-4x", "train.steps: '1e-4x' is not a whole number")])
def test_an_empty_or_malformed_number_is_an_error_on_its_field(typed, message):
    fields = config_fields()
    values = dict(zip([f.key for f in fields], config_to_widgets(fields, load_config(PRESETS / "demo.yaml"))))
    values["train.steps"] = typed
    with pytest.raises(SdloraError) as err:
        widgets_to_config(fields, list(values.values()))
    assert str(err.value).startswith(message)
    values["train.steps"] = " 40 "
    assert widgets_to_config(fields, list(values.values())).train.steps == 40


def test_a_malformed_float_names_its_key_and_exponents_are_numbers():
    fields = config_fields()
    values = dict(zip([f.key for f in fields], config_to_widgets(fields, Config())))
    values["train.lr"] = "1e-4"
    assert widgets_to_config(fields, list(values.values())).train.lr == pytest.approx(1e-4)
    values["train.lr"] = "0.0O1"
    with pytest.raises(SdloraError, match=r"^train.lr: '0.0O1' is not a number"):
        widgets_to_config(fields, list(values.values()))


def test_a_saved_preset_names_folders_inside_the_project_relative_to_it(tmp_path):
    project = tmp_path / "proj"
    (project / "data" / "reg").mkdir(parents=True)
    fields = config_fields()
    config = config_from_dict({"name": "mine", "data": {"dir": str(project / "data"),
                                                         "reg_dir": str(project / "data" / "reg")},
                               "vae": str(tmp_path / "elsewhere" / "vae.safetensors")})
    raw = yaml.safe_load(preset_yaml(config, fields, project=project))
    assert raw["data"] == {"dir": "data", "reg_dir": "data/reg"}
    assert raw["vae"] == str(tmp_path / "elsewhere" / "vae.safetensors")  # outside the project: kept as given


def test_mapping_options_round_trip_through_the_form():
    fields = config_fields()
    config = config_from_dict({"train": {"optimizer": "came", "optimizer_args": {"clip_threshold": 2.0,
                                                                                 "eps": [1e-30, 1e-16]}},
                               "network": {"block_lr": {"up": 0.5}}})
    widgets = config_to_widgets(fields, config)
    index = [f.key for f in fields].index("train.optimizer_args")
    assert widgets[index] == "{clip_threshold: 2.0, eps: [1.0e-30, 1.0e-16]}"
    assert widgets_to_config(fields, widgets) == config
    assert 'train.optimizer_args={"clip_threshold": 2.0, "eps": [1e-30, 1e-16]}' in overrides(Config(), config, fields)
    assert "network.block_lr.up=0.5" in overrides(Config(), config, fields)
