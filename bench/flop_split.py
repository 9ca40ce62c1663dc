"""Where an SD 1.5 training step's FLOPs are, by operator (convolutions, attention's batched products, Linear).

    python bench/flop_split.py            # 512 px, batch 1; runs on the CPU in seconds (meta tensors)

The UNet is built on the meta device (no memory, no arithmetic) and FlopCounterMode counts the forward and the
backward (input gradients everywhere, as with a LoRA; no base-weight gradients). The Linear share bounds what
float8 Linear layers (train.base_precision: fp8) can gain.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # architectures: random-weight models


def main() -> None:
    from diffusers import UNet2DConditionModel

    from architectures import SD15_UNET

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET).to(torch.bfloat16).requires_grad_(False)
    x = torch.randn(1, 4, 64, 64, device="meta", dtype=torch.bfloat16, requires_grad=True)
    text = torch.randn(1, 77, 768, device="meta", dtype=torch.bfloat16)
    with FlopCounterMode(display=False) as counter:
        unet(x, torch.tensor([500], device="meta"), text).sample.float().pow(2).mean().backward()
    totals: dict[str, float] = defaultdict(float)
    for op, flops in counter.get_flop_counts()["Global"].items():
        totals[str(op)] += flops
    total = sum(totals.values())
    for op, flops in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"{op:30s} {flops / 1e12:7.3f} TFLOP {100 * flops / total:5.1f}%")
    linear = totals.get("aten.mm", 0) + totals.get("aten.addmm", 0)
    print(f"{'total':30s} {total / 1e12:7.3f} TFLOP; Linear (mm + addmm) {100 * linear / total:.1f}%")


if __name__ == "__main__":
    main()
