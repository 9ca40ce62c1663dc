"""Key formats of LoRA files <-> the in-memory `Adapter`: kohya (`lora_unet_...lora_down.weight`) and diffusers/PEFT.

Everything format-specific lives here, as pure functions over state dicts, so the rest of sdlora sees `Adapter`
only. Reading and writing the files (and telling a LoRA from other files) is `sdlora.lora.io`.

Kohya flattens a module path by replacing every '.' with '_', which loses information (`to_out_0`: is it
`to_out.0` or `to_out_0`?). We restore the dots with a rule: a flattened name is split into the known attribute
names of diffusers' UNet2DConditionModel and transformers' CLIPTextModel (longest match first) and indices.
A name that does not split into known parts is reported as unknown rather than guessed.

SDXL files name their UNet modules by the original SGM layout (`lora_unet_input_blocks_4_1_...`, see
`sdlora.lora.sgm`) and their text encoders `lora_te1_`/`lora_te2_`; they are read into, and written from, the
same diffusers names as every other adapter.
"""

from __future__ import annotations

from typing import Any

import collections
import re

import torch

from sdlora.lora import sgm
from sdlora.lora.kinds import KINDS, layer_from_parts
from sdlora.lora.state import LoraLayer

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# Attribute names (and index-free parts) of diffusers' UNet2DConditionModel and transformers' CLIPTextModel.
UNET_ATOMS = {
    "down_blocks", "up_blocks", "mid_block", "attentions", "resnets", "downsamplers", "upsamplers",
    "transformer_blocks", "attn1", "attn2", "to_q", "to_k", "to_v", "to_out", "ff", "net", "proj",
    "proj_in", "proj_out", "conv", "conv1", "conv2", "conv_shortcut", "time_emb_proj", "conv_in", "conv_out",
    "time_embedding", "linear_1", "linear_2", "add_embedding", "encoder_hid_proj", "class_embedding",
    # attention of diffusers < 0.15, which old kohya files still name
    "query", "key", "value", "proj_attn",
}
CLIP_ATOMS = {
    "text_model", "encoder", "layers", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj", "mlp", "fc1", "fc2",
}
# The kohya prefix of each component. SDXL files name their two text encoders te1/te2; SD 1.x/2.x files use te.
KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder",
                  "lora_te2_": "text_encoder_2"}
# Every kind's key suffixes (LoRA, DoRA's dora_scale, LoHa's hada_*, LoKr's lokr_*), longest first.
ALL_KOHYA_SUFFIXES = dict(sorted({s: p for cls in KINDS.values() for s, p in cls.KOHYA_PARTS.items()}.items(),
                                 key=lambda kv: -len(kv[0])))
PEFT_SUFFIXES = {".lora_A.weight": "down", ".lora_B.weight": "up", ".alpha": "alpha",
                 ".lora_magnitude_vector": "magnitude"}
PEFT_COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


def _atom_table(atoms: set[str]) -> list[list[str]]:
    """Atoms split at '_', longest first, so `conv_shortcut` wins over `conv` + `shortcut`."""
    return sorted((a.split("_") for a in atoms), key=len, reverse=True)


_UNET_TABLE = _atom_table(UNET_ATOMS)
_SGM_TABLE = _atom_table(UNET_ATOMS | sgm.SGM_ATOMS)
SGM_KOHYA_PREFIXES = tuple(f"lora_unet_{block}_" for block in ("input_blocks", "middle_block", "output_blocks",
                                                                 "time_embed", "label_emb", "out"))
_CLIP_TABLE = _atom_table(CLIP_ATOMS)


def _split_flat(flat: str, table: list[list[str]]) -> str | None:
    """`down_blocks_0_attentions_0_proj_in` -> `down_blocks.0.attentions.0.proj_in`, or None if a part is unknown."""
    pieces = flat.split("_")
    parts: list[str] = []
    i = 0
    while i < len(pieces):
        if pieces[i].isdigit():
            parts.append(pieces[i])
            i += 1
            continue
        for atom in table:
            if pieces[i:i + len(atom)] == atom:
                parts.append("_".join(atom))
                i += len(atom)
                break
        else:
            return None
    return ".".join(parts)


def clip_model_path(path: str) -> str:
    """CLIP module paths in one form, `text_model.encoder...`: transformers 5 flattened `text_model` away."""
    return path if path.startswith("text_model.") else "text_model." + path


def kohya_stem_to_name(stem: str) -> str | None:
    """`lora_unet_mid_block_attentions_0_proj_in` -> `unet.mid_block.attentions.0.proj_in` (None: not SD naming)."""
    for prefix, component in sorted(KOHYA_PREFIXES.items(), key=lambda kv: -len(kv[0])):
        if stem.startswith(prefix):
            flat = stem[len(prefix):]
            if component == "unet":
                path = _split_flat(flat, _UNET_TABLE)
                if path is None and stem.startswith(SGM_KOHYA_PREFIXES):  # SDXL's original block names
                    sgm_path = _split_flat(flat, _SGM_TABLE)
                    path = sgm.from_sgm(sgm_path) if sgm_path else None
            else:
                path = _split_flat(flat, _CLIP_TABLE)
                path = clip_model_path(path) if path else None
            return f"{component}.{path}" if path else None
    return None


