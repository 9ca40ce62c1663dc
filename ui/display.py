"""Images as the app shows them: a small image scaled up by a whole factor, nearest-neighbour, so its pixels stay
sharp squares instead of a blur (the file on disk is never changed)."""

from __future__ import annotations

from PIL import Image

SHOW_SIDE = 256  # images smaller than this are shown scaled up towards it


def upscaled(image: Image.Image | None, side: int = SHOW_SIDE) -> Image.Image | None:
    if image is None:
        return None
    factor = side // max(image.width, image.height)
    if factor < 2:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
