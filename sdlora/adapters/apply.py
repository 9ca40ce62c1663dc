"""Apply any adapter kind to a diffusers pipeline in one call, reversibly: `apply_adapter(pipe, FILE, weight)`.

diffusers' `load_lora_weights` reads LoRA and DoRA only; LoHa and LoKr files (LyCORIS keys) go through this
instead. Each adapted module gets a forward hook that adds its update: h = W0·x + dW·x, with dW the layer kind's
own `merge_delta(W0, weight)` (sdlora.lora.kinds), so the output equals that of the model with the adapter
merged at that weight (`merge_into`). The updates are held as dense tensors, one per adapted module (as much
memory as those modules' weights); re-weighting recomputes them, the base weights are never touched.

>>> applied = apply_adapter(pipe, "style-lokr.safetensors", weight=0.8)
>>> image = pipe("a castle").images[0]
>>> applied.set_weight(0.0); applied.remove()
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from sdlora.lora.formats import find_module
from sdlora.lora.state import Adapter
from sdlora.errors import SdloraError


class AppliedAdapter:
    """One adapter hooked into a pipeline's modules at a weight; `set_weight` re-weights, `remove` takes it out."""

    def __init__(self, pipe: Any, adapter: Adapter, weight: float = 1.0, source: str = "adapter"):
        self.adapter, self.weight = adapter, None
        self.modules: dict[str, torch.nn.Module] = {}
        self.deltas: dict[str, torch.Tensor] = {}
        self.handles = []
        for name, layer in adapter.layers.items():
            module = find_module(pipe, name)
            # A module diffusers gave a LoRA is a peft wrapper: hook the layer it wraps, which it still calls.
            module = module.get_base_layer() if hasattr(module, "get_base_layer") else module
            if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                raise SdloraError(f"{source}: layer {name} is not a Linear/Conv2d module of this model; the adapter "
                                  f"was made for another base model")
            if layer.out_features != module.weight.shape[0] or layer.in_features != module.weight[0].numel():
                raise SdloraError(f"{source}: layer {name} has shape ({layer.out_features}, {layer.in_features}) but "
                                  f"the model's weight is {tuple(module.weight.shape)}; the adapter was made for "
                                  f"another base model")
            self.modules[name] = module
            self.handles.append(module.register_forward_hook(self._hook(name)))
        self.set_weight(weight)

    def set_weight(self, weight: float) -> None:
        if weight == self.weight:
            return
        self.weight = weight
        with torch.no_grad():
            for name, module in self.modules.items():
                w0 = module.weight.detach()
                delta = self.adapter.layers[name].merge_delta(w0.float().cpu(), weight) if weight else None
                self.deltas[name] = None if delta is None else delta.to(w0.device, w0.dtype)

    def _hook(self, name: str):
        def add(module, inputs, output):
            delta = self.deltas.get(name)
            if delta is None:
                return None
            x = inputs[0]
            if isinstance(module, torch.nn.Linear):
                return output + F.linear(x, delta)
            return output + F.conv2d(x, delta, None, module.stride, module.padding, module.dilation, module.groups)
        return add

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles, self.deltas = [], {}


def apply_adapter(pipe: Any, adapter: Adapter | Path | str, weight: float = 1.0) -> AppliedAdapter:
    """Apply an adapter (any kind: LoRA, LoCon, DoRA, LoHa, LoKr, DyLoRA) or its file to `pipe` at `weight`."""
    from sdlora.lora.io import load_adapter

    source = "adapter" if isinstance(adapter, Adapter) else str(adapter)
    if not isinstance(adapter, Adapter):
        adapter = load_adapter(adapter)
    return AppliedAdapter(pipe, adapter, weight, source)
