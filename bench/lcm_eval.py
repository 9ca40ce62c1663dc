"""Does an LCM-LoRA make 4-step sampling follow the teacher? Fixed prompts and seeds, against 50-step DDIM.

    sdlora train --preset presets/lcm.yaml
    python bench/lcm_eval.py --adapter outputs/lcm/lcm.safetensors

For every (prompt, seed) the teacher (base model, no adapter) samples with DDIM in --teacher-steps steps; then
  lcm_lora        the adapter + LCMScheduler, --steps steps, guidance --lcm-guidance (the adapter's own default)
  ddim            the base model, DDIM, --steps steps, the teacher's guidance
  lcm_no_adapter  the base model + LCMScheduler, --steps steps (a control: the scheduler alone is not the gain)
start from the same seed. Scores against the teacher: MSE of the final latents, and PSNR of the decoded pixels
(in [0, 1]). Prints one JSON object, then a table; writes a side-by-side grid PNG (one row per prompt and seed).
The teacher guidance defaults to the middle of the adapter's training range [lcm.w_min, lcm.w_max].
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPTS = [
    "a red circle on a white background",
    "a blue square on a white background",
    "a green triangle on a black background",
    "a yellow star in the center",
]
SEEDS = [0, 1]
METHODS = ("lcm_lora", "ddim", "lcm_no_adapter")
COLUMNS = {"teacher": "teacher DDIM {teacher_steps}", "lcm_lora": "LCM-LoRA {steps}", "ddim": "DDIM {steps}",
           "lcm_no_adapter": "LCM {steps}, no LoRA"}


def adapter_settings(path: Path) -> dict:
    """What the adapter recorded about its LCM training (sdlora metadata), with the recipe's defaults."""
    from sdlora.lora.metadata import LcmSampling, read_metadata
    from sdlora.tensorfile import read_safetensors

    meta = read_safetensors(path, tensors=False)[1]
    lcm = json.loads(meta.get("sdlora_config", "{}")).get("lcm", {})
    return {
        "mode": meta.get("sdlora_mode", "?"),
        "base_model": meta.get("sdlora_base_model"),
        "steps_trained": meta.get("ss_steps"),
        "guidance": (read_metadata(meta, str(path)).lcm or LcmSampling()).guidance,
        "num_ddim_timesteps": int(lcm.get("num_ddim_timesteps", 50)),
        "timestep_scaling": float(lcm.get("timestep_scaling", 10.0)),
        "w_range": (float(lcm.get("w_min", 3.0)), float(lcm.get("w_max", 15.0))),
    }


def sample(pipe, prompt: str, seed: int, steps: int, guidance: float, size: int) -> torch.Tensor:
    generator = torch.Generator("cpu").manual_seed(seed)
    with torch.no_grad():
        return pipe(prompt, height=size, width=size, num_inference_steps=steps, guidance_scale=guidance,
                    generator=generator, output_type="latent").images.float()


