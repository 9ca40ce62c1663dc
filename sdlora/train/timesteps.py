"""Training timesteps: which t of the forward process each sample is trained at.

uniform       t ~ U{timestep_min, ..., timestep_max - 1} (DDPM's choice, Ho et al. 2020, Algorithm 1)
logit_normal  t = min + (max - min)·sigmoid(m + s·n), n ~ N(0, 1): more weight on the middle timesteps
              (Esser et al. 2024, SD3, sec. 3.1 "logit-normal sampling")
sigmoid       t = min + (max - min)·sigmoid(scale·n): the same family with m = 0 (kohya's and SimpleTuner's
              "sigmoid" sampling)
"""

from __future__ import annotations

import torch

from sdlora.config import TrainConfig


def timestep_range(train: TrainConfig, num_train_timesteps: int) -> tuple[int, int]:
    """[low, high) of the timesteps drawn; the high end is capped at the model's count."""
    high = num_train_timesteps if train.timestep_max is None else min(train.timestep_max, num_train_timesteps)
    return min(train.timestep_min, high - 1), high


def sample_timesteps(batch: int, num_train_timesteps: int, train: TrainConfig, generator: torch.Generator,
                     device: torch.device) -> torch.Tensor:
    """Long [batch] timesteps from `train.timestep_sampling` on [timestep_min, timestep_max)."""
    low, high = timestep_range(train, num_train_timesteps)
    if train.timestep_sampling == "uniform":
        return torch.randint(low, high, (batch,), generator=generator, device=device)
    normal = torch.randn((batch,), generator=generator, device=device)
    if train.timestep_sampling == "logit_normal":
        u = torch.sigmoid(train.timestep_logit_mean + train.timestep_logit_std * normal)
    else:  # sigmoid
        u = torch.sigmoid(train.timestep_sigmoid_scale * normal)
    return (low + u * (high - low)).long().clamp(low, high - 1)
