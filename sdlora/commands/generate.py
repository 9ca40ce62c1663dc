"""`sdlora generate`: an image from a base model and any number of weighted LoRA files."""

from __future__ import annotations

from pathlib import Path

from sdlora.errors import SdloraError


def register(sub) -> None:
    p = sub.add_parser("generate", help="render an image with LoRA adapters blended at chosen weights")
    p.add_argument("--model", required=True,
                   help="'tiny', a diffusers-format model folder, or a single-file checkpoint (.safetensors)")
    p.add_argument("--vae", default=None, metavar="FILE_OR_FOLDER",
                   help="a VAE to use instead of the model's own (needed for a checkpoint that has none)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="load a pickle checkpoint (.ckpt/.pt: it can run code; only from a source you trust)")
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:WEIGHT]",
                   help="a LoRA file and its weight in [-2, 2] (default 1); repeat for more adapters")
    p.add_argument("--prompt", required=True, help="what to draw, e.g. 'a sks ring on a white background'")
    p.add_argument("--negative", default=None, help="negative prompt")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default 25; an LCM adapter's own)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default 7.5)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the starting noise (default 0): the same "
                   "seed and settings give the same image")
    p.add_argument("--scheduler", default=None, help="ddim, euler, euler_a, dpmpp_2m or lcm (default: the "
                                                     "model's own, or an LCM adapter's)")
    p.add_argument("--size", default=None, metavar="WxH", help="image size, e.g. 512x512 (default: the model's)")
    p.add_argument("--out", required=True, metavar="PNG", help="where to write the image")
    p.set_defaults(handler=run)


def parse_size(text: str | None) -> tuple[int | None, int | None]:
    if text is None:
        return None, None
    w, sep, h = text.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit() or int(w) % 8 or int(h) % 8 or not int(w) or not int(h):
        raise SdloraError(f"--size '{text}': give WIDTHxHEIGHT in pixels, each a positive multiple of 8 "
                          f"(e.g. 512x512)")
    return int(w), int(h)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def check_out(out: Path) -> None:
    """--out names an image file to write: not a folder, an image suffix, a folder above it that can be made."""
    if out.is_dir():
        raise SdloraError(f"--out {out}: is a folder; give an image file such as {out / 'image.png'}")
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise SdloraError(f"--out {out}: give an image file ending in {', '.join(IMAGE_SUFFIXES)}")
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise SdloraError(f"--out {out}: {parent} is a file, not a folder")


def run(args) -> int:
    from sdlora.adapters.blend import AdapterBlender, check_guidance, check_weight, parse_lora_spec
    from sdlora.atomic import save_image
    from sdlora.models.loading import load_pipeline
    from sdlora.schedulers import SCHEDULERS

    width, height = parse_size(args.size)
    loras = [parse_lora_spec(spec) for spec in args.lora]
    for path, weight in loras:  # every argument checked before the model is loaded
        check_weight(weight, f"--lora {path}")
        if not Path(path).exists():
            raise SdloraError(f"--lora {path}: no such file; give the path of a LoRA .safetensors file")
    if args.scheduler is not None and args.scheduler not in SCHEDULERS:
        raise SdloraError(f"--scheduler '{args.scheduler}' is unknown; use one of {', '.join(SCHEDULERS)}")
    if args.steps is not None and args.steps < 1:
        raise SdloraError(f"--steps {args.steps}: give at least 1 step")
    check_guidance(args.guidance)
    if not 0 <= args.seed < 2**63:
        raise SdloraError(f"--seed {args.seed}: give a seed from 0 to 2**63-1")
    check_out(Path(args.out))
    blender = AdapterBlender(load_pipeline(args.model, vae=args.vae, allow_pickle=args.allow_pickle))
    weights: dict[str, float] = {}
    for path, weight in loras:
        weights[path] = weights.get(path, 0.0) + weight
    blender.set_weights(weights)
    image = blender.generate(args.prompt, negative=args.negative, steps=args.steps, guidance=args.guidance,
                             seed=args.seed, scheduler=args.scheduler, width=width, height=height)
    save_image(image, args.out)
    used = ", ".join(f"{Path(p).name}:{w:g}" for p, w in weights.items()) or "no LoRA"
    print(f"{args.out}: {image.width}x{image.height}, {used}, seed {args.seed}")
    return 0
