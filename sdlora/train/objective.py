"""The standard LoRA objective: denoising score matching on VAE latents (Ho et al. 2020; Rombach et al. 2022).

x_t = sqrt(ᾱ_t)·x_0 + sqrt(1-ᾱ_t)·ε. The UNet predicts ε (epsilon models, DDPM eq. 14) or
v = sqrt(ᾱ_t)·ε - sqrt(1-ᾱ_t)·x_0 (v-prediction models, Salimans & Ho 2022, sec. 4), as the model's scheduler
config says; the loss is the per-sample MSE, optionally Min-SNR weighted (Hang et al. 2023, eq. 9).

The recipe options plug in here, each from its own module: the timestep distribution (timesteps.py), noise
variants (noise.py), the loss kind and debiased weighting (losses.py), and a loss mask per latent pixel
(data.masks: the mean of mask·loss, so a pixel with mask 0 adds nothing and gets no gradient).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sdlora.config import TrainConfig
from sdlora.train.encode import Conditioning, as_conditioning
from sdlora.train.losses import debiased_weight, elementwise_loss, huber_c
from sdlora.train.noise import multires_noise, perturbation
from sdlora.train.timesteps import sample_timesteps


def sample_noise_and_timesteps(latents: torch.Tensor, num_train_timesteps: int, train: TrainConfig,
                               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    batch = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    if train.noise_offset:
        # Offset noise: a per-channel constant shift lets the model learn overall brightness (Guttenberg 2023).
        noise = noise + train.noise_offset * torch.randn((batch, latents.shape[1], 1, 1), generator=generator,
                                                         device=latents.device, dtype=latents.dtype)
    timesteps = sample_timesteps(batch, num_train_timesteps, train, generator, latents.device)
    if train.multires_noise_iterations:
        noise = multires_noise(noise, train.multires_noise_iterations, train.multires_noise_discount, generator)
    return noise, timesteps


def snr(noise_scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """SNR(t) = ᾱ_t / (1 - ᾱ_t)."""
    alphas_cumprod = noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    return alphas_cumprod / (1.0 - alphas_cumprod)


def denoising_loss(unet, noise_scheduler, latents: torch.Tensor, cond: Conditioning | torch.Tensor,
                   train: TrainConfig, generator: torch.Generator,
                   unet_kwargs: dict | None = None, mask: torch.Tensor | None = None,
                   draw: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Per-sample loss, shape [batch], in fp32. `cond`: a `Conditioning` (SDXL adds pooled text and size/crop
    ids to the UNet call), or SD 1.x/2.x text embeddings alone. `mask`: [batch, 1, H, W] loss weights at any
    resolution (resized to the latents by area). `draw`: a fixed (noise, timesteps), e.g. for validation."""
    cond = as_conditioning(cond)
    if draw is None:
        noise, timesteps = sample_noise_and_timesteps(latents, noise_scheduler.config.num_train_timesteps, train,
                                                      generator)
        shift = perturbation(noise, train, generator)
    else:
        (noise, timesteps), shift = draw, None
    # Input perturbation: the model sees x_t of ε + γ·n; the target below stays that of ε.
    noisy_latents = noise_scheduler.add_noise(latents, noise if shift is None else noise + shift, timesteps)
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ValueError(f"unsupported prediction_type {prediction_type!r} in the model's scheduler config")
    model_pred = unet(noisy_latents, timesteps, cond.text_embeddings, **cond.unet_kwargs(),
                      **(unet_kwargs or {})).sample
    if train.loss == "mse" and mask is None:
        loss = F.mse_loss(model_pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    else:
        c = huber_c(train, noise_scheduler.alphas_cumprod, timesteps) if train.loss in ("huber", "smooth_l1") else None
        elements = elementwise_loss(model_pred, target, train.loss, c)
        if mask is not None:
            elements = elements * F.interpolate(mask.float().to(elements.device), size=elements.shape[-2:],
                                                mode="area")
        loss = elements.mean(dim=(1, 2, 3))
    if train.debiased_estimation:
        loss = loss * debiased_weight(noise_scheduler.alphas_cumprod, timesteps, prediction_type)
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
                 generator: torch.Generator, mask: torch.Tensor | None = None) -> torch.Tensor:
        return denoising_loss(unet, self.noise_scheduler, latents, cond, self.train, generator, mask=mask)


def make_objective(config, components, encoder):
    """The training objective of `config.mode`: plain denoising, or LCM distillation."""
    if config.mode == "lcm":
        from sdlora.train.lcm import LcmObjective

        return LcmObjective(config, components, encoder)
    return DenoisingObjective(components.noise_scheduler, config.train)
