"""Many LoRA adapters in one batch over shared base weights (S-LoRA, Sheng et al. 2023, arXiv 2311.03285, §4).

One pass of the UNet (and text encoder) serves a batch whose samples each carry their own adapter mix:

    h_i = W0·x_i + Σ_k w_ik·(alpha_k/rank_k)·B_k·A_k·x_i        for each sample i of the batch

W0·x is computed once for the whole batch by the model's own Linear/Conv2d module; a forward hook on that module
adds each sample's low-rank update, gathered from stacks of every cached adapter's A and B (padded to the largest
rank with zeros, which add nothing), so the batch costs two batched matmuls per adapted layer whatever the mix
(S-LoRA's gather/BGMV idea, without its custom kernels). Hooks rather than wrapper modules: the base modules stay
exactly the nn.Linear/nn.Conv2d diffusers expects (attributes, dtype checks, peft injection all unchanged), and with
no mix active the hooks return the base output untouched.

Adapters are held on the model's device in a cache keyed by the file's sha256 (`MultiAdapter.load`), so a grid or a
server never reloads the base model or re-injects adapters between requests. Classifier-free guidance runs the UNet
on [uncond; cond], twice the batch: each half gets the same rows.

LoHa and LoKr layers batch as their update dW (`matrix()`, what `apply_adapter` adds), materialized once per
cached adapter and layer (as much memory as the adapted base weights, per adapter): h_i += w_ik·dW_k·x_i, each dW
in use applied to the whole batch and weighted per sample (0 for the samples without it), so a batch costs one
base-layer product per LoHa/LoKr adapter in it, on top of the pairs' two small matmuls.
DoRA does not batch: its update m·(W0 + w·s·B·A)/‖W0 + w·s·B·A‖ − W0 is not linear in the weight w, so each
(adapter, weight) would need its own dense copy; `not_batchable(adapter)` says so, and callers fall back to one
adapter per batch through `AdapterBlender` for it.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

from sdlora.lora.kinds import LohaLayer, LokrLayer
from sdlora.lora.metadata import read_metadata
from sdlora.lora.state import Adapter, LoraLayer
from sdlora.errors import SdloraError

# network types (metadata `sdlora_network_type`) whose layers are down/up pairs or a dense dW linear in the weight
BATCHABLE_TYPES = ("lora", "locon", "dylora", "loha", "lokr")
DENSE_KINDS = (LohaLayer, LokrLayer)  # batched as their materialized update dW
DEFAULT_CAPACITY = 16  # adapters kept on the device; the least recently used goes first

Mix = list[tuple[str, float]]  # one sample's adapters: (cache key, weight)


def not_batchable(adapter: Adapter) -> str | None:
    """Why `adapter` cannot be batched here (a DoRA file), or None when it can."""
    kind = (read_metadata(adapter.metadata).network_type or "lora").lower()
    if kind not in BATCHABLE_TYPES:
        return f"network type '{kind}'"
    for name, layer in adapter.layers.items():
        if type(layer) is not LoraLayer and not isinstance(layer, DENSE_KINDS):
            return f"layer {name} is a {type(layer).__name__}, not a LoRA pair, LoHa or LoKr"
    return None


@dataclass
class CachedAdapter:
    key: str  # the file's sha256 (or a caller's key for an in-memory adapter)
    slot: int
    path: Path | None
    metadata: dict[str, str] = field(default_factory=dict)


class _LayerStack:
    """The cached adapters' pairs for one base module, stacked by slot: down [S, r, in(, kh, kw)], up [S, out, r];
    LoHa/LoKr layers as their dW, shaped like the module's weight."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.is_conv = isinstance(module, torch.nn.Conv2d)
        self.pairs: dict[int, tuple[torch.Tensor, torch.Tensor, float]] = {}  # slot -> (down, up, alpha/rank)
        self.dense: dict[int, torch.Tensor] = {}  # slot -> dW shaped like the weight (its scale included)
        self._stacks: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def put(self, slot: int, layer) -> None:
        weight = self.module.weight
        if isinstance(layer, DENSE_KINDS):
            self.dense[slot] = layer.matrix().reshape(weight.shape).to(weight.device, weight.dtype)
            return
        down = layer.down.to(weight.device, weight.dtype)
        up = layer.up.reshape(layer.up.shape[0], layer.rank).to(weight.device, weight.dtype)
        self.pairs[slot] = (down, up, layer.scale)
        self._stacks = None

    def drop(self, slot: int) -> None:
        if self.pairs.pop(slot, None) is not None:
            self._stacks = None
        self.dense.pop(slot, None)

    def slots(self) -> set[int]:
        return self.pairs.keys() | self.dense.keys()

    def stacks(self, num_slots: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._stacks is None or self._stacks[0].shape[0] != num_slots:
            weight = self.module.weight
            rank = max(down.shape[0] for down, _, _ in self.pairs.values())
            downs = weight.new_zeros(num_slots, rank, *weight.shape[1:])
            ups = weight.new_zeros(num_slots, weight.shape[0], rank)
            scales = torch.zeros(num_slots, dtype=weight.dtype, device=weight.device)
            for slot, (down, up, scale) in self.pairs.items():
                downs[slot, :down.shape[0]] = down
                ups[slot, :, :up.shape[1]] = up
                scales[slot] = scale
            self._stacks = downs, ups, scales
        return self._stacks

    def add_to(self, output: torch.Tensor, x: torch.Tensor, slots: torch.Tensor, weights: torch.Tensor,
               num_slots: int, used: set[int] = frozenset()) -> torch.Tensor:
        """output + Σ_k w_k·(alpha/rank)·B·(A·x) per sample; `slots`, `weights` are [K, N] (K adapters per sample
        at most). The scale goes on the rank-r intermediate and B's product is fused with the add (baddbmm), so
        the full-size output is touched once per adapter position."""
        n = x.shape[0]
        out = output.reshape(n, output.shape[1], -1) if self.is_conv else output.reshape(n, -1, output.shape[-1])
        if self.dense:
            out = self._add_dense(out, x, slots, weights, used)
        if not self.pairs:
            return out.reshape(output.shape).to(output.dtype)
        downs, ups, scales = self.stacks(num_slots)
        for k in range(slots.shape[0]):
            down, up = downs[slots[k]].to(x.dtype), ups[slots[k]].to(x.dtype)  # each sample's A and B
            scale = (weights[k] * scales[slots[k]]).to(x.dtype)
            if self.is_conv:  # LoCon: A carries the kernel, B is 1x1 (as peft's lora.Conv2d)
                # per-sample kernels as one grouped convolution: the batch folded into the channels
                c, h, w = x.shape[1:]
                low = F.conv2d(x.reshape(1, n * c, h, w), down.reshape(-1, *down.shape[2:]),
                               stride=self.module.stride, padding=self.module.padding, groups=n)
                low = low.reshape(n, down.shape[1], -1) * scale[:, None, None]
                out = torch.baddbmm(out.to(x.dtype), up, low)  # [n, out, r] @ [n, r, h'w']
            else:
                low = torch.bmm(x.reshape(n, -1, x.shape[-1]), down.transpose(1, 2)) * scale[:, None, None]
                out = torch.baddbmm(out.to(x.dtype), low, up.transpose(1, 2))  # [n, L, r] @ [n, r, out]
        return out.reshape(output.shape).to(output.dtype)

    def _add_dense(self, out: torch.Tensor, x: torch.Tensor, slots: torch.Tensor, weights: torch.Tensor,
                   used: set[int]) -> torch.Tensor:
        """out + Σ_k w_k·dW·x per sample for the LoHa/LoKr slots, as `apply_adapter` adds dW·x: each dW in use is
        applied to the whole batch (F.linear / F.conv2d, the module's own geometry) and weighted per sample by its
        weight where the sample has it, 0 elsewhere; no host sync, one base-layer cost per LoHa/LoKr in the batch."""
        module, n = self.module, x.shape[0]
        for slot in sorted(used & self.dense.keys()):
            delta = self.dense[slot].to(x.dtype)
            per_sample = (weights * (slots == slot)).sum(0).to(x.dtype)  # [N]: this adapter's weight per sample
            if self.is_conv:
                y = F.conv2d(x, delta, None, module.stride, module.padding, module.dilation, module.groups)
                out = out.to(x.dtype) + y.reshape(n, y.shape[1], -1) * per_sample[:, None, None]
            else:
                y = F.linear(x, delta)
                out = out.to(x.dtype) + y.reshape(n, -1, y.shape[-1]) * per_sample[:, None, None]
        return out


class MultiAdapter:
    """Per-sample LoRA mixes over one pipeline's base weights.

    >>> multi = MultiAdapter(pipe)
    >>> a, b = multi.load("style.safetensors"), multi.load("subject.safetensors")
    >>> with multi.mixes([[(a.key, 1.0)], [(b.key, 0.5)], []]):  # three samples, the last the base model
    ...     images = pipe(["p1", "p2", "p3"], generator=[...]).images
    """

    def __init__(self, pipe, capacity: int = DEFAULT_CAPACITY):
        self.pipe = pipe
        self.capacity = capacity
        self.adapters: OrderedDict[str, CachedAdapter] = OrderedDict()  # by key, least recently used first
        self.loads = 0  # files read into the cache: a grid reads each once
        self._layers: dict[str, _LayerStack] = {}  # by Adapter layer name
        self._hooks: list = []
        # slots [K, N], weights [K, N], the slots in use, and both for a guidance batch of 2N
        self._active: tuple | None = None

    # ------------------------------------------------------------------------------------------ the cache
    def load(self, path: Path | str) -> CachedAdapter:
        """A LoRA file into the device cache, once per distinct content (sha256); checks family and shapes."""
        from sdlora.adapters.blend import file_sha256
        from sdlora.lora.io import read_adapter_file

        path = Path(path)
        key = file_sha256(path) if path.is_file() else None
        if key in self.adapters:
            self.adapters.move_to_end(key)
            return self.adapters[key]
        found = read_adapter_file(path)
        key = key or file_sha256(found.path)
        return self.add(key, found.adapter, found.path)

    def add(self, key: str, adapter: Adapter, path: Path | None = None) -> CachedAdapter:
        """An in-memory adapter into the cache under `key`."""
        if key in self.adapters:
            self.adapters.move_to_end(key)
            return self.adapters[key]
        what = str(path) if path else key
        reason = not_batchable(adapter)
        if reason:
            raise SdloraError(f"{what}: {reason} cannot be batched with other adapters; use AdapterBlender for it")
        check_fits(self.pipe, adapter, what)
        modules = {name: resolve_module(self.pipe, name) for name in adapter.layers}
        if len(self.adapters) >= self.capacity:
            self._evict()
        used = {a.slot for a in self.adapters.values()}
        slot = next(i for i in range(self.capacity + 1) if i not in used)
        for name, layer in adapter.layers.items():
            stack = self._layers.get(name)
            if stack is None:
                stack = self._layers[name] = _LayerStack(modules[name])
                self._hooks.append(modules[name].register_forward_hook(self._hook(stack)))
            stack.put(slot, layer)
        cached = CachedAdapter(key, slot, path, dict(adapter.metadata))
        self.adapters[key] = cached
        self.loads += 1
        return cached

    def _evict(self) -> None:
        active = self._active[2] if self._active else set()
        for key, cached in self.adapters.items():
            if cached.slot not in active:
                for stack in self._layers.values():
                    stack.drop(cached.slot)
                del self.adapters[key]
                return
        raise SdloraError(f"more than {self.capacity} adapters in one batch; raise the cache capacity")

    @property
    def num_slots(self) -> int:
        return max((a.slot for a in self.adapters.values()), default=-1) + 1

    # ------------------------------------------------------------------------------------------ a batch
    @contextlib.contextmanager
    def mixes(self, rows: list[Mix]) -> Iterator[None]:
        """Within this block the model serves a batch of len(rows) samples, sample i with adapter mix rows[i]
        ([(key, weight), ...]; an empty mix is the base model). Keys must be in the cache."""
        width = max((len(mix) for mix in rows), default=0) or 1
        slots = torch.zeros(width, len(rows), dtype=torch.long)
        weights = torch.zeros(width, len(rows))
        used: set[int] = set()
        for i, mix in enumerate(rows):
            for k, (key, weight) in enumerate(mix):
                cached = self.adapters[key]
                self.adapters.move_to_end(key)
                slots[k, i], weights[k, i] = cached.slot, float(weight)
                if weight:
                    used.add(cached.slot)
        slots, weights = slots.to(self.pipe.unet.device), weights.to(self.pipe.unet.device)
        self._active = (slots, weights, used, (slots.repeat(1, 2), weights.repeat(1, 2)))
        try:
            yield
        finally:
            self._active = None

    def _hook(self, stack: _LayerStack):
        def add_delta(module, args, output):
            if self._active is None or not (self._active[2] & stack.slots()):
                return output  # no mix active, or no sample of the batch has this layer
            slots, weights, used, doubled = self._active
            x, n = args[0], slots.shape[1]
            if x.shape[0] == 2 * n:  # classifier-free guidance: [uncond; cond], each half the same samples
                slots, weights = doubled
            elif x.shape[0] != n:
                raise RuntimeError(f"a batch of {x.shape[0]} reached a layer set up for {n} samples")
            return stack.add_to(output, x, slots, weights, self.num_slots, used)
        return add_delta

    def close(self) -> None:
        """Remove the hooks: the pipeline is the plain base model again."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        self._layers.clear()
        self.adapters.clear()


def resolve_module(pipe, name: str) -> torch.nn.Module:
    """The pipeline module of an Adapter layer name (`unet.…`, `text_encoder.text_model.…`); peft's wrapper, where
    one was injected, counts as its base layer."""
    component, path = name.split(".", 1)
    model = getattr(pipe, component, None)
    if model is None:
        raise SdloraError(f"layer {name}: this model has no {component}")
    if component != "unet" and not hasattr(model, "text_model"):  # transformers 5 flattened text_model away
        path = path.removeprefix("text_model.")
    try:
        module = model.get_submodule(path)
    except AttributeError:
        raise SdloraError(f"layer {name} is not in this model") from None
    return getattr(module, "base_layer", module)


def check_fits(pipe, adapter: Adapter, what: str) -> None:
    """Refuse an adapter for another model family (SDXL on SD 1.x, SD 2.x shapes on SD 1.x) before any sampling."""
    from sdlora.adapters.analysis import base_family

    family, source = base_family(adapter)
    pipe_is_xl = getattr(pipe, "text_encoder_2", None) is not None
    if family in ("sd1", "sd2", "sdxl") and (family == "sdxl") != pipe_is_xl:
        model = "an SDXL" if pipe_is_xl else "an SD 1.x/2.x"
        raise SdloraError(f"{what}: this LoRA is for {family} (from {source}) but the model is {model} model; use "
                          f"it with a model of its family")
    for name, layer in adapter.layers.items():
        if type(layer) is not LoraLayer and not isinstance(layer, DENSE_KINDS):
            continue  # another network type: diffusers checks it when it loads it
        try:
            module = resolve_module(pipe, name)
        except SdloraError as exc:
            raise SdloraError(f"{what}: {exc}; this LoRA is for another base model ({family}, from {source})") from None
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            raise SdloraError(f"{what}: layer {name} is a {type(module).__name__}, not a Linear or Conv2d layer")
        weight = module.weight
        if isinstance(layer, DENSE_KINDS):
            if (layer.out_features, layer.in_features) != (weight.shape[0], weight[0].numel()):
                raise SdloraError(f"{what}: layer {name} has shape ({layer.out_features}, {layer.in_features}) but "
                                  f"the model's weight is {tuple(weight.shape)}; this {layer.kind} is for another "
                                  f"base model ({family}, from {source})")
            continue
        expected_down = (layer.rank, *weight.shape[1:])
        if tuple(layer.down.shape) != expected_down or layer.up.shape[0] != weight.shape[0]:
            raise SdloraError(f"{what}: layer {name} has down {tuple(layer.down.shape)} and up "
                              f"{tuple(layer.up.shape)} but the model's weight is {tuple(weight.shape)}; this LoRA "
                              f"is for another base model ({family}, from {source})")
