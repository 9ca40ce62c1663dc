"""The model set-up that `train`, `--dry-run` and the app share: checks and warnings the same everywhere."""

from __future__ import annotations

import warnings

from sdlora.config import config_from_dict
from sdlora.train.model_setup import kohya_skipped, setup_model


def test_layers_outside_kohyas_blocks_are_named_in_a_warning(shapes_dir, capsys):
    config = config_from_dict({"model": "tiny", "data": {"dir": str(shapes_dir), "resolution": 64},
                               "network": {"rank": 2, "targets": ["to_q", "conv_in", "time_embedding.linear_1"]}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        setup = setup_model(config)
    assert {"conv_in", "time_embedding.linear_1"} == set(kohya_skipped(setup.unet_modules))
    messages = [str(w.message) for w in caught if "kohya" in str(w.message)]
    assert len(messages) == 1 and "2 layer(s)" in messages[0] and "conv_in" in messages[0]
    # The same warning at --dry-run, on stdout with the plan.
    from sdlora.commands.train import dry_run

    dry_run(config)
    assert "skipped by kohya's sd-scripts loader" in capsys.readouterr().out


def test_attention_and_resnet_targets_warn_nothing(shapes_dir):
    config = config_from_dict({"model": "tiny", "data": {"dir": str(shapes_dir), "resolution": 64},
                               "network": {"rank": 2, "targets": ["to_q", "to_k", "conv1", "conv2"]}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        setup = setup_model(config)
    assert setup.unet_modules and not kohya_skipped(setup.unet_modules)
    assert not [w for w in caught if "kohya" in str(w.message)]
