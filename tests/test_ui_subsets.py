"""The app's side of data.subsets without a browser: the form field's text, the Concepts editor's item, the
command line and saved preset, the per-subset check and the folders checked against the roots."""

from __future__ import annotations

import pytest
import yaml

from conftest import make_shape_folder
from sdlora.config import Config, SubsetConfig, config_from_dict
from sdlora.errors import SdloraError
from ui.config_form import config_fields, config_to_widgets, overrides, preset_yaml, widgets_to_config
from ui.context import AppContext
from ui.paths import Roots
from ui.subsets_panel import check_subset, item_from_editor, parse_subsets, resolve_data_folders


def test_subsets_round_trip_through_the_form_the_command_line_and_a_saved_preset(tmp_path):
    project = tmp_path / "proj"
    fields = config_fields()
    config = config_from_dict({"data": {"subsets": [
        {"dir": str(project / "data" / "dog"), "repeats": 2, "trigger": "sks dog, photo"},
        {"dir": "/elsewhere/cat", "loss_weight": 0.5, "shuffle_tags": False}]}})
    widgets = config_to_widgets(fields, config)
    text = widgets[[f.key for f in fields].index("data.subsets")]
    assert text == (f"- {{dir: {project / 'data' / 'dog'}, repeats: 2, trigger: 'sks dog, photo'}}\n"
                    f"- {{dir: /elsewhere/cat, loss_weight: 0.5, shuffle_tags: false}}\n")
    assert widgets_to_config(fields, widgets) == config
    (override,) = overrides(Config(), config, fields)
    assert override.startswith('data.subsets=[{"dir": "') and '"shuffle_tags": false}]' in override
    assert config_from_dict({"data": {"subsets": yaml.safe_load(override.partition("=")[2])}}) == config
    saved = yaml.safe_load(preset_yaml(config, fields, project=project))
    assert saved["data"]["subsets"] == [{"dir": "data/dog", "repeats": 2, "trigger": "sks dog, photo"},
                                        {"dir": "/elsewhere/cat", "loss_weight": 0.5, "shuffle_tags": False}]


def test_a_bad_subsets_field_is_an_error_naming_the_item_and_key():
    fields = config_fields()
    widgets = config_to_widgets(fields, Config())
    widgets[[f.key for f in fields].index("data.subsets")] = "- {dir: a, repeats: 0}\n"
    with pytest.raises(SdloraError, match=r"^data.subsets\[0\].repeats: 0 is out of range"):
        widgets_to_config(fields, widgets)
    with pytest.raises(SdloraError, match=r"^data.subsets: expected a list"):
        parse_subsets("{dir: a}")


def test_the_editor_item_holds_the_folder_and_what_differs_from_the_defaults():
    fields = config_fields(SubsetConfig)
    values = {"dir": " datasets/dog ", "repeats": "3", "trigger": "sks dog", "loss_weight": "1.0",
              "caption_extension": "", "default_caption": "", "shuffle_tags": "off", "keep_tokens": "",
              "caption_dropout": "0.1", "tag_dropout": ""}
    item = item_from_editor(fields, [values[f.key] for f in fields])
    assert item == {"dir": "datasets/dog", "repeats": 3, "trigger": "sks dog", "shuffle_tags": False,
                    "caption_dropout": 0.1}
    values["shuffle_tags"] = "as data"
    values["repeats"] = "3.5"
    with pytest.raises(SdloraError, match=r"^Repeats \(repeats\): '3.5' is not a whole number"):
        item_from_editor(fields, [values[f.key] for f in fields])


def test_subset_folders_are_checked_against_the_roots_and_data_dir_may_be_empty(tmp_path):
    project = tmp_path / "proj"
    make_shape_folder(project / "datasets" / "dog", count=3)
    ctx = AppContext(roots=Roots.of(project))
    config = config_from_dict({"data": {"subsets": [{"dir": "datasets/dog"}]}})
    data = resolve_data_folders(ctx, config)
    assert data.dir == "" and data.subsets[0].dir == str((project / "datasets" / "dog").resolve())
    outside = config_from_dict({"data": {"subsets": [{"dir": "datasets/dog"}, {"dir": str(tmp_path)}]}})
    with pytest.raises(SdloraError, match="outside the allowed folders"):
        resolve_data_folders(ctx, outside)
    with pytest.raises(SdloraError, match="the path is empty"):
        resolve_data_folders(ctx, Config())  # no data.dir and no subsets: nothing to train on


def test_the_check_of_a_subset_counts_its_images_with_its_repeats(tmp_path):
    project = tmp_path / "proj"
    make_shape_folder(project / "datasets" / "dog", count=3)
    ctx = AppContext(roots=Roots.of(project))
    subset = parse_subsets("- {dir: datasets/dog, repeats: 4, trigger: sks}\n")[0]
    report = check_subset(ctx, subset, 0, 64, False, ".txt")
    assert "<b>data.subsets[0]</b> datasets/dog" in report
    assert "<b>3 of 3</b> image file(s) usable at 64px, 0 skipped; 12 samples per epoch." in report
    assert "0 of 3" in check_subset(ctx, subset, 0, 512, False, ".txt")  # too small at 512 px
