"""The adapter layer kinds beyond plain LoRA: DoRA, LoHa and LoKr, each with its update formula and file keys.

Each kind is one dataclass holding its tensors as the kohya/LyCORIS file stores them, so a file round trip is a
rename. The update every tool uses is `matrix()` (dW flattened to [out, in·kh·kw]) and `merge_delta(base, weight)`
(what adding the adapter at `weight` does to a base weight), next to `KOHYA_PARTS`, the key suffixes of the file:

- DoRA (Liu et al. 2024, eq. 5): W' = m · (W0 + s·B·A) / ||W0 + s·B·A||_c, the norm per output channel; file =
  LoRA keys + `dora_scale` (m, shaped [out, 1, ...] as LyCORIS' default wd_on_out writes it).
- LoHa (Hyeon-Woo et al. 2022, FedPara): dW = s · (w1_a·w1_b) ⊙ (w2_a·w2_b), keys `hada_w1_a/b`, `hada_w2_a/b`.
- LoKr (Yeh et al. 2023, LyCORIS): dW = s · w1 ⊗ w2 (Kronecker), each factor full (`lokr_w1`) or low-rank
  (`lokr_w1_a`·`lokr_w1_b`). LyCORIS uses s = 1 when neither factor is low-rank, whatever the alpha.

s = alpha / rank throughout, as in LyCORIS, peft and kohya. Tucker (`hada_t1`, `lokr_t2`) layers are not read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sdlora.lora.state import LoraLayer


@dataclass
class DoraLayer(LoraLayer):
    """LoRA's down/up/alpha plus the magnitude m ([out]) of weight-decomposed LoRA."""

    magnitude: torch.Tensor = None

    kind = "dora"
    KOHYA_PARTS = {**LoraLayer.KOHYA_PARTS, ".dora_scale": "magnitude"}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {**super().tensors(), "magnitude": self.magnitude}

    def merge_delta(self, base: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        """m·(W0 + w·s·BA)/||W0 + w·s·BA||_c − W0: a weight scales the LoRA part, as peft's set_scale does."""
        w0 = base.float()
        directed = w0 + weight * self.delta_weight().reshape(w0.shape)
        norm = directed.reshape(w0.shape[0], -1).norm(dim=1)
        scale = (self.magnitude.float().reshape(-1) / norm).reshape(-1, *[1] * (w0.dim() - 1))
        return directed * scale - w0

    def num_parameters(self) -> int:
        return super().num_parameters() + self.magnitude.numel()


@dataclass
class LohaLayer:
    """dW = (alpha/rank)·(w1_a·w1_b) ⊙ (w2_a·w2_b); w*_a [out, rank], w*_b [rank, in·kh·kw]."""

    w1_a: torch.Tensor
    w1_b: torch.Tensor
    w2_a: torch.Tensor
    w2_b: torch.Tensor
    alpha: float

    kind = "loha"
    KOHYA_PARTS = {".hada_w1_a": "w1_a", ".hada_w1_b": "w1_b", ".hada_w2_a": "w2_a", ".hada_w2_b": "w2_b",
                   ".alpha": "alpha"}

    @property
    def rank(self) -> int:
        return int(self.w1_b.shape[0])

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank

    @property
    def out_features(self) -> int:
        return int(self.w1_a.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.w1_b.shape[1])

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"w1_a": self.w1_a, "w1_b": self.w1_b, "w2_a": self.w2_a, "w2_b": self.w2_b}

    def delta_shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)  # a conv's kernel is flattened into in_features

    def matrix(self) -> torch.Tensor:
        """dW as [out, in·kh·kw], fp32 (LyCORIS functional/loha.py, `diff_weight`)."""
        return self.scale * ((self.w1_a.float() @ self.w1_b.float()) * (self.w2_a.float() @ self.w2_b.float()))

    def merge_delta(self, base: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        return weight * self.matrix().reshape(base.shape)

    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.tensors().values())


LOKR_FACTORS = ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b")


