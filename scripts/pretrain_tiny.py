"""Pretrain the built-in `tiny` model on procedural shape scenes, from random weights, in minutes on one GPU.

    python scripts/pretrain_tiny.py                      # GPU: ~8 minutes, writes sdlora/models/builtin/tiny/
    python scripts/pretrain_tiny.py --smoke              # CPU: a few seconds of each stage, into outputs/

Stages, top to bottom:
 1. render the data set: `--images` scenes of sdlora.procedural (seed `--seed`), in all CPU cores;
 2. the VAE alone: L1 + MSE reconstruction and a small KL term, for `--vae-seconds`;
 3. encode every image once; set the VAE's scaling_factor so latents have unit variance (as SD 1.x does);
 4. the UNet and the text encoder together on the latents: epsilon prediction on SD 1.x's scaled-linear
    schedule, Min-SNR weighting, offset noise, and 10% empty captions so classifier-free guidance works, for
    `--unet-seconds`;
 5. save the pipeline as fp16 safetensors (diffusers format), a loss curve, a sample grid, and how often
    samples follow colour, shape, position and background prompts (tests/prompt_following.py).

Learning rates follow a warm-up and cosine decay over each stage's time budget rather than a step count, so a
stage ends on time on any GPU; the steps reached are logged and saved in summary.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # prompt_following: the tests' measure of prompt following
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sdlora.config import TrainConfig  # noqa: E402
from sdlora.models.storage import save_pipeline_folder  # noqa: E402
from sdlora.models.tiny import build_tiny_pipeline  # noqa: E402
import prompt_following as evaluate  # noqa: E402
from sdlora.procedural.scenes import render_many  # noqa: E402
from sdlora.train.objective import denoising_loss  # noqa: E402

START = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - START:7.1f}s] {message}", flush=True)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="pipeline folder to write (default: sdlora/models/builtin/tiny, "
                                            "or outputs/pretrain-smoke/tiny with --smoke)")
    p.add_argument("--artifacts", type=Path, help="loss curve, samples and summary (default: docs/models/tiny)")
    p.add_argument("--archive", type=Path, help="also write the pipeline as this .tar.gz, and a checkpoint of "
                                                "it every --checkpoint-seconds")
    p.add_argument("--smoke", action="store_true", help="seconds-long run on few images, to test the script")
    p.add_argument("--images", type=int, default=250_000)
    p.add_argument("--vae-seconds", type=float, default=90.0)
    p.add_argument("--unet-seconds", type=float, default=330.0)
    p.add_argument("--vae-batch", type=int, default=256)
    p.add_argument("--batch", type=int, default=512, help="UNet batch size")
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--lr", type=float, default=5e-4, help="UNet and text encoder peak learning rate")
    p.add_argument("--channels-last", action="store_true", help="NHWC convolutions (faster on some GPUs)")
    p.add_argument("--checkpoint-seconds", type=float, default=90.0)
    p.add_argument("--eval-seeds", type=int, default=4, help="seeds per prompt in the prompt-following check")
    p.add_argument("--eval-steps", type=int, default=20, help="DDIM steps of the check and the sample grid")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="render processes (default: all cores)")
    args = p.parse_args()
    if args.smoke:
        args.images, args.vae_seconds, args.unet_seconds = min(args.images, 512), 6.0, 12.0
        args.vae_batch, args.batch, args.checkpoint_seconds, args.eval_seeds, args.eval_steps = 8, 16, 5.0, 1, 2
    args.out = args.out or (ROOT / "outputs/pretrain-smoke/tiny" if args.smoke else ROOT / "sdlora/models/builtin/tiny")
    args.artifacts = args.artifacts or (args.out.parent / "artifacts" if args.smoke else ROOT / "docs/models/tiny")
    return args


# ---------------------------------------------------------------------------------------------- helpers


def lr_at(peak: float, fraction: float, warmup: float = 0.03) -> float:
    """Linear warm-up over the first `warmup` of the budget, then cosine decay to zero at its end."""
    return peak * min(1.0, fraction / warmup) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, fraction)))


def tokenize_words(tokenizer, captions: list[str]) -> torch.Tensor:
    """CLIP token ids of captions whose words are all whole tokens of the tiny vocabulary (the scenes' are).

    A dictionary lookup per word instead of BPE: a hundred times faster than the tokenizer for 10^5 captions.
    The first captions are checked against the real tokenizer.
    """
    length = tokenizer.model_max_length
    vocab = tokenizer.get_vocab()
    ids = np.full((len(captions), length), tokenizer.pad_token_id, dtype=np.int64)
    for row, caption in enumerate(captions):
        words = [vocab[w + "</w>"] for w in caption.lower().split()][:length - 2]
        ids[row, :len(words) + 2] = [tokenizer.bos_token_id, *words, tokenizer.eos_token_id]
    check = tokenizer(captions[:200], padding="max_length", max_length=length, truncation=True,
                      return_tensors="np").input_ids
    assert np.array_equal(ids[:len(check)], check), "word lookup differs from the tokenizer"
    return torch.from_numpy(ids)


def to_pixels(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float [-1, 1], what the VAE takes."""
    return images_uint8.float() / 127.5 - 1.0


def export(pipe, folder: Path, archive: Path | None) -> None:
    """Save an fp16 copy of `pipe` (training keeps its fp32 weights) to `folder`, and pack it into `archive`."""
    snapshot = copy.deepcopy(pipe).to("cpu")
    save_pipeline_folder(snapshot, folder, fp16=True)
    if archive:
        archive.parent.mkdir(parents=True, exist_ok=True)
        partial = archive.with_name(archive.name + ".partial")
        with tarfile.open(partial, "w:gz", compresslevel=3) as tar:
            tar.add(folder, arcname=folder.name)
        partial.replace(archive)


def plot_losses(curves: dict[str, list[tuple[int, float]]], path: Path) -> None:
    """One panel per stage: loss (log scale) against step, drawn with PIL (no plotting library needed)."""
    from PIL import Image, ImageDraw

    width, height, pad = 480, 260, 40
    image = Image.new("RGB", (width * len(curves), height), "white")
    draw = ImageDraw.Draw(image)
    for panel, (name, points) in enumerate(curves.items()):
        x0 = panel * width
        draw.text((x0 + pad, 8), f"{name} loss (log scale) vs step", fill="black")
        draw.rectangle([x0 + pad, pad, x0 + width - 10, height - pad], outline="gray")
        if len(points) < 2:
            continue
        steps = np.array([s for s, _ in points], dtype=float)
        logs = np.log10(np.maximum([v for _, v in points], 1e-8))
        lo, hi = logs.min(), logs.max() + 1e-9
        xs = x0 + pad + (steps - steps.min()) / max(1.0, steps.max() - steps.min()) * (width - pad - 10)
        ys = height - pad - (logs - lo) / (hi - lo) * (height - 2 * pad)
        draw.line(list(zip(xs, ys)), fill="navy", width=2)
        draw.text((x0 + 4, pad - 4), f"{10 ** hi:.3g}", fill="black")
        draw.text((x0 + 4, height - pad - 8), f"{10 ** lo:.3g}", fill="black")
        draw.text((x0 + width - 60, height - pad + 6), f"{int(steps.max())}", fill="black")
    image.save(path)


def sample_grid(pipe, prompts: list[str], seeds: list[int], path: Path, steps: int, scale: int = 2) -> None:
    """A grid of samples, one row per prompt (written at its left) and one column per seed."""
    from PIL import Image, ImageDraw

    images = evaluate.generate(pipe, evaluate.jobs(prompts, seeds), steps=steps)
    cell, label = 64 * scale, 300
    grid = Image.new("RGB", (label + cell * len(seeds), cell * len(prompts)), "white")
    draw = ImageDraw.Draw(grid)
    for row, prompt in enumerate(prompts):
        draw.text((6, row * cell + cell // 2 - 6), prompt, fill="black")
        for col in range(len(seeds)):
            grid.paste(images[row * len(seeds) + col].resize((cell, cell), Image.NEAREST),
                       (label + col * cell, row * cell))
    grid.save(path)


# ---------------------------------------------------------------------------------------------- stages


def optimizer_step(loss, optimizer, params, running: list, curve: list, step: int, every: int) -> float | None:
    """One clipped optimizer step; every `every` steps, the mean loss of the window (one host sync), else None."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    running.append(loss.detach())
    if step % every:
        return None
    value = torch.stack(running).mean().item()
    running.clear()
    curve.append((step, value))
    return value


def train_vae(vae, images: torch.Tensor, args, device, autocast, curve: list) -> int:
    """Reconstruction (L1 + MSE, sharp edges) + 1e-5 x KL per latent element (keeps the latent space smooth)."""
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0, betas=(0.9, 0.99),
                                  fused=device.type == "cuda")
    generator = torch.Generator(device).manual_seed(args.seed)
    vae.train()
    step, begin, running = 0, time.perf_counter(), []
    while (fraction := (time.perf_counter() - begin) / args.vae_seconds) < 1.0:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(args.vae_lr, fraction)
        index = torch.randint(0, len(images), (args.vae_batch,), device=device, generator=generator)
        pixels = to_pixels(images[index])
        with autocast:
            posterior = vae.encode(pixels).latent_dist
            reconstruction = vae.decode(posterior.sample(generator=generator)).sample.float()
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        loss = F.l1_loss(reconstruction, pixels) + F.mse_loss(reconstruction, pixels) + 1e-5 * kl
        step += 1
        value = optimizer_step(loss, optimizer, list(vae.parameters()), running, curve, step, every=50)
        if value is not None:
            log(f"vae step {step}: loss {value:.4f} (kl {kl.item():.2f}), "
                f"{step * args.vae_batch / (time.perf_counter() - begin):.0f} img/s")
    vae.eval()
    return step


@torch.no_grad()
def encode_all(vae, images: torch.Tensor, autocast, batch: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    means, stds = [], []
    for i in range(0, len(images), batch):
        with autocast:
            posterior = vae.encode(to_pixels(images[i:i + batch])).latent_dist
        means.append(posterior.mean.to(torch.bfloat16))
        stds.append(posterior.std.to(torch.bfloat16))
    return torch.cat(means), torch.cat(stds)


def train_unet(pipe, latent_mean, latent_std, token_ids, args, device, autocast, curve: list) -> int:
    unet, text_encoder = pipe.unet, pipe.text_encoder
    from diffusers import DDPMScheduler

    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    objective = TrainConfig(noise_offset=0.1, min_snr_gamma=5.0)  # only these two fields are read
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99),
                                  fused=device.type == "cuda")
    empty_ids = token_ids.new_tensor(pipe.tokenizer("", padding="max_length", truncation=True,
                                                    max_length=token_ids.shape[1]).input_ids)
    scaling = pipe.vae.config.scaling_factor
    generator = torch.Generator(device).manual_seed(args.seed + 1)
    unet.train(), text_encoder.train()
    step, begin, running = 0, time.perf_counter(), []
    last_checkpoint = begin
    while (fraction := (time.perf_counter() - begin) / args.unet_seconds) < 1.0:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(args.lr, fraction)
        index = torch.randint(0, len(token_ids), (args.batch,), device=device, generator=generator)
        noise = torch.randn(latent_mean[index].shape, device=device, generator=generator)
        latents = (latent_mean[index].float() + latent_std[index].float() * noise) * scaling
        if args.channels_last:
            latents = latents.contiguous(memory_format=torch.channels_last)
        # 10% empty captions: the unconditional model that classifier-free guidance subtracts.
        drop = torch.rand(args.batch, device=device, generator=generator) < 0.1
        ids = torch.where(drop[:, None], empty_ids, token_ids[index])
        with autocast:
            text_embeddings = text_encoder(ids)[0]
            loss = denoising_loss(unet, noise_scheduler, latents, text_embeddings, objective, generator).mean()
        step += 1
        value = optimizer_step(loss, optimizer, params, running, curve, step, every=100)
        if value is not None:
            log(f"unet step {step}: loss {value:.4f}, lr {optimizer.param_groups[0]['lr']:.2e}, "
                f"{step * args.batch / (time.perf_counter() - begin):.0f} img/s")
        if args.archive and time.perf_counter() - last_checkpoint > args.checkpoint_seconds:
            unet.eval(), text_encoder.eval()
            export(pipe, args.out, args.archive)
            unet.train(), text_encoder.train()
            last_checkpoint = time.perf_counter()
            log(f"checkpoint at unet step {step}: {args.archive}")
    unet.eval(), text_encoder.eval()
    return step


def main() -> None:
    args = parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    # bf16 autocast on the GPU; the CPU smoke run stays in fp32 (bf16 is slow there).
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    log(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else os.cpu_count()} "
        f"cores), torch {torch.__version__}; {vars(args)}")

    images, captions = render_many(args.images, seed=args.seed, workers=args.workers)
    log(f"rendered {len(images)} scenes, e.g. {captions[0]!r}")
    pipe = build_tiny_pipeline(seed=args.seed)
    pipe.set_progress_bar_config(disable=True)
    token_ids = tokenize_words(pipe.tokenizer, captions).to(device)
    images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
    pipe.to(device)
    if args.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    curves: dict[str, list[tuple[int, float]]] = {"vae": [], "unet": []}
    summary: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "device": str(device),
                     "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
                     "torch": torch.__version__, "images": len(images)}

    began = time.perf_counter()
    summary["vae_steps"] = train_vae(pipe.vae, images, args, device, autocast, curves["vae"])
    summary["vae_seconds"] = round(time.perf_counter() - began, 1)
    latent_mean, latent_std = encode_all(pipe.vae, images, autocast)
    # SD 1.x scales latents to unit variance before diffusion (Rombach et al. 2022, sec. 4.3.2).
    scaling = 1.0 / latent_mean[:20_000].float().std().item()
    pipe.vae.register_to_config(scaling_factor=scaling)
    with torch.no_grad(), autocast:
        check = images[:256]
        decoded = pipe.vae.decode(latent_mean[:256].to(torch.float32)).sample.float().clamp(-1, 1)
    summary["vae_reconstruction_mae_255"] = round(((decoded - to_pixels(check)).abs().mean() * 127.5).item(), 3)
    summary["latent_scaling_factor"] = round(scaling, 5)
    log(f"VAE: {summary['vae_steps']} steps; reconstruction error {summary['vae_reconstruction_mae_255']} "
        f"of 255; latent mean {latent_mean.float().mean().item():.3f}, scaling_factor {scaling:.4f}")
    del images

    began = time.perf_counter()
    summary["unet_steps"] = train_unet(pipe, latent_mean, latent_std, token_ids, args, device, autocast,
                                       curves["unet"])
    summary["unet_seconds"] = round(time.perf_counter() - began, 1)
    summary["unet_batch"] = args.batch
    summary["final_unet_loss"] = curves["unet"][-1][1] if curves["unet"] else None
    export(pipe, args.out, args.archive)
    log(f"saved {args.out} ({sum(f.stat().st_size for f in args.out.rglob('*') if f.is_file()) / 1e6:.1f} MB)")

    args.artifacts.mkdir(parents=True, exist_ok=True)
    (args.artifacts / "loss.json").write_text(json.dumps(curves), encoding="utf-8")
    plot_losses(curves, args.artifacts / "loss.png")
    began = time.perf_counter()
    seeds = list(range(args.eval_seeds))
    rates = {}
    for name, cases in (("colour_shape", evaluate.colour_shape_cases()), ("position", evaluate.position_cases()),
                        ("background", evaluate.background_cases())):
        work = evaluate.jobs([c.prompt for c in cases], seeds)
        images = evaluate.generate(pipe, work, steps=args.eval_steps)
        rates[name] = evaluate.follow_rates(cases, images, len(seeds))
        log(f"prompt following, {name} prompts ({len(images)} images): {rates[name]}")
    summary["prompt_following"] = rates
    grid_prompts = [c.prompt for c in evaluate.colour_shape_cases()[:6]] + \
                   [evaluate.position_cases()[i].prompt for i in (0, 8)] + \
                   [evaluate.background_cases()[i].prompt for i in (0, 2)]
    sample_grid(pipe, grid_prompts, list(range(6)), args.artifacts / "samples.png", args.eval_steps)
    summary["eval_seconds"] = round(time.perf_counter() - began, 1)
    summary["total_seconds"] = round(time.perf_counter() - START, 1)
    (args.artifacts / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    log(f"done: {json.dumps(summary)}")


if __name__ == "__main__":
    main()
