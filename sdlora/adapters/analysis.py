"""What an adapter does, in numbers: per-layer spectrum of dW = (alpha/rank)·B·A, base-model family, rank resizing.

dW has rank <= r, so its singular values come from an r x r problem rather than an SVD of the full (out x in)
matrix: with B = Qb·Rb and Aᵀ = Qa·Ra (thin QR), dW = scale·Qb·(Rb·Raᵀ)·Qaᵀ, and the SVD of the small core
Rb·Raᵀ = u·S·vᵀ gives dW = (Qb·u)·(scale·S)·(Qa·v)ᵀ. This is exact and cheap for SDXL-sized layers too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sdlora.lora.metadata import FAMILY_OF_VERSION, read_metadata, resized_metadata
from sdlora.lora.state import Adapter, LoraLayer

ENERGY_FRACTION = 0.9  # "effective rank": how many singular values hold this share of the energy (sum of s²)
CONTAINERS = {"down_blocks", "up_blocks", "attentions", "resnets", "transformer_blocks", "layers",
              "downsamplers", "upsamplers"}
CROSS_ATTENTION_FAMILY = {768: "sd1", 1024: "sd2", 2048: "sdxl"}


@dataclass
class Spectrum:
    """dW of one layer as U·diag(s)·Vᵀ (U: out x k, V: in·kh·kw x k), singular values s in descending order."""

    u: torch.Tensor
    s: torch.Tensor
    v: torch.Tensor

    @property
    def energy(self) -> torch.Tensor:
        return self.s ** 2

    def effective_rank(self, fraction: float = ENERGY_FRACTION) -> int:
        total = float(self.energy.sum())
        if total == 0.0:
            return 0
        cumulative = torch.cumsum(self.energy, 0) / total
        # The small tolerance keeps an exact-rank dW from counting a rounding-level extra value.
        return int((cumulative < fraction - 1e-9).sum()) + 1

    def kept_energy(self, rank: int) -> float:
        total = float(self.energy.sum())
        return 1.0 if total == 0.0 else float(self.energy[:rank].sum()) / total


def spectrum(layer: LoraLayer) -> Spectrum:
    """The exact SVD of dW = (alpha/rank)·B·A, computed in float64 through the rank-r core.

    DoRA: the spectrum of its LoRA part s·B·A (the direction update; the magnitude needs the base weight). LoHa and
    LoKr: a plain SVD of their dW matrix, whose rank is not bounded by theirs (rank² for LoHa)."""
    if layer.kind not in ("lora", "dora"):
        u, s, vh = torch.linalg.svd(layer.matrix().double(), full_matrices=False)
        return Spectrum(u=u, s=s, v=vh.T)
    rank = layer.rank
    up = layer.up.double().reshape(layer.up.shape[0], rank)
    down = layer.down.double().reshape(rank, -1)
    qb, rb = torch.linalg.qr(up)
    qa, ra = torch.linalg.qr(down.T)
    u, s, vh = torch.linalg.svd(rb @ ra.T)
    return Spectrum(u=qb @ u, s=abs(layer.scale) * s, v=qa @ vh.T * math.copysign(1.0, layer.scale))


def module_kind(name: str) -> str:
    """The part of a layer name after its last numbered container: `...transformer_blocks.0.attn1.to_q` ->
    `attn1.to_q`, `...resnets.1.conv1` -> `conv1`, `text_encoder...layers.3.mlp.fc1` -> `mlp.fc1`."""
    parts = name.split(".")[1:]
    start = 0
    for i in range(1, len(parts)):
        if parts[i].isdigit() and parts[i - 1] in CONTAINERS:
            start = i + 1
    return ".".join(parts[start:])


def base_family(adapter: Adapter) -> tuple[str, str]:
    """(family, how it was found): from the kohya metadata when present, else from the layer shapes."""
    meta = read_metadata(adapter.metadata)
    if meta.family is not None:
        return meta.family, ("metadata ss_base_model_version" if meta.base_model_version in FAMILY_OF_VERSION
                             else "metadata ss_v2")
    if adapter.family == "sdxl":
        return "sdxl", "SDXL key names (input_blocks/output_blocks, te1/te2)"
    if any(name.startswith("text_encoder_2.") for name in adapter.layers):
        return "sdxl", "second text encoder layers"
    for name, layer in adapter.layers.items():
        if name.startswith("unet.") and name.endswith(("attn2.to_k", "attn2.to_v")):
            dim = layer.in_features
            return CROSS_ATTENTION_FAMILY.get(dim, f"unknown (cross-attention dim {dim})"), "layer shapes"
    for name, layer in adapter.layers.items():
        if name.startswith("text_encoder.") and name.endswith("q_proj"):
            dim = layer.in_features
            return CROSS_ATTENTION_FAMILY.get(dim, f"unknown (text width {dim})"), "layer shapes"
    return "unknown", "no metadata and no cross-attention layer"


def resize_layer(layer: LoraLayer, rank: int) -> tuple[LoraLayer, float]:
    """The best rank-`rank` LoRA for this layer's dW (Eckart-Young), and the share of energy it keeps.

    alpha/rank stays what it was (alpha scales with the rank), so a user's weight means the same after resizing.
    A layer already at or below `rank` is returned as it is.
    """
    if layer.rank <= rank:
        return layer, 1.0
    spec = spectrum(layer)
    new_alpha = layer.alpha * rank / layer.rank
    scale = abs(new_alpha / rank) or 1.0
    # dW_k = U_k·S_k·V_kᵀ = scale·(U_k·√(S_k/scale))·(√(S_k/scale)·V_kᵀ): split the singular values evenly.
    root = torch.sqrt(spec.s[:rank] / scale)
    sign = math.copysign(1.0, new_alpha) if new_alpha else 1.0
    up = spec.u[:, :rank] * root * sign
    down = (spec.v[:, :rank] * root).T
    dtype = layer.down.dtype
    if layer.down.dim() == 4:
        down = down.reshape(rank, *layer.down.shape[1:])
        up = up.reshape(up.shape[0], rank, 1, 1)
    resized = LoraLayer(down=down.to(dtype).contiguous(), up=up.to(dtype).contiguous(),
                        alpha=new_alpha if new_alpha else float(rank))
    return resized, spec.kept_energy(rank)


# Module names of SD UNets that are 3x3 convolutions, and 1x1 ones (proj_in/out: 1x1 convolutions in SD 1.x and
# the tiny model, Linear in SD 2.x/XL). A LoHa/LoKr file stores a conv's factors flattened, so its kernel is not in the file.
CONV_3X3 = ("conv1", "conv2", "conv", "conv_in", "conv_out")
CONV_1X1 = ("conv_shortcut",)


def _kernel(name: str, layer, family: str) -> tuple[int, ...] | None:
    """The kernel of the module a flattened LoHa/LoKr layer adapts (None: a Linear)."""
    if layer.kind == "lokr" and layer.w2 is not None and layer.w2.dim() == 4:
        return tuple(layer.w2.shape[2:])
    last = name.rsplit(".", 1)[-1]
    if last in CONV_3X3 and layer.in_features % 9 == 0:
        return (3, 3)
    if last in CONV_1X1 or (last in ("proj_in", "proj_out") and family not in ("sd2", "sdxl")):
        return (1, 1)
    return None


def lycoris_to_lora(layer, rank: int, kernel: tuple[int, ...] | None) -> tuple[LoraLayer, float]:
    """The best rank-`rank` LoRA (LoCon for a conv) of a LoHa/LoKr layer's dW, by truncated SVD; scale 1."""
    spec = spectrum(layer)
    rank = min(rank, int(spec.s.numel()))
    root = torch.sqrt(spec.s[:rank])
    up, down = spec.u[:, :rank] * root, (spec.v[:, :rank] * root).T
    if kernel is not None:
        down = down.reshape(rank, -1, *kernel)
        up = up.reshape(up.shape[0], rank, 1, 1)
    return (LoraLayer(down=down.float().contiguous(), up=up.float().contiguous(), alpha=float(rank)),
            spec.kept_energy(rank))


