"""The one in-memory form of a LoRA adapter that the rest of sdlora sees.

Every file format (kohya, diffusers/PEFT) is converted to and from this at the edges (`sdlora.lora.formats`);
training, inspection, blending and merging work on it only.

Layer names are the dotted module path inside the pipeline, prefixed by the component:
``unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q``, ``text_encoder.text_model.encoder.layers.0.
self_attn.q_proj``, ``text_encoder_2....`` for SDXL's second encoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sdlora.lora.metadata import read_metadata


@dataclass
class LoraLayer:
    """One adapted module: h = W0·x + (alpha/rank)·up·down·x.

    `down` is A with shape [rank, in] for a linear layer ([rank, in, kh, kw] for a convolution), `up` is B with
    shape [out, rank] ([out, rank, 1, 1] for a convolution). `alpha` is the kohya/PEFT scaling numerator.
    """

    down: torch.Tensor
    up: torch.Tensor
    alpha: float

    kind = "lora"  # the other kinds (DoRA, LoHa, LoKr) are in sdlora.lora.kinds
    KOHYA_PARTS = {".lora_down.weight": "down", ".lora_up.weight": "up", ".alpha": "alpha"}

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank

    def delta_weight(self) -> torch.Tensor:
        """dW = (alpha/rank)·B·A in fp32, shaped like the base weight."""
        down = self.down.float()
        up = self.up.float()
        if down.dim() == 2:
            return self.scale * (up @ down)
        # Convolution: B is 1x1, A carries the kernel (LoCon layout).
        out_ch = up.shape[0]
        flat = up.reshape(out_ch, self.rank) @ down.reshape(self.rank, -1)
        return self.scale * flat.reshape(out_ch, *down.shape[1:])

    # The interface every layer kind has (sdlora.lora.kinds): tensors, dW as a matrix, its effect on a base.
    @property
    def out_features(self) -> int:
        return int(self.up.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.down[0].numel())

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"down": self.down, "up": self.up}

    def matrix(self) -> torch.Tensor:
        return self.delta_weight().reshape(self.out_features, -1)

    def merge_delta(self, base: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        """What adding this layer at `weight` does to the base weight `base` (fp32, shaped like it)."""
        return weight * self.delta_weight().reshape(base.shape)

    def num_parameters(self) -> int:
        return self.down.numel() + self.up.numel()


@dataclass
class Adapter:
    """A whole adapter: its layers by dotted module path, and its metadata (all strings, as safetensors wants)."""

    layers: dict[str, LoraLayer] = field(default_factory=dict)  # or any kind of sdlora.lora.kinds
    metadata: dict[str, str] = field(default_factory=dict)
    family: str | None = None  # "sdxl" when the file's key names said so (decides kohya's UNet naming)

    @property
    def is_sdxl(self) -> bool:
        """An SDXL adapter: read from SDXL key names, trained on SDXL (kohya's metadata), or with a second
        text encoder."""
        return (self.family == "sdxl" or read_metadata(self.metadata).is_sdxl
                or any(name.startswith("text_encoder_2.") for name in self.layers))

    @property
    def ranks(self) -> set[int]:
        return {layer.rank for layer in self.layers.values()}

    def component_layers(self, component: str) -> dict[str, LoraLayer]:
        """The layers of one component with the component prefix removed."""
        prefix = component + "."
        return {name[len(prefix):]: layer for name, layer in self.layers.items() if name.startswith(prefix)}

    def num_parameters(self) -> int:
        return sum(layer.num_parameters() for layer in self.layers.values())

    @property
    def network_type(self) -> str:
        """lora | dora | loha | lokr | dylora (a DyLoRA file is LoRA layers; its metadata says what it is)."""
        kinds = {layer.kind for layer in self.layers.values()}
        if kinds == {"lora"} and read_metadata(self.metadata).network_type == "dylora":
            return "dylora"
        return "+".join(sorted(kinds)) if kinds else "lora"
