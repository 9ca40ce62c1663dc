"""LoRA on the UNet (and optionally the text encoder) through peft: inject, enumerate, and move weights between
the live model and `Adapter`.

peft owns the layer math (its LoRA Linear computes h = W0·x + (alpha/r)·B·A·x with A random and B zero at
init, Hu et al. 2021, eq. 3); we only choose the targets and translate names.
"""

from __future__ import annotations

import torch

from sdlora.adapters.formats import clip_model_path
from sdlora.adapters.state import Adapter, LoraLayer
from sdlora.config import NetworkConfig
from sdlora.errors import SdloraError

ADAPTER_NAME = "default"
# The text encoder's targets: every Linear of CLIP's attention and MLP, as kohya's sd-scripts train by default
# (networks/lora.py targets CLIPAttention and CLIPMLP), so our files have the layers users expect of a TE LoRA.
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
# Seed offset of the text encoder's LoRA init, so its A matrices are not drawn from the UNet's stream.
TEXT_ENCODER_SEED = 1


def lora_config(network: NetworkConfig, targets: list[str] | tuple[str, ...] | None = None):
    from sdlora.quiet import import_bitsandbytes_quietly

    import_bitsandbytes_quietly()  # peft imports it too
    from peft import LoraConfig

    return LoraConfig(r=network.rank, lora_alpha=network.effective_alpha, lora_dropout=network.dropout,
                      target_modules=list(targets or network.targets), init_lora_weights=True)


def _inject(model: torch.nn.Module, network: NetworkConfig, targets, seed: int) -> list[str]:
    """Freeze `model`, add LoRA layers to its Linear/Conv2d modules whose names end in one of `targets`."""
    model.requires_grad_(False)
    names = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
             and any(n == t or n.endswith("." + t) for t in targets)]
    if names:
        # The init of A draws from the global RNG: seed it so the same seed gives the same adapter.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if hasattr(model, "set_adapters"):  # a diffusers model: its own PEFT integration (enable/disable)
                model.add_adapter(lora_config(network, targets), adapter_name=ADAPTER_NAME)
            else:
                # peft directly, not transformers' add_adapter: transformers gates its PEFT integration on peft
                # versions newer than some PyPI has (5.24 wants peft >= 0.22), and we need only the layers.
                from peft import inject_adapter_in_model

                inject_adapter_in_model(lora_config(network, targets), model, adapter_name=ADAPTER_NAME)
        # fp32 LoRA whatever the base precision: updates are tiny relative to the values, and fp16/bf16 would
        # round them away.
        for param in lora_parameters(model):
            param.data = param.data.float()
    return names


def add_lora(unet: torch.nn.Module, network: NetworkConfig, seed: int) -> list[str]:
    """Inject LoRA layers into the target modules of `unet`; returns their names. Base weights stay frozen."""
    names = _inject(unet, network, network.targets, seed)
    if not names:
        raise SdloraError(f"network.targets: {network.targets} match no Linear/Conv2d module of the UNet; "
                          f"use suffixes such as to_q, to_k, to_v, to_out.0, proj_in, ff.net.2")
    return names


def add_text_encoder_lora(text_encoder: torch.nn.Module, network: NetworkConfig, seed: int) -> list[str]:
    """Inject LoRA layers into a CLIP text encoder's attention (q/k/v/out_proj) and MLP (fc1/fc2)."""
    names = _inject(text_encoder, network, TEXT_ENCODER_TARGETS, seed + TEXT_ENCODER_SEED)
    if not names:
        raise SdloraError(f"network.text_encoder: the text encoder ({type(text_encoder).__name__}) has no "
                          f"{'/'.join(TEXT_ENCODER_TARGETS)} layers; set network.text_encoder false")
    return names


def lora_parameters(unet: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for n, p in unet.named_parameters() if "lora_" in n and p.requires_grad]


def count_parameters(*models: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts over `models` (the UNet, and any text encoder with a LoRA)."""
    trainable = sum(p.numel() for m in models for p in lora_parameters(m))
    return trainable, sum(p.numel() for m in models for p in m.parameters())


def _lora_modules(unet: torch.nn.Module):
    for name, module in unet.named_modules():
        if hasattr(module, "lora_A") and ADAPTER_NAME in getattr(module, "lora_A", {}):
            yield name, module


def _component_modules(component: str, model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The LoRA-carrying modules of one component by their `Adapter` path (CLIP paths in one form)."""
    if component == "unet":
        return dict(_lora_modules(model))
    return {clip_model_path(name): module for name, module in _lora_modules(model)}


def _components(unet: torch.nn.Module, text_encoders: dict[str, torch.nn.Module] | None):
    return {"unet": unet, **(text_encoders or {})}


def extract_adapter(unet: torch.nn.Module, metadata: dict[str, str] | None = None,
                    text_encoders: dict[str, torch.nn.Module] | None = None) -> Adapter:
    """The live LoRA weights as an `Adapter` (detached fp32 copies).

    `text_encoders` maps a component name ("text_encoder", SDXL's "text_encoder_2") to a text encoder that
    carries a LoRA (network.text_encoder); its layers join the adapter under that component."""
    layers = {}
    for component, model in _components(unet, text_encoders).items():
        for name, module in _component_modules(component, model).items():
            down = module.lora_A[ADAPTER_NAME].weight.detach().float().cpu().clone()
            up = module.lora_B[ADAPTER_NAME].weight.detach().float().cpu().clone()
            alpha = float(module.lora_alpha[ADAPTER_NAME])
            layers[f"{component}.{name}"] = LoraLayer(down=down, up=up, alpha=alpha)
    return Adapter(layers=layers, metadata=dict(metadata or {}))


def load_into(unet: torch.nn.Module, adapter: Adapter,
              text_encoders: dict[str, torch.nn.Module] | None = None) -> None:
    """Copy `adapter`'s weights into the live LoRA layers (same targets and ranks), e.g. to resume."""
    models = _components(unet, text_encoders)
    stray = {name.split(".", 1)[0] for name in adapter.layers} - set(models)
    if stray:
        raise SdloraError(f"the checkpoint has LoRA layers for {', '.join(sorted(stray))}, which this run does not "
                          f"train; was network.text_encoder changed since the checkpoint?")
    for component, model in models.items():
        live = _component_modules(component, model)
        wanted = adapter.component_layers(component)
        if set(live) != set(wanted):
            raise SdloraError(f"{component}: adapter layers do not match the network ({len(wanted)} vs {len(live)} "
                              f"modules); was network.targets or network.text_encoder changed since the checkpoint?")
        with torch.no_grad():
            for name, layer in wanted.items():
                module = live[name]
                module.lora_A[ADAPTER_NAME].weight.copy_(layer.down)
                module.lora_B[ADAPTER_NAME].weight.copy_(layer.up)
