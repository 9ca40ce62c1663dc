"""Tiny random-weight models of SD 1.x, SD 2.x and SDXL, and their export to the original single-file layout.

The export (diffusers -> LDM/SGM key names) is written here independently of diffusers' own conversion, so a
file written by it and loaded by sdlora checks the loader against an implementation it does not share.
"""

from __future__ import annotations

import re

import torch

CLIP_VOCAB = 49408
SD_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
              up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), layers_per_block=1,
              latent_channels=4, norm_num_groups=32, sample_size=64)
UNETS = {
    # SD 1.x: 8 heads at every level, conv projections (v1-inference.yaml conventions).
    "sd1": dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(64, 128, 128),
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                layers_per_block=1, cross_attention_dim=64, attention_head_dim=8),
    # SD 2.x: 64 channels per head, linear projections, two layers per block.
    "sd2": dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(64, 128),
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                layers_per_block=2, cross_attention_dim=64, attention_head_dim=(1, 2), use_linear_projection=True),
    # SDXL: no attention at level 0, deeper transformers further down, text_time added condition.
    "sdxl": dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(64, 128),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
                 transformer_layers_per_block=(1, 2), cross_attention_dim=128, attention_head_dim=(1, 2),
                 use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
                 projection_class_embeddings_input_dim=32 + 6 * 8),
}
TEXT = dict(vocab_size=CLIP_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=1, max_position_embeddings=77)


def build_models(family: str, seed: int = 0) -> dict[str, torch.nn.Module]:
    """Random-weight components of `family`, by diffusers subfolder name."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    models = {"unet": UNet2DConditionModel(**UNETS[family]), "vae": AutoencoderKL(**SD_VAE)}
    act = "gelu" if family == "sd2" else "quick_gelu"
    models["text_encoder"] = CLIPTextModel(CLIPTextConfig(**TEXT, hidden_act=act, projection_dim=64))
    if family == "sdxl":
        models["text_encoder_2"] = CLIPTextModelWithProjection(
            CLIPTextConfig(**TEXT, hidden_act="gelu", projection_dim=32))
    for m in models.values():
        with torch.no_grad():  # GroupNorm/LayerNorm init at 1/0 would hide a swapped weight/bias
            for name, p in m.named_parameters():
                if "norm" in name:
                    p.add_(torch.randn_like(p) * 0.1)
    return {k: m.eval() for k, m in models.items()}


_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
           "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}


def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    L = unet.config.layers_per_block
    up_attn = ["CrossAttn" in t for t in unet.config.up_block_types]
    out = {}
    for key, v in unet.state_dict().items():
        if m := re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
            side, b, kind, j, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
            idx = 1 + b * (L + 1) + j if side == "down" else b * (L + 1) + j
            blocks = "input_blocks" if side == "down" else "output_blocks"
            if kind == "resnets":
                name, _, tail = rest.partition(".")
                new = f"{blocks}.{idx}.0.{_RESNET[name]}.{tail}"
            else:
                new = f"{blocks}.{idx}.1.{rest}"
        elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
            new = f"input_blocks.{(int(m.group(1)) + 1) * (L + 1)}.0.op.{m.group(2)}"
        elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
            b = int(m.group(1))
            new = f"output_blocks.{b * (L + 1) + L}.{2 if up_attn[b] else 1}.conv.{m.group(2)}"
        elif m := re.match(r"mid_block\.resnets\.(\d)\.([a-z_0-9]+)\.(.*)", key):
            new = f"middle_block.{0 if m.group(1) == '0' else 2}.{_RESNET[m.group(2)]}.{m.group(3)}"
        elif key.startswith("mid_block.attentions.0."):
            new = "middle_block.1." + key[len("mid_block.attentions.0."):]
        else:
            stem, _, leaf = key.rpartition(".")
            new = f"{_UNET_TOP[stem]}.{leaf}"
        out["model.diffusion_model." + new] = v.clone()
    return out


def vae_to_ldm(vae, prefix: str = "first_stage_model.") -> dict[str, torch.Tensor]:
    n = len(vae.config.block_out_channels)
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for key, v in vae.state_dict().items():
        new = key
        if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            new = f"encoder.down.{m.group(1)}.block.{m.group(2)}.{m.group(3)}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
            new = f"encoder.down.{m.group(1)}.downsample.conv.{m.group(2)}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            new = f"decoder.up.{n - 1 - int(m.group(1))}.block.{m.group(2)}.{m.group(3)}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
            new = f"decoder.up.{n - 1 - int(m.group(1))}.upsample.conv.{m.group(2)}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.*)", key):
            new = f"{m.group(1)}.mid.block_{int(m.group(2)) + 1}.{m.group(3)}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.*)",
                           key):
            new = f"{m.group(1)}.mid.attn_1.{attn[m.group(2)]}.{m.group(3)}"
            if v.ndim == 2:
                v = v[:, :, None, None]  # the original attention uses 1x1 convolutions
        new = new.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        out[prefix + new] = v.clone()
    return out


def _text_keys(model) -> dict[str, torch.Tensor]:
    sd = model.state_dict()
    return {(k if k.startswith(("text_model.", "text_projection")) else "text_model." + k): v for k, v in sd.items()}


def clip_to_ldm(text_encoder, prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v.clone() for k, v in _text_keys(text_encoder).items()}


def open_clip_to_ldm(text_encoder, prefix: str, *, extra_layer: bool) -> dict[str, torch.Tensor]:
    """OpenCLIP layout; `extra_layer` adds the last block (and projection) SD 2.x files carry but do not use."""
    sd = _text_keys(text_encoder)
    names = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.out_proj": "attn.out_proj"}
    out = {prefix + "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
           prefix + "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
           prefix + "ln_final.weight": sd["text_model.final_layer_norm.weight"],
           prefix + "ln_final.bias": sd["text_model.final_layer_norm.bias"]}
    if "text_projection.weight" in sd:
        out[prefix + "text_projection"] = sd["text_projection.weight"].T  # OpenCLIP multiplies x @ P
    n = text_encoder.config.num_hidden_layers
    for i in range(n):
        src, dst = f"text_model.encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[dst + f"attn.in_proj_{kind}"] = torch.cat(
                [sd[src + f"self_attn.{p}_proj.{kind}"] for p in "qkv"])
            for a, b in names.items():
                out[dst + f"{b}.{kind}"] = sd[src + f"{a}.{kind}"]
    if extra_layer:
        g = torch.Generator().manual_seed(99)
        for k in [k for k in out if k.startswith(f"{prefix}transformer.resblocks.0.")]:
            out[k.replace("resblocks.0.", f"resblocks.{n}.")] = torch.randn(out[k].shape, generator=g)
        out[prefix + "text_projection"] = torch.randn(text_encoder.config.hidden_size, 32, generator=g)
    return {k: v.clone().contiguous() for k, v in out.items()}


def to_single_file(models: dict[str, torch.nn.Module], family: str, *, vae: bool = True) -> dict[str, torch.Tensor]:
    """The whole model as one original-layout state dict."""
    state = unet_to_ldm(models["unet"])
    if vae:
        state.update(vae_to_ldm(models["vae"]))
    if family == "sd1":
        state.update(clip_to_ldm(models["text_encoder"], "cond_stage_model.transformer."))
    elif family == "sd2":
        state.update(open_clip_to_ldm(models["text_encoder"], "cond_stage_model.model.", extra_layer=True))
    else:
        state.update(clip_to_ldm(models["text_encoder"], "conditioner.embedders.0.transformer."))
        state.update(open_clip_to_ldm(models["text_encoder_2"], "conditioner.embedders.1.model.", extra_layer=False))
    return state
