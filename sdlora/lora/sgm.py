"""SDXL UNet module paths: diffusers' names <-> the original (SGM / Stability "generative-models") layout.

kohya's sd-scripts trains SDXL on its own copy of the original UNet, so kohya SDXL LoRA files (and A1111 and
ComfyUI, which read them) name UNet modules by that layout: `input_blocks.4.1.transformer_blocks.0.attn1.to_q`,
`middle_block.1....`, `output_blocks.3.1....`, resnet parts `in_layers.2` / `emb_layers.1` / `out_layers.3` /
`skip_connection`. diffusers' `_maybe_map_sgm_blocks_to_diffusers` reads them with the same arithmetic as here.

The layout, with L = layers_per_block (2 in SDXL):
  input_blocks.0.0                   conv_in
  input_blocks.{1 + i(L+1) + j}.0    down_blocks.i.resnets.j        .1 -> down_blocks.i.attentions.j
  input_blocks.{(i+1)(L+1)}.0.op     down_blocks.i.downsamplers.0.conv
  middle_block.0 / .1 / .2           mid_block.resnets.0 / attentions.0 / resnets.1
  output_blocks.{i(L+1) + j}.0       up_blocks.i.resnets.j          .1 -> up_blocks.i.attentions.j
  output_blocks.{i(L+1) + L}.2.conv  up_blocks.i.upsamplers.0.conv  (slot 2: in SDXL every up block with an
                                     upsampler also has attentions; slot 1 `.conv` is read too)
  time_embed.0 / .2                  time_embedding.linear_1 / linear_2
  label_emb.0.0 / .0.2               add_embedding.linear_1 / linear_2
  out.0 / out.2                      conv_norm_out / conv_out
"""

from __future__ import annotations

import re

LAYERS_PER_BLOCK = 2  # SDXL base (and the tiny test model) — the layout's arithmetic depends on it

# diffusers resnet part -> SGM ResBlock part
RESNET_PARTS = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
RESNET_PARTS_BACK = {v: k for k, v in RESNET_PARTS.items()}
TOP_LEVEL = {"conv_in": "input_blocks.0.0", "conv_out": "out.2", "conv_norm_out": "out.0",
             "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}
TOP_LEVEL_BACK = {v: k for k, v in TOP_LEVEL.items()}
# Attribute names of the SGM layout that diffusers' UNet does not have (for splitting kohya's flat names).
SGM_ATOMS = {"input_blocks", "middle_block", "output_blocks", "in_layers", "out_layers", "emb_layers",
             "skip_connection", "op", "time_embed", "label_emb", "out", "norm"}


def _resnet(rest: str) -> str:
    head, _, tail = rest.partition(".")
    part = RESNET_PARTS.get(head)
    return part + (f".{tail}" if tail else "") if part else rest


def _resnet_back(rest: str) -> str:
    for sgm, diffusers in RESNET_PARTS_BACK.items():
        if rest == sgm or rest.startswith(sgm + "."):
            return diffusers + rest[len(sgm):]
    return rest


def to_sgm(path: str, layers: int = LAYERS_PER_BLOCK) -> str | None:
    """A diffusers UNet module path -> its SGM path (None: not a module of SDXL's block layout)."""
    for name, sgm in TOP_LEVEL.items():
        if path == name or path.startswith(name + "."):
            return sgm + path[len(name):]
    m = re.fullmatch(r"(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)",
                     path)
    if m:
        kind, i, part, j, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
        if kind == "down_blocks":
            if part == "downsamplers":
                return f"input_blocks.{(i + 1) * (layers + 1)}.0.op" if rest == "conv" else None
            n = 1 + i * (layers + 1) + j
        else:
            if part == "upsamplers":
                return f"output_blocks.{i * (layers + 1) + layers}.2.{rest}"
            n = i * (layers + 1) + j
        block = "input_blocks" if kind == "down_blocks" else "output_blocks"
        return f"{block}.{n}.0.{_resnet(rest)}" if part == "resnets" else f"{block}.{n}.1.{rest}"
    m = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d)\.(.+)", path)
    if m:
        part, j, rest = m.groups()
        if part == "attentions":
            return f"middle_block.1.{rest}" if j == "0" else None
        return f"middle_block.{0 if j == '0' else 2}.{_resnet(rest)}" if j in "01" else None
    return None


def from_sgm(path: str, layers: int = LAYERS_PER_BLOCK) -> str | None:
    """An SGM UNet module path -> the diffusers path (None: not a path of this layout)."""
    for sgm, name in TOP_LEVEL_BACK.items():
        if path == sgm or path.startswith(sgm + "."):
            return name + path[len(sgm):]
    m = re.fullmatch(r"(input_blocks|output_blocks|middle_block)\.(\d+)(?:\.(\d+))?\.(.+)", path)
    if not m:
        return None
    block, n, slot, rest = m.group(1), int(m.group(2)), m.group(3), m.group(4)
    if block == "middle_block":
        # middle_block.N.rest: the regex put N in `n` and the rest's first index (if any) in `slot`
        rest = f"{slot}.{rest}" if slot is not None else rest
        if n == 1:
            return f"mid_block.attentions.0.{rest}"
        return f"mid_block.resnets.{0 if n == 0 else 1}.{_resnet_back(rest)}" if n in (0, 2) else None
    if slot is None:
        return None
    slot = int(slot)
    if block == "input_blocks":
        if n == 0:
            return None
        i, j = divmod(n - 1, layers + 1)
        if j == layers:  # the block's downsampler
            return f"down_blocks.{i}.downsamplers.0.conv" if (slot, rest) == (0, "op") else None
        return (f"down_blocks.{i}.resnets.{j}.{_resnet_back(rest)}" if slot == 0 else
                f"down_blocks.{i}.attentions.{j}.{rest}" if slot == 1 else None)
    i, j = divmod(n, layers + 1)
    if slot == 2 or (slot == 1 and rest == "conv"):
        return f"up_blocks.{i}.upsamplers.0.{rest}"
    return (f"up_blocks.{i}.resnets.{j}.{_resnet_back(rest)}" if slot == 0 else
            f"up_blocks.{i}.attentions.{j}.{rest}" if slot == 1 else None)
