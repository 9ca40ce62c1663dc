"""Find the images of a data folder and their same-stem caption files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sdlora.errors import SdloraError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    caption_path: Path | None
    repeats: int = 1


def scan_folder(folder: Path, caption_extension: str = ".txt") -> list[ImageRecord]:
    """Every image below `folder` (sorted, so the order never depends on the file system) with its caption."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SdloraError(f"data.dir: {folder} is not a folder; point data.dir at a folder of images with "
                          f"same-stem {caption_extension} captions")
    ext = caption_extension if caption_extension.startswith(".") else "." + caption_extension
    records = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()):
        caption = path.with_suffix(ext)
        records.append(ImageRecord(path, caption if caption.is_file() else None))
    return records
