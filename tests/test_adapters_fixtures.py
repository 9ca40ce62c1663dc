"""Helpers for the adapter tests: the tiny pipeline, hand-built adapters on its module shapes, dW applied by hand.

Holds no tests itself; the test_adapters_* files and test_cli_adapters import from it.
"""

from __future__ import annotations

import copy
import functools

import torch

from sdlora.lora.state import Adapter, LoraLayer

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")


@functools.lru_cache(maxsize=1)
def _tiny_pipeline():
    from sdlora.models.loading import load_pipeline

    return load_pipeline("tiny")


def tiny_pipeline():
    """A private copy of the tiny pipeline (loading it once per test session)."""
    return copy.deepcopy(_tiny_pipeline())


def module_names(component: torch.nn.Module) -> list[str]:
    return [n for n, m in component.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]


def random_layer(module: torch.nn.Module, rank: int, alpha: float, gen: torch.Generator, scale=0.1) -> LoraLayer:
    """A LoRA pair shaped for `module`, with non-zero up so dW is not zero."""
    weight = module.weight
    if weight.dim() == 2:
        down = torch.randn(rank, weight.shape[1], generator=gen) * scale
        up = torch.randn(weight.shape[0], rank, generator=gen) * scale
    else:  # LoCon: A carries the kernel, B is 1x1
        down = torch.randn(rank, *weight.shape[1:], generator=gen) * scale
        up = torch.randn(weight.shape[0], rank, 1, 1, generator=gen) * scale
    return LoraLayer(down=down, up=up, alpha=alpha)


def make_adapter(pipe, unet_suffixes=ATTENTION, text_suffixes=(), rank=4, alpha=2.0, seed=0,
                 vary=False, metadata=None) -> Adapter:
    """Layers on every UNet module ending in one of `unet_suffixes` (and text-encoder ones); with `vary`, ranks
    and alphas differ between layers."""
    gen = torch.Generator().manual_seed(seed)
    layers = {}
    for component, suffixes in (("unet", unet_suffixes), ("text_encoder", text_suffixes)):
        model = getattr(pipe, component)
        for i, name in enumerate(module_names(model)):
            if not any(name == s or name.endswith("." + s) for s in suffixes):
                continue
            r = rank + (i % 3) if vary else rank
            a = alpha * (1 + (i % 2)) if vary else alpha
            path = name if component == "unet" else "text_model." + name.removeprefix("text_model.")
            layers[f"{component}.{path}"] = random_layer(model.get_submodule(name), r, a, gen)
    return Adapter(layers=layers, metadata=dict(metadata or {"sdlora_mode": "standard", "ss_network_dim": "4"}))


def apply_by_hand(pipe, adapter: Adapter, weight: float = 1.0):
    """A copy of `pipe` with W += weight·(alpha/rank)·B·A written into the base weights."""
    out = copy.deepcopy(pipe)
    with torch.no_grad():
        for name, layer in adapter.layers.items():
            component, path = name.split(".", 1)
            model = getattr(out, component)
            if not hasattr(model, "text_model"):
                path = path.removeprefix("text_model.")
            module = model.get_submodule(path)
            module.weight += weight * layer.delta_weight().to(module.weight.dtype)
    return out


def unet_output(pipe, seed: int = 0) -> torch.Tensor:
    """The UNet's noise prediction on fixed latents, timestep and text embeddings from the pipe's encoder."""
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, 4, 16, 16, generator=gen)
    ids = pipe.tokenizer(["a red circle"], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         return_tensors="pt").input_ids
    with torch.no_grad():
        text = pipe.text_encoder(ids)[0]
        return pipe.unet(latents, torch.tensor([500]), encoder_hidden_states=text).sample


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())