def name_to_kohya_stem(name: str, sdxl: bool = False) -> str:
    """`unet.mid_block.attentions.0.proj_in` -> `lora_unet_mid_block_attentions_0_proj_in`; with `sdxl`, UNet
    modules take their SGM names (`lora_unet_middle_block_1_proj_in`), as kohya's SDXL files do."""
    component, path = name.split(".", 1)
    if component == "unet":
        prefix = "lora_unet_"
        if sdxl:
            original = sgm.to_sgm(path)
            if original is None:
                raise ValueError(f"layer {name!r}: no SDXL (SGM) module name for it")
            path = original
    elif component == "text_encoder":
        prefix = "lora_te1_" if sdxl else "lora_te_"
        path = clip_model_path(path)
    elif component == "text_encoder_2":
        prefix = "lora_te2_"
        path = clip_model_path(path)
    else:
        raise ValueError(f"layer {name!r}: unknown component {component!r}")
    return prefix + path.replace(".", "_")


def _alpha_tensor(alpha: float, dtype: torch.dtype) -> torch.Tensor:
    """Alpha in the weights' dtype when that holds it exactly (as kohya writes it), else in fp32."""
    exact = torch.tensor(alpha, dtype=dtype)
    return exact if float(exact) == float(alpha) else torch.tensor(alpha, dtype=torch.float32)


