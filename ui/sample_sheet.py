"""The sample history of a run as a sheet: every sample step (rows) by prompt (columns), from its events.jsonl.

The trainer writes samples/step-NNNNNN/00.png, 01.png, ... (one per prompt, in order) and prompts.txt beside
them; a `sample` event names the images. The sheet is a list of (image, caption) in row order, for a gallery
whose columns are the prompts, so a click shows an image at full size.
"""

from __future__ import annotations

from pathlib import Path


def prompts_of(folder: Path) -> list[str]:
    path = Path(folder) / "prompts.txt"
    if not path.is_file():
        return []
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def sheet(history: list[tuple[int, list[str]]]) -> tuple[list[tuple[str, str]], int]:
    """(gallery items, columns): one row per sample step, oldest first, one column per prompt."""
    items: list[tuple[str, str]] = []
    columns = 1
    for step, images in sorted(history, key=lambda h: h[0]):
        present = [Path(p) for p in images if Path(p).is_file()]
        if not present:
            continue
        prompts = prompts_of(present[0].parent)
        columns = max(columns, len(images))
        for i, path in enumerate(present):
            prompt = prompts[i] if i < len(prompts) else f"prompt {i + 1}"
            items.append((str(path), f"step {step} · {prompt}"))
    return items, columns