def resize_adapter(adapter: Adapter, rank: int) -> tuple[Adapter, dict[str, float]]:
    """Every layer refactored to at most `rank`; returns the new adapter and the energy kept per layer.

    LoHa and LoKr layers become plain LoRA (LoCon) layers; a DoRA layer keeps its magnitude and stays DoRA."""
    from sdlora.lora.kinds import DoraLayer

    layers, kept = {}, {}
    family = base_family(adapter)[0]
    for name, layer in adapter.layers.items():
        if layer.kind in ("loha", "lokr"):
            layers[name], kept[name] = lycoris_to_lora(layer, rank, _kernel(name, layer, family))
        elif layer.kind == "dora":
            lora, kept[name] = resize_layer(LoraLayer(layer.down, layer.up, layer.alpha), rank)
            layers[name] = DoraLayer(lora.down, lora.up, lora.alpha, magnitude=layer.magnitude)
        else:
            layers[name], kept[name] = resize_layer(layer, rank)
    alphas = {layer.alpha for layer in layers.values()}
    metadata = resized_metadata(adapter.metadata, rank=max(layer.rank for layer in layers.values()),
                                alpha=alphas.pop() if len(alphas) == 1 else None, resized_from=sorted(adapter.ranks),
                                plain_lora=any(layer.kind in ("loha", "lokr") for layer in adapter.layers.values()))
    return Adapter(layers=layers, metadata=metadata), kept


