"""Optimizers and learning-rate schedules: each optimizer resumes exactly, its arguments are checked, the
schedules give the lr of their formulas."""

from __future__ import annotations

import math

import pytest
import torch

from sdlora.config import TrainConfig, config_from_dict
from sdlora.errors import SdloraError
from sdlora.train.optim import evaluation_weights, make_lr_scheduler, make_optimizer

CPU = torch.device("cpu")
OPTIMIZERS = ["adamw", "prodigy", "adafactor", "adamw_schedulefree", "lion", "lion8bit", "came"]


def _train(optimizer_name: str, steps: int, state=None, start: int = 0, weights=None, evaluate_at=()):
    """A small least-squares problem; gradients fixed by the step number. Returns (weights, optimizer state)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 8)
    if weights is not None:
        model.load_state_dict(weights)
    params = list(model.parameters())
    train = TrainConfig(optimizer=optimizer_name, lr=1.0 if optimizer_name == "prodigy" else 1e-2, steps=steps)
    optimizer = make_optimizer(params, train, CPU)
    if state is not None:
        optimizer.load_state_dict(state)
    for step in range(start, steps):
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(32, 16, generator=g), torch.randn(32, 8, generator=g)
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        if step in evaluate_at:
            with evaluation_weights(optimizer, params):
                pass
    return {k: v.clone() for k, v in model.state_dict().items()}, optimizer.state_dict()


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_optimizer_resumes_bitwise_from_its_state_dict(name):
    full, _ = _train(name, 8)
    half_weights, half_state = _train(name, 4)
    resumed, _ = _train(name, 8, state=half_state, start=4, weights=half_weights)
    assert all(torch.equal(full[k], resumed[k]) for k in full), name
    start = _train(name, 0)[0]
    assert any(not torch.equal(full[k], start[k]) for k in full)  # it trained


def test_schedule_free_evaluation_weights_are_the_average_and_training_is_untouched():
    plain, _ = _train("adamw_schedulefree", 6)
    interrupted, _ = _train("adamw_schedulefree", 6, evaluate_at=(1, 3))
    assert all(torch.equal(plain[k], interrupted[k]) for k in plain)  # eval()/train() around saving leaves no trace

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = make_optimizer(list(model.parameters()), TrainConfig(optimizer="adamw_schedulefree", lr=0.1), CPU)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.ones(2, 4)).sum().backward()
        optimizer.step()
    y = model.weight.detach().clone()
    z = optimizer.state[model.weight]["z"]
    beta1 = optimizer.param_groups[0]["betas"][0]
    with evaluation_weights(optimizer, list(model.parameters())):
        x = model.weight.detach().clone()
    # Defazio et al. 2024, eq. 1: y = (1 - beta1)·z + beta1·x, so x = (y - (1 - beta1)·z) / beta1.
    assert torch.allclose(x, (y - (1 - beta1) * z) / beta1, atol=1e-6)
    assert not torch.allclose(x, y)
    assert torch.equal(model.weight, y)


def test_unknown_optimizer_argument_names_it_and_lists_the_valid_ones():
    train = config_from_dict({"train": {"optimizer": "prodigy", "optimizer_args": {"d_coeff": 2}}}).train
    with pytest.raises(SdloraError) as err:
        make_optimizer([torch.nn.Parameter(torch.zeros(2))], train, CPU)
    message = str(err.value)
    assert message.startswith("train.optimizer_args:") and "'d_coeff'" in message and "d_coef" in message
    ok = config_from_dict({"train": {"optimizer": "prodigy", "optimizer_args": {"d_coef": 2.0}}}).train
    assert make_optimizer([torch.nn.Parameter(torch.zeros(2))], ok, CPU).param_groups[0]["d_coef"] == 2.0


def test_a_missing_optimizer_package_is_one_line_naming_what_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("came_pytorch"):
            raise ImportError("No module named 'came_pytorch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.delitem(__import__("sys").modules, "came_pytorch", raising=False)
    with pytest.raises(SdloraError) as err:
        make_optimizer([torch.nn.Parameter(torch.zeros(2))], TrainConfig(optimizer="came"), CPU)
    assert "pip install came-pytorch" in str(err.value) and "\n" not in str(err.value)


def test_prodigy_defaults_to_lr_1_unless_the_preset_sets_it():
    assert config_from_dict({"train": {"optimizer": "prodigy"}}).train.lr == 1.0
    assert config_from_dict({"train": {"optimizer": "prodigy", "lr": 0.5}}).train.lr == 0.5
    assert config_from_dict({"train": {"optimizer": "adamw"}}).train.lr == 1e-4


def test_adafactor_relative_step_schedules_its_own_lr():
    model = torch.nn.Linear(4, 1)
    train = config_from_dict({"train": {"optimizer": "adafactor", "optimizer_args": {"relative_step": True}}}).train
    optimizer = make_optimizer(list(model.parameters()), train, CPU)
    scheduler = make_lr_scheduler(optimizer, train)
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    # Adafactor's relative step at step 1: min(1e-2, 1/sqrt(1)) (Shazeer & Stern 2018, sec. 8).
    assert scheduler.get_last_lr()[0] == pytest.approx(1e-2)
    bad = config_from_dict({"train": {"optimizer": "adafactor", "optimizer_args": {"relative_step": True},
                                      "scheduler": "cosine"}}).train
    with pytest.raises(SdloraError, match="train.scheduler"):
        make_lr_scheduler(make_optimizer(list(model.parameters()), bad, CPU), bad)


def _lrs(train: TrainConfig, steps: list[int]) -> dict[int, float]:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=train.lr)
    scheduler = make_lr_scheduler(optimizer, train)
    out = {}
    for step in range(max(steps) + 1):
        if step in steps:
            out[step] = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
    return out


def test_cosine_with_restarts_restarts_lr_cycles_times():
    train = TrainConfig(lr=1.0, steps=100, scheduler="cosine_with_restarts", lr_cycles=2, warmup_steps=0)
    got = _lrs(train, [0, 25, 49, 50, 75])
    expected = {t: 0.5 * (1 + math.cos(math.pi * ((2 * t / 100) % 1.0))) for t in got}
    assert got == pytest.approx(expected, abs=1e-9)
    assert got[50] == pytest.approx(1.0)  # the restart


def test_polynomial_decays_with_lr_power_after_the_warm_up():
    train = TrainConfig(lr=1.0, steps=100, scheduler="polynomial", lr_power=2.0, warmup_steps=10)
    got = _lrs(train, [5, 10, 55, 99])
    lr_end = 1e-7  # diffusers' default end value
    assert got[5] == pytest.approx(0.5)
    for t in (10, 55, 99):
        assert got[t] == pytest.approx((1.0 - lr_end) * (1 - (t - 10) / 90) ** 2 + lr_end, rel=1e-6)


def test_schedule_free_refuses_a_schedule_naming_both_keys():
    with pytest.raises(SdloraError) as err:
        config_from_dict({"train": {"optimizer": "adamw_schedulefree", "scheduler": "cosine"}})
    assert "train.scheduler" in str(err.value) and "adamw_schedulefree" in str(err.value)
