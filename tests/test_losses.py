"""Loss kinds, their weights and the noise variants: each gives the number of its formula."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDPMScheduler

from sdlora.config import TrainConfig
from sdlora.models.ldm_configs import SD_SCHEDULER
from sdlora.train.losses import debiased_weight, elementwise_loss, huber_c, snr_of
from sdlora.train.noise import multires_noise
from sdlora.train.objective import denoising_loss, sample_noise_and_timesteps

DDPM = {k: v for k, v in SD_SCHEDULER.items() if k != "set_alpha_to_one"}


def test_loss_kinds_follow_their_formulas():
    p = torch.tensor([[0.0, 0.01, 1.0, 10.0]]).view(1, 1, 1, 4)
    y = torch.zeros_like(p)
    c = torch.tensor([0.1])
    d = p.flatten()
    assert torch.allclose(elementwise_loss(p, y, "mse").flatten(), d**2)
    assert torch.allclose(elementwise_loss(p, y, "l1").flatten(), d.abs())
    pseudo = torch.sqrt(d**2 + 0.01) - 0.1
    assert torch.allclose(elementwise_loss(p, y, "huber", c).flatten(), 2 * 0.1 * pseudo, atol=1e-7)
    assert torch.allclose(elementwise_loss(p, y, "smooth_l1", c).flatten(), 2 * pseudo, atol=1e-6)
    # huber: quadratic near 0 (≈ d²), linear far out (≈ 2c·|d|): an outlier counts far less than under mse.
    assert elementwise_loss(p, y, "huber", c).flatten()[1].item() == pytest.approx(1e-4, rel=0.01)
    assert elementwise_loss(p, y, "huber", c).flatten()[3].item() == pytest.approx(2 * 0.1 * 10, rel=0.02)


def test_huber_schedules_go_from_1_at_t0_toward_c_at_high_noise():
    scheduler = DDPMScheduler(**DDPM)
    t = torch.tensor([0, 500, 999])
    for schedule in ("exponential", "snr"):
        c = huber_c(TrainConfig(huber_c=0.1, huber_schedule=schedule), scheduler.alphas_cumprod, t)
        assert c[0].item() > 0.9 and c[0] > c[1] > c[2] >= 0.1 - 1e-6
    exp = huber_c(TrainConfig(huber_c=0.1, huber_schedule="exponential"), scheduler.alphas_cumprod, t)
    assert exp[1].item() == pytest.approx(0.1 ** 0.5, rel=1e-5)  # c^(t/T)
    sigma = ((1 - scheduler.alphas_cumprod[500]) / scheduler.alphas_cumprod[500]).sqrt().item()
    snr = huber_c(TrainConfig(huber_c=0.1, huber_schedule="snr"), scheduler.alphas_cumprod, t)
    assert snr[1].item() == pytest.approx(0.9 / (1 + sigma) ** 2 + 0.1, rel=1e-5)
    const = huber_c(TrainConfig(huber_c=0.3, huber_schedule="constant"), scheduler.alphas_cumprod, t)
    assert torch.allclose(const, torch.full((3,), 0.3))


class Zero(torch.nn.Module):
    def forward(self, noisy, t, text, **kw):
        return SimpleNamespace(sample=torch.zeros_like(noisy))


def test_debiased_estimation_weights_each_sample_by_one_over_sqrt_snr():
    scheduler = DDPMScheduler(**DDPM)
    latents = torch.randn(32, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    text = torch.zeros(32, 77, 8)
    plain = denoising_loss(Zero(), scheduler, latents, text, TrainConfig(), torch.Generator().manual_seed(3))
    weighted = denoising_loss(Zero(), scheduler, latents, text, TrainConfig(debiased_estimation=True),
                              torch.Generator().manual_seed(3))
    _, t = sample_noise_and_timesteps(latents, 1000, TrainConfig(), torch.Generator().manual_seed(3))
    ab = scheduler.alphas_cumprod[t]
    expected = 1 / torch.clamp(ab / (1 - ab), max=1000).sqrt()
    assert torch.allclose(weighted, plain * expected, rtol=1e-5)
    assert torch.allclose(debiased_weight(scheduler.alphas_cumprod, t, "v_prediction"),
                          1 / (torch.clamp(ab / (1 - ab), max=1000) + 1).sqrt(), rtol=1e-5)


def test_multires_noise_keeps_unit_variance_and_adds_low_frequencies():
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(16, 4, 32, 32, generator=g)
    pyramid = multires_noise(noise, 6, 0.8, g)
    assert pyramid.std(dim=(1, 2, 3)).sub(1).abs().max() < 1e-4
    # Low frequencies: the 8x8 block means vary far more than white noise's (std 1/8 per block).
    def block_std(x):
        return torch.nn.functional.avg_pool2d(x, 8).std().item()
    assert block_std(pyramid) > 2 * block_std(noise)
    train = TrainConfig(multires_noise_iterations=6, multires_noise_discount=0.8)
    latents = torch.zeros(16, 4, 32, 32)
    drawn, _ = sample_noise_and_timesteps(latents, 1000, train, torch.Generator().manual_seed(1))
    assert block_std(drawn) > 2 * block_std(noise)


def test_input_perturbation_changes_what_the_model_sees_not_its_target():
    scheduler = DDPMScheduler(**DDPM)
    latents = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    text = torch.zeros(4, 77, 8)
    seen = {}

    class Oracle(torch.nn.Module):
        """Predicts the target of the draw exactly (the ε the loss compares against), records its input."""

        def __init__(self, key, train):
            super().__init__()
            self.key = key
            self.noise, _ = sample_noise_and_timesteps(latents, 1000, train, torch.Generator().manual_seed(9))

        def forward(self, noisy, t, text, **kw):
            seen[self.key] = noisy
            return SimpleNamespace(sample=self.noise)

    for gamma in (0.0, 0.2):
        train = TrainConfig(ip_noise_gamma=gamma)
        loss = denoising_loss(Oracle(gamma, train), scheduler, latents, text, train, torch.Generator().manual_seed(9))
        assert loss.max().item() < 1e-12  # the target is still ε
    assert not torch.allclose(seen[0.0], seen[0.2])
    # Ning et al. 2023: x_t = sqrt(ab)·x0 + sqrt(1 - ab)·(ε + γ·n), so the inputs differ by sqrt(1 - ab)·γ·n.
    assert (seen[0.2] - seen[0.0]).std().item() == pytest.approx(0.2, rel=0.5)


def test_zero_terminal_snr_schedule_ends_at_snr_zero_and_samples_from_t_max():
    from sdlora.schedulers import make_scheduler
    from sdlora.train.recipe import apply_zero_terminal_snr

    components = SimpleNamespace(noise_scheduler=DDPMScheduler(**{**DDPM, "prediction_type": "v_prediction"}))
    before = snr_of(components.noise_scheduler.alphas_cumprod, torch.tensor([999])).item()
    apply_zero_terminal_snr(components)
    ab = components.noise_scheduler.alphas_cumprod
    assert before > 1e-3 and ab[-1].item() < 1e-12  # Lin et al. 2023, Algorithm 1: ᾱ_T = 0
    sampler = make_scheduler("ddim", components.noise_scheduler.config)
    sampler.set_timesteps(10)
    assert sampler.config.rescale_betas_zero_snr and sampler.alphas_cumprod[-1].item() < 1e-12
    assert sampler.timesteps[0].item() == 999  # trailing: the first sampling step is at t = T (sec. 3.3)
    assert not math.isnan(denoising_loss(Zero(), components.noise_scheduler, torch.randn(2, 4, 4, 4),
                                         torch.zeros(2, 77, 8), TrainConfig(min_snr_gamma=5, debiased_estimation=True),
                                         torch.Generator().manual_seed(0)).sum().item())
