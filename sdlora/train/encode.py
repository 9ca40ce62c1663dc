"""Turn a data batch into what the UNet consumes: VAE latents and text-encoder hidden states.

When the data pipeline has cached them (items carry "latents" / "text_embeddings"), they pass straight through,
so training never runs the VAE encoder or the text encoder. While the text encoder trains its own LoRA
(`trains_text`), every caption runs through it with gradients, so the loss reaches its LoRA weights.
"""

from __future__ import annotations

from typing import Any

import torch


TILING_ABOVE = 1024  # px: larger images are encoded in tiles under data.vae_tiling: auto


def set_vae_memory(vae, mode: str, largest_side: int) -> bool:
    """VAE slicing (one image of a batch at a time: same latents, less memory) always; tiling (overlapping
    tiles, blended: slightly different latents, far less memory) when `mode` is on, or auto above 1024 px.
    Returns whether tiling is on."""
    vae.enable_slicing()
    tiling = mode == "on" or (mode == "auto" and largest_side > TILING_ABOVE)
    if tiling:
        vae.enable_tiling()
    else:
        vae.disable_tiling()
    return tiling


class BatchEncoder:
    def __init__(self, components, device: torch.device, dtype: torch.dtype):
        self.vae = components.vae
        self.text_encoder = components.text_encoder
        self.tokenizer = components.tokenizer
        self.scaling = components.latent_scaling
        self.shift = components.latent_shift
        self.device = device
        self.dtype = dtype
        self.trains_text = False  # set by the trainer when the text encoder carries a trained LoRA

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        return self.tokenizer(captions, padding="max_length", max_length=self.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt").input_ids

    def encode_text(self, captions: list[str]) -> torch.Tensor:
        """Text-encoder hidden states, with gradients where they are enabled."""
        ids = self.tokenize(captions).to(self.device)
        return self.text_encoder(ids)[0].to(self.dtype)

    @torch.no_grad()
    def text_embeddings(self, captions: list[str]) -> torch.Tensor:
        return self.encode_text(captions)

    @torch.no_grad()
    def latents(self, pixel_values: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        pixels = pixel_values.to(self.device, non_blocking=True).to(self.vae.dtype)
        posterior = self.vae.encode(pixels).latent_dist
        # SD scales latents to unit variance (Rombach et al. 2022, sec. 4.3.2); newer VAEs also shift them.
        return ((posterior.sample(generator=generator) - self.shift) * self.scaling).to(self.dtype)

    def __call__(self, batch: dict[str, Any], generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        if "latents" in batch:
            latents = batch["latents"].to(self.device, non_blocking=True).to(self.dtype)
        else:
            latents = self.latents(batch["pixel_values"], generator)
        if self.trains_text:
            text_embeddings = self.encode_text(batch["caption"])
        elif "text_embeddings" in batch:
            text_embeddings = batch["text_embeddings"].to(self.device, non_blocking=True).to(self.dtype)
        else:
            text_embeddings = self.text_embeddings(batch["caption"])
        return latents, text_embeddings