def decode(pipe, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> pixels in [0, 1], shape [3, H, W]."""
    vae = pipe.vae
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    with torch.no_grad():
        image = vae.decode(latents / vae.config.scaling_factor + shift).sample
    return ((image[0].float() + 1) / 2).clamp(0, 1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a - b) ** 2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def save_grid(rows: list[dict], labels: list[str], path: Path, scale: int) -> None:
    from PIL import Image, ImageDraw

    from sdlora.atomic import save_image

    def to_pil(pixels):
        array = (pixels.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        image = Image.fromarray(array)
        return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)

    tiles = [[to_pil(row[k]) for k in row["order"]] for row in rows]
    w, h = tiles[0][0].size
    label_w, head_h, pad = 230, 18, 4
    grid = Image.new("RGB", (label_w + len(labels) * (w + pad), head_h + len(rows) * (h + pad)), "white")
    draw = ImageDraw.Draw(grid)
    for j, label in enumerate(labels):
        draw.text((label_w + j * (w + pad) + 2, 3), label, fill="black")
    for i, (row, images) in enumerate(zip(rows, tiles)):
        y = head_h + i * (h + pad)
        draw.text((4, y + h // 2 - 6), f"{row['prompt'][:34]} / seed {row['seed']}", fill="black")
        for j, image in enumerate(images):
            grid.paste(image, (label_w + j * (w + pad), y))
    save_image(grid, path)


def evaluate(args) -> dict:
    from diffusers import DDIMScheduler, LCMScheduler

    from sdlora.models import load_pipeline

    settings = adapter_settings(args.adapter)
    model = args.model or settings["base_model"] or "tiny"
    teacher_guidance = args.teacher_guidance or sum(settings["w_range"]) / 2
    lcm_guidance = settings["guidance"] if args.lcm_guidance is None else args.lcm_guidance
    pipe = load_pipeline(model)
    size = args.size or pipe.unet.config.sample_size * (2 ** (len(pipe.vae.config.block_out_channels) - 1))
    # LoRA files from sdlora (kohya or diffusers keys) load with diffusers' own loader.
    pipe.load_lora_weights(str(args.adapter), adapter_name="lcm")
    ddim = DDIMScheduler.from_config(pipe.scheduler.config)
    # The LCM sampler must use the solver schedule the adapter was distilled on.
    lcm = LCMScheduler.from_config(pipe.scheduler.config, original_inference_steps=settings["num_ddim_timesteps"],
                                   timestep_scaling=settings["timestep_scaling"])
    runs = {  # method: (scheduler, steps, guidance, adapter on)
        "teacher": (ddim, args.teacher_steps, teacher_guidance, False),
        "lcm_lora": (lcm, args.steps, lcm_guidance, True),
        "ddim": (ddim, args.steps, teacher_guidance, False),
        "lcm_no_adapter": (lcm, args.steps, lcm_guidance, False),
    }
    rows, start = [], time.perf_counter()
    for prompt in args.prompts:
        for seed in args.seeds:
            row = {"prompt": prompt, "seed": seed, "order": list(runs)}
            for name, (scheduler, steps, guidance, adapter_on) in runs.items():
                pipe.scheduler = scheduler
                (pipe.enable_lora if adapter_on else pipe.disable_lora)()
                row[name + "_latents"] = sample(pipe, prompt, seed, steps, guidance, size)
                row[name] = decode(pipe, row[name + "_latents"])
            rows.append(row)
    pipe.enable_lora()
    result = {
        "model": model, "model_path": str(pipe.config._name_or_path or ""), "adapter": str(args.adapter),
        "adapter_mode": settings["mode"], "adapter_steps_trained": settings["steps_trained"],
        "teacher": {"scheduler": "ddim", "steps": args.teacher_steps, "guidance": teacher_guidance},
        "steps": args.steps, "lcm_guidance": lcm_guidance, "prompts": args.prompts, "seeds": args.seeds,
        "size": size, "seconds": round(time.perf_counter() - start, 1), "methods": {},
    }
    for name in METHODS:
        mse = [((r[name + "_latents"] - r["teacher_latents"]) ** 2).mean().item() for r in rows]
        db = [psnr(r[name], r["teacher"]) for r in rows]
        result["methods"][name] = {"latent_mse": round(sum(mse) / len(mse), 5),
                                   "pixel_psnr_db": round(sum(db) / len(db), 3)}
    if args.grid:
        labels = [COLUMNS[k].format(teacher_steps=args.teacher_steps, steps=args.steps) for k in runs]
        save_grid(rows, labels, args.grid, args.scale)
        result["grid"] = str(args.grid)
    return result


def print_table(result: dict) -> None:
    t = result["teacher"]
    print(f"\nagainst the teacher: DDIM {t['steps']} steps, guidance {t['guidance']:g} "
          f"({len(result['prompts'])} prompts x {len(result['seeds'])} seeds, {result['size']} px)")
    print(f"{'method':<34}{'latent MSE (lower)':>20}{'pixel PSNR dB (higher)':>24}")
    names = {"lcm_lora": f"(a) LCM-LoRA, LCM {result['steps']} steps, g {result['lcm_guidance']:g}",
             "ddim": f"(b) no LoRA, DDIM {result['steps']} steps, g {t['guidance']:g}",
             "lcm_no_adapter": f"(c) no LoRA, LCM {result['steps']} steps, g {result['lcm_guidance']:g}"}
    for name, scores in result["methods"].items():
        print(f"{names[name]:<34}{scores['latent_mse']:>20.4f}{scores['pixel_psnr_db']:>24.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adapter", type=Path, required=True, help="an LCM-LoRA .safetensors written by sdlora")
    parser.add_argument("--model", help="base model (default: the one the adapter records, else tiny)")
    parser.add_argument("--steps", type=int, default=4, help="few-step sampling steps")
    parser.add_argument("--teacher-steps", type=int, default=50)
    parser.add_argument("--teacher-guidance", type=float, help="default: middle of the adapter's [w_min, w_max]")
    parser.add_argument("--lcm-guidance", type=float, help="default: the adapter's sdlora_lcm_guidance")
    parser.add_argument("--prompts", nargs="+", default=PROMPTS)
    parser.add_argument("--seeds", nargs="+", type=int, default=SEEDS)
    parser.add_argument("--size", type=int, help="image side (default: the model's native size)")
    parser.add_argument("--grid", type=Path, default=Path("docs/images/lcm/grid.png"), help="side-by-side PNG")
    parser.add_argument("--scale", type=int, default=2, help="grid upscaling (nearest) for small images")
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    result = evaluate(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n", encoding="utf-8")
    print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
