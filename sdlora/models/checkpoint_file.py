"""Read a single-file checkpoint (original LDM/SGM key layout) into a state dict, safely, with clear refusals.

safetensors files are read as they are. Pickle files (.ckpt, .pt, .pth, .bin) can run arbitrary code when
loaded, so they are refused unless the user sets `allow_pickle: true`. A file that is damaged, or is something
else (a LoRA, a VAE alone, a text file), is a one-line error saying what it is.
"""

from __future__ import annotations


import warnings
from pathlib import Path

import torch

from sdlora.errors import SdloraError
from sdlora.tensorfile import read_safetensors

SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
# Prefixes of the original layout: UNet, VAE, SD 1.x CLIP / SD 2.x OpenCLIP, SDXL's two encoders.
UNET_PREFIX = "model.diffusion_model."


def read_checkpoint(path: Path, *, allow_pickle: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict, safetensors metadata) of a single-file model; refuses pickles unless allowed."""
    suffix = path.suffix.lower()
    if suffix in SAFE_SUFFIXES:
        state, meta = read_safetensors(path, label=f"model '{path}'")
    elif suffix in PICKLE_SUFFIXES:
        state, meta = _read_pickle(path, allow_pickle), {}
    else:
        raise SdloraError(f"model '{path}': not a model file (expected .safetensors, or a .ckpt with "
                          f"allow_pickle: true) nor a diffusers-format folder")
    _check_is_a_model(path, state)
    return state, meta


def _read_pickle(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    if not allow_pickle:
        raise SdloraError(f"model '{path}': {path.suffix} is a pickle file, and loading one can run arbitrary code; "
                          f"use a .safetensors version of the model, or set allow_pickle: true if you trust it")
    warnings.warn(f"loading pickle file {path} (allow_pickle: true): a pickle can run arbitrary code; "
                  f"use only files you trust")
    try:
        try:  # tensors-only unpickling first; Lightning checkpoints may hold other objects
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise SdloraError(f"model '{path}': not a readable checkpoint ({_first_line(exc)}); the file is damaged "
                          f"or not a PyTorch file") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # PyTorch Lightning wraps the weights
    if not isinstance(obj, dict):
        raise SdloraError(f"model '{path}': holds a {type(obj).__name__}, not a state dict of weights")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _check_is_a_model(path: Path, state: dict[str, torch.Tensor]) -> None:
    keys = list(state)
    if any(k.startswith(UNET_PREFIX) for k in keys):
        return
    if any(".lora_down." in k or ".lora_A." in k or k.startswith("lora_") for k in keys):
        raise SdloraError(f"model '{path}': this is a LoRA adapter, not a base model; give it as an adapter "
                          f"(--lora) and a full Stable Diffusion checkpoint as the model")
    if any(k.startswith(("down_blocks.", "unet.down_blocks.")) for k in keys):
        raise SdloraError(f"model '{path}': diffusers-layout weights in one file; give the diffusers folder it "
                          f"came from (with model_index.json) instead")
    if any(k.startswith(("encoder.down.", "first_stage_model.")) for k in keys):
        raise SdloraError(f"model '{path}': this is a VAE alone, not a full model; give it as vae: and a full "
                          f"Stable Diffusion checkpoint as the model")
    raise SdloraError(f"model '{path}': no Stable Diffusion UNet weights (model.diffusion_model.*) in "
                      f"{len(keys)} tensors; not a Stable Diffusion checkpoint")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__



