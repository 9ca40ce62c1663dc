"""Small adapters for the Preview tab's browser test, built with the adapters API (no training needed)."""

from __future__ import annotations

from pathlib import Path

import torch

TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def random_adapter(unet: torch.nn.Module, seed: int, rank: int = 4, scale: float = 0.5, mode: str = "standard"):
    """An adapter on the attention projections of `unet` with random A and B, so it visibly changes images."""
    from sdlora.adapters.state import Adapter, LoraLayer

    gen = torch.Generator().manual_seed(seed)
    layers = {}
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and any(name.endswith("." + t) for t in TARGETS):
            down = torch.randn(rank, module.in_features, generator=gen) * scale
            up = torch.randn(module.out_features, rank, generator=gen) * scale
            layers[f"unet.{name}"] = LoraLayer(down=down, up=up, alpha=float(rank))
    return Adapter(layers=layers, metadata={"sdlora_mode": mode, "sdlora_base_model": "tiny",
                                            "ss_network_dim": str(rank), "ss_network_alpha": str(rank)})


def make_adapters(folder: Path) -> list[Path]:
    """adapters/red.safetensors and adapters/blue.safetensors for the built-in tiny model."""
    from sdlora.adapters.io import save_adapter
    from sdlora.models import load_components

    unet = load_components("tiny").unet
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed, name in ((1, "red"), (2, "blue")):
        path = folder / f"{name}.safetensors"
        save_adapter(random_adapter(unet, seed), path, fmt="kohya", dtype="fp32")
        paths.append(path)
    return paths
