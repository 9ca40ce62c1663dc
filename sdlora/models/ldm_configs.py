"""Diffusers/transformers configs inferred from the tensor shapes of an original-layout (LDM/SGM) checkpoint.

Widths, depths, layer counts and the context width are read from the shapes, so fine-tunes and small test
models of other sizes load, not only the published ones. What shapes cannot tell follows the family's
convention (as the original configs set it): attention heads (SD 1.x: 8 heads per block; SD 2.x and SDXL: 64
channels per head; text encoders: 64 channels per head), GroupNorm groups (32), SDXL's size-embedding width.
An A1111-style YAML next to the file may give the UNet's num_heads / num_head_channels and the VAE scale.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from sdlora.errors import SdloraError

# Stable Diffusion's training noise schedule (the original v1/v2 configs), as diffusers' schedulers take it.
SD_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)

UNET = "model.diffusion_model."
CLIP_PREFIXES = {"sd1": "cond_stage_model.transformer.", "sdxl": "conditioner.embedders.0.transformer."}
OPEN_CLIP_PREFIXES = {"sd2": "cond_stage_model.model.", "sdxl": "conditioner.embedders.1.model."}
VAE_SCALING = {"sd1": 0.18215, "sd2": 0.18215, "sdxl": 0.13025}
HEAD_CHANNELS = 64  # CLIP, OpenCLIP and the SD 2.x/SDXL UNets use 64 channels per attention head


def family_from_keys(state: dict[str, torch.Tensor]) -> str:
    """'sd1' | 'sd2' | 'sdxl' from which text encoders the file holds (their key layouts differ by family)."""
    keys = state.keys()
    if any(k.startswith(OPEN_CLIP_PREFIXES["sdxl"]) for k in keys) or f"{UNET}label_emb.0.0.weight" in state:
        return "sdxl"
    if any(k.startswith("conditioner.embedders.0.model.") for k in keys):
        raise SdloraError("an SDXL refiner checkpoint (one OpenCLIP encoder, no CLIP-L): refiners are not "
                          "supported for LoRA training; use an SDXL base model")
    if any(k.startswith(OPEN_CLIP_PREFIXES["sd2"]) for k in keys):
        return "sd2"
    if any(k.startswith(CLIP_PREFIXES["sd1"]) for k in keys):
        return "sd1"
    # No text encoder in the file: fall back on the UNet's context width (768: SD 1.x, 1024: SD 2.x).
    ctx = _context_dim(state)
    if ctx == 1024:
        return "sd2"
    if ctx == 2048:
        return "sdxl"
    return "sd1"


def _context_dim(state: dict[str, torch.Tensor]) -> int | None:
    for k, v in state.items():
        if k.startswith(UNET) and k.endswith("attn2.to_k.weight"):
            return int(v.shape[1])
    return None


def _indices(keys, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def unet_config(state: dict[str, torch.Tensor], family: str, *, v_prediction: bool,
                yaml_unet: dict[str, Any] | None = None, pooled_dim: int | None = None) -> dict[str, Any]:
    """UNet2DConditionModel config from the shapes under model.diffusion_model.*."""
    sd = {k[len(UNET):]: v for k, v in state.items() if k.startswith(UNET)}
    blocks = _indices(sd, r"input_blocks\.(\d+)\.")
    ops = [i for i in blocks if f"input_blocks.{i}.0.op.weight" in sd]
    layers = (ops[0] - 1) if ops else len(blocks) - 1
    levels = len(ops) + 1
    if layers < 1 or len(blocks) != 1 + levels * layers + len(ops):
        raise SdloraError(f"UNet input blocks do not follow the SD layout ({len(blocks)} blocks, downsamplers at "
                          f"{ops})")
    channels, attn, depth = [], [], []
    for level in range(levels):
        i = 1 + level * (layers + 1)
        channels.append(int(sd[f"input_blocks.{i}.0.out_layers.3.weight"].shape[0]))
        n = len(_indices(sd, rf"input_blocks\.{i}\.1\.transformer_blocks\.(\d+)\."))
        attn.append(n > 0)
        depth.append(max(n, 1))
    ctx = _context_dim(state)
    proj_in = next(v for k, v in sd.items() if k.endswith(".proj_in.weight"))
    yaml_unet = yaml_unet or {}
    head_channels = yaml_unet.get("num_head_channels", -1)
    if head_channels in (-1, None) and "num_heads" in yaml_unet and yaml_unet["num_heads"] != -1:
        heads: Any = int(yaml_unet["num_heads"])
    elif family == "sd1" and head_channels in (-1, None):
        heads = 8  # SD 1.x: num_heads 8 at every level (v1-inference.yaml)
    else:
        per = HEAD_CHANNELS if head_channels in (-1, None) else int(head_channels)
        heads = [max(c // per, 1) for c in channels]
    mid_depth = len(_indices(sd, r"middle_block\.1\.transformer_blocks\.(\d+)\."))
    if mid_depth and mid_depth != depth[-1]:
        raise SdloraError(f"UNet middle block has {mid_depth} transformer layers and the last level "
                          f"{depth[-1]}: a layout diffusers cannot hold")
    config: dict[str, Any] = dict(
        sample_size=128 if family == "sdxl" else 96 if v_prediction else 64,
        in_channels=int(sd["input_blocks.0.0.weight"].shape[1]),
        out_channels=int(sd["out.2.weight"].shape[0]),
        block_out_channels=channels,
        layers_per_block=layers,
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        cross_attention_dim=ctx,
        attention_head_dim=heads,
        use_linear_projection=proj_in.ndim == 2,
        transformer_layers_per_block=depth if any(d > 1 for d in depth) else 1,
    )
    if family == "sd2" and v_prediction:
        config["upcast_attention"] = True  # as SD 2.1-v's own config: its attention overflows fp16
    if "label_emb.0.0.weight" in sd:
        adm = int(sd["label_emb.0.0.weight"].shape[1])
        if pooled_dim is None:
            raise SdloraError("an SDXL UNet without its second text encoder (conditioner.embedders.1): the file "
                              "is incomplete")
        # SDXL's added condition: the pooled text embedding + 6 Fourier-embedded size/crop numbers.
        config.update(addition_embed_type="text_time", addition_time_embed_dim=(adm - pooled_dim) // 6,
                      projection_class_embeddings_input_dim=adm)
    return config


def vae_config(state: dict[str, torch.Tensor], prefix: str, family: str, scale: float | None,
               sample_size: int) -> dict[str, Any]:
    """AutoencoderKL config from the shapes under `prefix` (first_stage_model. or '' for a bare VAE file)."""
    sd = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    levels = _indices(sd, r"encoder\.down\.(\d+)\.")
    channels = [int(sd[f"encoder.down.{i}.block.0.conv2.weight"].shape[0]) for i in levels]
    return dict(
        in_channels=int(sd["encoder.conv_in.weight"].shape[1]),
        out_channels=int(sd["decoder.conv_out.weight"].shape[0]),
        latent_channels=int(sd["decoder.conv_in.weight"].shape[1]),
        block_out_channels=channels,
        layers_per_block=len(_indices(sd, r"encoder\.down\.0\.block\.(\d+)\.")),
        down_block_types=["DownEncoderBlock2D"] * len(channels),
        up_block_types=["UpDecoderBlock2D"] * len(channels),
        sample_size=sample_size,
        scaling_factor=float(scale if scale is not None else VAE_SCALING[family]),
    )


def clip_config(state: dict[str, torch.Tensor], prefix: str) -> dict[str, Any]:
    """CLIPTextConfig of an OpenAI CLIP encoder stored in transformers' layout (SD 1.x, SDXL encoder 1)."""
    emb = state[prefix + "text_model.embeddings.token_embedding.weight"]
    hidden = int(emb.shape[1])
    return dict(
        vocab_size=int(emb.shape[0]), hidden_size=hidden,
        intermediate_size=int(state[prefix + "text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
        num_hidden_layers=len(_indices(state, re.escape(prefix) + r"text_model\.encoder\.layers\.(\d+)\.")),
        num_attention_heads=max(hidden // HEAD_CHANNELS, 1),
        max_position_embeddings=int(state[prefix + "text_model.embeddings.position_embedding.weight"].shape[0]),
        hidden_act="quick_gelu", projection_dim=hidden,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )


def open_clip_config(state: dict[str, torch.Tensor], prefix: str, *, drop_last: bool) -> dict[str, Any]:
    """CLIPTextConfig of an OpenCLIP encoder (SD 2.x: the penultimate layer is the output, so the last layer is
    dropped; SDXL encoder 2: all layers, plus the text projection for the pooled embedding)."""
    emb = state[prefix + "token_embedding.weight"]
    hidden = int(emb.shape[1])
    n = len(_indices(state, re.escape(prefix) + r"transformer\.resblocks\.(\d+)\."))
    proj = state.get(prefix + "text_projection")
    return dict(
        vocab_size=int(emb.shape[0]), hidden_size=hidden,
        intermediate_size=int(state[prefix + "transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
        num_hidden_layers=n - 1 if drop_last else n,
        num_attention_heads=max(hidden // HEAD_CHANNELS, 1),
        max_position_embeddings=int(state[prefix + "positional_embedding"].shape[0]),
        hidden_act="gelu", projection_dim=int(proj.shape[1]) if proj is not None and not drop_last else hidden,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=0,
    )