@dataclass
class LokrLayer:
    """dW = scale·(w1 or w1_a·w1_b) ⊗ (w2 or w2_a·w2_b); a conv's w2 is [out_k, in_n, kh, kw] or its w2_b
    [rank, in_n·kh·kw]. `rank` is explicit: with both factors full no tensor carries it (scale is then 1)."""

    w1: torch.Tensor | None
    w1_a: torch.Tensor | None
    w1_b: torch.Tensor | None
    w2: torch.Tensor | None
    w2_a: torch.Tensor | None
    w2_b: torch.Tensor | None
    alpha: float
    rank: int

    kind = "lokr"
    KOHYA_PARTS = {".lokr_w1": "w1", ".lokr_w1_a": "w1_a", ".lokr_w1_b": "w1_b", ".lokr_w2": "w2",
                   ".lokr_w2_a": "w2_a", ".lokr_w2_b": "w2_b", ".alpha": "alpha"}

    @property
    def decomposed(self) -> bool:
        return self.w1 is None or self.w2 is None

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank if self.decomposed else 1.0

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        w1 = self.w1.float() if self.w1 is not None else self.w1_a.float() @ self.w1_b.float()
        w2 = self.w2.float() if self.w2 is not None else self.w2_a.float() @ self.w2_b.float()
        return w1, w2

    @property
    def out_features(self) -> int:
        w1, w2 = self.factors()
        return int(w1.shape[0] * w2.shape[0])

    @property
    def in_features(self) -> int:
        w1, w2 = self.factors()
        return int(w1.shape[1] * w2[0].numel())

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in LOKR_FACTORS if getattr(self, name) is not None}

    def delta_shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)  # a conv's kernel is flattened into in_features

    def matrix(self) -> torch.Tensor:
        """dW as [out, in·kh·kw], fp32. A 4-D w2 flattened first gives the same matrix as the 4-D Kronecker
        product flattened (LyCORIS functional/lokr.py `make_kron`)."""
        w1, w2 = self.factors()
        return self.scale * torch.kron(w1, w2.reshape(w2.shape[0], -1))

    def merge_delta(self, base: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        return weight * self.matrix().reshape(base.shape)

    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.tensors().values())


KINDS = {cls.kind: cls for cls in (LoraLayer, DoraLayer, LohaLayer, LokrLayer)}
# Kinds that diffusers' load_lora_weights reads (DoRA through peft's lora_magnitude_vector).
DIFFUSERS_KINDS = ("lora", "dora")


def layer_from_parts(parts: dict[str, torch.Tensor]):
    """The layer a file's parts of one module make (None: an incomplete or mixed set of parts)."""
    names = set(parts) - {"alpha"}
    alpha = float(parts["alpha"].float().item()) if "alpha" in parts else None
    if names in ({"down", "up"}, {"down", "up", "magnitude"}):
        down, up = parts["down"], parts["up"]
        alpha = float(down.shape[0]) if alpha is None else alpha  # no alpha: scale 1, as kohya reads it
        if "magnitude" not in names:
            return LoraLayer(down=down, up=up, alpha=alpha)
        magnitude = parts["magnitude"]
        if magnitude.shape[0] != up.shape[0]:
            return None  # LyCORIS' wd_on_out=False (a norm per input channel): not read
        return DoraLayer(down=down, up=up, alpha=alpha, magnitude=magnitude.reshape(-1))
    if names == {"w1_a", "w1_b", "w2_a", "w2_b"}:
        rank = int(parts["w1_b"].shape[0])
        return LohaLayer(parts["w1_a"], parts["w1_b"], parts["w2_a"], parts["w2_b"],
                         float(rank) if alpha is None else alpha)
    has_w1 = names & {"w1", "w1_a", "w1_b"} in ({"w1"}, {"w1_a", "w1_b"})
    has_w2 = names & {"w2", "w2_a", "w2_b"} in ({"w2"}, {"w2_a", "w2_b"})
    if names <= set(LOKR_FACTORS) and has_w1 and has_w2:
        low = parts.get("w1_b", parts.get("w2_b"))
        # Both factors full: no tensor has the rank; LyCORIS writes alpha = rank and scales by 1.
        rank = int(low.shape[0]) if low is not None else int(alpha or 1)
        values = {name: parts.get(name) for name in LOKR_FACTORS}
        return LokrLayer(**values, alpha=float(rank) if alpha is None or low is None else alpha, rank=rank)
    return None
