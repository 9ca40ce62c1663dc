"""Generated data folders for the data-pipeline tests: good, odd-but-valid and broken files of every kind.

Plain functions (no conftest magic), so a test shows exactly which files it builds.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

EXIF_ORIENTATION = 0x0112


def solid(size_wh: tuple[int, int], colour=(200, 60, 30), mode: str = "RGB") -> Image.Image:
    return Image.new(mode, size_wh, colour)


def save(img: Image.Image, path: Path, caption: str | None = None, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")
    return path


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` (8-bit gray) with almost no data: a decompression bomb's
    cheap stand-in; PIL reads the size from the header before decoding anything."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
            + chunk(b"IEND", b""))


def jpeg_bytes(img: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=90, **kwargs)
    return buffer.getvalue()


def gradient(size_wh: tuple[int, int], seed: int = 0) -> Image.Image:
    """A smooth colour field (compresses like a photo; a truncated file of it is detectably truncated)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(base).resize(size_wh, Image.Resampling.BICUBIC)


# Broken files: name -> (bytes, a fragment of the reason it is skipped with).
def broken_files() -> dict[str, tuple[bytes, str]]:
    good_jpeg = jpeg_bytes(gradient((64, 64)))
    png = io.BytesIO()
    gradient((64, 64), seed=1).save(png, format="PNG")
    good_png = png.getvalue()
    return {
        "empty.jpg": (b"", "empty file (0 bytes)"),
        "notes.png": (b"these are my notes, not a picture\n" * 4, "not an image"),
        "page.jpg": (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "not an image"),
        "cut.jpg": (good_jpeg[:len(good_jpeg) // 2], "truncated or corrupt"),
        "cut.png": (good_png[:len(good_png) * 2 // 3], "truncated or corrupt"),
        "huge.png": (png_header_only(9000, 9000), "too many pixels (9000x9000"),
        "bomb.png": (png_header_only(20000, 20000), "decompression bomb"),
    }


def write_broken(folder: Path) -> dict[str, str]:
    """Write every broken kind (each with a caption) into `folder`; returns file name -> reason fragment."""
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    for name, (data, reason) in broken_files().items():
        (folder / name).write_bytes(data)
        (folder / name).with_suffix(".txt").write_text(f"broken {name}", encoding="utf-8")
        expected[name] = reason
    return expected


def write_odd(folder: Path, side: int = 64) -> dict[str, Path]:
    """Odd but valid images (each `side` px or more, captioned): name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    s = (side, side)
    paths = {
        "cmyk": save(solid(s, (0, 255, 255, 0), "CMYK"), folder / "cmyk.jpg", "cmyk red"),
        "palette": save(solid(s).quantize(8), folder / "palette.png", "palette"),
        "gray": save(solid(s, 90, "L"), folder / "gray.png", "gray"),
        "bilevel": save(solid(s, 1, "1"), folder / "bilevel.bmp", "one bit"),
        "webp": save(gradient(s), folder / "photo.webp", "webp"),
    }
    # 16-bit grayscale at half intensity: 128 * 257; converting it naively to RGB clips it to white.
    gray16 = Image.fromarray(np.full((side, side), 128 * 257, dtype=np.uint16))
    paths["gray16"] = save(gray16, folder / "gray16.png", "sixteen bit")
    # Half-transparent pure red: on white it must become (255, 127/128, 127/128).
    paths["rgba"] = save(solid(s, (255, 0, 0, 128), "RGBA"), folder / "rgba.png", "half transparent red")
    paths["la"] = save(solid(s, (0, 0), "LA"), folder / "la.png", "fully transparent black")
    trns = solid(s, (0, 0, 255)).quantize(4)
    trns.info["transparency"] = 0
    paths["palette_trns"] = save(trns, folder / "palette_trns.png", "palette with transparency", transparency=0)
    paths["rotated"] = write_rotated(folder / "rotated.jpg", side)
    return paths


def write_rotated(path: Path, side: int = 64) -> Path:
    """Stored 2·side wide x side tall, left half red, right half blue, with EXIF orientation 6 (rotate 90°
    clockwise to view): seen side wide x 2·side tall, red on top, blue at the bottom."""
    img = Image.new("RGB", (2 * side, side), (255, 0, 0))
    img.paste((0, 0, 255), (side, 0, 2 * side, side))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    return save(img, path, "rotated", exif=exif.tobytes(), quality=95)

