"""Read and write adapter files: `save_adapter` and `load_adapter`, with the format detected on reading.

Only .safetensors is read: a pickle (.ckpt/.pt/.bin) can run code when loaded, so it is refused with a message
rather than opened. A file that is not a Stable Diffusion LoRA (a full checkpoint, a LoRA for Flux or SD3, random
bytes) is a user error (`SdloraError`) that says what the file looks like.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sdlora.lora import formats
from sdlora.lora.check import check_values
from sdlora.lora.state import Adapter
from sdlora.atomic import atomic_path
from sdlora.errors import SdloraError
from sdlora.tensorfile import read_safetensors

FORMATS = ("kohya", "diffusers")
# diffusers' key for the PEFT LoraConfig inside a file's metadata (diffusers.loaders.lora_base).
PEFT_METADATA_KEY = "lora_adapter_metadata"
DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


@dataclass
class AdapterFile:
    """What reading a file found: the adapter, the file's key format and dtypes, and the keys it skipped."""

    adapter: Adapter
    format: str
    path: Path
    dtypes: set[str] = field(default_factory=set)
    skipped_keys: list[str] = field(default_factory=list)


def save_adapter(adapter: Adapter, path: Path | str, fmt: str = "kohya", dtype: str | None = "fp32") -> Path:
    """Write `adapter` to `path` (.safetensors) atomically, in `fmt` ("kohya" | "diffusers").

    `dtype` ("fp32" | "fp16" | "bf16") casts the LoRA weights; None keeps each tensor's own dtype (what `convert`
    uses, so a round trip is bit-exact). Metadata values that are not strings are written as JSON. A diffusers
    file also carries the PEFT config (rank and alpha per module) that diffusers' `load_lora_weights` reads.
    """
    if fmt not in FORMATS:
        raise SdloraError(f"adapter format '{fmt}' is unknown; use one of {', '.join(FORMATS)}")
    if dtype is not None and dtype not in formats.DTYPES:
        raise SdloraError(f"adapter dtype '{dtype}' is unknown; use one of {', '.join(formats.DTYPES)}")
    if not adapter.layers:
        raise SdloraError(f"{path}: the adapter has no layers; nothing to save")
    if Path(path).is_dir():
        raise SdloraError(f"{path}: is a folder; give the adapter file to write, e.g. "
                          f"{Path(path) / 'lora.safetensors'}")
    torch_dtype = formats.DTYPES[dtype] if dtype else None
    metadata = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in adapter.metadata.items()}
    metadata.pop(PEFT_METADATA_KEY, None)  # stale from a diffusers file; a kohya file must not carry it
    if fmt == "kohya":
        state = formats.to_kohya(adapter.layers, torch_dtype, sdxl=adapter.is_sdxl)
    else:
        _check_diffusers_kinds(adapter, path)
        state, config = formats.to_peft(adapter.layers, torch_dtype)
        metadata[PEFT_METADATA_KEY] = json.dumps(config, indent=2, sort_keys=True)
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return path


def load_adapter(path: Path | str) -> Adapter:
    """Read a LoRA file in kohya or diffusers/PEFT format; unknown keys are skipped with a warning."""
    found = read_adapter_file(path)
    if found.skipped_keys:
        keys = found.skipped_keys
        warnings.warn(f"{found.path}: skipped {len(keys)} key(s) that are not LoRA layers of a Stable Diffusion "
                      f"UNet or text encoder (e.g. {keys[0]})", stacklevel=2)
    return found.adapter


def read_adapter_file(path: Path | str) -> AdapterFile:
    """`load_adapter` with the details: the detected format, the stored dtypes and the skipped keys."""
    path = _resolve(Path(path))
    state, metadata = _read_safetensors(path)
    _refuse_non_lora(path, state)
    fmt = detect_format(state)
    family = None
    if fmt == "kohya":
        layers, skipped = formats.from_kohya(state)
        family = "sdxl" if formats.kohya_is_sdxl(state) else None
    else:
        config = metadata.pop(PEFT_METADATA_KEY, None)
        try:
            peft_config = json.loads(config) if config else None
        except json.JSONDecodeError:
            raise SdloraError(f"{path}: its '{PEFT_METADATA_KEY}' metadata is not valid JSON; the file is "
                              f"damaged, re-export it") from None
        layers, skipped = formats.from_peft(state, peft_config)
    if not layers:
        raise SdloraError(f"{path}: no LoRA layer for a Stable Diffusion UNet or text encoder found among its "
                          f"{len(state)} tensors (e.g. {next(iter(state))}); this is not an SD 1.x/2.x/XL LoRA")
    _check_shapes(path, layers)
    adapter = Adapter(layers, metadata, family)
    check_values(adapter, str(path))
    dtypes = {str(t.dtype).removeprefix("torch.") for key, t in state.items() if key not in skipped}
    return AdapterFile(adapter, fmt, path, dtypes, skipped)


