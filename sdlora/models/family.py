"""Model families (SD 1.x, SD 2.x, SDXL), their prediction types, and the `model_family:` override.

`model_family` is `auto` (detect from the weights) or one of FAMILY_CHOICES. `sd2-v` / `sdxl-v` mean the family
with v-prediction (SD 2.x 768-v, v-prediction SDXL fine-tunes); the others mean epsilon prediction. The
prediction type matters because it is the training target: a v model trained on epsilon targets is ruined.
"""

from __future__ import annotations

import json
from pathlib import Path

from sdlora.errors import SdloraError

FAMILY_CHOICES = ("auto", "sd1", "sd2", "sd2-v", "sdxl", "sdxl-v")


def parse_family(choice: str) -> tuple[str | None, str | None]:
    """`model_family` value -> (family or None for auto, prediction type or None for auto)."""
    if choice in ("", "auto", None):
        return None, None
    if choice not in FAMILY_CHOICES:
        raise SdloraError(f"model_family: {choice!r} is not one of {', '.join(FAMILY_CHOICES)}")
    if choice.endswith("-v"):
        return choice[:-2], "v_prediction"
    return choice, "epsilon"


def folder_family(path: Path) -> str:
    """'sd1' | 'sd2' | 'sdxl' of a diffusers folder, from its configs (no weights read)."""
    index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    if "text_encoder_2" in index or "XL" in str(index.get("_class_name", "")):
        return "sdxl"
    unet = json.loads((path / "unet" / "config.json").read_text(encoding="utf-8"))
    if unet.get("cross_attention_dim") == 1024:
        return "sd2"
    try:  # SD 2.x's OpenCLIP encoder uses exact GELU, SD 1.x's OpenAI CLIP quick_gelu: this holds at any width
        text = json.loads((path / "text_encoder" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "sd1"
    return "sd2" if text.get("hidden_act") == "gelu" else "sd1"


def check_override(ref: str, detected: str, forced: str | None) -> str:
    """The family to use: the forced one, unless it contradicts the weights' structure (SDXL vs not)."""
    if forced is None:
        return detected
    if (forced == "sdxl") != (detected == "sdxl"):
        raise SdloraError(f"model_family: {forced} does not match model '{ref}', which is {detected}; set "
                          f"model_family: auto or the right family")
    return forced
