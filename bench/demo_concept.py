"""How well a demo recipe teaches the tiny model its new concept: ring counts over 16 seeds, as the concept test.

    python bench/demo_concept.py                                   # presets/demo.yaml on examples/demo(-reg)
    python bench/demo_concept.py --set train.steps=300 --set train.seed=1 --mid
    python bench/demo_concept.py --ring 1.45 0.8 --count 20 --reg-count 40 --guidance 5 7.5
    python bench/demo_concept.py --adapter outputs/demo/demo.safetensors      # count only, no training

Trains a LoRA with the real Trainer (the object `sdlora train` runs) on a preset (with `--set` overrides, as on
the command line), loads the adapter file into a fresh tiny pipeline through `AdapterBlender` (the path of
`sdlora generate` and the Preview tab) and counts, with the procedural detector, the images with a ring for the
demo's trigger prompt at weights 0, 0.5 and 1 and for its untriggered prompt at weight 1 (the leak), seeds 0-15
(0-7 at weight 0), as tests/test_concept_end_to_end.py does. `--mid` also counts the rings at weight 1 of the
adapter from the middle of the run (do the samples show the concept by then?). The data options (`--ring`,
`--count`, `--reg-count`, `--disc-every`) generate a variant of the demo sets into a scratch folder instead of
using examples/demo and examples/demo-reg. Prints one JSON line: the counts (of 16, or 8 at weight 0), the
timings and the library versions, so figures from different machines and version sets can be compared.

    python bench/demo_concept.py --types lora locon lokr --train-seeds 42 7 --jobs 2 --out results.json

`--types` measures network types on top of the preset (each a set of `--set` overrides, `TYPES` below; further
`--set` options apply to all): one run per type and training seed, `--jobs` at a time, each in its own process
with one CPU thread; prints each run's JSON line as it ends, then one JSON line of all runs and a Markdown table
(rings at weight 0 / 0.5 / 1, the leak, training CPU seconds, and the command that reruns that row alone). Each run
gets `--preset`, `--set`, the first `--guidance`, `--eval-steps`, `--seeds` and `--device`; the data options and
`--mid` apply to single runs only.
docs/NETWORKS.md holds the table measured on the 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # prompt_following: the tests' measure of prompt following

PROMPT = "a sks shape on a white background"
# `--types`: each network type as overrides on top of the demo preset (whatever its targets are). "lora" drops the
# preset's ResNet convolutions (attention and the transformer's linear layers only); "locon" keeps them at their own
# rank, half the linear one; "demo" is the preset as it is (LoRA on the same targets, convolutions at the full
# rank). The LoHa/LoKr/DoRA rows keep the preset's targets; LoKr at 3x the preset's lr (at 5e-3 it drew 2 of 16
# rings where 1.5e-2 drew 7, train.seed 42; docs/NETWORKS.md).
# The text-encoder LoRA (the preset's network.text_encoder) is LoRA-only: the other types train the UNet alone.
NO_TE = "network.text_encoder=false"
NO_CONVS = "no-convs"  # stands for the preset's targets without conv1/conv2 (computed from the preset)
TYPES: dict[str, list[str]] = {
    "demo": [],
    "lora": [NO_CONVS],
    "locon": ["network.conv_rank=4", "network.conv_alpha=4"],
    "lokr": ["network.type=lokr", "train.lr=1.5e-2", NO_TE],
    "loha": ["network.type=loha", NO_TE],
    "dora": ["network.type=dora", NO_TE],
}
UNTRIGGERED = "a red circle on a white background"


def versions() -> dict[str, str]:
    import diffusers
    import peft
    import torch
    import transformers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "python": platform.python_version(), "cpu": platform.processor() or
            platform.machine()}


def make_data(args, folder: Path) -> tuple[Path, Path]:
    from sdlora.procedural import scenes

    if args.ring:
        scenes.RING_OUTER, scenes.RING_INNER = args.ring
    data, reg = folder / "demo", folder / "demo-reg"
    scenes.write_scenes(data, scenes.demo_scenes(args.count), scenes.DEMO_TRIGGER)
    scenes.write_scenes(reg, scenes.demo_reg_scenes(args.reg_count, disc_every=args.disc_every), "prior")
    return data, reg


def ring_flags(images) -> list[bool]:
    from sdlora.procedural.detect import detect

    return [bool(d and d.is_ring) for d in map(detect, images)]


def count_rings(images) -> int:
    return sum(ring_flags(images))


def count_circles(images) -> int:
    from sdlora.procedural.detect import detect

    return sum(bool(d and d.shape == "circle") for d in map(detect, images))


def save_strip(images, path: Path) -> None:
    """The images side by side in one PNG (a row per seed set), to look at what the detector counted."""
    from PIL import Image

    side = images[0].size[0]
    strip = Image.new("RGB", (side * len(images), side), "white")
    for i, image in enumerate(images):
        strip.paste(image.convert("RGB"), (i * side, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    strip.save(path)


def evaluate(adapter: Path, guidance: float, steps: int, seeds: list[int], mid: Path | None, device: str,
             save: Path | None = None) -> dict:
    from sdlora.adapters import AdapterBlender
    from sdlora.models import load_pipeline
    import prompt_following as ev

    blender = AdapterBlender(load_pipeline("tiny").to(device))
    out = {}
    for weight in (0.0, 0.5, 1.0):
        blender.set_weights({adapter: weight})
        use = seeds[:len(seeds) // 2] if weight == 0.0 else seeds
        prompts = [PROMPT, UNTRIGGERED] if weight == 1.0 else [PROMPT]
        images = ev.generate(blender.pipe, ev.jobs(prompts, use), steps=steps, guidance=guidance)
        out[f"w{weight:g}"] = count_rings(images[:len(use)])
        if save is not None:
            save_strip(images[:len(use)], save / f"w{weight:g}-g{guidance:g}.png")
            if weight == 1.0:
                save_strip(images[len(use):], save / f"leak-g{guidance:g}.png")
        if weight == 1.0:
            out["leak"] = count_rings(images[len(use):])
            out["leak_circle"] = count_circles(images[len(use):])  # does the red circle stay one (not a blob)?
            out["ring_seeds_w1"] = [s for s, ring in zip(use, ring_flags(images[:len(use)])) if ring]
    if mid is not None:
        blender.set_weights({mid: 1.0})
        out["mid_w1"] = count_rings(ev.generate(blender.pipe, ev.jobs([PROMPT], seeds), steps=steps,
                                                guidance=guidance))
    return out


def type_overrides(name: str, preset: Path) -> list[str]:
    """The `--set` overrides of one `--types` entry, the preset's targets spelled out where the entry drops convs."""
    if name not in TYPES:
        raise SystemExit(f"--types: unknown type {name!r}; one of {', '.join(TYPES)}")
    out = []
    for text in TYPES[name]:
        if text == NO_CONVS:
            raw = yaml.safe_load(preset.read_text(encoding="utf-8"))
            targets = [t for t in raw.get("network", {}).get("targets", []) if t not in ("conv1", "conv2")]
            text = f"network.targets=[{', '.join(targets)}]" if targets else "network.targets=[to_q, to_k, to_v, to_out.0]"
        out.append(text)
    return out


