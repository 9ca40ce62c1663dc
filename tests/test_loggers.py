"""train.log_with tensorboard: event files under logs/ that TensorBoard itself reads."""

from __future__ import annotations

from test_recipe import recipe_config, train_run


def test_tensorboard_logs_are_readable_by_tensorboard(shapes_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = recipe_config(shapes_dir, tmp_path / "out", steps=3, log_with="tensorboard", validate_every=3,
                           data={"validation_split": 0.25})
    config.sample.prompts = ["a red circle"]
    config.sample.steps = 2
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
