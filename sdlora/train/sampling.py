"""Sample images during training from the live model, with a fixed seed so steps can be compared."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from sdlora.atomic import save_image
from sdlora.config import SampleConfig


def sample_images(components, unet, sample: SampleConfig, resolution: int, folder: Path,
                  device: torch.device, dtype: torch.dtype) -> list[Path]:
    """Render each of `sample.prompts` into `folder`/NN.png; returns the written paths."""
    from diffusers import StableDiffusionPipeline

    from sdlora.schedulers import make_scheduler

    if not sample.prompts:
        return []
    pipe = StableDiffusionPipeline(vae=components.vae, text_encoder=components.text_encoder,
                                   tokenizer=components.tokenizer, unet=unet,
                                   scheduler=make_scheduler(sample.scheduler, components.noise_scheduler.config),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    size = sample.size or resolution
    # No LoRA dropout in samples; the text encoder is the live one, with its LoRA when network.text_encoder is on.
    modes = {module: module.training for module in (unet, components.text_encoder)}
    for module in modes:
        module.eval()
    paths = []
    try:
        for i, prompt in enumerate(sample.prompts):
            generator = torch.Generator(device).manual_seed(sample.seed + i)
            autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
            with torch.no_grad(), autocast:
                image = pipe(prompt, negative_prompt=sample.negative_prompt or None, height=size, width=size,
                             num_inference_steps=sample.steps, guidance_scale=sample.guidance,
                             generator=generator).images[0]
            path = folder / f"{i:02d}.png"
            save_image(image, path)
            paths.append(path)
        (folder / "prompts.txt").write_text("\n".join(sample.prompts) + "\n", encoding="utf-8")
    finally:
        for module, training in modes.items():
            module.train(training)
    return paths

