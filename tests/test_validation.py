"""Held-out validation loss: deterministic, comparable across runs, and the best checkpoint marked."""

from __future__ import annotations

import json

from sdlora.config import config_from_dict, replace_keys
from sdlora.data import build_dataset
from sdlora.train.validation import split_validation

from conftest import make_shape_folder
from test_recipe import recipe_config, train_run


def test_validation_split_is_deterministic_and_disjoint(shapes_dir):
    config = config_from_dict({"data": {"dir": str(shapes_dir), "resolution": 64, "validation_split": 0.25,
                                        "flip": True, "caption_dropout": 0.5}})
    first = split_validation(build_dataset(config.data), config)
    second = split_validation(build_dataset(config.data), config)
    train_paths = [e.path for e in first[0].records]
    val_paths = [e.path for e in first[1].records]
    assert len(val_paths) == 2 and len(train_paths) == 6 and not set(train_paths) & set(val_paths)
    assert val_paths == [e.path for e in second[1].records]
    assert first[1].config.flip is False and first[1].config.caption_dropout == 0.0  # seen without augmentation


def test_two_runs_with_the_same_seed_give_identical_validation_losses(shapes_dir, tmp_path):
    val_dir = make_shape_folder(tmp_path / "val", count=2, seed=7)
    curves = []
    for name in ("a", "b"):
        config = recipe_config(shapes_dir, tmp_path / "out", name=name, steps=4, validate_every=2,
                               data={"validation_dir": str(val_dir)})
        config = replace_keys(config, {"save.every": 2})
        _, result, events = train_run(config)
        curves.append([(e["step"], e["loss"]) for e in events if e["event"] == "validation"])
    assert curves[0] == curves[1] and [s for s, _ in curves[0]] == [0, 2, 4]
    assert len({loss for _, loss in curves[0]}) == 3  # the weights changed, so the loss did
    losses = dict(curves[0])
    best = json.loads((tmp_path / "out" / "a" / "checkpoints" / "best.json").read_text())
    best_step = min((2, 4), key=lambda s: losses[s])  # the checkpoints are at steps 2 and 4
    assert best["step"] == best_step and abs(best["validation_loss"] - losses[best_step]) < 1e-6
    assert best["path"].endswith(f"step-{best_step:06d}")


def test_validation_without_a_validation_set_is_an_error():
    import pytest

    from sdlora.errors import SdloraError

    with pytest.raises(SdloraError, match="train.validate_every: there is no validation set"):
        config_from_dict({"train": {"validate_every": 10}})
    with pytest.raises(SdloraError, match="data.validation_split and data.validation_dir"):
        config_from_dict({"data": {"validation_split": 0.1, "validation_dir": "x"}})


def test_the_console_prints_validation_events():
    import io

    from sdlora.events import ConsoleReporter, EventBus

    stream = io.StringIO()
    EventBus([ConsoleReporter(stream=stream, bar=False)]).emit("validation", step=20, loss=0.125, best=True)
    assert stream.getvalue() == "step 20: validation loss 0.125 (lowest so far)\n"


def test_the_best_checkpoint_survives_pruning(shapes_dir, tmp_path, monkeypatch):
    from sdlora.train.validation import Validator

    planned = iter([0.5, 0.1, 0.3, 0.4])  # validation losses at steps 0, 2, 4, 6: step 2 is the best
    monkeypatch.setattr(Validator, "__call__", lambda self, unet, autocast: next(planned))
    config = recipe_config(shapes_dir, tmp_path / "out", steps=6, validate_every=2,
                           data={"validation_split": 0.25})
    config = replace_keys(config, {"save.every": 2, "save.keep_checkpoints": 1})
    _, _, events = train_run(config)
    checkpoints = tmp_path / "out" / "r" / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step-*")) == ["step-000002", "step-000006"]
    assert json.loads((checkpoints / "best.json").read_text())["step"] == 2
    marks = [(e["step"], e.get("best")) for e in events if e["event"] == "checkpoint"]
    assert marks == [(2, True), (4, False), (6, False)]