def dylora_unit(adapter: Adapter) -> int:
    """The rank step of a DyLoRA adapter, from sdlora's metadata or kohya's ss_network_args `unit` (default 1)."""
    return read_metadata(adapter.metadata).dylora_unit


def truncate_adapter(adapter: Adapter, rank: int) -> Adapter:
    """A DyLoRA adapter at rank `rank`: the first `rank` rows of each down and columns of each up, alpha kept (so
    the scale is alpha/rank, as training at that rank used); no SVD (Valipour et al. 2023, sec. 3)."""
    from sdlora.errors import SdloraError

    unit, full = dylora_unit(adapter), max(adapter.ranks)
    if rank % unit or rank > full:
        raise SdloraError(f"--rank {rank}: a DyLoRA adapter of rank {full} (unit {unit}) truncates to a multiple of "
                          f"{unit} up to {full}")
    layers = {name: LoraLayer(down=layer.down[:rank].contiguous(), up=layer.up[:, :rank].contiguous(),
                              alpha=layer.alpha) for name, layer in adapter.layers.items()}
    metadata = resized_metadata(adapter.metadata, rank=rank, truncated_from=full)
    return Adapter(layers=layers, metadata=metadata, family=adapter.family)


def describe(adapter: Adapter) -> dict:
    """Everything `sdlora inspect` reports about an adapter, as plain JSON-ready values."""
    family, family_source = base_family(adapter)
    meta = read_metadata(adapter.metadata)
    layers, kinds, components = [], {}, {}
    for name, layer in sorted(adapter.layers.items()):
        spec = spectrum(layer)
        kind = module_kind(name)
        kinds[kind] = kinds.get(kind, 0) + 1
        component = name.split(".", 1)[0]
        components[component] = components.get(component, 0) + 1
        shape = ([int(layer.up.shape[0]), *map(int, layer.down.shape[1:])] if layer.kind in ("lora", "dora")
                 else [layer.out_features, layer.in_features])
        layers.append({"name": name, "kind": layer.kind, "rank": layer.rank, "alpha": layer.alpha, "shape": shape,
                       "norm": float(spec.s.norm()), "effective_rank": spec.effective_rank()})
    return {
        "network_type": adapter.network_type,
        "family": family,
        "family_source": family_source,
        "base_model": meta.base_model,
        "num_layers": len(adapter.layers),
        "components": components,
        "ranks": sorted(adapter.ranks),
        "alphas": sorted({layer.alpha for layer in adapter.layers.values()}),
        "num_parameters": adapter.num_parameters(),
        "targets": dict(sorted(kinds.items())),
        "training": meta.training(),
        "effective_rank_energy": ENERGY_FRACTION,
        "layers": layers,
    }
