"""The noise ε of a training step, with the optional variants people add to it.

offset noise     ε + c·n_channel, a per-channel constant (Guttenberg 2023, "Diffusion with Offset Noise")
multires noise   ε + Σ_i dⁱ·up(n_i), noise drawn at ever coarser resolutions (a random factor 2-4 per level)
                 and upsampled, renormalised to unit variance (Whitaker 2023, "Multi-Resolution Noise for
                 Diffusion Model Training"; kohya's pyramid noise)
input perturbation  the model sees x_t built from ε + γ·n while the target stays ε (Ning et al. 2023,
                 "Input Perturbation Reduces Exposure Bias in Diffusion Models", eq. 9)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sdlora.config import TrainConfig


def multires_noise(noise: torch.Tensor, iterations: int, discount: float, generator: torch.Generator) -> torch.Tensor:
    batch, channels, height, width = noise.shape
    total = noise.clone()
    for i in range(1, iterations + 1):
        factor = 2.0 + 2.0 * torch.rand((), generator=generator, device=noise.device).item()
        h, w = max(1, int(height / factor**i)), max(1, int(width / factor**i))
        coarse = torch.randn((batch, channels, h, w), generator=generator, device=noise.device, dtype=noise.dtype)
        total += F.interpolate(coarse, size=(height, width), mode="bilinear") * discount**i
        if h == 1 or w == 1:
            break
    return total / total.std(dim=(1, 2, 3), keepdim=True)


def perturbation(noise: torch.Tensor, train: TrainConfig, generator: torch.Generator) -> torch.Tensor | None:
    """γ·n of input perturbation, or None when train.ip_noise_gamma is 0."""
    if not train.ip_noise_gamma:
        return None
    return train.ip_noise_gamma * torch.randn(noise.shape, generator=generator, device=noise.device,
                                              dtype=noise.dtype)
