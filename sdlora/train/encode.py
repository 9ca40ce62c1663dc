"""Turn a data batch into what the UNet consumes: VAE latents and the text conditioning.

When the data pipeline has cached them (items carry "latents" / "text_embeddings"), they pass straight through,
so training never runs the VAE encoder or the text encoder. While the text encoder trains its own LoRA
(`trains_text`), every caption runs through it with gradients, so the loss reaches its LoRA weights.

SD 1.x/2.x condition the UNet on one text encoder's last hidden states. SDXL (Podell et al. 2023, sec. 2.1-2.2)
conditions it on the penultimate hidden states of two encoders side by side (768 + 1280 = 2048 channels), on the
pooled, projected output of the second encoder, and on six "micro-conditioning" numbers per image: its original
size, the top-left corner of the crop taken from it, and the target size (all (height, width) in pixels).
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass
class Conditioning:
    """The UNet's conditioning for a batch: text hidden states and, for SDXL, pooled text and size/crop ids."""

    text_embeddings: torch.Tensor  # [batch, tokens, channels]
    pooled_text_embeddings: torch.Tensor | None = None  # SDXL: [batch, 1280]
    time_ids: torch.Tensor | None = None  # SDXL: [batch, 6] = original (h, w), crop (top, left), target (h, w)

    def unet_kwargs(self) -> dict[str, Any]:
        """What UNet2DConditionModel takes besides (sample, timestep, encoder_hidden_states)."""
        if self.pooled_text_embeddings is None:
            return {}
        return {"added_cond_kwargs": {"text_embeds": self.pooled_text_embeddings, "time_ids": self.time_ids}}

    def _map(self, fn) -> "Conditioning":
        return Conditioning(*(None if t is None else fn(t) for t in
                              (self.text_embeddings, self.pooled_text_embeddings, self.time_ids)))

    def to(self, device, dtype) -> "Conditioning":
        return self._map(lambda t: t.to(device, dtype))

    def repeat(self, batch: int) -> "Conditioning":
        """A one-row conditioning (e.g. the empty caption's) repeated to `batch` rows."""
        return self._map(lambda t: t.expand(batch, *t.shape[1:]))

    @staticmethod
    def cat(parts: list["Conditioning"]) -> "Conditioning":
        """Row-wise concatenation (e.g. [unconditional; conditional] for classifier-free guidance)."""
        def join(values):
            return None if values[0] is None else torch.cat(values)
        return Conditioning(join([p.text_embeddings for p in parts]), join([p.pooled_text_embeddings for p in parts]),
                            join([p.time_ids for p in parts]))


def as_conditioning(cond: "Conditioning | torch.Tensor") -> Conditioning:
    """Callers with SD 1.x/2.x text embeddings alone may pass the bare tensor."""
    return cond if isinstance(cond, Conditioning) else Conditioning(cond)


def micro_conditioning(batch: dict[str, Any]) -> torch.Tensor:
    """SDXL's size and crop ids of each sample, [batch, 6], from the data pipeline's bucket and crop.

    (original_size, crop_top_left, target_size) as in Podell et al. 2023 sec. 2.2 and diffusers'
    `_get_add_time_ids`; the crop is in the resized image's pixels, as SDXL was trained.
    """
    rows = [[*orig, *crop, *target] for orig, crop, target in
            zip(batch["original_size"], batch["crop_top_left"], batch["target_size"])]
    return torch.tensor(rows, dtype=torch.float32)


def with_time_ids(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch with SDXL's micro-conditioning made a tensor field, "time_ids", beforehand: a step recorded as a
    CUDA graph reads tensors at fixed addresses, never numbers turned into a tensor on the host (step_graph.py)."""
    return {**batch, "time_ids": micro_conditioning(batch)}


class BatchEncoder:
    def __init__(self, components, device: torch.device, dtype: torch.dtype):
        self.vae = components.vae
        self.text_encoder = components.text_encoder
        self.tokenizer = components.tokenizer
        self.text_encoder_2 = components.text_encoder_2  # SDXL only
        self.tokenizer_2 = components.tokenizer_2
        self.scaling = components.latent_scaling
        self.shift = components.latent_shift
        self.device = device
        self.dtype = dtype
        self.trains_text = False  # set by the trainer when the text encoder carries a trained LoRA

    @property
    def is_sdxl(self) -> bool:
        return self.text_encoder_2 is not None

    @staticmethod
    def _ids(tokenizer, captions: list[str]) -> torch.Tensor:
        return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        return self._ids(self.tokenizer, captions)

    def encode_text(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """What the cache stores per caption: "text_embeddings", and for SDXL "pooled_text_embeddings"; with
        gradients where they are enabled (a training text encoder)."""
        if not self.is_sdxl:
            ids = self.tokenize(captions).to(self.device)
            return {"text_embeddings": self.text_encoder(ids)[0].to(self.dtype)}
        hidden = []
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            out = encoder(self._ids(tokenizer, captions).to(self.device), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])  # SDXL uses the penultimate layer of both encoders
        # `text_embeds` of CLIPTextModelWithProjection: the EOS token's state, projected (the "pooled" vector).
        return {"text_embeddings": torch.cat(hidden, dim=-1).to(self.dtype),
                "pooled_text_embeddings": out.text_embeds.to(self.dtype)}

    @torch.no_grad()
    def text_features(self, captions: list[str]) -> dict[str, torch.Tensor]:
        return self.encode_text(captions)

    def text_embeddings(self, captions: list[str]) -> torch.Tensor:
        return self.text_features(captions)["text_embeddings"]

    def _conditioning(self, features: dict[str, torch.Tensor], batch: dict[str, Any]) -> Conditioning:
        if not self.is_sdxl:
            return Conditioning(features["text_embeddings"])
        time_ids = batch["time_ids"] if "time_ids" in batch else micro_conditioning(batch)
        return Conditioning(features["text_embeddings"], features["pooled_text_embeddings"],
                            time_ids.to(self.device, self.dtype))

    @torch.no_grad()
    def latents(self, pixel_values: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        pixels = pixel_values.to(self.device, non_blocking=True).to(self.vae.dtype)
        posterior = self.vae.encode(pixels).latent_dist
        # SD scales latents to unit variance (Rombach et al. 2022, sec. 4.3.2); newer VAEs also shift them.
        return ((posterior.sample(generator=generator) - self.shift) * self.scaling).to(self.dtype)

    def __call__(self, batch: dict[str, Any], generator: torch.Generator | None) -> tuple[torch.Tensor, Conditioning]:
        if "latents" in batch:
            latents = batch["latents"].to(self.device, non_blocking=True).to(self.dtype)
        else:
            latents = self.latents(batch["pixel_values"], generator)
        names = ("text_embeddings", "pooled_text_embeddings") if self.is_sdxl else ("text_embeddings",)
        if self.trains_text:
            features = self.encode_text(batch["caption"])
        elif all(name in batch for name in names):
            features = {name: batch[name].to(self.device, non_blocking=True).to(self.dtype) for name in names}
        else:
            features = self.text_features(batch["caption"])
        return latents, self._conditioning(features, batch)
