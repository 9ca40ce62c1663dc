"""Training speed of `sdlora train`'s real code path on the SD 1.5 or SDXL architecture with random weights.

    python bench/train_speed.py --batch 1 8 --resolution 512 --steps 30 --warmup 10
    python bench/train_speed.py --arch sdxl --batch 1 4 --steps 20 --warmup 10        # 1024 px by default
    python bench/train_speed.py --arch sdxl-tiny --batch 2 --steps 1 --warmup 1 --workers 0   # a CPU check

Builds an SD 1.5- or SDXL-base-shaped pipeline folder with random weights (no download), a folder of synthetic
images at the training resolution,
then runs the Trainer (the same object `sdlora train` runs) for warmup + steps steps per batch size, timing the
steps after warm-up from the trainer's own step events. Prints one JSON object, then a table.
Speed does not depend on the weight values, so the figures hold for real SD 1.5 / SDXL checkpoints.
`sdxl-tiny` is the tests' small SDXL structure: it runs the same SDXL code path (two text encoders, pooled and
size/crop conditioning) in seconds on a CPU.
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
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # architectures: random-weight models

ARCH_RESOLUTION = {"sd15": 512, "sdxl": 1024, "sdxl-tiny": 64}


def build_model(arch: str, dest: Path) -> Path:
    """A random-weight pipeline folder of `arch` at `dest` (fp16 on disk, as checkpoints are shipped)."""
    from architectures import random_sd15_pipeline, random_sdxl_pipeline
    from sdlora.models.storage import save_pipeline_folder

    pipe = random_sd15_pipeline() if arch == "sd15" else random_sdxl_pipeline(tiny=arch == "sdxl-tiny")
    save_pipeline_folder(pipe, dest, fp16=True)
    return dest


def text_conditioning(c, batch: int, resolution: int, device) -> tuple[torch.Tensor, dict]:
    """(encoder_hidden_states, extra UNet kwargs) for a fixed caption, as the diffusers recipes compute them."""
    from sdlora.train.encode import BatchEncoder, micro_conditioning

    encoder = BatchEncoder(c, device, torch.bfloat16)
    features = encoder.text_features(["a photo"] * batch)
    if c.text_encoder_2 is None:
        return features["text_embeddings"], {}
    size = [(resolution, resolution)] * batch
    time_ids = micro_conditioning({"original_size": size, "crop_top_left": [(0, 0)] * batch, "target_size": size})
    return features["text_embeddings"], {"added_cond_kwargs": {
        "text_embeds": features["pooled_text_embeddings"], "time_ids": time_ids.to(device, torch.bfloat16)}}


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


def run_baseline(model_dir: Path, batch: int, args) -> dict:
    """The standard diffusers recipe (train_text_to_image_lora.py): frozen weights in bf16, peft LoRA in fp32
    under autocast, VAE and text encoder every step, no caching, plain AdamW, loss read back every step."""
    from peft import LoraConfig

    from sdlora.models import load_components

    device = torch.device("cuda")
    c = load_components(str(model_dir), dtype=torch.bfloat16)
    for m in (c.unet, c.vae, c.text_encoder, c.text_encoder_2):
        if m is not None:
            m.requires_grad_(False).to(device)
    c.unet.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian",
                                  target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    params = [p for p in c.unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator(device).manual_seed(0)
    pixels = torch.rand(batch, 3, args.resolution, args.resolution, device=device, generator=g) * 2 - 1
    times = []
    torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup + args.steps):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            latents = c.vae.encode(pixels.bfloat16()).latent_dist.sample() * c.vae.config.scaling_factor
            noise = torch.randn_like(latents)
            t = torch.randint(0, 1000, (batch,), device=device)
            noisy = c.noise_scheduler.add_noise(latents, noise, t)
            text, extra = text_conditioning(c, batch, args.resolution, device)  # the text encoders every step
            pred = c.unet(noisy, t, text, **extra).sample
            loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        loss.item()
        times.append(time.perf_counter())
    timed = times[args.warmup:]
    s_per_step = (timed[-1] - timed[0]) / (len(timed) - 1)
    return {"mode": "baseline", "batch": batch, "samples_per_s": round(batch / s_per_step, 2),
            "s_per_step": round(s_per_step, 4),
            "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}


def flops_per_sample(model_dir: Path, args) -> float:
    """Forward + backward FLOPs of one sample at the bench resolution through the UNet with only LoRA trainable."""
    from torch.utils.flop_counter import FlopCounterMode

    from sdlora.config import NetworkConfig
    from sdlora.models import load_components
    from sdlora.network import add_lora

    c = load_components(str(model_dir), dtype=torch.bfloat16)
    add_lora(c.unet, NetworkConfig(rank=args.rank), seed=0)
    unet = c.unet.cuda()
    for m in (c.text_encoder, c.text_encoder_2):
        if m is not None:
            m.cuda()
    side = args.resolution // c.vae_scale_factor
    latents = torch.randn(1, 4, side, side, device="cuda", dtype=torch.bfloat16)
    text, extra = text_conditioning(c, 1, args.resolution, torch.device("cuda"))
    with FlopCounterMode(display=False) as counter, torch.autocast("cuda", dtype=torch.bfloat16):
        unet(latents, torch.tensor([500], device="cuda"), text, **extra).sample.float().pow(2).mean().backward()
    del unet, c
    torch.cuda.empty_cache()
    return float(counter.get_total_flops())


def matmul_tflops() -> float:
    """The bf16 matrix-multiply rate of this GPU, measured (8192^3 products, median of 20)."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return 2 * 8192**3 / sorted(times)[len(times) // 2] / 1e12


