"""Find the images of a data folder, their same-stem caption files, and kohya-style `N_name` repeat folders.

A subfolder named like `10_sks dog` gives its images 10 repeats, and (kohya's DreamBooth rule) its name part
("sks dog") is the caption of an image there that has no caption file. Folders nest: the nearest `N_name`
folder above an image decides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sdlora.errors import SdloraError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
IMAGE_KINDS = ", ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))  # for messages
REPEAT_FOLDER = re.compile(r"^(\d+)_(.*)$")


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    caption_path: Path | None
    repeats: int = 1
    folder_caption: str = ""  # the name part of an `N_name` folder, used when there is no caption file


def parse_repeat_folder(name: str) -> tuple[int, str] | None:
    """`"10_sks dog"` -> (10, "sks dog"); a folder name without the `N_` prefix (or N = 0) -> None."""
    match = REPEAT_FOLDER.match(name)
    if not match or int(match.group(1)) == 0:
        return None
    return int(match.group(1)), match.group(2).replace("_", " ").strip()


def repeat_folder_of(path: Path, root: Path | str) -> str | None:
    """The name of the nearest `N_name` folder between `root` and `path`, or None."""
    parts = Path(path).relative_to(root).parts[:-1]
    return next((part for part in reversed(parts) if parse_repeat_folder(part)), None)


def normalize_extension(extension: str) -> str:
    return extension if extension.startswith(".") else "." + extension


def scan_folder(folder: Path, caption_extension: str = ".txt", key: str = "data.dir") -> list[ImageRecord]:
    """Every image below `folder` (sorted, so the order never depends on the file system) with its caption.

    Hidden files and folders (a leading dot: editors' and OS metadata) are ignored.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SdloraError(f"{key}: {folder} is not a folder; point {key} at a folder of images with "
                          f"same-stem {caption_extension} captions")
    ext = normalize_extension(caption_extension)
    records = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.suffix.lower() not in IMAGE_EXTENSIONS or any(p.startswith(".") for p in relative.parts):
            continue
        if not path.is_file():
            continue
        repeats, folder_caption = 1, ""
        for part in reversed(relative.parts[:-1]):
            parsed = parse_repeat_folder(part)
            if parsed:
                repeats, folder_caption = parsed
                break
        caption = path.with_suffix(ext)
        records.append(ImageRecord(path, caption if caption.is_file() else None, repeats, folder_caption))
    return records
