"""The memory warning: once per run when a step's peak reaches 95% of the card's memory, with what to change.
The card's numbers are given through MemoryWatch's `read` argument, so this runs on the CPU."""

from __future__ import annotations

import io

from sdlora.config import TrainConfig
from sdlora.events import ConsoleReporter, EventBus
from sdlora.train.memory import MemoryWatch, memory_watch
from sdlora.train.rundir import new_run
from sdlora.train.trainer import Trainer
from test_trainer import make_config

GIB = 2**30


def test_warns_once_at_95_percent_naming_peak_total_and_settings():
    readings = iter([(90 * GIB, 100 * GIB), (95 * GIB, 100 * GIB), (99 * GIB, 100 * GIB)])
    watch = MemoryWatch(lambda: next(readings), TrainConfig(batch_size=8))
    assert watch.check(10) is None  # 90%
    message = watch.check(20)
    assert message.startswith("GPU memory nearly full at step 20: peak 95.0 GiB of 100.0 GiB (95%)")
    for setting in ("train.gradient_checkpointing: true", "train.optimizer: adamw8bit", "train.batch_size (now 8"):
        assert setting in message
    assert watch.check(30) is None  # once per run, even higher


def test_advice_leaves_out_settings_already_in_use():
    train = TrainConfig(batch_size=1, gradient_checkpointing=True, optimizer="adamw8bit")
    message = MemoryWatch(lambda: (GIB, GIB), train).check(1)
    assert "gradient_checkpointing" not in message and "adamw8bit" not in message
    assert "batch_size" not in message and "data.resolution" in message


def test_no_watch_on_the_cpu():
    import torch

    assert memory_watch(torch.device("cpu"), TrainConfig()) is None


def test_trainer_emits_one_warning_event_and_a_terminal_line(shapes_dir, tmp_path):
    config = make_config(shapes_dir, tmp_path / "out", steps=6, batch_size=2, report_every=2)
    terminal = io.StringIO()
    events: list[dict] = []
    trainer = Trainer(config, new_run(config), EventBus([events.append, ConsoleReporter(stream=terminal, bar=False)]))
    trainer.setup()
    readings = iter([(50, 100), (97, 100), (98, 100)])  # steps 2, 4, 6
    trainer.memory_watch = MemoryWatch(lambda: next(readings), config.train)
    assert trainer.run().status == "done"
    warnings = [e for e in events if e["event"] == "warning"]
    assert len(warnings) == 1 and warnings[0]["step"] == 4
    assert "(97%)" in warnings[0]["message"] and "train.gradient_checkpointing: true" in warnings[0]["message"]
    assert "warning: GPU memory nearly full at step 4" in terminal.getvalue()
