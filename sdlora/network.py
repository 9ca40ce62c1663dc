"""LoRA on the UNet through peft: inject, enumerate, and move weights between the live model and `Adapter`.

peft owns the layer math (its LoRA Linear computes h = W0·x + (alpha/r)·B·A·x with A random and B zero at
init, Hu et al. 2021, eq. 3); we only choose the targets and translate names.
"""

from __future__ import annotations

import torch

from sdlora.adapters.state import Adapter, LoraLayer
from sdlora.config import NetworkConfig
from sdlora.errors import SdloraError

ADAPTER_NAME = "default"


def lora_config(network: NetworkConfig):
    from peft import LoraConfig

    return LoraConfig(r=network.rank, lora_alpha=network.effective_alpha, lora_dropout=network.dropout,
                      target_modules=list(network.targets), init_lora_weights=True)


def add_lora(unet: torch.nn.Module, network: NetworkConfig, seed: int) -> list[str]:
    """Inject LoRA layers into the target modules of `unet`; returns their names. Base weights stay frozen.

    The LoRA parameters are created in fp32 whatever the base precision: their updates are tiny relative to
    their values, and fp16/bf16 would round them away.
    """
    unet.requires_grad_(False)
    names = [n for n, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
             and any(n == t or n.endswith("." + t) for t in network.targets)]
    if not names:
        raise SdloraError(f"network.targets: {network.targets} match no Linear/Conv2d module of the UNet; "
                          f"use suffixes such as to_q, to_k, to_v, to_out.0, proj_in, ff.net.2")
    # The init of A draws from the global RNG: seed it so the same seed gives the same adapter.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet.add_adapter(lora_config(network), adapter_name=ADAPTER_NAME)
    for param in lora_parameters(unet):
        param.data = param.data.float()
    return names


def lora_parameters(unet: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for n, p in unet.named_parameters() if "lora_" in n and p.requires_grad]


def count_parameters(unet: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in lora_parameters(unet))
    return trainable, sum(p.numel() for p in unet.parameters())


def _lora_modules(unet: torch.nn.Module):
    for name, module in unet.named_modules():
        if hasattr(module, "lora_A") and ADAPTER_NAME in getattr(module, "lora_A", {}):
            yield name, module


def extract_adapter(unet: torch.nn.Module, metadata: dict[str, str] | None = None) -> Adapter:
    """The live LoRA weights as an `Adapter` (detached fp32 copies)."""
    layers = {}
    for name, module in _lora_modules(unet):
        down = module.lora_A[ADAPTER_NAME].weight.detach().float().cpu().clone()
        up = module.lora_B[ADAPTER_NAME].weight.detach().float().cpu().clone()
        alpha = float(module.lora_alpha[ADAPTER_NAME])
        layers[f"unet.{name}"] = LoraLayer(down=down, up=up, alpha=alpha)
    return Adapter(layers=layers, metadata=dict(metadata or {}))


def load_into(unet: torch.nn.Module, adapter: Adapter) -> None:
    """Copy `adapter`'s weights into the live LoRA layers (same targets and ranks), e.g. to resume."""
    live = dict(_lora_modules(unet))
    wanted = adapter.component_layers("unet")
    if set(live) != set(wanted):
        raise SdloraError(f"adapter layers do not match the network ({len(wanted)} vs {len(live)} modules); "
                          f"was network.targets changed since the checkpoint?")
    with torch.no_grad():
        for name, layer in wanted.items():
            module = live[name]
            module.lora_A[ADAPTER_NAME].weight.copy_(layer.down)
            module.lora_B[ADAPTER_NAME].weight.copy_(layer.up)
