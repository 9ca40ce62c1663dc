"""The model a run trains, set up one way for `sdlora train`, `--dry-run` and the app: load the components,
check what the config asks of them, inject the LoRA. Whatever `train` would refuse, `--dry-run` refuses too.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch

from sdlora.config import Config
from sdlora.network import add_lora, add_text_encoder_lora

# The UNet blocks kohya's own loader (sd-scripts networks/lora.py) builds LoRA modules in: attention
# (Transformer2DModel), ResNet blocks and up/down-samplers. Layers elsewhere (conv_in, conv_out, the time and
# label embeddings) load in A1111, ComfyUI, InvokeAI, LyCORIS and diffusers, but kohya's tools skip them silently.
KOHYA_UNET_BLOCKS = (".attentions.", ".resnets.", ".downsamplers.", ".upsamplers.")


@dataclass
class ModelSetup:
    components: object  # sdlora.models.Components
    unet_modules: list[str]  # the UNet modules with a LoRA
    text_encoders: dict[str, torch.nn.Module] = field(default_factory=dict)  # those with a LoRA, by component
    text_encoder_modules: list[str] = field(default_factory=list)

    @property
    def target_modules(self) -> list[str]:
        return self.unet_modules + self.text_encoder_modules


def text_encoders(components) -> dict[str, torch.nn.Module]:
    """The model's text encoders by component name: "text_encoder", and SDXL's "text_encoder_2" when loaded."""
    encoders = {"text_encoder": components.text_encoder}
    if components.text_encoder_2 is not None:
        encoders["text_encoder_2"] = components.text_encoder_2
    return encoders


def kohya_skipped(target_modules: list[str]) -> list[str]:
    """The UNet modules among `target_modules` that kohya's loader does not build LoRA modules for."""
    return [name for name in target_modules if not any(block in f".{name}" for block in KOHYA_UNET_BLOCKS)]


def setup_model(config: Config, dtype: torch.dtype = torch.float32) -> ModelSetup:
    """Load `config.model` in `dtype`, check the config against it, and add the LoRA the config describes.

    Raises SdloraError for what this model cannot train; warns (warnings.warn, which the trainer turns into
    `warning` events) for what will train but not load everywhere."""
    from sdlora.models import load_components

    from sdlora.train.optim import check_optimizer
    from sdlora.train.recipe import check_recipe

    components = load_components(config.model, dtype=dtype, **config.model_options)
    check_recipe(config, components)  # recipe combinations this model cannot train (zero_terminal_snr, ...)
    check_optimizer(config.train)  # the optimizer's package and train.optimizer_args
    for module in (components.vae, components.text_encoder, components.text_encoder_2):
        if module is not None:  # text_encoder_2: SDXL only. Frozen; a text-encoder LoRA below adds trainables
            module.requires_grad_(False).eval()
    target_modules = add_lora(components.unet, config.network, seed=config.train.seed)
    skipped = kohya_skipped(target_modules)
    if skipped:
        shown = ", ".join(skipped[:4]) + (f" and {len(skipped) - 4} more" if len(skipped) > 4 else "")
        warnings.warn(f"network.targets: {len(skipped)} layer(s) outside the attention/ResNet/sampler blocks "
                      f"({shown}) are skipped by kohya's sd-scripts loader; A1111, ComfyUI, InvokeAI, LyCORIS and "
                      f"diffusers load them")
    encoders, encoder_modules = {}, []
    if config.network.text_encoder:
        encoders = text_encoders(components)
        for module in encoders.values():
            encoder_modules += add_text_encoder_lora(module, config.network, seed=config.train.seed)
    return ModelSetup(components, target_modules, encoders, encoder_modules)
