"""train.log_with tensorboard: event files under logs/ that TensorBoard itself reads."""

from __future__ import annotations

from sdlora.config import replace_keys
from test_recipe import recipe_config, train_run


def test_tensorboard_logs_are_readable_by_tensorboard(shapes_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = recipe_config(shapes_dir, tmp_path / "out", steps=3, log_with="tensorboard", validate_every=3,
                           data={"validation_split": 0.25})
    config = replace_keys(config, {"sample.prompts": ["a red circle"], "sample.steps": 2})
    _, result, events = train_run(config)
    logs = tmp_path / "out" / "r" / "logs"
    accumulator = EventAccumulator(str(logs), size_guidance={"images": 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    losses = [(s.step, s.value) for s in accumulator.Scalars("loss")]
    expected = [(e["step"], e["loss"]) for e in events if e["event"] == "step"]
    assert [s for s, _ in losses] == [1, 2, 3]
    assert all(abs(a[1] - b[1]) < 1e-6 for a, b in zip(losses, expected))
    assert [s.step for s in accumulator.Scalars("lr")] == [1, 2, 3]
    validation = [(e["step"], e["loss"]) for e in events if e["event"] == "validation"]
    assert [(s.step, round(s.value, 6)) for s in accumulator.Scalars("validation_loss")] == \
        [(s, round(v, 6)) for s, v in validation]
    assert "sample/00" in tags["images"]


def test_wandb_gets_the_same_numbers_offline(tmp_path, monkeypatch):
    """With a stand-in `wandb` module (the package is optional): init offline in the run folder, one log call
    per event with the event's numbers, finish on close."""
    import sys
    import types

    from sdlora.config import Config
    from sdlora.train.loggers import make_logger

    calls = []

    class Run:
        def log(self, values, step):
            calls.append(("log", values, step))

        def finish(self):
            calls.append(("finish",))

    fake = types.SimpleNamespace(init=lambda **kw: calls.append(("init", kw)) or Run(), Image=lambda p: ("image", p))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    config = replace_keys(Config(name="w"), {"train.log_with": "wandb"})
    logger = make_logger(config, tmp_path)
    logger({"event": "step", "step": 3, "loss": 0.5, "lr": 1e-4})
    logger({"event": "validation", "step": 3, "loss": 0.25})
    logger({"event": "sample", "step": 3, "images": ["a.png"]})
    logger.close()
    assert calls[0][0] == "init" and calls[0][1]["mode"] == "offline" and calls[0][1]["dir"] == str(tmp_path)
    assert calls[1:] == [("log", {"loss": 0.5, "lr": 1e-4}, 3), ("log", {"validation_loss": 0.25}, 3),
                         ("log", {"samples": [("image", "a.png")]}, 3), ("finish",)]


def test_wandb_missing_is_a_one_line_error(monkeypatch):
    import sys

    import pytest

    from sdlora.config import Config
    from sdlora.errors import SdloraError
    from sdlora.train.loggers import make_logger

    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    config = replace_keys(Config(), {"train.log_with": "wandb"})
    with pytest.raises(SdloraError, match="train.log_with: wandb is not installed; pip install wandb"):
        make_logger(config, __import__("pathlib").Path("."))
