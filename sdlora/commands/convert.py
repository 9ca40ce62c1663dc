"""`sdlora convert IN OUT --to kohya|diffusers`: rewrite an adapter's keys in the other format, tensors untouched."""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser(
        "convert", help="convert a LoRA file between kohya and diffusers key formats",
        description="Rewrite a LoRA file's keys in the other format; tensors and metadata are kept bit for bit.",
        epilog="Which format goes where: kohya (lora_unet_..., the default) loads in A1111/Forge, ComfyUI, InvokeAI, "
               "kohya's sd-scripts and diffusers' load_lora_weights. diffusers (PEFT keys) loads in diffusers and "
               "PEFT scripts only: A1111 reads none of its layers and ComfyUI only some, at the wrong scale. "
               "Example: sdlora convert my.safetensors my-kohya.safetensors --to kohya")
    p.add_argument("input", metavar="IN", help="LoRA .safetensors file (kohya or diffusers format)")
    p.add_argument("output", metavar="OUT", help="where to write the converted file")
    p.add_argument("--to", required=True, choices=["kohya", "diffusers"], help="key format to write")
    p.set_defaults(handler=run)


def run(args) -> int:
    from sdlora.lora.io import read_adapter_file, save_adapter

    found = read_adapter_file(args.input)
    # dtype=None keeps every tensor's own dtype and bits: conversion renames keys, it does not re-quantise.
    save_adapter(found.adapter, args.output, fmt=args.to, dtype=None)
    if found.skipped_keys:
        print(f"sdlora convert: warning: {len(found.skipped_keys)} key(s) of {args.input} are not SD LoRA layers "
              f"and were not carried over (e.g. {found.skipped_keys[0]})", file=sys.stderr)
    print(f"{args.output}: {len(found.adapter.layers)} layers, {found.format} -> {args.to}, "
          f"{'/'.join(sorted(found.dtypes))}, {len(found.adapter.metadata)} metadata fields kept")
    return 0
