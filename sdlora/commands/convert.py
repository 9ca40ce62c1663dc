"""`sdlora convert IN OUT --to kohya|diffusers`: rewrite an adapter's keys in the other format, tensors untouched."""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("convert", help="convert a LoRA file between kohya and diffusers key formats")
    p.add_argument("input", metavar="IN", help="LoRA .safetensors file (kohya or diffusers format)")
    p.add_argument("output", metavar="OUT", help="where to write the converted file")
    p.add_argument("--to", required=True, choices=["kohya", "diffusers"], help="key format to write")
    p.set_defaults(handler=run)


def run(args) -> int:
    from sdlora.adapters.io import read_adapter_file, save_adapter

    found = read_adapter_file(args.input)
    # dtype=None keeps every tensor's own dtype and bits: conversion renames keys, it does not re-quantise.
    save_adapter(found.adapter, args.output, fmt=args.to, dtype=None)
    if found.skipped_keys:
        print(f"sdlora convert: warning: {len(found.skipped_keys)} key(s) of {args.input} are not SD LoRA layers "
              f"and were not carried over (e.g. {found.skipped_keys[0]})", file=sys.stderr)
    print(f"{args.output}: {len(found.adapter.layers)} layers, {found.format} -> {args.to}, "
          f"{'/'.join(sorted(found.dtypes))}, {len(found.adapter.metadata)} metadata fields kept")
    return 0
