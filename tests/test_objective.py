"""The denoising target follows the model's prediction type (DDPM epsilon, or v = sqrt(ab)·eps - sqrt(1-ab)·x0)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from diffusers import DDPMScheduler

from sdlora.config import TrainConfig
from sdlora.models.ldm_configs import SD_SCHEDULER
from sdlora.train.objective import denoising_loss, sample_noise_and_timesteps

DDPM = {k: v for k, v in SD_SCHEDULER.items() if k != "set_alpha_to_one"}  # a DDIM-only option


class Oracle(torch.nn.Module):
    """A stand-in UNet that predicts a given function of the clean latents, noise and timestep."""

    def __init__(self, latents, noise, timesteps, scheduler, kind):
        super().__init__()
        ab = scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        self.answer = noise if kind == "epsilon" else ab.sqrt() * noise - (1 - ab).sqrt() * latents

    def forward(self, noisy, t, text, **kw):
        return SimpleNamespace(sample=self.answer)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_the_target_is_the_one_the_scheduler_config_names(kind):
    scheduler = DDPMScheduler(**{**DDPM, "prediction_type": kind})
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    train = TrainConfig()
    noise, t = sample_noise_and_timesteps(latents, 1000, train, torch.Generator().manual_seed(5))
    right = Oracle(latents, noise, t, scheduler, kind)
    wrong = Oracle(latents, noise, t, scheduler, "v_prediction" if kind == "epsilon" else "epsilon")
    text = torch.zeros(3, 77, 8)
    loss_right = denoising_loss(right, scheduler, latents, text, train, torch.Generator().manual_seed(5))
    loss_wrong = denoising_loss(wrong, scheduler, latents, text, train, torch.Generator().manual_seed(5))
    assert loss_right.shape == (3,)
    assert loss_right.max().item() < 1e-10
    assert loss_wrong.min().item() > 1e-3


def test_min_snr_weighting_down_weights_low_noise_timesteps():
    scheduler = DDPMScheduler(**DDPM)
    latents = torch.randn(64, 4, 4, 4, generator=torch.Generator().manual_seed(2))

    class Zero(torch.nn.Module):
        def forward(self, noisy, t, text, **kw):
            return SimpleNamespace(sample=torch.zeros_like(noisy))

    text = torch.zeros(64, 77, 8)
    plain = denoising_loss(Zero(), scheduler, latents, text, TrainConfig(), torch.Generator().manual_seed(3))
    weighted = denoising_loss(Zero(), scheduler, latents, text, TrainConfig(min_snr_gamma=5.0),
                              torch.Generator().manual_seed(3))
    _, t = sample_noise_and_timesteps(latents, 1000, TrainConfig(), torch.Generator().manual_seed(3))
    ab = scheduler.alphas_cumprod[t]
    expected = torch.clamp(ab / (1 - ab), max=5.0) / (ab / (1 - ab))
    assert torch.allclose(weighted / plain, expected.float(), rtol=1e-5)
