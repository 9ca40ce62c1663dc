"""Training speed of `sdlora train`'s real code path on the SD 1.5 architecture with random weights.

    python bench/train_speed.py --batch 1 8 --resolution 512 --steps 30 --warmup 10

Builds an SD 1.5-shaped pipeline folder with random weights (no download), a folder of synthetic 512 px images,
then runs the Trainer (the same object `sdlora train` runs) for warmup + steps steps per batch size, timing the
steps after warm-up from the trainer's own step events. Prints one JSON object, then a table.
Speed does not depend on the weight values, so the figures hold for real SD 1.5 checkpoints.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def make_images(folder: Path, count: int, size: int) -> Path:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        # Smooth colour fields compress like photos (random noise would make decoding the bottleneck).
        base = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((size, size), Image.Resampling.BICUBIC)
        img.save(folder / f"{i:04d}.jpg", quality=90)
        (folder / f"{i:04d}.txt").write_text(f"a photo number {i}, colourful abstract shapes", encoding="utf-8")
    return folder


def run_one(model_dir: Path, data_dir: Path, out_dir: Path, batch: int, args) -> dict:
    from sdlora.config import config_from_dict
    from sdlora.events import EventBus
    from sdlora.train.rundir import new_run
    from sdlora.train.trainer import Trainer

    steps = args.warmup + args.steps
    config = config_from_dict({
        "name": f"bench-b{batch}", "model": str(model_dir),
        "data": {"dir": str(data_dir), "resolution": args.resolution, "num_workers": args.workers,
                 "cache": args.cache},
        "network": {"rank": args.rank, "alpha": args.rank},
        "train": {"steps": steps, "batch_size": batch, "lr": 1e-4, "mixed_precision": args.precision,
                  "gradient_checkpointing": args.gradient_checkpointing, "optimizer": args.optimizer},
        "save": {"output_dir": str(out_dir)},
    })
    step_times: list[float] = []
    losses: list[float] = []

    def listener(event):
        if event["event"] == "step":
            step_times.append(time.perf_counter())
            losses.append(event["loss"])

    trainer = Trainer(config, new_run(config), EventBus([listener]))
    t0 = time.perf_counter()
    trainer.setup()
    setup_s = time.perf_counter() - t0
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    trainer.run()
    timed = step_times[args.warmup:]
    s_per_step = (timed[-1] - timed[0]) / (len(timed) - 1)
    return {
        "batch": batch,
        "samples_per_s": round(batch / s_per_step, 2),
        "s_per_step": round(s_per_step, 4),
        "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
        "setup_s": round(setup_s, 1),
        "first_step_s": round(step_times[0] - t0 - setup_s, 1),
        "final_loss": losses[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--precision", default="bf16" if torch.cuda.is_available() else "no")
    parser.add_argument("--optimizer", default="adamw")
    parser.add_argument("--cache", default="none")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    args = parser.parse_args()

    from sdlora.models.architectures import random_sd15_pipeline
    from sdlora.models.tiny import save_pipeline_folder

    import diffusers
    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_pipeline_folder(random_sd15_pipeline(), tmp / "sd15", fp16=True)
        data_dir = make_images(tmp / "data", args.images, args.resolution)
        rows = [run_one(tmp / "sd15", data_dir, tmp / "out", b, args) for b in args.batch]
    result = {
        "bench": "train_speed", "arch": "sd15", "resolution": args.resolution, "rank": args.rank,
        "precision": args.precision, "optimizer": args.optimizer, "cache": args.cache,
        "gradient_checkpointing": args.gradient_checkpointing, "timed_steps": args.steps,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        "torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
        "results": rows,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    print(f"\n{'batch':>5} {'samples/s':>10} {'s/step':>8} {'peak GiB':>9} {'setup s':>8}")
    for r in rows:
        print(f"{r['batch']:>5} {r['samples_per_s']:>10} {r['s_per_step']:>8} {r['peak_gpu_mem_gib']!s:>9} "
              f"{r['setup_s']:>8}")


if __name__ == "__main__":
    main()
