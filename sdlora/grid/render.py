"""Sample a grid's cells and write them: the labelled sheet, one PNG per cell, and the index JSON beside the sheet.

    grid.png          the sheet: one row per adapter, one column per weight x prompt, the base (weight 0) first
    grid.json         the index: a list of cells with adapter, weight, prompt, seed, steps, file (and more)
    grid-cells/*.png  the cells; the base images are sampled once per prompt and shared by every row
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sdlora.adapters.serving import BatchGenerator, Request
from sdlora.atomic import save_image, write_text
from sdlora.grid.plan import Cell
from sdlora.grid.sheet import draw_sheet


@dataclass(frozen=True)
class GridSettings:
    seed: int = 0
    steps: int | None = None
    guidance: float | None = None
    scheduler: str | None = None
    negative: str = ""
    width: int | None = None
    height: int | None = None


def grid_paths(out: Path) -> tuple[Path, Path]:
    """(the index JSON, the cells folder) that go beside the sheet `out`."""
    return out.with_suffix(".json"), out.with_name(out.stem + "-cells")


def cell_request(cell: Cell, settings: GridSettings) -> Request:
    adapters = () if cell.is_base else ((str(cell.source.path), cell.weight),)
    return Request(cell.prompt, adapters, settings.negative, settings.seed, settings.steps, settings.guidance,
                   settings.scheduler, settings.width, settings.height)


def cell_name(cell: Cell) -> str:
    return f"base-p{cell.prompt_index:02d}.png" if cell.is_base else \
        f"r{cell.row:02d}-w{cell.weight:g}-p{cell.prompt_index:02d}.png"


def render_grid(generator: BatchGenerator, cells: list[Cell], settings: GridSettings, out: Path,
                on_cell: Callable[[Cell, object, int, int], None] | None = None) -> list[dict]:
    """Sample every cell (each base image once), write the files; returns the index. `on_cell(cell, image, done,
    total)` is called as cells finish."""
    index_path, cells_dir = grid_paths(out)
    for cell in cells:  # every file read and checked against the model before the first image is sampled
        if not cell.is_base:
            generator.check(cell.source.path)
    requests: dict[Request, list[Cell]] = {}
    for cell in cells:
        requests.setdefault(cell_request(cell, settings), []).append(cell)
    unique = list(requests)
    files = {request: cells_dir / cell_name(group[0]) for request, group in requests.items()}
    images: dict[Cell, object] = {}
    done = 0

    def finished(i: int, image) -> None:
        nonlocal done
        save_image(image, files[unique[i]])
        for cell in requests[unique[i]]:
            images[cell] = image
            done += 1
            if on_cell:
                on_cell(cell, image, done, len(cells))

    generator.generate(unique, on_image=finished)
    index = []
    for cell in cells:
        request = cell_request(cell, settings)
        sampling = generator.resolve(request)
        index.append({"adapter": str(cell.source.path), "label": cell.source.label, "step": cell.source.step,
                      "weight": cell.weight, "prompt": cell.prompt, "negative": settings.negative,
                      "seed": settings.seed, "steps": sampling["steps"], "guidance": sampling["guidance"],
                      "scheduler": sampling["scheduler"], "width": images[cell].width,
                      "height": images[cell].height, "row": cell.row, "column": cell.column,
                      "file": str(files[request])})
    write_text(index_path, json.dumps(index, indent=2) + "\n")
    save_image(sheet(cells, images), out)
    return index


def sheet(cells: list[Cell], images: dict) -> object:
    rows = max(c.row for c in cells) + 1
    columns = max(c.column for c in cells) + 1
    grid = [[None] * columns for _ in range(rows)]
    row_labels = [""] * rows
    column_labels = [[]] * columns
    prompts = sorted({(c.prompt_index, c.prompt) for c in cells})
    for cell in cells:
        grid[cell.row][cell.column] = images[cell]
        row_labels[cell.row] = cell.source.label
        weight = "base" if cell.is_base else f"weight {cell.weight:g}"
        column_labels[cell.column] = [weight, f"P{cell.prompt_index + 1}"] if len(prompts) > 1 else [weight]
    legend = [f"P{i + 1}: {text}" for i, text in prompts] if len(prompts) > 1 else [f"prompt: {prompts[0][1]}"]
    return draw_sheet(grid, row_labels, column_labels, legend)
