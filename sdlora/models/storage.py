"""Writing diffusers-format model folders that load the same way in every transformers and diffusers version we
support, and with plain `StableDiffusionPipeline.from_pretrained(folder)` default arguments.

`save_pretrained` writes what the installed versions prefer, and those drift:
- transformers 5 names CLIPTextModel's weights without `text_model.` (it flattened that submodule away);
  transformers 4.x loads such a file with every weight missing and randomly initialised, with only a warning.
  The prefixed names load in both, so folders keep them.
- transformers 5 loads a text encoder in the dtype its config declares, while diffusers loads the UNet and VAE in
  float32 unless told otherwise: a folder saved in fp16 then runs fp16 CLIP into an fp32 UNet and fails
  ("mat1 and mat2 must have the same dtype"). The config declares float32, which is what diffusers does with
  the other components (the stored fp16 values are upcast on load, losslessly).
- newer transformers save only `tokenizer.json`; 4.x's (slow) CLIPTokenizer, which diffusers asks for, needs
  `vocab.json` and `merges.txt`, written here from it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sdlora.atomic import atomic_dir
from sdlora.errors import SdloraError


def save_pipeline_folder(pipeline: Any, dest: Path | str, *, fp16: bool = False, replace: bool = True) -> Path:
    """Write `pipeline` as a diffusers-format folder at `dest`, atomically (built beside it, then swapped in).

    With `replace=False` an existing non-empty `dest` is refused (a merge never writes over a model)."""
    import torch

    dest = Path(dest)
    if not replace and dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise SdloraError(f"{dest}: already exists and is not an empty folder; give a new folder for the model")
    with atomic_dir(dest) as tmp:
        if fp16:
            pipeline = pipeline.to(torch.float16)
        pipeline.save_pretrained(tmp, safe_serialization=True)
        normalize_folder(tmp)
    return dest


def normalize_folder(root: Path) -> None:
    """Rewrite a saved pipeline folder's text encoders and tokenizers into the form every version loads."""
    for folder in sorted(Path(root).glob("text_encoder*")):
        normalize_text_encoder(folder)
    for folder in sorted(Path(root).glob("tokenizer*")):
        write_slow_tokenizer_files(folder)


def hub_key(key: str) -> str:
    """A CLIP text-model weight name in the `text_model.`-prefixed form that transformers 4.x and 5.x both read."""
    return key if key.startswith(("text_model.", "text_projection.")) else "text_model." + key


def normalize_text_encoder(folder: Path) -> None:
    from safetensors.torch import save_file

    from sdlora.tensorfile import read_safetensors

    config_file = folder / "config.json"
    if not config_file.is_file():
        return
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if not str(config.get("model_type", "")).startswith("clip"):
        return
    renamed = False
    for file in sorted(folder.glob("*.safetensors")):
        state = read_safetensors(file)[0]
        if all(hub_key(k) == k for k in state):
            continue
        save_file({hub_key(k): v.contiguous() for k, v in state.items()}, str(file), metadata={"format": "pt"})
        renamed = True
    index_file = folder / "model.safetensors.index.json"
    if renamed and index_file.is_file():  # a sharded save: its index names every weight too
        index = json.loads(index_file.read_text(encoding="utf-8"))
        index["weight_map"] = {hub_key(k): v for k, v in index.get("weight_map", {}).items()}
        index_file.write_text(json.dumps(index, indent=2), encoding="utf-8")
    for key in ("dtype", "torch_dtype"):  # 5.x reads "dtype", 4.x "torch_dtype" (only with dtype="auto")
        if key in config:
            config[key] = "float32"
    config.setdefault("dtype", "float32")
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_slow_tokenizer_files(folder: Path) -> None:
    """Add vocab.json and merges.txt (what a slow CLIPTokenizer reads) from tokenizer.json where they are missing."""
    fast = folder / "tokenizer.json"
    if not fast.is_file() or ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()):
        return
    model = json.loads(fast.read_text(encoding="utf-8")).get("model", {})
    if model.get("type") != "BPE":
        return
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    (folder / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges), encoding="utf-8")
