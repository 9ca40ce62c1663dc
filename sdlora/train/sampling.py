"""Sample images during training from the live model, with a fixed seed so steps can be compared."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from sdlora.atomic import save_image
from sdlora.config import SampleConfig


def live_pipeline(components, unet, scheduler: str):
    """A pipeline over the training components and the live (LoRA-carrying) UNet: SD, or SDXL's two encoders."""
    from sdlora.models.loading import quiet_loading
    from sdlora.schedulers import make_scheduler

    with quiet_loading():  # importing the pipelines makes transformers warn about unused image processors
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    parts = dict(vae=components.vae, text_encoder=components.text_encoder, tokenizer=components.tokenizer,
                 unet=unet, scheduler=make_scheduler(scheduler, components.noise_scheduler.config))
    if components.text_encoder_2 is not None:
        return StableDiffusionXLPipeline(text_encoder_2=components.text_encoder_2,
                                         tokenizer_2=components.tokenizer_2, **parts)
    return StableDiffusionPipeline(safety_checker=None, feature_extractor=None, requires_safety_checker=False,
                                   **parts)


def sample_images(components, unet, sample: SampleConfig, resolution: int, folder: Path,
                  device: torch.device, dtype: torch.dtype, guidance_rescale: float = 0.0) -> list[Path]:
    """Render each of `sample.prompts` into `folder`/NN.png; returns the written paths. `guidance_rescale`: phi of
    rescaled classifier-free guidance (Lin et al. 2023, sec. 3.4), for zero-terminal-SNR models."""
    if not sample.prompts:
        return []
    pipe = live_pipeline(components, unet, sample.scheduler)
    pipe.set_progress_bar_config(disable=True)
    size = sample.size or resolution
    # SDXL's VAE overflows in fp16 (force_upcast): under fp16 autocast it would decode to NaN (black samples).
    fp32_decode = dtype == torch.float16 and getattr(components.vae.config, "force_upcast", False)
    # No LoRA dropout in samples; the text encoder is the live one, with its LoRA when network.text_encoder is on.
    modes = {module: module.training for module in (unet, components.text_encoder, components.text_encoder_2)
             if module is not None}
    for module in modes:
        module.eval()
    paths = []
    try:
        for i, prompt in enumerate(sample.prompts):
            generator = torch.Generator(device).manual_seed(sample.seed + i)
            autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
            with torch.no_grad(), autocast:
                out = pipe(prompt, negative_prompt=sample.negative_prompt or None, height=size, width=size,
                           num_inference_steps=sample.steps, guidance_scale=sample.guidance, generator=generator,
                           **({"guidance_rescale": guidance_rescale} if guidance_rescale else {}),
                           output_type="latent" if fp32_decode else "pil").images
            image = decode_fp32(pipe, out) if fp32_decode else out[0]
            path = folder / f"{i:02d}.png"
            save_image(image, path)
            paths.append(path)
        (folder / "prompts.txt").write_text("\n".join(sample.prompts) + "\n", encoding="utf-8")
    finally:
        for module, training in modes.items():
            module.train(training)
    return paths



def decode_fp32(pipe, latents: torch.Tensor):
    """Pipeline latents -> PIL image, the VAE run in fp32 with autocast off."""
    vae = pipe.vae
    with torch.no_grad(), torch.autocast(latents.device.type, enabled=False):
        image = vae.to(torch.float32).decode(latents.float() / vae.config.scaling_factor).sample
    return pipe.image_processor.postprocess(image, output_type="pil")[0]