def _cast(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    # A fresh contiguous copy: safetensors refuses tensors that share storage (e.g. slices of one SVD).
    return tensor.detach().to("cpu", dtype or tensor.dtype).contiguous().clone()


def kohya_is_sdxl(state: dict[str, torch.Tensor]) -> bool:
    """Whether kohya keys are SDXL's: SGM UNet block names or the two text encoders' te1/te2 prefixes."""
    return any(key.startswith(SGM_KOHYA_PREFIXES + ("lora_te1_", "lora_te2_")) for key in state)


def to_kohya(layers: dict[str, LoraLayer], dtype: torch.dtype | None, sdxl: bool = False) -> dict[str, torch.Tensor]:
    sdxl = sdxl or any(name.startswith("text_encoder_2.") for name in layers)
    state = {}
    for name, layer in layers.items():
        stem = name_to_kohya_stem(name, sdxl)
        if layer.kind != "lora":
            state.update(_kohya_parts(stem, layer, dtype))
            continue
        down, up = _cast(layer.down, dtype), _cast(layer.up, dtype)
        state[stem + ".lora_down.weight"] = down
        state[stem + ".lora_up.weight"] = up
        state[stem + ".alpha"] = _alpha_tensor(layer.alpha, down.dtype)
    return state


def _kohya_parts(stem: str, layer, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """The keys of a DoRA, LoHa or LoKr layer, by the suffixes its kind declares (`KOHYA_PARTS`)."""
    tensors = layer.tensors()
    if layer.kind == "dora":  # LyCORIS' dora_scale: m shaped [out, 1, ...], a norm per output channel
        tensors["magnitude"] = tensors["magnitude"].reshape(-1, *[1] * (layer.down.dim() - 1))
    state = {stem + suffix: _cast(tensors[part], dtype) for suffix, part in layer.KOHYA_PARTS.items()
             if part in tensors}
    state[stem + ".alpha"] = _alpha_tensor(layer.alpha, next(iter(state.values())).dtype)
    return state


def _peft_path(name: str) -> tuple[str, str]:
    component, path = name.split(".", 1)
    return component, (clip_model_path(path) if component.startswith("text_encoder") else path)


def to_peft(layers: dict[str, LoraLayer], dtype: torch.dtype | None) -> tuple[dict[str, torch.Tensor], dict]:
    """PEFT keys and the per-component LoraConfig diffusers reads back (`lora_adapter_metadata`).

    diffusers' `load_lora_weights` takes rank and alpha of a PEFT-format file from that metadata when present
    (`_create_lora_config`); without it every module would get alpha = rank. The metadata is keyed
    `<component>.<LoraConfig field>` (diffusers `_pack_dict_with_prefix`).
    """
    state = {}
    for name, layer in layers.items():
        component, path = _peft_path(name)
        state[f"{component}.{path}.lora_A.weight"] = _cast(layer.down, dtype)
        state[f"{component}.{path}.lora_B.weight"] = _cast(layer.up, dtype)
        if layer.kind == "dora":  # peft's magnitude: [out] for a Linear, [1, out, 1, 1] for a Conv2d
            shape = (-1,) if layer.down.dim() == 2 else (1, -1, 1, 1)
            state[f"{component}.{path}.lora_magnitude_vector"] = _cast(layer.magnitude.reshape(shape), dtype)
    config = {}
    for component in PEFT_COMPONENTS:
        prefix = component + "."
        mine = {name[len(prefix):]: layer for name, layer in layers.items() if name.startswith(prefix)}
        if mine:
            for key, value in peft_config(mine, clip=component != "unet").items():
                config[f"{component}.{key}"] = value
    return state, config


def peft_config(layers: dict[str, LoraLayer], clip: bool) -> dict:
    """A PEFT LoraConfig (as a dict) that gives each module its own rank and alpha.

    Module names go in without CLIP's `text_model.` prefix: PEFT matches a target by full name or by '.'-suffix,
    so `encoder.layers.0...` fits both the flattened (transformers 5) and the nested CLIPTextModel.
    """
    def module(path: str) -> str:
        return path.removeprefix("text_model.") if clip else path

    r = _most_common(layer.rank for layer in layers.values())
    alpha = _most_common(float(layer.alpha) for layer in layers.values())
    dora = {"use_dora": True} if any(layer.kind == "dora" for layer in layers.values()) else {}
    return {
        **dora,
        "r": r,
        "lora_alpha": alpha,
        "target_modules": sorted(module(p) for p in layers),
        "rank_pattern": {module(p): layer.rank for p, layer in sorted(layers.items()) if layer.rank != r},
        "alpha_pattern": {module(p): float(layer.alpha) for p, layer in sorted(layers.items())
                          if float(layer.alpha) != alpha},
    }


def _most_common(values):
    """The most frequent value, the smallest on a tie: the same layers in any order give the same config."""
    counts = collections.Counter(values)
    return max(counts, key=lambda v: (counts[v], -v))


def _pattern_value(patterns: dict, path: str, default):
    """PEFT's rule (`get_pattern_key`): a pattern applies when it matches the end of the module path."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", path):
            return value
    return default


def _group(state: dict[str, torch.Tensor], suffixes: dict[str, str]) -> tuple[dict[str, dict], list[str]]:
    """Keys -> {stem: {"down"|"up"|"alpha": tensor}}, and the keys that fit no suffix."""
    groups: dict[str, dict] = collections.defaultdict(dict)
    unknown = []
    for key, tensor in state.items():
        for suffix, part in suffixes.items():
            if key.endswith(suffix):
                groups[key[: -len(suffix)]][part] = tensor
                break
        else:
            unknown.append(key)
    return groups, unknown


def _layer(parts: dict) -> LoraLayer | None:
    # A file with no alpha means alpha = rank (scale 1), as kohya and diffusers both read it.
    return layer_from_parts(parts)


def from_kohya(state: dict[str, torch.Tensor]) -> tuple[dict[str, LoraLayer], list[str]]:
    """Layers of a kohya state dict (LoRA/LoCon, DoRA, LoHa, LoKr), and the keys skipped (unknown names, Tucker
    parts, lone halves or mixed kinds of one module)."""
    groups, unknown = _group(state, ALL_KOHYA_SUFFIXES)
    layers = {}
    for stem, parts in groups.items():
        name = kohya_stem_to_name(stem)
        layer = _layer(parts)
        if name is None or layer is None or any(key.startswith(stem + ".") for key in unknown):
            # e.g. a Tucker-decomposed LoCon layer (`lora_mid`): its down/up alone would be a wrong layer.
            unknown += [stem + s for s, part in ALL_KOHYA_SUFFIXES.items() if part in parts and stem + s in state]
            continue
        layers[name] = layer
    return layers, sorted(unknown)


def from_peft(state: dict[str, torch.Tensor], config: dict | None) -> tuple[dict[str, LoraLayer], list[str]]:
    """Layers of a diffusers/PEFT state dict; alpha from `.alpha` keys, else the file's LoraConfig, else rank."""
    groups, unknown = _group(state, PEFT_SUFFIXES)
    config = config or {}
    layers = {}
    for stem, parts in groups.items():
        component, _, path = stem.removeprefix("base_model.model.").partition(".")
        if "magnitude" in parts:
            parts["magnitude"] = parts["magnitude"].reshape(-1)
        layer = _layer(parts)
        if component not in PEFT_COMPONENTS or not path or layer is None:
            unknown += [stem + s for s, part in PEFT_SUFFIXES.items() if part in parts]
            continue
        if "alpha" not in parts and f"{component}.lora_alpha" in config:
            default = float(config[f"{component}.lora_alpha"])
            pattern = config.get(f"{component}.alpha_pattern") or {}
            lookup = path.removeprefix("text_model.") if component != "unet" else path
            layer.alpha = float(_pattern_value(pattern, lookup, default))
        if component != "unet":
            path = clip_model_path(path)
        layers[f"{component}.{path}"] = layer
    return layers, sorted(unknown)


def find_module(pipe: Any, name: str) -> torch.nn.Module:
    """The live module of a layer name (`unet.<path>`, `text_encoder.text_model.<path>`), or None."""
    component, path = name.split(".", 1)
    model = getattr(pipe, component, None)
    if model is None:
        return None
    if component.startswith("text_encoder") and not hasattr(model, "text_model"):
        path = path.removeprefix("text_model.")  # transformers 5 flattened CLIPTextModel.text_model away
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None
