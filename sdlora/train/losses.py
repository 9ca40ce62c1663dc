"""The per-element loss between the UNet's prediction and its target, and the per-sample weights on it.

mse        (p - y)²                                            (DDPM's simple loss, Ho et al. 2020, eq. 14)
l1         |p - y|
huber      2c·(sqrt((p - y)² + c²) - c)   ≈ (p - y)² near 0, 2c·|p - y| far out
smooth_l1  2·(sqrt((p - y)² + c²) - c)    ≈ (p - y)²/c near 0, 2·|p - y| far out
The pseudo-Huber losses and their schedules of c over timesteps follow Khrapov et al. 2024, "Improving Diffusion
Models's Data-Corruption Resistance using Scheduled Pseudo-Huber Loss" (arXiv 2403.16728), as kohya's sd-scripts
offer them: constant c; exponential c_t = c^(t/T) (c at t = T, 1 at t = 0); snr c_t = (1 - c)/(1 + σ_t)² + c with
σ_t = sqrt((1 - ᾱ_t)/ᾱ_t) (1 at t = 0, toward c at high noise).

Debiased estimation (Yu et al. 2024, "Debias the Training of Diffusion Models", arXiv 2310.08442) weights each
sample by 1/sqrt(SNR_t) (1/sqrt(SNR_t + 1) for v-prediction, whose loss already carries SNR + 1), SNR capped at
1000 as kohya does so t ≈ 0 does not dominate.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sdlora.config import TrainConfig

SNR_CAP = 1000.0


def snr_of(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """SNR(t) = ᾱ_t / (1 - ᾱ_t), in fp32, never 0 (a zero-terminal-SNR schedule has ᾱ_T = 0)."""
    ab = alphas_cumprod.to(timesteps.device)[timesteps].float()
    return (ab / (1.0 - ab).clamp(min=1e-20)).clamp(min=1e-8)


def huber_c(train: TrainConfig, alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """c per sample, [batch], from train.huber_c and train.huber_schedule."""
    c = torch.full(timesteps.shape, train.huber_c, device=timesteps.device, dtype=torch.float32)
    if train.huber_schedule == "exponential":
        return torch.exp(timesteps.float() * (math.log(train.huber_c) / len(alphas_cumprod)))
    if train.huber_schedule == "snr":
        sigma = snr_of(alphas_cumprod, timesteps).rsqrt()
        return (1.0 - c) / (1.0 + sigma) ** 2 + c
    return c


def elementwise_loss(prediction: torch.Tensor, target: torch.Tensor, kind: str,
                     c: torch.Tensor | None = None) -> torch.Tensor:
    """The loss at every element (no reduction), in fp32; `c` [batch] for the pseudo-Huber kinds."""
    prediction, target = prediction.float(), target.float()
    if kind == "mse":
        return F.mse_loss(prediction, target, reduction="none")
    if kind == "l1":
        return F.l1_loss(prediction, target, reduction="none")
    c = c.float().view(-1, *([1] * (prediction.ndim - 1)))
    diff2 = (prediction - target) ** 2
    # sqrt(d² + c²) - c written as d² / (sqrt(d² + c²) + c): the same value without fp32 cancellation.
    root = diff2 / ((diff2 + c**2).sqrt() + c)
    return 2 * c * root if kind == "huber" else 2 * root


def debiased_weight(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, prediction_type: str) -> torch.Tensor:
    snr_t = snr_of(alphas_cumprod, timesteps).clamp(max=SNR_CAP)
    return (snr_t + 1.0).rsqrt() if prediction_type == "v_prediction" else snr_t.rsqrt()