def run_types(args) -> list[dict]:
    """One run of this script per (type, training seed), `args.jobs` at a time; the JSON lines and a table."""
    common = [f"--guidance={args.guidance[0]:g}", f"--eval-steps={args.eval_steps}", f"--seeds={args.seeds}",
              f"--device={args.device}"]
    preset = [] if args.preset == ROOT / "presets" / "demo.yaml" else ["--preset", str(args.preset)]
    jobs = []
    for name in args.types:
        for seed in args.train_seeds:
            sets = [*type_overrides(name, args.preset), *args.overrides, f"train.seed={seed}"]
            argv = [*preset, *[part for text in sets for part in ("--set", text)]]
            jobs.append((name, seed, [*common, *argv], "python bench/demo_concept.py " + shlex.join(argv)))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")

    def one(job):
        name, seed, argv, command = job
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--label", f"{name}-s{seed}", *argv],
                              env=env, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        report = json.loads(lines[-1]) if proc.returncode == 0 and lines else {"failed": proc.returncode,
                                                                               "stderr": proc.stderr[-1500:]}
        report.update(type=name, train_seed=seed, command=command)
        print(json.dumps(report), flush=True)
        return report

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        reports = list(pool.map(one, jobs))
    if args.out:
        args.out.write_text(json.dumps(reports, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({"runs": reports}), flush=True)
    key = f"g{args.guidance[0]:g}"
    half = args.seeds // 2
    print(f"\n| network type | train.seed | rings w=0 (of {half}) | w=0.5 (of {args.seeds}) | w=1 | leak w=1 | "
          f"train CPU s | command |\n|---|---:|---:|---:|---:|---:|---:|---|")
    for r in reports:
        c = r.get(key)
        cells = [str(c[k]) for k in ("w0", "w0.5", "w1", "leak")] if c else ["failed"] * 4
        print(f"| {r['type']} | {r['train_seed']} | {' | '.join(cells)} | {r.get('train_cpu_s', '')} | "
              f"`{r['command']}` |")
    return reports


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", type=Path, default=ROOT / "presets" / "demo.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--ring", type=float, nargs=2, metavar=("OUTER", "INNER"),
                        help="ring radii as multiples of the scene radius (bundled: 1.2 0.65)")
    parser.add_argument("--count", type=int, default=0, help="ring images to generate (0: examples/demo)")
    parser.add_argument("--reg-count", type=int, default=40)
    parser.add_argument("--disc-every", type=int, default=2, help="every Nth regularization image is a disc")
    parser.add_argument("--guidance", type=float, nargs="+", default=[5.0])
    parser.add_argument("--eval-steps", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--mid", action="store_true", help="also count rings at weight 1 halfway through the run")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="where to train and draw (the concept test: cpu)")
    parser.add_argument("--adapter", type=Path, help="count the rings of this adapter file; no training")
    parser.add_argument("--label", default="")
    parser.add_argument("--save-images", type=Path, metavar="DIR",
                        help="write the counted images into DIR, one strip per weight (seeds left to right), and the "
                             "adapter file")
    parser.add_argument("--types", nargs="+", metavar="TYPE", help=f"measure these network types: {', '.join(TYPES)}")
    parser.add_argument("--train-seeds", type=int, nargs="+", default=[42], help="with --types: train.seed of each run")
    parser.add_argument("--jobs", type=int, default=1, help="with --types: runs side by side (one thread each)")
    parser.add_argument("--out", type=Path, help="with --types: also write all runs' reports to this JSON file")
    args = parser.parse_args(argv)
    if args.types:
        return {"runs": run_types(args)}

    from sdlora.config import apply_overrides, config_from_dict
    from sdlora.events import EventBus
    from sdlora.train.rundir import new_run
    from sdlora.train.trainer import Trainer

    if args.adapter:
        report = {"label": args.label, "adapter": str(args.adapter)}
        for guidance in args.guidance:
            report[f"g{guidance:g}"] = evaluate(args.adapter, guidance, args.eval_steps, list(range(args.seeds)),
                                                None, args.device, args.save_images)
        print(json.dumps(dict(report, versions=versions())), flush=True)
        return report
    with tempfile.TemporaryDirectory(prefix="sdlora-demo-bench-") as tmp:
        tmp = Path(tmp)
        raw = yaml.safe_load(args.preset.read_text(encoding="utf-8"))
        if args.count:
            data, reg = make_data(args, tmp)
        else:
            data, reg = ROOT / "examples" / "demo", ROOT / "examples" / "demo-reg"
        raw["data"]["dir"] = str(data)
        if raw["data"].get("reg_dir"):
            raw["data"]["reg_dir"] = str(reg)
        raw["sample"] = {"every": 0, "prompts": []}
        raw["save"] = {"every": 0, "output_dir": str(tmp / "runs")}
        config = config_from_dict(apply_overrides(raw, [f"train.device={args.device}", *args.overrides]))
        half = config.train.steps // 2
        if args.mid:  # the trainer samples at `sample.every`: there the hook below saves the adapter instead
            config = config_from_dict(apply_overrides(raw, [f"sample.every={half}"]))  # raw holds the rest
        start, cpu_start = time.perf_counter(), time.process_time()
        trainer = Trainer(config, new_run(config), EventBus())
        mid_path = tmp / "mid.safetensors" if args.mid else None
        if args.mid:
            trainer.sample = lambda step: trainer.save_adapter(mid_path, step) if step == half else None
        trainer.setup()
        result = trainer.run()
        train_s, train_cpu = time.perf_counter() - start, time.process_time() - cpu_start
        assert result.status == "done", result.status
        report = {"label": args.label, "argv": sys.argv[1:] if argv is None else argv,
                  "train_s": round(train_s, 1), "train_cpu_s": round(train_cpu, 1),
                  "final_loss": round(sum(result.losses[-50:]) / max(1, len(result.losses[-50:])), 5)}
        for guidance in args.guidance:
            t0 = time.perf_counter()
            counts = evaluate(result.adapter_path, guidance, args.eval_steps, list(range(args.seeds)), mid_path,
                              args.device, args.save_images)
            report[f"g{guidance:g}"] = counts
            report[f"eval_s_g{guidance:g}"] = round(time.perf_counter() - t0, 1)
        if args.save_images:  # the adapter too, to look at it again (`--adapter`) or in the Preview tab
            args.save_images.mkdir(parents=True, exist_ok=True)
            shutil.copy(result.adapter_path, args.save_images / result.adapter_path.name)
        report["versions"] = dict(versions(), device=args.device)
    print(json.dumps(report), flush=True)
    return report


if __name__ == "__main__":
    main()
