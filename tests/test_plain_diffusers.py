"""The built-in model and the folders sdlora writes, in plain diffusers with default arguments (DESIGN.md: the
folder `sdlora models --json` reports is one plain diffusers can load), with and without an sdlora adapter."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open

from sdlora.lora.io import save_adapter
from tests.test_adapters_fixtures import ATTENTION, make_adapter, tiny_pipeline


def _builtin_path() -> str:
    out = subprocess.run([sys.executable, "-m", "sdlora", "models", "--json"], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)[0]["path"]


def _plain_image(folder: str, lora: str | None = None) -> np.ndarray:
    """Exactly what a user types: from_pretrained(folder), [load_lora_weights(file)], pipe(prompt, ...)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder)
    if lora:
        pipe.load_lora_weights(lora)
    image = pipe("a photo", num_inference_steps=2, height=64, width=64,
                 generator=torch.Generator().manual_seed(0)).images[0]
    return np.asarray(image, dtype=np.float32)


def _text_encoder_keys(folder) -> list[str]:
    with safe_open(str(folder / "text_encoder" / "model.safetensors"), "pt") as fh:
        return list(fh.keys())


def test_builtin_model_runs_in_plain_diffusers_with_and_without_an_adapter(tmp_path):
    folder = _builtin_path()
    base = _plain_image(folder)
    assert base.shape == (64, 64, 3) and base.std() > 1.0  # an image, not a constant
    adapter = make_adapter(tiny_pipeline(), unet_suffixes=ATTENTION, rank=4, alpha=4.0,
                           metadata={"sdlora_mode": "standard"})
    for fmt in ("kohya", "diffusers"):
        file = tmp_path / f"lora-{fmt}.safetensors"
        save_adapter(adapter, file, fmt=fmt)
        with_lora = _plain_image(folder, str(file))
        assert np.abs(with_lora - base).mean() > 1.0, fmt  # the adapter changed the picture


def test_model_folders_keep_the_text_model_names_and_declare_float32(tmp_path):
    """transformers 4.x loads only `text_model.`-prefixed CLIP weights; 5.x loads both: folders keep the prefix,
    and declare float32 so the text encoder runs in the UNet's default dtype."""
    from pathlib import Path

    from sdlora.adapters.merge import merge

    for folder in (Path(_builtin_path()),):
        keys = _text_encoder_keys(folder)
        assert keys and all(k.startswith(("text_model.", "text_projection.")) for k in keys)
        assert json.loads((folder / "text_encoder" / "config.json").read_text())["dtype"] == "float32"
    adapter = make_adapter(tiny_pipeline(), rank=2, metadata={"sdlora_mode": "standard"})
    file = tmp_path / "a.safetensors"
    save_adapter(adapter, file)
    merged = merge("tiny", [(file, 1.0)], tmp_path / "merged")
    keys = _text_encoder_keys(merged)
    assert keys and all(k.startswith(("text_model.", "text_projection.")) for k in keys)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        assert (merged / "tokenizer" / name).is_file(), name
    assert _plain_image(str(merged)).std() > 1.0
    with pytest.raises(Exception, match="already exists"):
        merge("tiny", [(file, 1.0)], tmp_path / "merged")
