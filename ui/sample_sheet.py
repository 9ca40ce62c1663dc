"""The sample history of a run as a sheet: every sample step (rows) by prompt (columns), from its events.jsonl.

The trainer writes samples/step-NNNNNN/00.png, 01.png, ... (one per prompt, in order) and prompts.txt beside
them; a `sample` event names the images. The sheet is a table (newest step on top) whose columns are the
prompts; a click opens an image at full size.
"""

from __future__ import annotations

import html
from pathlib import Path
from urllib.parse import quote


def prompts_of(folder: Path) -> list[str]:
    path = Path(folder) / "prompts.txt"
    if not path.is_file():
        return []
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def file_url(path: str) -> str:
    """The app's URL of a file under the allowed folders (Gradio serves those at /gradio_api/file=PATH)."""
    return "/gradio_api/file=" + quote(str(path))


def sheet_html(history: list[tuple[int, list[str]]], thumb: int = 128) -> str:
    """The sheet as a table: a row per sample step, a column per prompt; a click opens the image at full size."""
    rows = []
    prompts: list[str] = []
    for step, images in sorted(history, key=lambda h: h[0]):
        present = [Path(p) for p in images if Path(p).is_file()]
        if not present:
            continue
        prompts = prompts_of(present[0].parent) or prompts
        cells = "".join(
            f'<td><a href="{file_url(p)}" target="_blank" title="step {step} · '
            f'{html.escape(prompts[i] if i < len(prompts) else f"prompt {i + 1}")}">'
            f'<img src="{file_url(p)}" width="{thumb}" height="{thumb}" loading="lazy"></a></td>'
            for i, p in enumerate(present))
        rows.append(f'<tr data-step="{step}"><th>step {step}</th>{cells}</tr>')
    if not rows:
        return '<p class="sdlora-sheet-empty">No samples yet.</p>'
    head = "".join(f"<th>{html.escape(p)}</th>" for p in prompts)
    return (f'<div class="sdlora-sheet"><table><tr><th></th>{head}</tr>{"".join(reversed(rows))}</table></div>')
