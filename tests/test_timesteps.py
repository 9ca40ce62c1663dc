"""Training timesteps: the range and the distributions of train.timestep_sampling."""

from __future__ import annotations

import math

import pytest
import torch

from sdlora.config import TrainConfig, config_from_dict
from sdlora.errors import SdloraError
from sdlora.train.timesteps import sample_timesteps

N = 20000


def _draw(train: TrainConfig) -> torch.Tensor:
    return sample_timesteps(N, 1000, train, torch.Generator().manual_seed(0), torch.device("cpu"))


def _normal_cdf(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def test_uniform_timesteps_stay_in_the_range_and_cover_it():
    t = _draw(TrainConfig(timestep_min=200, timestep_max=400))
    assert t.min().item() == 200 and t.max().item() == 399
    counts = torch.bincount(t - 200, minlength=200).float()
    assert counts.std() / counts.mean() < 0.25  # ~100 per value: flat within sampling noise (1/sqrt(100) = 0.1)


@pytest.mark.parametrize("mean,std", [(0.0, 1.0), (-0.5, 1.5)])
def test_logit_normal_timesteps_have_the_logit_normal_histogram(mean, std):
    t = _draw(TrainConfig(timestep_sampling="logit_normal", timestep_logit_mean=mean, timestep_logit_std=std))
    edges = [100, 250, 500, 750, 900]
    for edge in edges:
        u = edge / 1000
        # P(t < edge) = P(sigmoid(m + s·n) < u) = Φ((logit(u) - m) / s)
        expected = _normal_cdf((math.log(u / (1 - u)) - mean) / std)
        empirical = (t < edge).float().mean().item()
        assert abs(empirical - expected) < 0.015, (edge, empirical, expected)
    middle = ((t >= 400) & (t < 600)).float().mean().item()
    if mean == 0.0:
        assert middle > 0.2 * 1.2  # denser in the middle than uniform's 0.2


def test_sigmoid_sampling_is_logit_normal_with_mean_zero_and_the_scale_as_std():
    a = _draw(TrainConfig(timestep_sampling="sigmoid", timestep_sigmoid_scale=2.0))
    b = _draw(TrainConfig(timestep_sampling="logit_normal", timestep_logit_mean=0.0, timestep_logit_std=2.0))
    assert torch.equal(a, b)


def test_logit_normal_respects_the_range():
    t = _draw(TrainConfig(timestep_sampling="logit_normal", timestep_min=100, timestep_max=300))
    assert t.min().item() >= 100 and t.max().item() <= 299


def test_bad_ranges_are_errors_naming_the_keys():
    with pytest.raises(SdloraError, match="train.timestep_min .* train.timestep_max"):
        config_from_dict({"train": {"timestep_min": 500, "timestep_max": 500}})
    with pytest.raises(SdloraError, match="train.timestep_sampling"):
        config_from_dict({"train": {"timestep_sampling": "normal"}})