def run_one(model_dir: Path, data_dir: Path, out_dir: Path, batch: int, args) -> dict:
    from sdlora.config import apply_overrides, config_from_dict
    from sdlora.events import EventBus
    from sdlora.train.rundir import new_run
    from sdlora.train.trainer import Trainer

    profile_steps = getattr(args, "profile_steps", 0)
    steps = args.warmup + args.steps + profile_steps  # profiled steps after the timed ones: they run slower
    config = config_from_dict(apply_overrides({
        "name": f"bench-b{batch}", "model": str(model_dir),
        "data": {"dir": str(data_dir), "resolution": args.resolution, "num_workers": args.workers,
                 "cache": args.cache},
        "network": {"rank": args.rank, "alpha": args.rank},
        "train": {"steps": steps, "batch_size": batch, "lr": args.lr, "mixed_precision": args.precision,
                  "seed": args.seed, "base_precision": args.base_precision,
                  "gradient_checkpointing": args.gradient_checkpointing, "compile": args.compile,
                  "channels_last": args.channels_last, "optimizer": args.optimizer,
                  "cuda_graphs": args.cuda_graphs},
        "save": {"output_dir": str(out_dir)},
    }, list(getattr(args, "set", None) or ())))
    step_times: dict[int, float] = {}
    losses: list[float] = []
    validations: list[int] = []
    warnings: list[str] = []
    profiler = StepProfiler(args.warmup + args.steps, profile_steps)

    def listener(event):
        # Step events arrive in windows (the trainer reads losses back every 10 steps on a GPU), so a step's
        # time is when its window was reported; warm-up and steps are multiples of 10 to land on window ends.
        if event["event"] == "step":
            step_times[event["step"]] = time.perf_counter()
            losses.append(event["loss"])
            profiler.at(event["step"])
        elif event["event"] == "validation":
            validations.append(event["step"])
        elif event["event"] == "warning":
            warnings.append(event["message"])

    print(f"[{time.strftime('%X')}] batch {batch}: setting up", flush=True)
    trainer = Trainer(config, new_run(config), EventBus([listener]))
    t0 = time.perf_counter()
    trainer.setup()
    if getattr(args, "grad_buffer", False) and trainer.grad_sync is None:
        # The A/B of the flat gradient buffer (compiled.needs_gradient_buffer): the trainer's choice before round
        # five, kept for one figure.
        from sdlora.train.distributed import GradientSync

        trainer.grad_sync = GradientSync(trainer.params)
    setup_s = time.perf_counter() - t0
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    trainer.run()
    peak_gib = round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None
    val = validation_loss(trainer, model_dir) if args.val else {}
    last = args.warmup + args.steps
    s_per_step = (step_times[last] - step_times[args.warmup]) / (last - args.warmup)
    first = min(step_times)
    first_step_s = step_times[first] - t0 - setup_s - (first - 1) * s_per_step
    extra = {}
    if validations:
        # Windows of 10 steps with a validation pass at their end against those without: the pass's cost.
        ends = sorted(s for s in step_times if args.warmup < s <= last and s - 10 in step_times)
        window = {s: step_times[s] - step_times[s - 10] for s in ends}
        # The pass at step v runs after v's report, so it lands in the window ending at v + 10.
        with_val = [t for s, t in window.items() if s - 10 in validations]
        plain = [t for s, t in window.items() if s - 10 not in validations]
        if with_val and plain:
            plain_step = sorted(plain)[len(plain) // 2] / 10
            s_per_step = plain_step
            extra["validation_pass_s"] = round(sorted(with_val)[len(with_val) // 2] - 10 * plain_step, 3)
            extra["validations"] = len(validations)
    if profiler.table:
        extra["profile"] = profiler.table
    if getattr(args, "set", None):
        extra["set"] = list(args.set)
    extra["grad_buffer"] = trainer.grad_sync is not None
    # How the step ran (train.cuda_graphs: step falls back with a warning), and the first losses: a row whose
    # graphs replay the wrong inputs or noise shows it against a row of the other mode at the same seed.
    extra["whole_step_graph"] = trainer.whole_step
    extra["losses_head"] = losses[:40]
    if warnings:
        extra["warnings"] = warnings[:5]
    return {
        "mode": "sdlora",
        "batch": batch,
        "samples_per_s": round(batch / s_per_step, 2),
        "s_per_step": round(s_per_step, 4),
        "peak_gpu_mem_gib": peak_gib,
        "base_precision": args.base_precision,
        "seed": args.seed,
        "setup_s": round(setup_s, 1),
        "first_step_s": round(first_step_s, 1),
        "final_loss": losses[-1],
        **val,
        **extra,
    }


class StepProfiler:
    """torch.profiler over `steps` steps after the timed ones, started and stopped from the step events (so at window
    ends): the host's and the GPU's busiest operators, to see where a launch-bound step's time goes."""

    def __init__(self, warmup: int, steps: int):
        self.start, self.stop = warmup, warmup + steps
        self.prof = None
        self.table: dict | None = None

    def at(self, step: int) -> None:
        if self.stop <= self.start:
            return
        if step == self.start and self.prof is None:
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
            self.prof = profile(activities=activities)
            self.prof.start()
            self.t0 = time.perf_counter()
        elif step == self.stop and self.prof is not None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            wall = time.perf_counter() - self.t0
            self.prof.stop()
            from torch.autograd import DeviceType

            averages = self.prof.key_averages()
            # Kernels only (device-side events), as the table's "Self CUDA time total": the host-side ranges
            # (a compiled graph's call) carry their kernels' time too, and summing both counted it twice (round
            # four's 0.883 s "busy" was 2 x 0.421 s of kernels).
            gpu_us = sum(e.self_device_time_total for e in averages if e.device_type != DeviceType.CPU)
            self.table = {
                "steps": self.stop - self.start, "wall_s": round(wall, 4),
                "gpu_kernel_s": round(gpu_us / 1e6, 4),
                "cpu_top": averages.table(sort_by="self_cpu_time_total", row_limit=25),
                "gpu_top": averages.table(sort_by="self_device_time_total", row_limit=15)
                if torch.cuda.is_available() else "",
            }
            self.prof = None


def validation_loss(trainer, model_dir: Path, samples: int = 32, draws: int = 4) -> dict:
    """The denoising loss on fixed data after training: the first `samples` training images, fixed noise and
    timesteps (`draws` seeded draws each), through a fresh base UNet (in the training precision) carrying the trained LoRA, i.e. the
    adapter as it is used, whatever base_precision trained it. Also the same loss with the LoRA at its init."""
    from sdlora.data import SampleKey, collate
    from sdlora.models import load_components
    from sdlora.network import add_lora, extract_adapter, load_into

    cfg = trainer.config
    c = load_components(str(model_dir), dtype=trainer.dtype)
    add_lora(c.unet, cfg.network, seed=cfg.train.seed)
    unet = c.unet.to(trainer.device).eval()
    count = min(samples, len(trainer.dataset.records))

    def loss() -> float:
        values = []
        with torch.no_grad(), trainer.accelerator.autocast():
            for start in range(0, count, 8):
                batch = collate([trainer.dataset[SampleKey(i, False, 0)] for i in range(start, min(start + 8, count))])
                for draw in range(draws):
                    g = torch.Generator(trainer.device).manual_seed(draw)
                    latents, cond = trainer.encoder(batch, g)
                    values.append(trainer.objective(unet, latents, cond, g).float().mean().item())  # noqa: F821
        return sum(values) / len(values)

    before = loss()
    load_into(unet, extract_adapter(trainer.unet))
    after = loss()
    del unet, c
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"val_loss_lora_init": round(before, 6), "val_loss": round(after, 6)}


def time_to_first_step(model_dir: Path, data_dir: Path, out_dir: Path, batch: int, args,
                       run2_steps: int = 3) -> dict:
    """Wall time from starting `sdlora train` (a new process) to its first step event, twice (run1, run2): cold
    then warm, or both warm when the same batch size was timed in this bench before (its compile cache filled).
    With `run2_steps` > 20 the warm run goes on training and its step events give the speed after 10 steps
    (`run2_samples_per_s`; the loss is read back every step there, which costs little at large steps)."""
    import subprocess

    import yaml

    preset = out_dir / f"first-step-b{batch}.yaml"
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"batch": batch}
    sampled = getattr(args, "first_step_sampled", False)
    # Sampled: the cold start and a third, warm one (run3, 3 steps) under stack_sampler.py; run2 and run4 stay
    # plain, so the warm figures (two, for their spread) and the speed after 10 steps are an unwatched process's.
    attempts = ("run1", "run2", "profiled") if args.first_step_profile else ("run1", "run2")
    attempts += ("run3", "run4") if sampled else ()  # run4: a second plain warm start, 3 steps
    for attempt in attempts:
        name = f"first-{attempt}-b{batch}"
        preset.write_text(yaml.safe_dump({
            "name": name, "model": str(model_dir),
            "data": {"dir": str(data_dir), "resolution": args.resolution, "cache": "disk",
                     "num_workers": args.workers},
            "network": {"rank": args.rank, "alpha": args.rank},
            "train": {"steps": run2_steps if attempt == "run2" else 3, "batch_size": batch, "mixed_precision": args.precision, "compile": args.compile,
                      "cuda_graphs": args.cuda_graphs, "report_every": 1,
                      "base_precision": getattr(args, "base_precision", "auto"),
                      **({"compile_workers": args.compile_workers}
                         if getattr(args, "compile_workers", None) is not None else {})},
            "save": {"output_dir": str(out_dir)}}))
        start, start_unix = time.perf_counter(), time.time()
        # Under cProfile, or under compile_times.py, which writes the compile caches' hit and miss counts at exit.
        times = out_dir / f"{name}.compile.json"
        # run1 and run3 of a sampled bench under stack_sampler.py instead: where each start's wall time went, with
        # the same counters.
        wrapper = "stack_sampler.py" if sampled and attempt in ("run1", "run3") else "compile_times.py"
        wrap = (["-m", "cProfile", "-o", str(args.first_step_profile), "-m", "sdlora"] if attempt == "profiled"
                else [str(Path(__file__).resolve().parent / wrapper), str(times)])
        proc = subprocess.Popen([sys.executable, *wrap, "train", "--preset", str(preset)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        events = out_dir / name / "events.jsonl"
        first = None
        while proc.poll() is None and first is None:
            time.sleep(0.2)
            if events.is_file() and '"event": "step"' in events.read_text():
                first = time.perf_counter() - start
        proc.wait()
        if attempt == "profiled":
            continue
        if first is None:
            raise RuntimeError(f"sdlora train ({attempt}) ended without a step: {proc.stderr.read()[-2000:]}")
        result[f"{attempt}_s"] = round(first, 1)
        if times.is_file():  # did this start load its graphs from the cache, or compile them?
            written = json.loads(times.read_text())
            found = written.get("counters", {})
            if "by_sdlora" in written:  # stack_sampler.py's: the largest shares, the whole file beside the run
                result[f"{attempt}_sampled"] = {"by_sdlora": dict(list(written["by_sdlora"].items())[:25]),
                                                "phases": dict(list(written["phases"].items())[:40]),
                                                "file": str(times)}
            result[f"{attempt}_caches"] = {k: v for part in ("aot_autograd", "inductor")
                                           for k, v in found.get(part, {}).items() if "cache" in k and "async" not in k}
            # Graphs dynamo traced in this start, and the saved block variants it loaded and called instead.
            traced = {"dynamo_graphs": found.get("stats", {}).get("unique_graphs", 0), **found.get("sdlora", {})}
            if "saved_block_refusals" in found:  # why each block first went to torch.compile
                traced["refusals"] = found["saved_block_refusals"]
            result[f"{attempt}_traced"] = traced
        # Split: process start -> `start` event (imports, model load, data check, caches) and the rest (the first
        # step: compile or compile-cache load, CUDA-graph recording).
        started = next(json.loads(line)["time"] for line in events.read_text().splitlines()
                       if json.loads(line)["event"] == "start")
        result[f"{attempt}_setup_s"] = round(started - start_unix, 1)
        if attempt == "run2" and run2_steps > 20:
            times = [json.loads(line)["time"] for line in events.read_text().splitlines()
                     if json.loads(line)["event"] == "step"]
            if len(times) < 12:  # it ended early: say how, rather than fail the whole bench
                result["run2_ended_early"] = {"steps": len(times), "returncode": proc.returncode,
                                              "events_tail": events.read_text().splitlines()[-3:],
                                              "stderr_tail": proc.stderr.read()[-2000:]}
            else:
                result["run2_samples_per_s"] = round(batch * (len(times) - 11) / (times[-1] - times[10]), 2)
                result["run2_timed_steps"] = len(times) - 11
        print(f"[{time.strftime('%X')}] first step, batch {batch}, {attempt}: {first:.1f} s", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--arch", default="sd15", choices=list(ARCH_RESOLUTION),
                        help="sd15 (512 px), sdxl (SDXL base, 1024 px) or sdxl-tiny (a CPU check of the SDXL path)")
    parser.add_argument("--resolution", type=int, default=None, help="default: the architecture's own")
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=10, help="a multiple of 10 (see run_one)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--precision", default="bf16" if torch.cuda.is_available() else "no")
    parser.add_argument("--optimizer", default="adamw")
    parser.add_argument("--cache", default="none")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--compile", default="off", choices=["auto", "on", "blocks", "off"])
    parser.add_argument("--channels-last", nargs="?", const="on", default="auto", choices=["auto", "on", "off"],
                        help="train.channels_last (a bare --channels-last: on)")
    parser.add_argument("--cuda-graphs", default="auto", choices=["auto", "on", "step", "off"])
    parser.add_argument("--first-step", type=int, nargs="*", default=[],
                        help="also time `sdlora train` from process start to its first step at these batch "
                             "sizes, twice each (after the timed runs, so a batch size timed there starts warm)")
    parser.add_argument("--first-step-profile", type=Path,
                        help="after the two timed starts, a third under cProfile, written here (where a warm "
                             "start's time goes; cProfile slows Python-bound parts, so its time is not reported)")
    parser.add_argument("--baseline", action="store_true", help="also time the diffusers-recipe loop")
    parser.add_argument("--baseline-batch", type=int, nargs="*", default=[],
                        help="batch sizes of the baseline loop (default: those of --batch)")
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=42, help="train.seed (LoRA init, data order, noise)")
    parser.add_argument("--base-precision", default="auto", choices=["auto", "fp8"], help="train.base_precision")
    parser.add_argument("--val", action="store_true",
                        help="after each run, the denoising loss on fixed data (validation_loss)")
    parser.add_argument("--model-dir", type=Path, help="reuse this random-weight model folder (built if missing)")
    parser.add_argument("--data-dir", type=Path, help="reuse this image folder (made if missing)")
    parser.add_argument("--skip-flops", action="store_true", help="no FLOP count or matmul rate (chip %% not shown)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for the timed runs, as `sdlora train --set` (e.g. network.type=dora)")
    parser.add_argument("--profile-steps", type=int, default=0,
                        help="torch.profiler over this many more steps after the timed ones (a multiple of 10)")
    parser.add_argument("--grad-buffer", action="store_true",
                        help="keep the LoRA gradients in one flat buffer even where the trainer would not (an A/B)")
    args = parser.parse_args()
    args.resolution = args.resolution or ARCH_RESOLUTION[args.arch]

    import diffusers
    import transformers

    baseline_rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = args.model_dir or tmp / args.arch
        if not (model_dir / "model_index.json").is_file():
            build_model(args.arch, model_dir)
        data_dir = args.data_dir or tmp / "data"
        if not data_dir.is_dir():
            make_images(data_dir, args.images, args.resolution)
        base = {}
        if args.baseline:  # first: quick, and its figures print before a long compile could time out
            for b in args.baseline_batch or args.batch:
                base[b] = run_baseline(model_dir, b, args)
                print(json.dumps(base[b]), flush=True)
            baseline_rows = list(base.values())
            torch.cuda.empty_cache()
        rows = []
        for b in args.batch:
            rows.append(run_one(model_dir, data_dir, tmp / "out", b, args))
            print(json.dumps(rows[-1]), flush=True)
        # After the timed runs, so a batch size timed above starts with its compile cache warm.
        first_steps = [time_to_first_step(model_dir, data_dir, tmp / "first", b, args) for b in args.first_step]
        if base:
            for r in rows:
                if r["batch"] not in base:
                    continue
                r["baseline_samples_per_s"] = base[r["batch"]]["samples_per_s"]
                r["baseline_peak_gpu_mem_gib"] = base[r["batch"]]["peak_gpu_mem_gib"]
                r["speedup_vs_baseline"] = round(r["samples_per_s"] / base[r["batch"]]["samples_per_s"], 2)
        if torch.cuda.is_available() and not args.skip_flops:
            flops = flops_per_sample(model_dir, args)
            peak = matmul_tflops()
            for r in rows:
                r["fraction_of_bf16_matmul_rate"] = round(r["samples_per_s"] * flops / (peak * 1e12), 3)
    result = {
        "bench": "train_speed", "arch": args.arch, "resolution": args.resolution, "rank": args.rank,
        "precision": args.precision, "optimizer": args.optimizer, "cache": args.cache,
        "gradient_checkpointing": args.gradient_checkpointing, "compile": args.compile,
        "channels_last": args.channels_last, "cuda_graphs": args.cuda_graphs, "timed_steps": args.steps,
        "first_step": first_steps,
        "baseline": baseline_rows,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        "torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
        "results": rows,
    }
    if torch.cuda.is_available() and not args.skip_flops:
        result["tflop_per_sample"] = round(flops / 1e12, 3)
        result["measured_bf16_matmul_tflops"] = round(peak, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    print(f"\n{'batch':>5} {'samples/s':>10} {'s/step':>8} {'peak GiB':>9} {'1st step s':>10} {'baseline':>9} "
          f"{'ratio':>6} {'chip %':>7}")
    for r in rows:
        print(f"{r['batch']:>5} {r['samples_per_s']:>10} {r['s_per_step']:>8} {r['peak_gpu_mem_gib']!s:>9} "
              f"{r['setup_s'] + r['first_step_s']:>10.1f} {r.get('baseline_samples_per_s', '-')!s:>9} "
              f"{r.get('speedup_vs_baseline', '-')!s:>6} {100 * r.get('fraction_of_bf16_matmul_rate', 0):>6.1f}%")


if __name__ == "__main__":
    main()
