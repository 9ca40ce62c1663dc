"""`sdlora caption DIR --model PATH [--prefix T] [--suffix T] [--overwrite] [--batch N] [--threshold T] [--json]`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sdlora.errors import SdloraError


def register(sub) -> None:
    p = sub.add_parser("caption", help="write a caption file for each image with a captioning model on disk")
    p.add_argument("dir", type=Path, metavar="DIR", help="folder of training images")
    p.add_argument("--model", required=True, metavar="PATH",
                   help="a transformers image-to-text model folder (BLIP, BLIP-2, GIT, Florence-2, any "
                        "image-text-to-text model) or a WD14 tagger (.onnx + tags .csv, or their folder)")
    p.add_argument("--prefix", default="", help="text put before each caption, e.g. the trigger word")
    p.add_argument("--suffix", default="", help="text put after each caption")
    p.add_argument("--overwrite", action="store_true", help="replace existing caption files (default: keep them)")
    p.add_argument("--batch", type=int, default=8, metavar="N", help="images per model call (default 8)")
    p.add_argument("--threshold", type=float, default=0.35, metavar="T",
                   help="tagger: keep tags scored above T (default 0.35)")
    p.add_argument("--max-length", type=int, default=60, metavar="N", help="most tokens a caption model writes")
    p.add_argument("--prompt", help="what the model is asked: Florence-2's task token (default "
                                    "<MORE_DETAILED_CAPTION>), a chat model's question, or BLIP/GIT's caption start")
    p.add_argument("--caption-extension", default=".txt", help="caption file extension (default .txt)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: a GPU when present")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let a model folder run its own Python code (older Florence-2 copies need it)")
    p.add_argument("--json", action="store_true", help="print a JSON report (files written, kept, skipped)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from sdlora.caption import caption_folder, load_captioner

    if not args.dir.is_dir():
        raise SdloraError(f"{args.dir}: no such folder; give the folder of training images")
    if args.batch < 1:
        raise SdloraError(f"--batch {args.batch}: give 1 or more")
    if not 0.0 <= args.threshold <= 1.0:
        raise SdloraError(f"--threshold {args.threshold}: give a score between 0 and 1")
    if args.max_length < 1:
        raise SdloraError(f"--max-length {args.max_length}: give 1 or more")
    captioner = load_captioner(args.model, device=args.device, threshold=args.threshold,
                               max_length=args.max_length, prompt=args.prompt,
                               trust_remote_code=args.trust_remote_code)
    report = caption_folder(args.dir, captioner, extension=args.caption_extension, overwrite=args.overwrite,
                            prefix=args.prefix, suffix=args.suffix, batch=args.batch)
    if args.json:
        print(json.dumps({"model": str(args.model), "kind": captioner.kind, **report.as_dict(args.dir)}, indent=2))
    else:
        speed = f" ({len(report.written) / report.seconds:.2f} images/s)" if report.written and report.seconds else ""
        print(f"{args.dir}: {len(report.written)} caption(s) written with {captioner.name}{speed}, "
              f"{len(report.kept)} kept (existing; --overwrite replaces them), {len(report.skipped)} skipped")
        for path, reason in report.skipped:
            print(f"  skipped {path.relative_to(args.dir)}: {reason}")
    if report.images == 0:
        print(f"sdlora caption: error: {args.dir} holds no images", file=sys.stderr)
        return 2
    return 0
