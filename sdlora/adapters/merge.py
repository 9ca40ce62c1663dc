"""Merging adapters into the base weights: W = W0 + Σ_i weight_i·(alpha_i/rank_i)·B_i·A_i (Hu et al. 2021, sec. 4.1).

The merged model needs no LoRA code at inference and gives the same image as the live blend of the same
weights (`sdlora.adapters.blend`), which computes the same sum one layer input at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import torch

from sdlora.lora.state import Adapter
from sdlora.errors import SdloraError
from sdlora.lora.formats import find_module


def merge_into(pipe: Any, adapters: Iterable[tuple[Adapter, float]], sources: list[str] | None = None) -> int:
    """Add weight·dW of every layer of every adapter into `pipe`'s base weights, in place; returns layers merged.

    The sum is formed in fp32 and cast once to the weight's dtype, so a fp16 model is rounded once, not per
    adapter. Every adapter goes through `sdlora.lora.check` first: non-finite values, a layer of another shape
    or no layer in the model are `SdloraError`s; layers the model lacks are left out with a warning.
    """
    from sdlora.lora.check import check_fit, check_values

    deltas: dict[str, torch.Tensor] = {}
    for i, (adapter, weight) in enumerate(adapters):
        source = sources[i] if sources else "adapter"
        check_values(adapter, source)
        for name in check_fit(adapter, pipe, source).matched:  # layers the model lacks: a warning, left out
            # Each kind's own update (sdlora.lora.kinds); DoRA's depends on the base weight it rescales.
            delta = adapter.layers[name].merge_delta(find_module(pipe, name).weight.detach().cpu(), weight)
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
    from sdlora.lora.check import check_fit, only
    from sdlora.lora.io import check_fully_read, read_adapter_file
    from sdlora.models.loading import load_pipeline
    from sdlora.models.storage import save_pipeline_folder

    loras = list(loras)
    if not loras:
        raise SdloraError("merge: no LoRA given; name at least one with --lora FILE[:WEIGHT]")
    found = [(read_adapter_file(path), check_weight(weight, str(path))) for path, weight in loras]
    for file, _ in found:
        check_fully_read(file)  # a LyCORIS layer it could not read: refused, never half an adapter merged
    pipe = load_pipeline(model)
    pairs = []
    for (path, _), (file, weight) in zip(loras, found):
        # Layers the model lacks, or that the reader could not place, are left out with one warning per file.
        fit = check_fit(file.adapter, pipe, str(path), skipped_keys=file.skipped_keys)
        pairs.append((only(file.adapter, fit.matched), weight))
    merge_into(pipe, pairs, sources=[str(path) for path, _ in loras])
    return save_pipeline_folder(pipe, out_dir, replace=False)
