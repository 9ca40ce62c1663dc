"""`sdlora merge --model MODEL --lora FILE[:WEIGHT]... --out DIR`: bake weighted LoRAs into a diffusers folder."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("merge", help="merge weighted LoRA files into the base model, saved as a diffusers folder")
    p.add_argument("--model", required=True, help="'tiny' or a diffusers-format model folder")
    p.add_argument("--lora", action="append", required=True, metavar="FILE[:WEIGHT]",
                   help="a LoRA file and its weight in [-2, 2] (default 1); repeat for more adapters")
    p.add_argument("--out", required=True, metavar="DIR", help="a new folder for the merged model")
    p.set_defaults(handler=run)


def run(args) -> int:
    from sdlora.adapters.merge import merge
    from sdlora.adapters.blend import parse_lora_spec

    loras = [parse_lora_spec(spec) for spec in args.lora]
    out = merge(args.model, loras, args.out)
    used = ", ".join(f"{Path(p).name}:{w:g}" for p, w in loras)
    print(f"{out}: {args.model} with {used} merged (diffusers format)")
    return 0
