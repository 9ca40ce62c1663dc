"""The `sdlora dataset check` report as HTML, with problems highlighted."""

from __future__ import annotations

import html
from pathlib import Path


def check_html(folder: Path | None) -> str:
    if folder is None:
        return ""
    try:
        from sdlora.data.check import check_folder  # noqa: F401  (lands with `sdlora dataset check`)
    except ImportError:
        return ('<div class="sdlora-check"><p>The data-set check is not available in this version of sdlora.</p>'
                f'<p>{html.escape(str(folder))}</p></div>')
    return ""
