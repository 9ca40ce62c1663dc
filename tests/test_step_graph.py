"""train.cuda_graphs: step, the whole step recorded once per batch shape and replayed (sdlora/train/step_graph.py).

CUDA graphs need a GPU; on the CPU a stand-in recorder takes their place with the same contract: recording runs
nothing and hands back the loss tensor the replays write, and a replay reads the graph's own input tensors (the
batch is copied into them), the lr tensor the schedule fills, and the generator's state at replay time. What a
real graph adds (the addresses themselves) is checked on the GPU by bench/gpu_round.py's step-graph stage.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from test_recipe import train_run
from test_trainer import make_config

from sdlora.config import replace_keys
from sdlora.events import EventBus
from sdlora.train import trainer as trainer_module
from sdlora.train.rundir import RunPaths, new_run
from sdlora.train.step_graph import StepGraphs, shape_key, step_graph_blocker, tensor_lr
from sdlora.train.trainer import Trainer


class StandInRecorder:
    """Records `fn` without running it; each replay runs it again and writes its loss into one fixed tensor."""

    def __init__(self):
        self.recorded = 0

    def eager(self, fn):
        return fn()

    def record(self, fn):
        self.recorded += 1
        loss = torch.full((), float("nan"))

        def replay():
            loss.copy_(fn())

        return loss, replay


def linear_setup(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, fused=True)
    return model, optimizer


def body_for(model, optimizer):
    def body(batch):
        optimizer.zero_grad(set_to_none=True)
        loss = (model(batch["x"]).squeeze(-1) - batch["y"]).pow(2).mean()
        loss.backward()
        optimizer.step()
        return loss.detach()
    return body


def batches(count: int, rows=(4,)):
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(count):
        n = rows[i % len(rows)]
        x = torch.randn(n, 3, generator=g)
        out.append({"x": x, "y": x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3, "caption": ["c"] * n})
    return out


def test_replayed_steps_train_exactly_as_eager_steps_each_shape_warmed_then_recorded():
    data = batches(9, rows=(4, 4, 4, 2))  # shapes 4,4,4,2,4,4,4,2,4: two shapes, the second one seen twice
    model, optimizer = linear_setup()
    expected = [body_for(model, optimizer)(b).item() for b in data]
    expected_weight = model.weight.detach().clone()

    model, optimizer = linear_setup()
    recorder = StandInRecorder()
    graphs = StepGraphs(torch.device("cpu"), list(model.parameters()), recorder)
    body = body_for(model, optimizer)
    got, how = [], []
    for batch in data:
        loss, ran = graphs.run(batch, body)
        got.append(loss.item())
        how.append(ran)
    assert how == ["eager", "eager", "recorded", "eager", "replayed", "replayed", "replayed", "eager", "replayed"]
    assert recorder.recorded == 1  # the 2-row shape got its two warm-up steps, no recording yet
    assert got == expected
    assert torch.equal(model.weight, expected_weight)
    # Each step's loss is its own tensor, not the graph's output that the next replay overwrites.
    first, _ = graphs.run(data[0], body)
    second, _ = graphs.run(data[1], body)
    assert first.item() != second.item()


def test_the_graph_reads_its_own_input_copy_and_leaves_no_gradient_alive():
    model, optimizer = linear_setup()
    graphs = StepGraphs(torch.device("cpu"), list(model.parameters()), StandInRecorder(), warmup_steps=0)
    data = batches(2)
    recorded_batch = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in data[0].items()}
    graphs.run(recorded_batch, body_for(model, optimizer))
    recorded_batch["x"].zero_()  # the DataLoader's tensor of that step, reused: the graph keeps its own copy
    inputs = next(iter(graphs.shapes.values())).inputs
    assert torch.equal(inputs["x"], data[0]["x"])
    graphs.run(data[1], body_for(model, optimizer))
    assert torch.equal(inputs["x"], data[1]["x"])  # copied in before the replay
    assert shape_key(data[0]) == shape_key(data[1]) != shape_key(batches(1, rows=(2,))[0])


def test_a_failed_recording_is_reported_and_the_run_goes_on_eagerly():
    class Refuses(StandInRecorder):
        def record(self, fn):
            raise RuntimeError("operation not permitted when stream is capturing\nmore")

    model, optimizer = linear_setup()
    graphs = StepGraphs(torch.device("cpu"), list(model.parameters()), Refuses(), warmup_steps=1)
    body = body_for(model, optimizer)
    how = [graphs.run(b, body)[1] for b in batches(4)]
    assert how == ["eager", "failed", "eager", "eager"]
    assert graphs.failed == "RuntimeError: operation not permitted when stream is capturing"


def test_tensor_lr_is_filled_in_place_by_the_schedule_and_trains_as_a_float_lr():
    from diffusers.optimization import get_scheduler

    results = []
    for as_tensor in (False, True):
        model, optimizer = linear_setup()
        schedule = get_scheduler("cosine", optimizer=optimizer, num_warmup_steps=2, num_training_steps=8)
        if as_tensor:
            tensor_lr(optimizer, torch.device("cpu"))
            lr = optimizer.param_groups[0]["lr"]
        body = body_for(model, optimizer)
        for batch in batches(8):
            body(batch)
            schedule.step()
        if as_tensor:
            assert optimizer.param_groups[0]["lr"] is lr  # the same tensor: a recorded update reads its address
            assert float(lr) == pytest.approx(schedule.get_last_lr()[0])
        results.append(model.weight.detach().clone())
    assert torch.equal(results[0], results[1])


def test_blockers_name_the_key_that_keeps_a_run_from_one_graph(shapes_dir, tmp_path):
    config = make_config(shapes_dir, tmp_path, cuda_graphs="step")
    cached = replace_keys(config, {"data.cache": "memory"})
    assert step_graph_blocker(cached, distributed=False) is None
    cases = {"train.ema": True, "train.gradient_accumulation": 2, "train.optimizer": "prodigy",
             "network.type": "dylora", "train.gradient_checkpointing": True}
    for key, value in cases.items():
        reason = step_graph_blocker(replace_keys(cached, {key: value}), distributed=False)
        assert reason and reason.startswith(key + ":"), (key, reason)
    assert step_graph_blocker(config, distributed=False).startswith("data.cache: none")
    assert step_graph_blocker(cached, distributed=True).startswith("train.gpus:")


class StandInGraphTrainer(Trainer):
    def graph_recorder(self, generator):
        self.recorder = StandInRecorder()  # kept: the tests check that the run did record
        return self.recorder


@pytest.fixture
def graphs_on_the_cpu(monkeypatch):
    """The trainer believes it may use CUDA graphs (as on a GPU) and records through the stand-in."""
    monkeypatch.setattr(trainer_module, "use_cuda_graphs", lambda train, device: True)
    monkeypatch.setattr(trainer_module, "Trainer", StandInGraphTrainer)
    import test_recipe

    monkeypatch.setattr(test_recipe, "Trainer", StandInGraphTrainer)


def graph_warnings(events: list[dict]) -> list[dict]:
    """The warnings about CUDA graphs (others, such as a ResourceWarning an earlier test left to the garbage
    collector, may land in any run's events)."""
    return [e for e in events if e["event"] == "warning" and "cuda_graphs" in e["message"]]


def graph_config(shapes_dir, out, **train):
    train = {"steps": 6, "batch_size": 2, "scheduler": "cosine", "warmup_steps": 2, "max_grad_norm": 0.5,
             "cuda_graphs": "step", **train}
    config = make_config(shapes_dir, out, **train)
    return replace_keys(config, {"data.cache": "memory", "save.every": 3})


@pytest.mark.usefixtures("graphs_on_the_cpu")
def test_a_run_through_recorded_steps_ends_with_the_adapter_of_an_ordinary_run(shapes_dir, tmp_path, monkeypatch):
    trainer, result, events = train_run(graph_config(shapes_dir, tmp_path / "graph"))
    assert trainer.whole_step and result.status == "done"
    assert trainer.recorder.recorded == 1  # one shape: steps 1-2 eager, 3 recorded, 3-6 replayed
    start = next(e for e in events if e["event"] == "start")
    assert start["message"].endswith("; each step replayed as one CUDA graph (train.cuda_graphs: step)")
    assert not graph_warnings(events)
    graph_steps = [e for e in events if e["event"] == "step"]
    monkeypatch.undo()
    _, plain, plain_events = train_run(graph_config(shapes_dir, tmp_path / "plain", cuda_graphs="off"))
    plain_steps = [e for e in plain_events if e["event"] == "step"]
    assert [e["loss"] for e in graph_steps] == [e["loss"] for e in plain_steps]
    # The recorded update reads the lr as a float32 tensor (its events show it to float32's 7 digits).
    assert [e["lr"] for e in graph_steps] == pytest.approx([e["lr"] for e in plain_steps], rel=1e-6)
    assert len({e["lr"] for e in graph_steps}) > 3  # the schedule moved the lr the recorded steps read
    a, b = load_file(result.adapter_path), load_file(plain.adapter_path)
    assert a.keys() == b.keys()
    for k in a:  # equal but for the lr's float32 rounding (a relative 5e-8 per update)
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
    assert any(not torch.equal(a[k], load_file(tmp_path / "graph" / "t" / "checkpoints" / "step-000003" /
                                               "t.safetensors")[k]) for k in a)  # the recorded steps trained


@pytest.mark.usefixtures("graphs_on_the_cpu")
def test_a_recorded_run_resumes_to_a_bitwise_identical_adapter(shapes_dir, tmp_path):
    config = replace_keys(graph_config(shapes_dir, tmp_path / "out"), {"save.every": 2, "name": "r"})
    _, result, _ = train_run(config)
    full, part = tmp_path / "out" / "r", tmp_path / "part"
    shutil.copytree(full, part)  # as if cut off after its step-2 checkpoint
    for later in ("step-000004", "step-000006"):
        shutil.rmtree(part / "checkpoints" / later)
    (part / "r.safetensors").unlink()
    resumed_trainer, resumed, events = train_run(config, RunPaths(part, full.name), resume=True)
    assert resumed.status == "done" and [e["step"] for e in events if e["event"] == "step"] == [3, 4, 5, 6]
    assert resumed_trainer.recorder.recorded == 1  # the resumed session warmed up again, recorded, replayed
    a, b = load_file(full / "r.safetensors"), load_file(part / "r.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.usefixtures("graphs_on_the_cpu")
def test_a_run_that_cannot_be_one_graph_says_why_and_keeps_the_unet_graphs(shapes_dir, tmp_path):
    events: list[dict] = []
    config = graph_config(shapes_dir, tmp_path, ema=True)
    trainer = trainer_module.Trainer(config, new_run(config), EventBus([events.append]))
    trainer.setup()
    assert not trainer.whole_step and trainer.cuda_graphs
    warnings = [e["message"] for e in events if e["event"] == "warning"]
    assert any("train.cuda_graphs: step is not possible" in m and "train.ema" in m for m in warnings), warnings


@pytest.mark.usefixtures("graphs_on_the_cpu")
def test_auto_takes_the_whole_step_quietly_where_it_can_and_keeps_the_unet_graphs_where_not(
        shapes_dir, tmp_path):
    for train, expected in (({}, True), ({"ema": True}, False)):
        events: list[dict] = []
        config = graph_config(shapes_dir, tmp_path / str(expected), cuda_graphs="auto", **train)
        trainer = trainer_module.Trainer(config, new_run(config), EventBus([events.append]))
        trainer.setup()
        assert trainer.whole_step is expected and trainer.cuda_graphs is not expected
        assert not graph_warnings(events)


def test_a_step_that_cannot_be_recorded_warns_once_and_the_run_trains_on(shapes_dir, tmp_path, monkeypatch):
    class Refuses(StandInRecorder):
        def record(self, fn):
            raise RuntimeError("operation not permitted when stream is capturing")

    class RefusingTrainer(Trainer):
        def graph_recorder(self, generator):
            return Refuses()

    import test_recipe

    monkeypatch.setattr(trainer_module, "use_cuda_graphs", lambda train, device: True)
    monkeypatch.setattr(test_recipe, "Trainer", RefusingTrainer)
    trainer, result, events = train_run(graph_config(shapes_dir, tmp_path / "graph", cuda_graphs="auto"))
    warnings = graph_warnings(events)
    assert result.status == "done" and len(warnings) == 1 and warnings[0]["step"] == 3  # after 2 warm-up steps
    assert "could not be recorded" in warnings[0]["message"] and "capturing" in warnings[0]["message"]
    # The later steps went the ordinary way (compiled, a GPU run would compile the UNet again with its own graphs).
    assert not trainer.whole_step
    monkeypatch.undo()
    _, plain, plain_events = train_run(graph_config(shapes_dir, tmp_path / "plain", cuda_graphs="off"))
    assert ([e["loss"] for e in events if e["event"] == "step"]
            == [e["loss"] for e in plain_events if e["event"] == "step"])
