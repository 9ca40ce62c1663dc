"""The standard LoRA objective: denoising score matching on VAE latents (Ho et al. 2020; Rombach et al. 2022).

x_t = sqrt(ᾱ_t)·x_0 + sqrt(1-ᾱ_t)·ε. The UNet predicts ε (epsilon models, DDPM eq. 14) or
v = sqrt(ᾱ_t)·ε - sqrt(1-ᾱ_t)·x_0 (v-prediction models, Salimans & Ho 2022, sec. 4), as the model's scheduler
config says; the loss is the per-sample MSE, optionally Min-SNR weighted (Hang et al. 2023, eq. 9).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sdlora.config import TrainConfig
from sdlora.train.encode import Conditioning, as_conditioning


def sample_noise_and_timesteps(latents: torch.Tensor, num_train_timesteps: int, train: TrainConfig,
                               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    batch = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    if train.noise_offset:
        # Offset noise: a per-channel constant shift lets the model learn overall brightness (Guttenberg 2023).
        noise = noise + train.noise_offset * torch.randn((batch, latents.shape[1], 1, 1), generator=generator,
                                                         device=latents.device, dtype=latents.dtype)
    timesteps = torch.randint(0, num_train_timesteps, (batch,), generator=generator, device=latents.device)
    return noise, timesteps


def snr(noise_scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """SNR(t) = ᾱ_t / (1 - ᾱ_t)."""
    alphas_cumprod = noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    return alphas_cumprod / (1.0 - alphas_cumprod)


def denoising_loss(unet, noise_scheduler, latents: torch.Tensor, cond: Conditioning | torch.Tensor,
                   train: TrainConfig, generator: torch.Generator,
                   unet_kwargs: dict | None = None) -> torch.Tensor:
    """Per-sample loss, shape [batch], in fp32. `cond`: a `Conditioning` (SDXL adds pooled text and size/crop
    ids to the UNet call), or SD 1.x/2.x text embeddings alone."""
    cond = as_conditioning(cond)
    noise, timesteps = sample_noise_and_timesteps(latents, noise_scheduler.config.num_train_timesteps, train,
                                                  generator)
    noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ValueError(f"unsupported prediction_type {prediction_type!r} in the model's scheduler config")
    model_pred = unet(noisy_latents, timesteps, cond.text_embeddings, **cond.unet_kwargs(),
                      **(unet_kwargs or {})).sample
    loss = F.mse_loss(model_pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if train.min_snr_gamma:
        snr_t = snr(noise_scheduler, timesteps)
        clipped = torch.clamp(snr_t, max=train.min_snr_gamma)
        # For v-prediction the MSE on v already carries a factor (SNR+1) relative to epsilon (Hang et al. 2023).
        weight = clipped / (snr_t + 1.0) if prediction_type == "v_prediction" else clipped / snr_t
        loss = loss * weight
    return loss


class DenoisingObjective:
    """mode: standard. Called as objective(unet, latents, cond, generator) -> per-sample loss."""

    def __init__(self, noise_scheduler, train: TrainConfig):
        self.noise_scheduler, self.train = noise_scheduler, train

    def __call__(self, unet, latents: torch.Tensor, cond: Conditioning | torch.Tensor,
                 generator: torch.Generator) -> torch.Tensor:
        return denoising_loss(unet, self.noise_scheduler, latents, cond, self.train, generator)


def make_objective(config, components, encoder):
    """The training objective of `config.mode`: plain denoising, or LCM distillation."""
    if config.mode == "lcm":
        from sdlora.train.lcm import LcmObjective

        return LcmObjective(config, components, encoder)
    return DenoisingObjective(components.noise_scheduler, config.train)
