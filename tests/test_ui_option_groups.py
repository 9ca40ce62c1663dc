"""The Advanced section's headings: every train.* option under exactly one group of sdlora.config.GROUPS (said
once, next to its definition), every other option under exactly one heading."""

from __future__ import annotations

import pytest

from sdlora.config import GROUPS, opt
from ui.config_form import MAIN_KEYS, config_fields
from ui.option_groups import headings


def test_every_train_option_is_in_exactly_one_group():
    fields = config_fields()
    train = [f.key for f in fields if f.key.startswith("train.")]
    assert len(train) > 40
    ungrouped = [f.key for f in fields if f.key.startswith("train.") and f.group not in GROUPS]
    assert not ungrouped, f"give these opt(group=...) in sdlora/config.py: {ungrouped}"
    placed = [(h.name, f.key) for h in headings(fields) for f in h.fields]
    counts = {key: [name for name, k in placed if k == key] for key in (f.key for f in fields)}
    assert all(len(names) == 1 for names in counts.values()), {k: v for k, v in counts.items() if len(v) != 1}
    assert all(counts[key][0] in GROUPS for key in train)  # no heading "train" is left


def test_the_recipe_groups_hold_their_options_in_the_tabs_order():
    shown = headings([f for f in config_fields() if f.key not in MAIN_KEYS])
    by_name = {h.name: [f.key for f in h.fields] for h in shown}
    groups = [h.name for h in shown if h.is_group]
    assert groups == [name for name in GROUPS if name in by_name]  # GROUPS' order
    assert {"Optimizer", "Schedule", "Noise and loss", "EMA", "Validation", "Logging"} <= set(groups)
    assert {"train.adam_beta1", "train.optimizer_args", "network.block_lr.up"} <= set(by_name["Optimizer"])
    assert {"train.lr_cycles", "train.lr_power", "train.warmup_steps"} <= set(by_name["Schedule"])
    assert {"train.loss", "train.huber_c", "data.masks"} <= set(by_name["Noise and loss"])
    assert by_name["EMA"] == ["train.ema", "train.ema_decay", "train.ema_warmup"]
    assert set(by_name["Validation"]) == {"data.validation_dir", "data.validation_split", "train.validate_every"}
    assert "train.log_with" in by_name["Logging"]
    assert "data.validation_split" not in by_name["data"] and "data.dir" not in by_name["data"]  # main keys above
    # The sections keep the config's order, the groups standing where the train section was.
    names = [h.name for h in shown]
    assert names.index("network") < names.index(groups[0]) and names.index(groups[-1]) < names.index("sample")
    assert {h.elem_id for h in shown} >= {"train-group-noise-and-loss", "train-section-lcm"}


def test_a_group_that_is_not_in_groups_is_refused_where_the_option_is_defined():
    with pytest.raises(ValueError, match="Optimiser"):
        opt(1, help="x", group="Optimiser")
