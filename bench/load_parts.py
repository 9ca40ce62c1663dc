"""What a warm start could save by loading only the parts of the model a run uses.

    python bench/load_parts.py --model-dir /tmp/sd15 --repeats 5

Each start today loads the whole model (`load_components`: UNet, VAE, text encoder, tokenizer, schedule) and hashes
the VAE's and the text encoder's weights for the cache keys (`data.cache.module_identity`). A run whose latents and
captions are all cached, and that samples no images, uses the UNet, the schedule and the tokenizer only. This times
both in fresh processes, alternately, with the imports a start makes first (diffusers, transformers, peft through
sdlora's modules): `whole` as today, `unet` the UNet, schedule and tokenizer alone. The difference is what loading
the VAE and text encoder on demand would save at most (a start would still need some identity for the cache keys).
Builds the random-weight SD 1.5 folder first where --model-dir holds none (train_speed.build_model).
Prints one JSON object, then a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def child(kind: str, model_dir: Path) -> dict:
    start = time.perf_counter()
    import torch

    import sdlora.network  # noqa: F401 - peft, as setup_model imports it
    from sdlora.models.loading import _load, load_components

    imported = time.perf_counter()
    if kind == "whole":
        components = load_components(str(model_dir), dtype=torch.bfloat16)
        from sdlora.data.cache import module_identity, tokenizer_identity

        module_identity(components.vae)
        module_identity(components.text_encoder)
        tokenizer_identity(components.tokenizer)
    else:
        from diffusers import DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTokenizer

        _load(UNet2DConditionModel, model_dir, "unet", dtype=torch.bfloat16)
        _load(DDPMScheduler, model_dir, "scheduler")
        _load(CLIPTokenizer, model_dir, "tokenizer")
    done = time.perf_counter()
    return {"imports_s": round(imported - start, 3), "load_s": round(done - imported, 3),
            "total_s": round(done - start, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=Path("/tmp/sd15"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", choices=("whole", "unet"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.model_dir)), flush=True)
        return
    if not (args.model_dir / "model_index.json").is_file():
        from train_speed import build_model

        build_model("sd15", args.model_dir)
    runs: dict[str, list[dict]] = {"whole": [], "unet": []}
    for _ in range(args.repeats):
        for kind in runs:
            out = subprocess.run([sys.executable, __file__, "--child", kind, "--model-dir", str(args.model_dir)],
                                 capture_output=True, text=True, check=True).stdout
            runs[kind].append(json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:]))
    medians = {kind: {key: round(statistics.median(r[key] for r in rows), 2) for key in rows[0]}
               for kind, rows in runs.items()}
    result = {"machine": platform.processor() or platform.machine(), "repeats": args.repeats, "median": medians,
              "runs": runs, "saved_s": round(medians["whole"]["load_s"] - medians["unet"]["load_s"], 2)}
    print(json.dumps(result, indent=1))
    print(f"\n{'parts':<8} {'imports s':>10} {'load s':>8} {'total s':>8}   (median of {args.repeats})")
    for kind, row in medians.items():
        print(f"{kind:<8} {row['imports_s']:>10} {row['load_s']:>8} {row['total_s']:>8}")
    print(f"VAE + text encoder on demand would save at most {result['saved_s']} s of loading")


if __name__ == "__main__":
    main()
