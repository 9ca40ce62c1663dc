"""`sdlora dataset check DIR [--json] [--resolution N] [--buckets]`: what a data folder holds, what is wrong."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sdlora.errors import SdloraError


def register(sub) -> None:
    p = sub.add_parser("dataset", help="inspect a training data folder")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="count images, sizes, buckets and captions; list problem files")
    check.add_argument("dir", type=Path, metavar="DIR", help="folder of images with same-stem captions")
    check.add_argument("--json", action="store_true", help="print the report as one JSON object")
    check.add_argument("--resolution", type=int, default=512, help="training resolution (default 512)")
    check.add_argument("--buckets", action="store_true", help="assign aspect-ratio buckets (data.buckets)")
    check.add_argument("--bucket-step", type=int, default=64, help="bucket sides are multiples of this")
    check.add_argument("--allow-upscale", action="store_true", help="count images smaller than the training "
                       "size as usable (data.allow_upscale)")
    check.add_argument("--caption-extension", default=".txt", help="caption file extension (default .txt)")
    check.add_argument("--model", help="count caption tokens with this model's tokenizer (default: estimate)")
    check.set_defaults(handler=run)


def run(args) -> int:
    from sdlora.config import config_from_dict
    from sdlora.data.check import check_folder, report_lines

    if not args.dir.is_dir():
        raise SdloraError(f"{args.dir}: no such folder; give the folder of training images")
    # Validated like a preset's data section, so the same ranges and messages apply.
    config = config_from_dict({"data": {
        "dir": str(args.dir), "resolution": args.resolution, "buckets": args.buckets,
        "bucket_step": args.bucket_step, "bucket_max": max(1024, 2 * args.resolution),
        "bucket_min": max(64, min(256, args.resolution // 2 // args.bucket_step * args.bucket_step)),
        "allow_upscale": args.allow_upscale, "caption_extension": args.caption_extension}}).data
    report = check_folder(config, load_tokenizer(args.model) if args.model else None)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print("\n".join(report_lines(report)))
    if not report["usable"]:
        print(f"sdlora dataset check: error: none of the {report['image_files']} image file(s) in {args.dir} can "
              f"be used; see the problems above", file=sys.stderr)
        return 2
    return 0


def load_tokenizer(model: str):
    from transformers import CLIPTokenizer

    from sdlora.models.loading import resolve_model

    return CLIPTokenizer.from_pretrained(resolve_model(model), subfolder="tokenizer", local_files_only=True)
