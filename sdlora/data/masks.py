"""Loss masks (data.masks): which pixels of each training image the loss counts, and how much.

alpha  the image's own alpha channel (a PNG with transparency): opaque = learn, transparent = ignore
DIR    a same-stem image in the folder DIR (mask/img001.png for data/img001.jpg; a nested image may also be found
       under its path relative to data.dir): white = learn, black = ignore, grey = a weight between
The mask goes through the same resize, crop and flip as its image (so it follows buckets and random crops) and
is applied to the loss per latent pixel (train/objective.py). An image without an alpha channel trains unmasked
(a warning names it); under DIR, a missing or wrong-size mask is an error naming the image. Regularization images
are never masked.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from sdlora.data.images import oriented_size
from sdlora.data.scan import IMAGE_EXTENSIONS
from sdlora.errors import SdloraError

ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


def _has_alpha(path: Path, mode: str) -> bool:
    if mode in ALPHA_MODES:
        return True
    if mode == "P":
        with Image.open(path) as img:
            return "transparency" in img.info
    return False


def _mask_file(entry, folder: Path, data_dir: Path) -> Path | None:
    try:
        relative = entry.path.relative_to(data_dir).with_suffix("")
    except ValueError:
        relative = Path(entry.path.stem)
    for stem in dict.fromkeys([relative, Path(entry.path.stem)]):
        for ext in sorted(IMAGE_EXTENSIONS):
            candidate = folder / f"{stem}{ext}"
            if candidate.is_file():
                return candidate
    return None


def find_masks(entries, config, roots: list[str] | None = None) -> dict[Path, Path | None]:
    """Image path -> the file its mask is read from (the image itself for alpha), or None: train unmasked.

    `roots`: the folder of each subset (Entry.subset numbers them); a mask may mirror its image's path there."""
    if config.masks == "none":
        return {}
    sources: dict[Path, Path | None] = {}
    if config.masks == "alpha":
        for entry in entries:
            if entry.is_reg:
                sources[entry.path] = None
            elif _has_alpha(entry.path, entry.mode):
                sources[entry.path] = entry.path
            else:
                sources[entry.path] = None
                warnings.warn(f"{entry.path}: no alpha channel for data.masks alpha; this image trains unmasked")
        return sources
    folder = Path(config.masks)
    if not folder.is_dir():
        raise SdloraError(f"data.masks: {config.masks!r} is neither none, alpha nor a folder of mask images")
    for entry in entries:
        if entry.is_reg:
            sources[entry.path] = None
            continue
        found = _mask_file(entry, folder, Path(roots[entry.subset] if roots else config.dir))
        if found is None:
            raise SdloraError(f"data.masks: no mask for {entry.path} in {folder} (expected {folder / entry.path.stem}"
                              f".png); add one (white = learn) or set data.masks none")
        with Image.open(found) as img:
            size, _ = oriented_size(img)
        if size != entry.size:
            raise SdloraError(f"data.masks: {found} is {size[1]}x{size[0]} but its image {entry.path} is "
                              f"{entry.size[1]}x{entry.size[0]}; a mask must have its image's size")
        sources[entry.path] = found
    return sources


def load_mask(source: Path | None, is_alpha: bool, resized: tuple[int, int], crop_top_left: tuple[int, int],
              target: tuple[int, int], flip: bool) -> torch.Tensor:
    """The mask of one training view, float [1, H, W] in [0, 1] (all ones for an unmasked image)."""
    target_h, target_w = target
    if source is None:
        return torch.ones((1, target_h, target_w))
    with Image.open(source) as img:
        img = ImageOps.exif_transpose(img)
        img = img.convert("RGBA").getchannel("A") if is_alpha else img.convert("L")
    new_h, new_w = resized
    top, left = crop_top_left
    # The same crop box as the image's (images.load_cropped), so mask and pixels stay aligned.
    sx, sy = img.width / new_w, img.height / new_h
    box = (left * sx, top * sy, (left + target_w) * sx, (top + target_h) * sy)
    img = img.resize((target_w, target_h), Image.Resampling.BILINEAR, box=box)
    if flip:
        img = ImageOps.mirror(img)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]
