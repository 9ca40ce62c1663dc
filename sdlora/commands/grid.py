"""`sdlora grid`: compare adapters side by side, checkpoints x weights x prompts, the cells sampled in batches that
mix adapters (sdlora.adapters.batched)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from sdlora.errors import SdloraError


def register(sub) -> None:
    # Nothing heavy here: every `sdlora` command builds this parser (sdlora.adapters.serving imports torch and
    # diffusers, ~4.7 s; the default batch is read from it when the grid runs).
    from sdlora.grid.plan import MAX_CELLS

    p = sub.add_parser("grid", help="compare adapters or a run's checkpoints side by side: a labelled image grid")
    p.add_argument("--model", required=True,
                   help="'tiny', a diffusers-format model folder, or a single-file checkpoint (.safetensors)")
    p.add_argument("--vae", default=None, metavar="FILE_OR_FOLDER", help="a VAE to use instead of the model's own")
    p.add_argument("--allow-pickle", action="store_true",
                   help="load a pickle checkpoint (.ckpt/.pt: it can run code; only from a source you trust)")
    p.add_argument("--lora", action="extend", nargs="+", default=[], required=True, metavar="FILE_OR_RUN_DIR",
                   help="adapter files, or run folders (each stands for its checkpoints and final adapter, in step "
                        "order); one grid row each")
    p.add_argument("--weights", default=None, metavar="W,W,...",
                   help="weights in [-2, 2], comma-separated (default 0,0.5,1); weight 0, the base model, always "
                        "comes first; a list that starts with a minus takes '=': --weights=-1,0,1")
    p.add_argument("--prompt", action="extend", nargs="+", default=[], required=True, metavar="TEXT",
                   help="one or more prompts; each weight gets a column per prompt")
    p.add_argument("--negative", default="", help="negative prompt for every cell")
    p.add_argument("--seed", type=int, default=0, help="the seed of every cell (default 0)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default 25; an LCM adapter's own)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default 7.5)")
    p.add_argument("--scheduler", default=None, help="ddim, euler, euler_a, dpmpp_2m or lcm (default: the "
                                                     "model's own, or an LCM adapter's)")
    p.add_argument("--size", default=None, metavar="WxH", help="image size, e.g. 512x512 (default: the model's)")
    p.add_argument("--batch", type=int, default=None,
                   help="cells per pipeline call, any mix of adapters (default 8, as the Preview); lower it if the "
                        "GPU runs out of memory")
    p.add_argument("--max-cells", type=int, default=MAX_CELLS,
                   help=f"refuse grids with more cells than this (default {MAX_CELLS})")
    p.add_argument("--out", required=True, metavar="PNG",
                   help="the grid image; the index (.json) and the cells folder (-cells/) go beside it")
    p.add_argument("--json", action="store_true", help="print the index (a JSON list of cells) instead of a summary")
    p.set_defaults(handler=run)


def run(args) -> int:
    from sdlora.adapters.serving import DEFAULT_BATCH, BatchGenerator
    from sdlora.commands.generate import parse_size
    from sdlora.grid.plan import expand_sources, parse_weights, plan_cells
    from sdlora.grid.render import GridSettings, grid_paths, render_grid
    from sdlora.models.loading import load_pipeline
    from sdlora.schedulers import SCHEDULERS

    width, height = parse_size(args.size)
    if args.scheduler is not None and args.scheduler not in SCHEDULERS:
        raise SdloraError(f"--scheduler '{args.scheduler}' is unknown; use one of {', '.join(SCHEDULERS)}")
    if args.steps is not None and args.steps < 1:
        raise SdloraError(f"--steps {args.steps}: give at least 1 step")
    batch = DEFAULT_BATCH if args.batch is None else args.batch
    if batch < 1:
        raise SdloraError(f"--batch {batch}: give at least 1 cell per batch")
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise SdloraError(f"--out {out}: give a .png path for the grid image")
    cells = plan_cells(expand_sources(args.lora), parse_weights(args.weights), args.prompt, args.max_cells)
    settings = GridSettings(args.seed, args.steps, args.guidance, args.scheduler, args.negative, width, height)
    generator = BatchGenerator(load_pipeline(args.model, vae=args.vae, allow_pickle=args.allow_pickle),
                               batch_size=batch)
    started = time.perf_counter()
    progress = None if args.json or not sys.stderr.isatty() else _bar(len(cells))
    index = render_grid(generator, cells, settings, out,
                        on_cell=(lambda cell, image, done, total: progress.update(1)) if progress else None)
    if progress:
        progress.close()
    seconds = time.perf_counter() - started
    for note in generator.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(index, indent=2))
        return 0
    rows = max(c.row for c in cells) + 1
    index_path, cells_dir = grid_paths(out)
    rendered = len({entry["file"] for entry in index})
    print(f"{out}: {rows} rows x {len(cells) // rows} columns, {rendered} images in {seconds:.1f} s "
          f"({rendered / seconds:.2f}/s, {generator.calls} pipeline calls); cells in {cells_dir}/, index {index_path}")
    return 0


def _bar(total: int):
    from tqdm import tqdm

    return tqdm(total=total, unit="cell", file=sys.stderr)
