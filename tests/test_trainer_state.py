"""The loop's state in one place (Trainer.state, a LoopState): the loop adds no attribute to the Trainer, and a
resumed session's state starts from its checkpoint."""

from __future__ import annotations

from test_trainer import make_config

from sdlora.config import replace_keys
from sdlora.events import EventBus
from sdlora.train.rundir import RunPaths, new_run
from sdlora.train.trainer import LoopState, Trainer


def test_the_loop_keeps_its_state_in_trainer_state_only(shapes_dir, tmp_path):
    config = replace_keys(make_config(shapes_dir, tmp_path / "out", steps=3), {"save.every": 2})
    trainer = Trainer(config, new_run(config), EventBus())
    trainer.setup()
    before = set(vars(trainer))
    result = trainer.run()
    assert set(vars(trainer)) == before  # run() created no attribute of its own
    state = trainer.state
    assert isinstance(state, LoopState) and (state.start_step, state.step, state.bad_steps) == (0, 3, 0)
    assert state.losses == result.losses and len(state.losses) == 3 and state.started_at > 0


def test_a_resumed_session_starts_its_state_at_the_checkpoint(shapes_dir, tmp_path):
    config = replace_keys(make_config(shapes_dir, tmp_path / "out", steps=2), {"save.every": 2})
    first = Trainer(config, new_run(config), EventBus())
    first.setup()
    first.run()
    longer = replace_keys(config, {"train.steps": 3})
    resumed = Trainer(longer, RunPaths(tmp_path / "out" / "t", "t"), EventBus())
    resumed.setup()
    resumed.run(resume=True)
    assert (resumed.state.start_step, resumed.state.step, len(resumed.state.losses)) == (2, 3, 1)
