"""Caption a data folder: one caption file per image, written atomically; existing captions kept unless asked.

The images are those training would see (`sdlora.data.scan`); a broken image is skipped and reported by name,
with the reason training would give.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sdlora.atomic import write_text
from sdlora.data.images import BadImage, inspect_image, open_rgb
from sdlora.data.scan import normalize_extension, scan_folder


@dataclass
class CaptionReport:
    images: int = 0
    written: list[tuple[Path, Path, str]] = field(default_factory=list)  # (image, caption file, caption)
    kept: list[Path] = field(default_factory=list)  # images whose existing caption file was left alone
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (image, reason)
    seconds: float = 0.0

    def as_dict(self, root: Path) -> dict:
        rel = lambda p: str(Path(p).relative_to(root))  # noqa: E731
        return {"images": self.images, "written": len(self.written), "kept": len(self.kept),
                "skipped": [{"file": rel(p), "reason": r} for p, r in self.skipped],
                "captions": [{"image": rel(i), "file": rel(p), "caption": c} for i, p, c in self.written],
                "images_per_s": round(len(self.written) / self.seconds, 3) if self.seconds else None}


def compose(caption: str, prefix: str = "", suffix: str = "") -> str:
    """prefix, caption, suffix joined with ", " (empty parts left out)."""
    return ", ".join(part.strip() for part in (prefix, caption, suffix) if part.strip())


def caption_folder(folder: Path, captioner, *, extension: str = ".txt", overwrite: bool = False, prefix: str = "",
                   suffix: str = "", batch: int = 8, limit: int | None = None, write: bool = True,
                   progress: Callable[[int, int], None] | None = None, bar: bool | None = None) -> CaptionReport:
    """Caption every image of `folder` that has no caption file (all of them with `overwrite`).

    `write=False` with `limit=N` is the preview: the captions of the first N images, nothing written (they are
    in `written` with the file each would go to). `progress(done, total)` is called after each batch; `bar`
    shows a terminal progress bar (default: when stderr is a terminal).
    """
    folder = Path(folder)
    ext = normalize_extension(extension)
    report = CaptionReport()
    todo = []
    for record in scan_folder(folder, ext, key="DIR"):
        report.images += 1
        if record.caption_path is not None and not overwrite:
            report.kept.append(record.path)
        else:
            todo.append(record.path)
    if limit is not None:
        todo = todo[:limit]
    from tqdm import tqdm

    show = sys.stderr.isatty() if bar is None else bar
    meter = tqdm(total=len(todo), unit="image", file=sys.stderr, disable=not show, dynamic_ncols=True)
    start, done = time.perf_counter(), 0
    try:
        for i in range(0, len(todo), batch):
            images, paths = [], []
            for path in todo[i:i + batch]:
                try:
                    inspect_image(path)
                    images.append(open_rgb(path)[0])
                    paths.append(path)
                except BadImage as exc:
                    report.skipped.append((path, str(exc)))
                    meter.write(f"skipped {path.relative_to(folder)}: {exc}", file=sys.stderr)
            for path, text in zip(paths, captioner.caption(images) if images else []):
                target, caption = path.with_suffix(ext), compose(text, prefix, suffix)
                if write:
                    write_text(target, caption + "\n")
                report.written.append((path, target, caption))
            done += len(todo[i:i + batch])
            meter.update(len(todo[i:i + batch]))
            if progress is not None:
                progress(done, len(todo))
    finally:
        meter.close()
        report.seconds = time.perf_counter() - start
    return report
