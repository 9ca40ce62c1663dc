"""Load a base model's components from a built-in name or a diffusers-format folder, never from a hub."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdlora.errors import SdloraError
from sdlora.models.family import check_override, folder_family, parse_family
from sdlora.models.registry import builtin_models
from sdlora.quiet import import_bitsandbytes_quietly

# Before diffusers' model classes (its quantizers) or peft import it, and it prints an unrelated "kernels" notice.
import_bitsandbytes_quietly()


@contextlib.contextmanager
def quiet_loading():
    """Our own events report progress; the libraries' per-file loading bars and notices are noise while we load.

    Scoped to our own loads: the caller's program keeps its logging and progress-bar settings. (Nothing here
    reaches for a hub either: every load passes local_files_only=True, so a missing file is an error.)"""
    import diffusers
    import transformers

    saved = [(lib.utils.logging, lib.utils.logging.get_verbosity(), lib.utils.logging.is_progress_bar_enabled())
             for lib in (diffusers, transformers)]
    for logging_module, _, _ in saved:
        logging_module.set_verbosity_error()
        logging_module.disable_progress_bar()
    try:
        yield
    finally:
        for logging_module, verbosity, bars in saved:
            logging_module.set_verbosity(verbosity)
            (logging_module.enable_progress_bar if bars else logging_module.disable_progress_bar)()


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


def resolve_model(ref: str, *, family: str = "auto", allow_pickle: bool = False, vae: str | None = None) -> Path:
    """A built-in name, a folder or a single-file checkpoint -> a diffusers-format SD folder.

    A single file is converted once into the user cache (sdlora.models.single_file); `family`, `allow_pickle`
    and `vae` are the config's model_family, allow_pickle and vae.
    """
    builtins = builtin_models()
    if ref in builtins:
        if vae:  # the built-in model has its own VAE; taking the option silently would hide a mistake
            raise SdloraError(f"vae: applies to single-file checkpoints; the built-in model '{ref}' has its own VAE "
                              f"(leave vae empty)")
        return builtins[ref].ensure()
    path = Path(ref).expanduser()
    if not path.exists():
        names = ", ".join(builtins)
        raise SdloraError(f"model '{ref}': no such file or folder; give a .safetensors checkpoint, a "
                          f"diffusers-format model folder or a built-in model ({names})")
    if path.is_file():
        from sdlora.models.single_file import single_file_folder

        return single_file_folder(path, family=family, allow_pickle=allow_pickle, vae=vae)
    if vae:
        raise SdloraError(f"vae: applies to single-file checkpoints; model '{ref}' is a folder with its own vae/ "
                          f"(replace that subfolder instead)")
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


def detect_family(path: Path, forced: str = "auto") -> tuple[str, str | None]:
    """(family, forced prediction type or None) of a folder; `forced` is the config's model_family."""
    family, prediction = parse_family(forced)
    return check_override(str(path), folder_family(path), family), prediction


def _load(cls: Any, path: Path, sub: str, **kwargs: Any) -> Any:
    try:
        with quiet_loading():
            return cls.from_pretrained(path, subfolder=sub, local_files_only=True, **kwargs)
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SdloraError(f"model '{path}': cannot load {sub}/ ({first}); the folder is incomplete or "
                          f"damaged") from None


def load_components(ref: str, *, dtype: torch.dtype = torch.float32, family: str = "auto",
                    allow_pickle: bool = False, vae: str | None = None) -> Components:
    """Load the UNet, VAE, text encoder(s), tokenizer(s) and training noise schedule of `ref` (on the CPU).

    `family` is the config's model_family: it can force the family and the prediction type (e.g. sd2-v).
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    path = resolve_model(ref, family=family, allow_pickle=allow_pickle, vae=vae)
    family, prediction = detect_family(path, family)
    scheduler_kwargs = {"prediction_type": prediction} if prediction else {}
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
        noise_scheduler=_load(DDPMScheduler, path, "scheduler", **scheduler_kwargs),
        **second,
    )


def load_pipeline(ref: str, *, dtype: torch.dtype = torch.float32, family: str = "auto",
                  allow_pickle: bool = False, vae: str | None = None):
    """The whole pipeline of `ref` (StableDiffusionPipeline, or StableDiffusionXLPipeline for SDXL), for
    sampling and previews."""
    path = resolve_model(ref, family=family, allow_pickle=allow_pickle, vae=vae)
    detected, prediction = detect_family(path, family)
    try:
        with quiet_loading():
            # Imported here, quietly: importing the pipelines makes transformers warn about image processors
            # (torchvision-less fallbacks) that Stable Diffusion never uses.
            from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

            if detected == "sdxl":
                pipe = StableDiffusionXLPipeline.from_pretrained(path, local_files_only=True, dtype=dtype)
            else:
                pipe = StableDiffusionPipeline.from_pretrained(path, local_files_only=True, dtype=dtype,
                                                               safety_checker=None, requires_safety_checker=False)
    except (OSError, ValueError) as exc:
        raise SdloraError(f"model '{ref}': cannot load the pipeline ({str(exc).splitlines()[0]})") from None
    if prediction:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=prediction)
    pipe.set_progress_bar_config(disable=True)
    return pipe
