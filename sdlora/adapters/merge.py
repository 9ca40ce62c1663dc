"""Merging adapters into the base weights: W = W0 + Σ_i weight_i·(alpha_i/rank_i)·B_i·A_i (Hu et al. 2021, sec. 4.1).

The merged model needs no LoRA code at inference and gives the same image as the live blend of the same
weights (`sdlora.adapters.blend`), which computes the same sum one layer input at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import torch

from sdlora.adapters.state import Adapter
from sdlora.errors import SdloraError


def find_module(pipe: Any, name: str) -> torch.nn.Module:
    """The live module of a layer name (`unet.<path>`, `text_encoder.text_model.<path>`), or None."""
    component, path = name.split(".", 1)
    model = getattr(pipe, component, None)
    if model is None:
        return None
    if component.startswith("text_encoder") and not hasattr(model, "text_model"):
        path = path.removeprefix("text_model.")  # transformers 5 flattened CLIPTextModel.text_model away
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def merge_into(pipe: Any, adapters: Iterable[tuple[Adapter, float]], sources: list[str] | None = None) -> int:
    """Add weight·dW of every layer of every adapter into `pipe`'s base weights, in place; returns layers merged.

    The sum is formed in fp32 and cast once to the weight's dtype, so a fp16 model is rounded once, not per
    adapter. Raises `SdloraError` when a layer does not exist in the model or has another shape.
    """
    deltas: dict[str, torch.Tensor] = {}
    for i, (adapter, weight) in enumerate(adapters):
        source = sources[i] if sources else "adapter"
        for name, layer in adapter.layers.items():
            module = find_module(pipe, name)
            if module is None or not hasattr(module, "weight"):
                raise SdloraError(f"{source}: layer {name} is not in this model; the adapter was made for "
                                  f"another base model")
            delta = weight * layer.delta_weight()
            if delta.shape != module.weight.shape:
                raise SdloraError(f"{source}: layer {name} has shape {tuple(delta.shape)} but the model's weight is "
                                  f"{tuple(module.weight.shape)}; the adapter was made for another base model")
            deltas[name] = deltas[name] + delta if name in deltas else delta
    with torch.no_grad():
        for name, delta in deltas.items():
            module = find_module(pipe, name)
            merged = module.weight.float() + delta.to(module.weight.device)
            module.weight.copy_(merged.to(module.weight.dtype))
    return len(deltas)


def merge(model: str, loras: Iterable[tuple[Path | str, float]], out_dir: Path | str) -> Path:
    """Load `model` ('tiny' or a diffusers folder), merge the weighted LoRA files, save a diffusers folder."""
    from sdlora.adapters.blend import check_weight
    from sdlora.adapters.io import load_adapter
    from sdlora.models.loading import load_pipeline
    from sdlora.models.storage import save_pipeline_folder

    loras = list(loras)
    if not loras:
        raise SdloraError("merge: no LoRA given; name at least one with --lora FILE[:WEIGHT]")
    pairs = [(load_adapter(path), check_weight(weight, str(path))) for path, weight in loras]
    pipe = load_pipeline(model)
    merge_into(pipe, pairs, sources=[str(path) for path, _ in loras])
    return save_pipeline_folder(pipe, out_dir, replace=False)