# Key fragments of LyCORIS layers sdlora does not read (Tucker cores, other algorithms): a file that has them is
# only partly read, which merge and the Preview refuse rather than apply half an adapter.
LYCORIS_FRAGMENTS = ("hada_", "lokr_", "lora_mid", "dora_scale", "oft_", "on_input", ".diff", ".w_norm", ".b_norm",
                     "a1.weight", "glora_", "ia3")


def check_fully_read(found: AdapterFile) -> None:
    """SdloraError naming the first key of a LyCORIS layer that `found` could not read (mixed or unknown parts)."""
    for key in found.skipped_keys:
        if any(fragment in key for fragment in LYCORIS_FRAGMENTS):
            raise SdloraError(f"{found.path}: key {key} is a LyCORIS part sdlora cannot read (a Tucker core, another "
                              f"algorithm, or parts of two kinds on one module); sdlora reads LoRA/LoCon, DoRA, LoHa "
                              f"and LoKr layers without Tucker decomposition")


def detect_format(state: dict[str, torch.Tensor]) -> str:
    """'kohya' when the keys are kohya-style (`lora_unet_...lora_down.weight`), else 'diffusers'."""
    kohya = sum(key.startswith(tuple(formats.KOHYA_PREFIXES)) for key in state)
    peft = sum(".lora_A." in key or ".lora_B." in key for key in state)
    return "kohya" if kohya >= peft else "diffusers"


def _resolve(path: Path) -> Path:
    if path.is_dir() and (path / DIFFUSERS_WEIGHT_NAME).is_file():
        return path / DIFFUSERS_WEIGHT_NAME  # a folder saved by diffusers' save_lora_weights
    if not path.is_file():
        raise SdloraError(f"{path}: no such file; give the path of a LoRA .safetensors file")
    return path


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    state, metadata = read_safetensors(path)
    if not state:
        raise SdloraError(f"{path}: the file holds no tensors; this is not a LoRA")
    return state, metadata


# Key fragments of model families sdlora does not serve, and what to call them in the message.
FOREIGN = [
    (("double_blocks", "single_blocks", "single_transformer_blocks", "x_embedder"), "Flux"),
    (("joint_blocks", "context_embedder"), "Stable Diffusion 3"),
    (("transformer.", "lora_transformer_"), "a diffusion-transformer model (Flux/SD3/PixArt style)"),
]
FULL_CHECKPOINT = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.")


def _refuse_non_lora(path: Path, state: dict[str, torch.Tensor]) -> None:
    keys = list(state)
    lora_keys = [k for k in keys if "lora" in k or k.endswith(".alpha")]
    if not lora_keys:
        if any(k.startswith(FULL_CHECKPOINT) for k in keys):
            what = "a full Stable Diffusion checkpoint (UNet, VAE and text encoder)"
        elif any(k.startswith(("down_blocks.", "mid_block.", "text_model.", "encoder.", "decoder.")) for k in keys):
            what = "the full weights of a model component"
        elif any(("hada_" in k or "lokr_" in k) for k in keys):
            what = "a LyCORIS LoHa/LoKr adapter, which sdlora does not read yet"
        else:
            what = f"not a LoRA ({len(keys)} tensors, e.g. {keys[0]})"
        raise SdloraError(f"{path}: this is {what}; give a LoRA adapter file")
    for fragments, family in FOREIGN:
        if any(fragment in key for key in lora_keys for fragment in fragments):
            raise SdloraError(f"{path}: this is a LoRA for {family}, not for Stable Diffusion 1.x/2.x/XL; sdlora "
                              f"cannot use it with an SD model")


def _check_diffusers_kinds(adapter: Adapter, path: Path | str) -> None:
    """diffusers' loaders read LoRA and DoRA only: a LoHa/LoKr file in its format would load nowhere."""
    from sdlora.lora.kinds import DIFFUSERS_KINDS

    other = sorted({layer.kind for layer in adapter.layers.values()} - set(DIFFUSERS_KINDS))
    if other:
        raise SdloraError(f"{path}: a {'/'.join(k.upper() for k in other)} adapter has no diffusers format "
                          f"(diffusers' load_lora_weights reads LoRA and DoRA only); save it as kohya (save.format: "
                          f"kohya, --to kohya) and apply it with sdlora.adapters.apply_adapter(pipe, FILE)")


def _check_shapes(path: Path, layers) -> None:
    for name, layer in layers.items():
        if layer.kind in ("loha", "lokr"):
            try:
                layer.matrix()
            except RuntimeError:
                raise SdloraError(f"{path}: layer {name}'s {layer.kind} factors do not fit together "
                                  f"({', '.join(f'{k} {tuple(t.shape)}' for k, t in layer.tensors().items())}); "
                                  f"the file is damaged") from None
            continue
        down, up = layer.down, layer.up
        if down.dim() not in (2, 4) or up.dim() != down.dim() or up.shape[1] != down.shape[0]:
            raise SdloraError(f"{path}: layer {name} has down {tuple(down.shape)} and up {tuple(up.shape)}, which "
                              f"do not make a LoRA pair; the file is damaged")
