"""Data pipeline throughput: images decoded and augmented per second by worker count, and epochs with caching.

    python bench/data_loader.py --images 200 --size 768 --resolution 512 --workers 0 1 2

1. Build: scan + check (full decode) of a generated folder of JPEGs, as `build_dataset` does at every start.
2. Load: one epoch through the trainer's DataLoader set-up (batch_sampler over `epoch_batches`, `collate`)
   with random crops, flips, buckets and tag shuffling, for each worker count: images/s.
3. Cache, on the built-in tiny model: an epoch of data + encoding (VAE + text encoder) without a cache, the
   first epoch with data.cache disk (filling), and a second run's epoch (every entry found on disk).
Prints one JSON object, then a table.
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
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def make_folder(folder: Path, count: int, size: int) -> Path:
    """JPEGs of mixed shapes around `size` px with tag captions (smooth colour fields: photo-like to decode)."""
    from fixtures_data import gradient

    shapes = [(size, size), (size * 4 // 3, size), (size, size * 4 // 3), (size * 16 // 9, size)]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        gradient(shapes[i % len(shapes)], seed=i).save(folder / f"{i:04d}.jpg", quality=90)
        (folder / f"{i:04d}.txt").write_text(f"photo {i}, red, outdoors, tag{i % 9}, soft light", encoding="utf-8")
    return folder


def build(config):
    from sdlora.data import build_dataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_dataset(config)


def run_epoch(dataset, batch_size: int, workers: int, encoder=None) -> tuple[float, int]:
    """Seconds for one epoch through a DataLoader (and the encoder, if given); samples seen."""
    import torch

    from sdlora.data import collate

    batches = dataset.epoch_batches(0, batch_size, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=workers)
    start, seen = time.perf_counter(), 0
    for batch in loader:
        if encoder is not None:
            encoder(batch, torch.Generator().manual_seed(0))
        seen += len(batch["caption"])
    return time.perf_counter() - start, seen


def bench_loading(folder: Path, args) -> dict:
    from sdlora.config import DataConfig

    config = DataConfig(dir=str(folder), resolution=args.resolution, buckets=True, flip=True, center_crop=False,
                        shuffle_tags=True, keep_tokens=1)
    start = time.perf_counter()
    dataset = build(config)
    build_s = time.perf_counter() - start
    rows = []
    for workers in args.workers:
        seconds, seen = run_epoch(dataset, args.batch, workers)
        rows.append({"workers": workers, "images": seen, "seconds": round(seconds, 3),
                     "images_per_s": round(seen / seconds, 1)})
    return {"build_s": round(build_s, 3), "build_ms_per_image": round(1000 * build_s / args.images, 2),
            "loading": rows}


def bench_cache(folder: Path, args) -> dict:
    import torch

    from sdlora.config import DataConfig
    from sdlora.models import load_components
    from sdlora.train.encode import BatchEncoder

    components = load_components("tiny")
    encoder = BatchEncoder(components, torch.device("cpu"), torch.float32)
    cache_root = Path(tempfile.mkdtemp(prefix="sdlora-bench-cache-"))
    os.environ["SDLORA_CACHE"] = str(cache_root)  # after the model is loaded: only the data cache moves
    rows = {}

    def config(cache: str) -> DataConfig:
        return DataConfig(dir=str(folder), resolution=64, flip=True, cache=cache)

    plain = build(config("none"))
    rows["no_cache_epoch_s"] = round(run_epoch(plain, args.batch, 0, encoder)[0], 3)
    for name in ("first_run", "second_run"):
        dataset = build(config("disk"))
        start = time.perf_counter()
        stats = dataset.attach_encoder(encoder)
        fill = time.perf_counter() - start
        epoch, seen = run_epoch(dataset, args.batch, 0, encoder)
        rows[name] = {"fill_s": round(fill, 3), "epoch_s": round(epoch, 3), "latents_encoded": stats.latents_encoded,
                      "latents_found": stats.latents_cached, "samples": seen}
    rows["cache_mb"] = round(sum(f.stat().st_size for f in cache_root.rglob("*") if f.is_file()) / 2**20, 1)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=768, help="short side of the generated JPEGs")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cache-images", type=int, default=64, help="images (at 128 px) for the cache part")
    parser.add_argument("--skip-cache", action="store_true")
    args = parser.parse_args()

    import PIL
    import torch

    with tempfile.TemporaryDirectory(prefix="sdlora-bench-data-") as tmp:
        folder = make_folder(Path(tmp) / "images", args.images, args.size)
        result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s)",
                  "python": platform.python_version(), "torch": torch.__version__, "pillow": PIL.__version__,
                  "images": args.images, "image_size": args.size, "resolution": args.resolution,
                  "batch": args.batch, **bench_loading(folder, args)}
        if not args.skip_cache:
            small = make_folder(Path(tmp) / "small", args.cache_images, 128)
            result["cache"] = {"images": args.cache_images, "resolution": 64, "flip": True, **bench_cache(small, args)}
    print(json.dumps(result, indent=2))
    print(f"\nbuild (scan + full decode): {result['build_s']} s = {result['build_ms_per_image']} ms/image")
    print(f"{'workers':>8} {'images/s':>9} {'epoch s':>8}")
    for row in result["loading"]:
        print(f"{row['workers']:>8} {row['images_per_s']:>9} {row['seconds']:>8}")
    if "cache" in result:
        c = result["cache"]
        print(f"tiny model, {c['images']} images x2 flips, data + encoding per epoch: no cache "
              f"{c['no_cache_epoch_s']} s; first run fill {c['first_run']['fill_s']} s + epoch "
              f"{c['first_run']['epoch_s']} s; second run fill {c['second_run']['fill_s']} s + epoch "
              f"{c['second_run']['epoch_s']} s")


if __name__ == "__main__":
    main()
