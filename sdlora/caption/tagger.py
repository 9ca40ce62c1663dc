"""A WD14-style tagger: an ONNX model and its tags CSV (SmilingWolf's wd-*-tagger layout), run with onnxruntime.

The model takes a batch of square images, NHWC, BGR, 0..255 floats (padded to a square on white, as the taggers
were trained), and gives one probability per row of the CSV. The caption is every tag above the threshold, most
likely first, underscores as spaces (except in kaomoji such as `^_^`), comma-separated; rating tags (category 9)
are left out.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from sdlora.errors import SdloraError

RATING = "9"
KAOMOJI = {"0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9", ">_o", "@_@",
           "^_^", "o_o", "u_u", "x_x", "|_|", "||_||"}


def read_tags(table: Path) -> tuple[list[str], list[str]]:
    """(tag names, categories) from the CSV (columns `name` and, optionally, `category`)."""
    try:
        with open(table, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SdloraError(f"--model {table}: cannot read the tags CSV ({exc})") from None
    if not rows or "name" not in rows[0]:
        raise SdloraError(f"--model {table}: the tags CSV needs a header with a `name` column (tag_id,name,category,"
                          f"count as the WD14 taggers ship)")
    return [r["name"] for r in rows], [str(r.get("category", "0")).strip() for r in rows]


def tag_text(tag: str) -> str:
    return tag if tag in KAOMOJI else tag.replace("_", " ")


def square_on_white(image: Image.Image, size: int) -> np.ndarray:
    """The tagger's view: padded to a square on white, resized to `size`, as BGR float32 0..255 (H, W, 3)."""
    side = max(image.size)
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    canvas = canvas.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(canvas, dtype=np.float32)[:, :, ::-1]


class Tagger:
    kind = "tagger"

    def __init__(self, model: Path, table: Path, device: str = "auto", threshold: float = 0.35):
        try:
            import onnxruntime as ort
        except ImportError:
            raise SdloraError("a WD14 tagger needs onnxruntime: pip install 'sdlora[caption]' (or onnxruntime-gpu "
                              "for CUDA)") from None
        self.name = f"tagger ({model.parent.name}/{model.name})"
        self.threshold = threshold
        self.tags, self.categories = read_tags(table)
        available = ort.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
            providers.insert(0, "CUDAExecutionProvider")
        elif device == "cuda":
            raise SdloraError("--device cuda: this onnxruntime has no CUDA provider; pip install onnxruntime-gpu")
        options = ort.SessionOptions()
        try:
            self.session = ort.InferenceSession(str(model), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own types for a file that is not a model
            raise SdloraError(f"--model {model}: onnxruntime cannot load it ({str(exc).splitlines()[0]})") from None
        self.input = self.session.get_inputs()[0]
        shape = self.input.shape
        if len(shape) != 4 or shape[3] != 3 or not isinstance(shape[1], int):
            raise SdloraError(f"--model {model}: input shape {shape} is not a WD14 tagger's [batch, size, size, 3]")
        self.size = shape[1]
        outputs = self.session.get_outputs()[0].shape
        if isinstance(outputs[-1], int) and outputs[-1] != len(self.tags):
            raise SdloraError(f"--model {table}: {len(self.tags)} tags in the CSV but the model gives {outputs[-1]} "
                              f"scores; use the CSV that came with this model")

    def scores(self, images: list) -> np.ndarray:
        batch = np.stack([square_on_white(img, self.size) for img in images])
        return self.session.run(None, {self.input.name: batch})[0]

    def caption(self, images: list) -> list[str]:
        captions = []
        for row in self.scores(images):
            order = np.argsort(-row, kind="stable")
            captions.append(", ".join(tag_text(self.tags[i]) for i in order
                                      if row[i] > self.threshold and self.categories[i] != RATING))
        return captions
