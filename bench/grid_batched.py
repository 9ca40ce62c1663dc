"""Grid cells per second: many adapters in one batch (sdlora.adapters.batched) against one adapter at a time through
diffusers' set_adapters.

    python bench/grid_batched.py                                   # the tiny model on the CPU
    python bench/grid_batched.py --model /models/sd15 --device cuda --dtype fp16 --size 512x512 --steps 25

The grid: --adapters random LoRAs (rank --rank on the attention, feed-forward and projection layers of the UNet) x
weights 0.5, 1, 1.5 x two prompts, every cell an adapter cell (4 x 3 x 2 = 24 by default). Timed, after one warm-up
call each:
  set_adapters/cell     AdapterBlender (what `sdlora generate` and the Preview tab run): set_adapters, then one image
  set_adapters/adapter  set_adapters per (adapter, weight), that pair's prompts in one pipeline call
  batched/B             sdlora.adapters.serving.BatchGenerator: any mix of adapters, B cells per pipeline call
Every adapter is loaded before timing starts (all three paths load each file once). Prints one JSON object (with
the largest pixel difference of each path against set_adapters/cell), then a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
PROMPTS = ("a red circle on a white background", "a blue square on a white background")
WEIGHTS = (0.5, 1.0, 1.5)
SCALE = 0.05  # A, B entries: dW about the size of the base weights' own entries, so images change but stay sane


def random_adapters(unet, count: int, rank: int, folder: Path) -> list[Path]:
    import torch

    from sdlora.adapters import Adapter, LoraLayer, save_adapter

    paths = []
    for seed in range(count):
        gen = torch.Generator().manual_seed(seed)
        layers = {}
        for name, module in unet.named_modules():
            if isinstance(module, torch.nn.Linear) and name.endswith(TARGETS):
                layers[f"unet.{name}"] = LoraLayer(torch.randn(rank, module.in_features, generator=gen) * SCALE,
                                                   torch.randn(module.out_features, rank, generator=gen) * SCALE,
                                                   float(rank))
            elif isinstance(module, torch.nn.Conv2d) and name.endswith(TARGETS):  # proj_in/out as 1x1 convs
                w = module.weight
                layers[f"unet.{name}"] = LoraLayer(torch.randn(rank, *w.shape[1:], generator=gen) * SCALE,
                                                   torch.randn(w.shape[0], rank, 1, 1, generator=gen) * SCALE,
                                                   float(rank))
        paths.append(save_adapter(Adapter(layers, {"sdlora_mode": "standard"}), folder / f"a{seed}.safetensors"))
    return paths


def timed(fn) -> tuple[float, float, list]:
    """(wall seconds, CPU seconds of this process, result): on a shared machine the CPU time is the steadier one."""
    start, cpu = time.perf_counter(), time.process_time()
    images = fn()
    return time.perf_counter() - start, time.process_time() - cpu, images


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    p.add_argument("--size", default=None, help="WxH (default: the model's)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--adapters", type=int, default=4)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--batch", type=int, nargs="+", default=[8, 24], help="cells per call for the batched path")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.simplefilter("ignore")
    import numpy as np
    import torch

    from sdlora.adapters import AdapterBlender
    from sdlora.lora.formats import DTYPES
    from sdlora.adapters.serving import BatchGenerator, Request
    from sdlora.commands.generate import parse_size
    from sdlora.models.loading import load_pipeline

    width, height = parse_size(args.size)
    pipe = load_pipeline(args.model, dtype=DTYPES[args.dtype]).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    folder = Path(tempfile.mkdtemp(prefix="sdlora-bench-grid-"))
    files = random_adapters(pipe.unet, args.adapters, args.rank, folder)
    cells = [(f, w, prompt) for f in files for w in WEIGHTS for prompt in PROMPTS]
    guidance, seed = 5.0, 0

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    # -- set_adapters: the diffusers path, one cell per call (load every file first, as a preview session would)
    blender = AdapterBlender(pipe)
    for f in files:
        blender.load(f)

    def per_cell():
        out = []
        for f, w, prompt in cells:
            blender.set_weights({f: w})
            out.append(blender.generate(prompt, steps=args.steps, guidance=guidance, seed=seed, width=width,
                                        height=height))
        sync()
        return out

    def per_adapter():
        out = []
        for f in files:
            for w in WEIGHTS:
                blender.set_weights({f: w})
                with torch.no_grad():
                    out += pipe(list(PROMPTS), num_inference_steps=args.steps, guidance_scale=guidance,
                                width=width, height=height,
                                generator=[torch.Generator("cpu").manual_seed(seed) for _ in PROMPTS]).images
        sync()
        return out

    results = {}
    per_cell_first = blender.generate(PROMPTS[0], steps=args.steps, guidance=guidance, width=width, height=height)
    del per_cell_first  # warm-up
    for name, fn in (("set_adapters/cell", per_cell), ("set_adapters/adapter", per_adapter)):
        seconds, cpu, images = timed(fn)
        results[name] = {"seconds": seconds, "cpu_seconds": cpu, "images": images}
    blender.set_weights({})
    # a fresh pipeline for the batched path: no peft layers in it, the base modules as loaded
    pipe = load_pipeline(args.model, dtype=DTYPES[args.dtype]).to(args.device)
    requests = [Request(prompt, ((str(f), w),), seed=seed, steps=args.steps, guidance=guidance, width=width,
                        height=height) for f, w, prompt in cells]
    for batch in args.batch:
        generator = BatchGenerator(pipe, batch_size=batch)
        for f in files:
            generator.check(f)
        generator.generate(requests[:batch])  # warm-up
        sync()
        seconds, cpu, images = timed(lambda: (generator.generate(requests), sync())[0])
        results[f"batched/{batch}"] = {"seconds": seconds, "cpu_seconds": cpu, "images": images}
        generator.multi.close()

    reference = [np.asarray(im, np.int16) for im in results["set_adapters/cell"]["images"]]
    report = {"model": args.model, "device": args.device, "dtype": args.dtype, "steps": args.steps,
              "size": f"{reference[0].shape[1]}x{reference[0].shape[0]}", "rank": args.rank,
              "cells": len(cells), "grid": f"{args.adapters} adapters x {len(WEIGHTS)} weights x {len(PROMPTS)} prompts",
              "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or
              platform.machine(), "paths": {}}
    base = results["set_adapters/cell"]
    for name, r in results.items():
        diff = max(int(np.abs(np.asarray(im, np.int16) - ref).max()) for im, ref in zip(r["images"], reference))
        report["paths"][name] = {"seconds": round(r["seconds"], 3), "cpu_seconds": round(r["cpu_seconds"], 3),
                                 "cells_per_s": round(len(cells) / r["seconds"], 3),
                                 "cells_per_cpu_s": round(len(cells) / r["cpu_seconds"], 3),
                                 "speedup": round(base["seconds"] / r["seconds"], 2),
                                 "cpu_speedup": round(base["cpu_seconds"] / r["cpu_seconds"], 2),
                                 "max_pixel_diff": diff}
    print(json.dumps(report, indent=2))
    print(f"\n{report['grid']}, {args.steps} steps, {report['size']}, {args.model} on {args.device} ({args.dtype})")
    print(f"{'path':<22}{'wall s':>8}{'cells/s':>9}{'speedup':>9}{'CPU s':>8}{'cells/CPU s':>13}{'speedup':>9}"
          f"{'max px diff':>13}")
    for name, r in report["paths"].items():
        print(f"{name:<22}{r['seconds']:>8.2f}{r['cells_per_s']:>9.2f}{r['speedup']:>9.2f}{r['cpu_seconds']:>8.2f}"
              f"{r['cells_per_cpu_s']:>13.2f}{r['cpu_speedup']:>9.2f}{r['max_pixel_diff']:>13}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
