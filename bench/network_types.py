"""Network types measured on the built-in tiny model (CPU, one thread): the tables of docs/NETWORKS.md.

Table 1, per network.type: trainable parameters, adapter file size, CPU step time, and what it learned: the
denoising error (the training loss, dropout off) on a fixed batch of the training images, with fixed noise and
timesteps, before and after the same steps.
Table 2, DyLoRA: one DyLoRA at rank 16 truncated to 2/4/8/16 (`sdlora resize`, no SVD) against separate LoRAs
trained at those ranks with the same steps; denoising error on held-out images (fixed noise, fixed timesteps).

Every adapter is evaluated from its file: read, merged into a fresh tiny UNet (`merge_into`), then scored.
    OMP_NUM_THREADS=1 python bench/network_types.py --steps 200 --out bench/results/network_types.json
The parts can run as separate processes (--types 0,1 / --types none --dylora / --types none --lora-ranks 2,4);
`--step-time 20` times one training step per type, the types taking turns; `--render FILE...` prints the tables.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import types
from pathlib import Path

import torch

from sdlora.adapters import load_adapter, merge_into
from sdlora.adapters.analysis import truncate_adapter
from sdlora.config import config_from_dict
from sdlora.data import SampleKey, build_dataset, collate
from sdlora.events import EventBus
from sdlora.models import load_components
from sdlora.train.rundir import new_run
from sdlora.train.trainer import Trainer

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo"
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"]  # presets/demo.yaml's: attention + ResNet convs
TYPES = {  # name in the table -> network section
    "lora (attention + convs, one rank)": {"type": "lora"},
    "locon (convs at conv_rank 4)": {"type": "lora", "conv_rank": 4, "conv_alpha": 4},
    "loha": {"type": "loha"},
    "lokr": {"type": "lokr"},
    "dora": {"type": "dora"},
    "dylora (unit 1)": {"type": "dylora"},
}
HELD_OUT = 5  # the last images of examples/demo are never trained on


def split_demo(root: Path) -> tuple[Path, Path]:
    images = sorted(DEMO.glob("*.png"))
    train, held = root / "train", root / "held"
    for folder, part in ((train, images[:-HELD_OUT]), (held, images[-HELD_OUT:])):
        folder.mkdir(parents=True)
        for image in part:
            shutil.copy(image, folder / image.name)
            shutil.copy(image.with_suffix(".txt"), folder / image.with_suffix(".txt").name)
    return train, held


def make_config(name: str, data: Path, out: Path, steps: int, network: dict):
    return config_from_dict({
        "name": name, "model": "tiny",
        "data": {"dir": str(data), "resolution": 64, "repeats": 4, "flip": True, "cache": "memory"},
        "network": {"rank": 8, "alpha": 8, "targets": TARGETS, **network},
        "train": {"steps": steps, "batch_size": 4, "lr": 5e-3, "scheduler": "constant_with_warmup",
                  "warmup_steps": 10, "seed": 42},
        "save": {"output_dir": str(out)},
    })


def denoising_error(trainer: Trainer, unet, dataset, count: int = 4, draws: int = 4) -> float:
    """Mean objective on the first `count` images of `dataset`: fixed VAE sample, noise and timesteps per draw."""
    batch = collate([dataset[SampleKey(i, False, 0)] for i in range(count)])
    unet.eval()
    total = 0.0
    with torch.no_grad():
        for seed in range(draws):
            g = torch.Generator().manual_seed(1000 + seed)
            latents, text = trainer.encoder(batch, g)
            total += trainer.objective(unet, latents, text, g).mean().item()
    return total / draws


def merged_unet(adapter):
    pipe = types.SimpleNamespace(unet=load_components("tiny").unet)
    merge_into(pipe, [(adapter, 1.0)])
    return pipe.unet


def train(name: str, data: Path, out: Path, steps: int, network: dict):
    config = make_config(name, data, out, steps, network)
    trainer = Trainer(config, new_run(config), EventBus())
    trainer.setup()
    start = time.perf_counter()
    result = trainer.run()
    seconds = time.perf_counter() - start
    assert result.status == "done", result.status
    return trainer, result.adapter_path, seconds / steps


def held_out_error(trainer: Trainer, adapter, held_dir: Path, root: Path) -> tuple[float, float]:
    """(base model, with `adapter`) denoising error on the held-out images, fixed noise and timesteps."""
    held = build_dataset(make_config("held", held_dir, root / "runs", 1, {}).data)
    held.attach_encoder(trainer.encoder)
    base = denoising_error(trainer, load_components("tiny").unet, held, count=HELD_OUT)
    return base, denoising_error(trainer, merged_unet(adapter), held, count=HELD_OUT)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("bench/results/network_types.json"))
    parser.add_argument("--types", default="all", help="comma-separated table-1 rows (0-based), all or none")
    parser.add_argument("--dylora", action="store_true", help="train the rank-16 DyLoRA and score its truncations")
    parser.add_argument("--lora-ranks", default="", help="comma-separated ranks of separate LoRAs for table 2")
    parser.add_argument("--render", nargs="+", type=Path, help="print the markdown tables of these result files")
    parser.add_argument("--step-time", type=int, default=0, metavar="ROUNDS",
                        help="only time a training step of each type, interleaved over ROUNDS rounds")
    args = parser.parse_args()
    if args.render:
        return render(args.render)
    if args.step_time:
        return step_times(args.step_time)
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="sdlora-netypes-"))
    train_dir, held_dir = split_demo(root)
    labels = list(TYPES)
    picked = labels if args.types == "all" else [] if args.types == "none" else \
        [labels[int(i)] for i in args.types.split(",")]
    result = {"steps": args.steps, "types": [], "dylora": [], "lora": []}
    for label in picked:
        trainer, path, step_s = train(label.split()[0], train_dir, root / "runs", args.steps, TYPES[label])
        before = denoising_error(trainer, load_components("tiny").unet, trainer.dataset)
        after = denoising_error(trainer, merged_unet(load_adapter(path)), trainer.dataset)
        result["types"].append({"type": label, "params": trainer.trainable, "file_bytes": path.stat().st_size,
                                "step_s": round(step_s, 4), "before": round(before, 5), "after": round(after, 5),
                                "change": round(after / before - 1, 4)})
        print(json.dumps(result["types"][-1]), flush=True)
    if args.dylora:  # one DyLoRA at rank 16 (alpha 16), scored truncated to each rank on the held-out images
        trainer, path, _ = train("dylora16", train_dir, root / "runs", args.steps,
                                 {"type": "dylora", "rank": 16, "alpha": 16})
        for rank in (2, 4, 8, 16):
            base, error = held_out_error(trainer, truncate_adapter(load_adapter(path), rank), held_dir, root)
            result["dylora"].append({"rank": rank, "held_out_base": round(base, 5), "dylora_truncated": round(error, 5)})
            print(json.dumps(result["dylora"][-1]), flush=True)
    for rank in [int(r) for r in args.lora_ranks.split(",") if r]:  # separate LoRAs, alpha = rank
        trainer, path, _ = train(f"lora{rank}", train_dir, root / "runs", args.steps,
                                 {"type": "lora", "rank": rank, "alpha": rank})
        base, error = held_out_error(trainer, load_adapter(path), held_dir, root)
        result["lora"].append({"rank": rank, "held_out_base": round(base, 5), "lora_at_rank": round(error, 5)})
        print(json.dumps(result["lora"][-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    shutil.rmtree(root, ignore_errors=True)


def step_times(rounds: int) -> None:
    """Forward + backward + AdamW step of the UNet with each type's adapter, batch 4 at 64 px (8x8 latents): the
    types take turns, round after round, so a busy machine slows them alike; the median per type is printed."""
    from sdlora.config import NetworkConfig
    from sdlora.network import add_lora, dylora_ranks, lora_parameters

    torch.set_num_threads(1)
    nets = {}
    for label, network in TYPES.items():
        unet = load_components("tiny").unet
        config = NetworkConfig(**{"rank": 8, "alpha": 8, "targets": TARGETS, **network})
        add_lora(unet, config, seed=0)
        nets[label] = (unet.train(), torch.optim.AdamW(lora_parameters(unet), lr=1e-4), dylora_ranks(unet, config))
    g = torch.Generator().manual_seed(0)
    latents, text = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 77, nets[label][0].config.cross_attention_dim,
                                                                         generator=g)
    t = torch.randint(0, 1000, (4,), generator=g)
    times = {label: [] for label in nets}
    for _ in range(rounds + 1):  # the first round warms up
        for label, (unet, optimizer, ranks) in nets.items():
            start = time.perf_counter()
            if ranks:
                ranks.begin_step()  # DyLoRA's mask and, after the step, its frozen rows put back
            optimizer.zero_grad()
            unet(latents, t, text).sample.square().mean().backward()
            optimizer.step()
            if ranks:
                ranks.end_step()
            times[label].append(time.perf_counter() - start)
    for label, values in times.items():
        values = sorted(values[1:])
        print(json.dumps({"type": label, "median_s": round(values[len(values) // 2], 4),
                          "min_s": round(values[0], 4)}), flush=True)


def render(files: list[Path]) -> None:
    parts = [json.loads(f.read_text()) for f in files]
    rows = [row for part in parts for row in part["types"]]
    order = list(TYPES)
    print("| network.type | trainable params | file (fp32) | CPU s/step | error before | after | change |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in sorted(rows, key=lambda r: order.index(r["type"])):
        print(f"| {row['type']} | {row['params']:,} | {row['file_bytes'] / 1e6:.2f} MB | {row['step_s']:.2f} | "
              f"{row['before']:.4f} | {row['after']:.4f} | {100 * row['change']:+.0f}% |")
    dylora = {r["rank"]: r for part in parts for r in part["dylora"]}
    lora = {r["rank"]: r for part in parts for r in part["lora"]}
    print()
    print("| rank | base model | DyLoRA 16 truncated | LoRA trained at this rank |")
    print("|---:|---:|---:|---:|")
    for rank in sorted(set(dylora) | set(lora)):
        base = (dylora.get(rank) or lora.get(rank))["held_out_base"]
        dy = f"{dylora[rank]['dylora_truncated']:.4f}" if rank in dylora else "-"
        lo = f"{lora[rank]['lora_at_rank']:.4f}" if rank in lora else "-"
        print(f"| {rank} | {base:.4f} | {dy} | {lo} |")


if __name__ == "__main__":
    main()
