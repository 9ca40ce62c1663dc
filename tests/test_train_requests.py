"""sdlora.train.requests: "sample now" and "save now" reach a running trainer through files in the run folder and
are served after the next step, once."""

from __future__ import annotations

from sdlora.config import config_from_dict
from sdlora.events import EventBus
from sdlora.train.requests import request, take_requests
from sdlora.train.rundir import new_run
from sdlora.train.trainer import Trainer


def test_a_request_is_taken_once(tmp_path):
    assert take_requests(tmp_path) == set()
    request(tmp_path, "sample")
    request(tmp_path, "save")
    assert take_requests(tmp_path) == {"sample", "save"}
    assert take_requests(tmp_path) == set()


def test_the_trainer_samples_and_saves_after_the_step_it_was_asked_at(shapes_dir, tmp_path):
    config = config_from_dict({
        "name": "rq", "model": "tiny", "data": {"dir": str(shapes_dir), "resolution": 64},
        "network": {"rank": 4}, "train": {"steps": 3, "batch_size": 2, "seed": 1},
        "sample": {"prompts": ["a red circle"], "steps": 2}, "save": {"output_dir": str(tmp_path)}})
    paths = new_run(config)
    events = []
    trainer = Trainer(config, paths, EventBus([events.append]))
    trainer.setup()
    request(paths.root, "sample")  # waiting before the first step: served after step 1
    request(paths.root, "save")
    trainer.run()
    assert [e["step"] for e in events if e["event"] == "sample"] == [1, 3]  # asked-for, then the final one
    assert [e["step"] for e in events if e["event"] == "checkpoint"] == [1, 3]
    assert (paths.checkpoints / "step-000001" / "rq.safetensors").is_file()
    assert take_requests(paths.root) == set()
