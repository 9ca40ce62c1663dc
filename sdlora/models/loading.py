"""Load a base model's components from a built-in name or a diffusers-format folder, never from a hub."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdlora.errors import SdloraError
from sdlora.models.registry import builtin_models

# Never reach for a hub, whatever the caller's environment says: a missing file must be an error, not a download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")



def _quiet_libraries() -> None:
    """Our own events report progress; the libraries' per-file loading bars and notices are noise here."""
    import diffusers
    import transformers

    for lib in (diffusers, transformers):
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()


_quiet_libraries()

SD_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SDXL_SUBFOLDERS = SD_SUBFOLDERS + ("text_encoder_2", "tokenizer_2")


@dataclass
class Components:
    """The parts of a Stable Diffusion model that training needs, and facts read from their configs."""

    path: Path
    family: str  # "sd1" | "sd2" | "sdxl"
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any  # DDPMScheduler with the model's training schedule
    # SDXL's second text encoder (OpenCLIP ViT-bigG, a CLIPTextModelWithProjection) and its tokenizer; None for
    # SD 1.x/2.x.
    text_encoder_2: Any = None
    tokenizer_2: Any = None

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_scaling(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def latent_shift(self) -> float:
        return float(getattr(self.vae.config, "shift_factor", None) or 0.0)


def resolve_model(ref: str) -> Path:
    """A built-in name or a folder path -> the folder, checked to be a diffusers-format SD model."""
    builtins = builtin_models()
    if ref in builtins:
        return builtins[ref].ensure()
    path = Path(ref).expanduser()
    if not path.exists():
        names = ", ".join(builtins)
        raise SdloraError(f"model '{ref}': no such folder; give a diffusers-format model folder or a built-in "
                          f"model ({names})")
    if path.is_file():
        raise SdloraError(f"model '{ref}': single-file checkpoints are not supported yet; convert it to a "
                          f"diffusers folder or give a diffusers-format model folder")
    index = path / "model_index.json"
    if not index.is_file():
        raise SdloraError(f"model '{ref}': {index} is missing; this is not a diffusers-format model folder")
    try:
        components = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SdloraError(f"model '{ref}': {index} is not valid JSON ({exc})") from None
    wanted = SDXL_SUBFOLDERS if "text_encoder_2" in components else SD_SUBFOLDERS
    missing = [sub for sub in wanted if not (path / sub).is_dir()]
    if missing:
        raise SdloraError(f"model '{ref}': subfolder(s) {', '.join(missing)} missing; a Stable Diffusion folder "
                          f"has {', '.join(wanted)}")
    return path


def detect_family(path: Path) -> str:
    index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    if "text_encoder_2" in index or "XL" in str(index.get("_class_name", "")):
        return "sdxl"
    unet_cfg = json.loads((path / "unet" / "config.json").read_text(encoding="utf-8"))
    return "sd2" if unet_cfg.get("cross_attention_dim") == 1024 else "sd1"


def _load(cls: Any, path: Path, sub: str, **kwargs: Any) -> Any:
    try:
        return cls.from_pretrained(path, subfolder=sub, local_files_only=True, **kwargs)
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SdloraError(f"model '{path}': cannot load {sub}/ ({first}); the folder is incomplete or "
                          f"damaged") from None


def load_components(ref: str, *, dtype: torch.dtype = torch.float32) -> Components:
    """Load the UNet, VAE, text encoder(s), tokenizer(s) and training noise schedule of `ref` (on the CPU)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    path = resolve_model(ref)
    family = detect_family(path)
    second = {}
    if family == "sdxl":
        second = dict(text_encoder_2=_load(CLIPTextModelWithProjection, path, "text_encoder_2", dtype=dtype),
                      tokenizer_2=_load(CLIPTokenizer, path, "tokenizer_2"))
    return Components(
        path=path,
        family=family,
        unet=_load(UNet2DConditionModel, path, "unet", dtype=dtype),
        vae=_load(AutoencoderKL, path, "vae", dtype=dtype),
        text_encoder=_load(CLIPTextModel, path, "text_encoder", dtype=dtype),
        tokenizer=_load(CLIPTokenizer, path, "tokenizer"),
        noise_scheduler=_load(DDPMScheduler, path, "scheduler"),
        **second,
    )


def load_pipeline(ref: str, *, dtype: torch.dtype = torch.float32):
    """The whole pipeline of `ref` (StableDiffusionPipeline, or StableDiffusionXLPipeline for SDXL), for
    sampling and previews."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    path = resolve_model(ref)
    try:
        if detect_family(path) == "sdxl":
            pipe = StableDiffusionXLPipeline.from_pretrained(path, local_files_only=True, dtype=dtype)
        else:
            pipe = StableDiffusionPipeline.from_pretrained(path, local_files_only=True, dtype=dtype,
                                                           safety_checker=None, requires_safety_checker=False)
    except (OSError, ValueError) as exc:
        raise SdloraError(f"model '{ref}': cannot load the pipeline ({str(exc).splitlines()[0]})") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe
