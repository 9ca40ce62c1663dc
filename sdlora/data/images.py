"""Open any image a user may drop in a data folder as 8-bit RGB, and check one once, cheaply, before training.

Odd but valid files are used: CMYK, palette, grayscale, 16-bit (I;16, scaled down, not clipped to white),
transparency (RGBA, LA, palette with tRNS: composited on white), EXIF-rotated (rotation applied). Broken files
raise `BadImage` with a reason a user can act on: empty, not an image, truncated or corrupt, too many pixels.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from sdlora.hashing import sha256_bytes

# Larger images are refused: a decompression bomb (a few KB that inflate to gigabytes) or far more pixels than any
# bucket needs. Checked from the header before decoding; PIL's own bomb checks (89M warn, 179M error) sit above.
MAX_PIXELS = 8192 * 8192
ROTATING_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap width and height
SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


class BadImage(Exception):
    """A file that cannot be trained on; the message is the reason, for the user."""


@dataclass(frozen=True)
class ImageInfo:
    size: tuple[int, int]  # (height, width) as trained on: after the EXIF rotation
    content_hash: str  # sha256 of the file bytes: the cache key, so an edited image is never served stale
    mode: str  # PIL mode in the file (RGB, CMYK, P, I;16, ...)
    orientation: int = 1  # EXIF orientation tag (1: as stored)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB. Transparency is composited on white; 16-bit data is scaled, not clipped."""
    if img.mode in SIXTEEN_BIT_MODES:
        # convert("RGB") would clip every value above 255 to white; 16-bit data spans 0..65535.
        array = np.asarray(img, dtype=np.float64)
        scale = 257.0 if array.max(initial=0) > 255 or img.mode != "I" else 1.0
        array = np.clip(np.round(array / scale), 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if img.mode == "F":
        return Image.fromarray(np.clip(np.asarray(img), 0, 255).astype(np.uint8), mode="L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


def oriented_size(img: Image.Image) -> tuple[tuple[int, int], int]:
    """((height, width) after the EXIF rotation, the orientation tag), from the header alone."""
    orientation = img.getexif().get(0x0112, 1)
    width, height = img.size
    if orientation in ROTATING_ORIENTATIONS:
        width, height = height, width
    return (height, width), orientation


def _decode(img: Image.Image, cover: tuple[int, int] | None, orientation: int) -> Image.Image:
    if cover is not None and img.format == "JPEG":
        cover_h, cover_w = cover
        if orientation in ROTATING_ORIENTATIONS:
            cover_h, cover_w = cover_w, cover_h
        img.draft(None, (max(1, cover_w), max(1, cover_h)))
    img.load()
    return to_rgb(ImageOps.exif_transpose(img))


def open_rgb(source: Path | bytes, cover: tuple[int, int] | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """Decode to RGB with the EXIF rotation applied; returns (image, full (height, width)).

    `cover` (height, width): the caller will shrink the image to at least this size, so a JPEG may be decoded
    at a reduced DCT scale (1/2..1/8: much faster, and every byte is still parsed) that stays at or above it.
    """
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
        size, orientation = oriented_size(img)
        return _decode(img, cover, orientation), size


def inspect_image(path: Path) -> ImageInfo:
    """Check a file once: header, pixel count, then a full decode and RGB conversion. Raises `BadImage`."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadImage(f"cannot read the file ({exc.strerror or exc})") from None
    if not data:
        raise BadImage("empty file (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as img:
                mode = img.mode
                width, height = img.size
                if width * height > MAX_PIXELS:
                    raise BadImage(f"too many pixels ({width}x{height}, limit {MAX_PIXELS:,}): a possible "
                                   f"decompression bomb; downscale it first")
                if width == 0 or height == 0:
                    raise BadImage(f"image has no pixels ({width}x{height})")
                size, orientation = oriented_size(img)
                # The smallest draft still decodes every byte, so truncation and corrupt data are found.
                _decode(img, (1, 1), orientation)
        except BadImage:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise BadImage(f"decompression bomb refused by PIL ({exc})") from None
        except UnidentifiedImageError:
            raise BadImage("not an image: no image format PIL reads, whatever the extension says") from None
        except OSError as exc:
            raise BadImage(f"truncated or corrupt image data ({exc})") from None
        except (SyntaxError, ValueError, TypeError, EOFError, IndexError, KeyError, MemoryError) as exc:
            raise BadImage(f"corrupt image ({type(exc).__name__}: {exc})") from None
    return ImageInfo(size=size, content_hash=sha256_bytes(data), mode=mode, orientation=orientation)


def crop_geometry(size: tuple[int, int], target: tuple[int, int], center: bool,
                  rng) -> tuple[tuple[int, int], tuple[int, int]]:
    """Resize `size` (h, w) to cover `target` (h, w), then crop: ((resized h, w), crop (top, left)).

    Pure arithmetic, so a cached sample knows its crop without opening the image.
    """
    height, width = size
    target_h, target_w = target
    scale = max(target_w / width, target_h / height)
    new_h = max(target_h, round(height * scale))
    new_w = max(target_w, round(width * scale))
    if center:
        top, left = (new_h - target_h) // 2, (new_w - target_w) // 2
    else:
        top, left = rng.randint(0, new_h - target_h), rng.randint(0, new_w - target_w)
    return (new_h, new_w), (top, left)


def load_cropped(path: Path, resized: tuple[int, int], crop_top_left: tuple[int, int],
                 target: tuple[int, int], flip: bool) -> Image.Image:
    """The training view of an image: decode, resize to `resized`, crop to `target`, optionally mirror."""
    img, _ = open_rgb(path, cover=resized)
    new_h, new_w = resized
    top, left = crop_top_left
    target_h, target_w = target
    # Resample the crop box only: the same pixels as resize-then-crop, without resampling what is cut away.
    sx, sy = img.width / new_w, img.height / new_h
    box = (left * sx, top * sy, (left + target_w) * sx, (top + target_h) * sy)
    img = img.resize((target_w, target_h), Image.Resampling.BICUBIC, box=box)
    return ImageOps.mirror(img) if flip else img


def needs_upscale(size: tuple[int, int], target: tuple[int, int]) -> bool:
    """True when covering `target` (h, w) would enlarge `size` (h, w)."""
    return size[0] < target[0] or size[1] < target[1]


def describe_size(size: tuple[int, int]) -> str:
    """(h, w) -> "WxH", the way people write image sizes."""
    return f"{size[1]}x{size[0]}"


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> float tensor [3, H, W] in [-1, 1], as the VAE expects."""
    array = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
