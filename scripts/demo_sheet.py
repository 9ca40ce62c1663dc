"""The demo's sample sheet for the model card: a run's samples, one row a sampling step, one column a prompt.

    python scripts/demo_sheet.py outputs/demo docs/models/tiny/demo-samples.png

Reads RUN/samples/step-NNNNNN/NN.png (what `sdlora train` writes at every `sample.every`), stacks the steps top to
bottom and the prompts left to right, and enlarges each 64 px image `--scale` times (bicubic, as the card shows
it). Prints what the procedural detector reads in each image (ring or not, its shape and colour), the reading
the card quotes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--scale", type=int, default=4)
    args = parser.parse_args()
    from sdlora.procedural.detect import detect

    steps = sorted((args.run / "samples").glob("step-*"))
    if not steps:
        raise SystemExit(f"{args.run}/samples: no step-* folders (train with sample.every > 0)")
    rows = [sorted(step.glob("*.png")) for step in steps]
    side = Image.open(rows[0][0]).width * args.scale
    sheet = Image.new("RGB", (side * max(map(len, rows)), side * len(rows)), "white")
    for r, (step, images) in enumerate(zip(steps, rows)):
        readings = []
        for c, path in enumerate(images):
            image = Image.open(path).convert("RGB")
            sheet.paste(image.resize((side, side), Image.BICUBIC), (c * side, r * side))
            found = detect(image)
            readings.append("nothing" if found is None else
                            f"{'RING' if found.is_ring else 'no ring'} (hole {found.hole_score:.2f}, "
                            f"{found.colour} {found.shape})")
        print(f"{step.name}: " + " | ".join(readings))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, optimize=True)
    print(f"wrote {args.out} ({sheet.width}x{sheet.height})")


if __name__ == "__main__":
    main()
