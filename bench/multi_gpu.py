"""Data-parallel scaling of `sdlora train --gpus N` on the SD 1.5 architecture (random weights, 512 px).

    python bench/multi_gpu.py --gpus 1 2 --batch 8 --steps 60

Runs the real command line once per GPU count with the same per-GPU batch, reads samples/s (global, all GPUs)
from the run's own step events after a warm-up, and prints JSON and a table with the scaling over one GPU.
The first run compiles; later runs load the same kernels from the compile cache.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # architectures: random-weight models

from train_speed import make_images  # noqa: E402


def run(model_dir: Path, data_dir: Path, out: Path, gpus: int, args) -> dict:
    name = f"gpus{gpus}"
    preset = out / f"{name}.yaml"
    out.mkdir(parents=True, exist_ok=True)
    preset.write_text(yaml.safe_dump({
        "name": name, "model": str(model_dir),
        "data": {"dir": str(data_dir), "resolution": args.resolution, "cache": "disk", "num_workers": 2},
        "network": {"rank": args.rank, "alpha": args.rank},
        "train": {"steps": args.warmup + args.steps, "batch_size": args.batch, "mixed_precision": "bf16",
                  "compile": args.compile, "cuda_graphs": args.cuda_graphs, "report_every": 10},
        "save": {"output_dir": str(out)}}))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "sdlora", "train", "--preset", str(preset), "--gpus", str(gpus)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"--gpus {gpus} failed: {proc.stderr[-3000:]}")
    events = [json.loads(line) for line in (out / name / "events.jsonl").read_text().splitlines()]
    steps = [e for e in events if e["event"] == "step" and e["step"] > args.warmup]
    # Each window's rate is reported on the window's last step; windows are report_every steps long.
    windows = [e["samples_per_s"] for e in steps if e["step"] % 10 == 0]
    return {"gpus": gpus, "batch_per_gpu": args.batch, "samples_per_s": round(statistics.median(windows), 2),
            "windows": windows, "wall_s": round(time.perf_counter() - start, 1),
            "final_loss": steps[-1]["loss"]}


def profile_setup(out: Path, args) -> None:
    """Where a warm start's time goes: cProfile of one more single-GPU `sdlora train` (caches warm), top entries."""
    import pstats

    preset = yaml.safe_load((out / "gpus1.yaml").read_text())
    preset["name"], preset["train"]["steps"] = "profiled", 2
    (out / "profiled.yaml").write_text(yaml.safe_dump(preset))
    subprocess.run([sys.executable, "-m", "cProfile", "-o", str(args.profile_setup), "-m", "sdlora", "train",
                    "--preset", str(out / "profiled.yaml")], check=True, capture_output=True)
    stats = pstats.Stats(str(args.profile_setup))
    stats.sort_stats("cumulative").print_stats(45)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=8, help="per GPU")
    parser.add_argument("--steps", type=int, default=60, help="timed steps (a multiple of 10)")
    parser.add_argument("--warmup", type=int, default=20, help="a multiple of 10")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--compile", default="on", choices=["auto", "on", "off"])
    parser.add_argument("--cuda-graphs", default="auto", choices=["auto", "on", "off"])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--profile-setup", type=Path, help="also profile a warm single-GPU start into this file")
    args = parser.parse_args()

    from architectures import random_sd15_pipeline
    from sdlora.models.storage import save_pipeline_folder

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_pipeline_folder(random_sd15_pipeline(), tmp / "sd15", fp16=True)
        data_dir = make_images(tmp / "data", args.images, args.resolution)
        rows = [run(tmp / "sd15", data_dir, tmp / "out", n, args) for n in args.gpus]
        if args.profile_setup:
            profile_setup(tmp / "out", args)
    one = next((r["samples_per_s"] for r in rows if r["gpus"] == 1), None)
    for r in rows:
        r["scaling_vs_1_gpu"] = round(r["samples_per_s"] / one, 3) if one else None
    result = {"bench": "multi_gpu", "arch": "sd15", "resolution": args.resolution, "rank": args.rank,
              "compile": args.compile, "cuda_graphs": args.cuda_graphs,
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "gpu_count": torch.cuda.device_count(), "torch": torch.__version__, "results": rows}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    print(f"\n{'gpus':>4} {'batch/gpu':>9} {'samples/s':>10} {'scaling':>8} {'wall s':>7}")
    for r in rows:
        print(f"{r['gpus']:>4} {r['batch_per_gpu']:>9} {r['samples_per_s']:>10} {r['scaling_vs_1_gpu']!s:>8} "
              f"{r['wall_s']:>7}")


if __name__ == "__main__":
    main()
