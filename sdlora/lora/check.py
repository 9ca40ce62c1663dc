"""The one check of an adapter before it is used: by generate, merge, inspect, resize, convert and the Preview tab.

- Values (`check_values`, run by every read of a file): every tensor finite, since one NaN or inf turns every
  image or merged weight into garbage; every alpha finite and within the range training allows.
- Fit (`check_fit`, wherever a model is at hand): each layer's dW shape against the model's weight, naming the
  first layer that differs; layers the model lacks counted in a warning; an error when none match.

A layer is seen only through `layer_tensors` (its tensor fields) and `delta_shape`, so a new layer kind (LoHa,
LoKr, DoRA) is checked without changes here: a dataclass layer is covered field by field, and a layer may define
`tensors()` and `delta_shape` itself.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from sdlora.lora.state import Adapter, LoraLayer
from sdlora.errors import SdloraError

MAX_ALPHA = 100_000.0  # network.alpha's range in the config: beyond it, alpha/rank scales dW past any use


def layer_tensors(layer: Any) -> dict[str, torch.Tensor]:
    """The tensors of one layer by field name (`down`, `up`, ... or what the layer's `tensors()` returns)."""
    if callable(getattr(layer, "tensors", None)):
        return dict(layer.tensors())
    return {f.name: getattr(layer, f.name) for f in dataclasses.fields(layer)
            if isinstance(getattr(layer, f.name), torch.Tensor)}


def delta_shape(layer: Any) -> tuple[int, ...]:
    """The shape of the layer's dW, which must equal the model weight's."""
    shape = getattr(layer, "delta_shape", None)
    if shape is not None:
        return tuple(shape() if callable(shape) else shape)
    if isinstance(layer, LoraLayer):  # B [out, r(, 1, 1)] times A [r, in(, kh, kw)]
        return (int(layer.up.shape[0]), *map(int, layer.down.shape[1:]))
    return tuple(layer.delta_weight().shape)


def check_values(adapter: Adapter, source: str) -> None:
    """`SdloraError` naming the first layer with a non-finite tensor or an alpha out of range."""
    for name, layer in adapter.layers.items():
        for key, tensor in layer_tensors(layer).items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                bad = int((~torch.isfinite(tensor)).sum())
                raise SdloraError(f"{source}: layer {name}: {key} holds {bad} non-finite value(s) (NaN or inf) of "
                                  f"{tensor.numel()}; the adapter is broken (a run that diverged?): use an earlier "
                                  f"checkpoint's adapter, or retrain with a lower train.lr")
        alpha = getattr(layer, "alpha", None)
        if alpha is not None and not (math.isfinite(float(alpha)) and abs(float(alpha)) <= MAX_ALPHA):
            raise SdloraError(f"{source}: layer {name}: alpha {float(alpha):g} is not a number within "
                              f"[-{MAX_ALPHA:g}, {MAX_ALPHA:g}]; the adapter is damaged")


@dataclass
class Fit:
    """Which layers of an adapter the model has."""

    matched: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)

    def warning(self, source: str) -> str | None:
        if not self.unmatched:
            return None
        total = len(self.matched) + len(self.unmatched)
        return (f"{source}: {len(self.unmatched)} of its {total} layers are not in this model and are left out "
                f"(e.g. {self.unmatched[0]}); was it made for another base model?")


def check_fit(adapter: Adapter, pipe: Any, source: str, warn: bool = True, skipped_keys: list[str] = ()) -> Fit:
    """Check each layer against `pipe`'s modules: a shape that differs, or no layer in the model at all, is a
    `SdloraError`; layers the model lacks are counted (and, with `warn`, reported through `warnings.warn`).

    `skipped_keys`: keys the file reader could not map to a module of an SD model (`AdapterFile.skipped_keys`);
    their layers count as layers the model lacks.
    """
    from sdlora.lora.formats import find_module

    fit = Fit(unmatched=list(dict.fromkeys(key.split(".", 1)[0] for key in skipped_keys)))
    for name, layer in adapter.layers.items():
        module = find_module(pipe, name)
        weight = getattr(module, "weight", None) if module is not None else None
        if not isinstance(weight, torch.Tensor):
            fit.unmatched.append(name)
            continue
        shape = delta_shape(layer)
        flattened = getattr(layer, "kind", "lora") in ("loha", "lokr")  # their conv factors hold the kernel flat
        if tuple(weight.shape) != shape and not (flattened and shape == (weight.shape[0], weight[0].numel())):
            raise SdloraError(f"{source}: layer {name} has shape {shape} but the model's weight is "
                              f"{tuple(weight.shape)}; the adapter was made for another base model")
        fit.matched.append(name)
    if not fit.matched:
        raise SdloraError(f"{source}: none of its {len(fit.unmatched)} layers matches this model ({fit.unmatched[0]} "
                          f"is not in this model); the adapter was made for another base model")
    message = fit.warning(source)
    if warn and message:
        warnings.warn(message, stacklevel=2)
    return fit


def only(adapter: Adapter, names: list[str]) -> Adapter:
    """The adapter with just the named layers (the ones the model has)."""
    return dataclasses.replace(adapter, layers={n: adapter.layers[n] for n in names})
