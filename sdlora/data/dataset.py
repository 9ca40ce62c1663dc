"""The training data set: records -> per-sample tensors, with every random choice fixed by a `SampleKey`.

All randomness of a sample (flip, crop position, caption augmentation) comes from its key, and the keys of an
epoch come from (seed, epoch). So the data order and augmentation of any step can be recomputed from the step
number alone, which is what makes a resumed run bitwise identical to an uninterrupted one.
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps

from sdlora.config import DataConfig
from sdlora.data.scan import ImageRecord, scan_folder
from sdlora.errors import SdloraError


class SampleKey(NamedTuple):
    index: int  # into TrainDataset.records
    flip: bool
    seed: int  # for this sample's crop and caption choices


@dataclass
class DataSummary:
    images: int
    with_caption: int
    repeats: int
    resolution: int
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

    @property
    def samples_per_epoch(self) -> int:
        return self.images * self.repeats

    def lines(self) -> list[str]:
        out = [f"images: {self.images} ({self.with_caption} with captions, "
               f"{self.images - self.with_caption} using the default caption)",
               f"repeats: {self.repeats} -> {self.samples_per_epoch} samples per epoch",
               f"resolution: {self.resolution}x{self.resolution}"]
        if self.skipped:
            out.append(f"skipped: {len(self.skipped)} file(s)")
        return out


def load_rgb(path: Path) -> Image.Image:
    """Open an image as RGB: EXIF rotation applied, transparency composited on white."""
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
            img = img.convert("RGBA")
            background = Image.new("RGBA", img.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, img).convert("RGB")
        return img.convert("RGB")


def read_caption(record: ImageRecord, default_caption: str) -> str:
    if record.caption_path is None:
        return default_caption
    raw = record.caption_path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        warnings.warn(f"{record.caption_path}: not UTF-8; undecodable bytes replaced")
        text = raw.decode("utf-8", errors="replace")
    return " ".join(text.split())


def resize_and_crop(img: Image.Image, size: tuple[int, int], center: bool,
                    rng: random.Random) -> tuple[Image.Image, tuple[int, int]]:
    """Resize to cover `size` (h, w), then crop; returns the crop's (top, left) in resized pixels."""
    target_h, target_w = size
    scale = max(target_w / img.width, target_h / img.height)
    new_w, new_h = max(target_w, round(img.width * scale)), max(target_h, round(img.height * scale))
    img = img.resize((new_w, new_h), Image.Resampling.LANCZOS)
    if center:
        top, left = (new_h - target_h) // 2, (new_w - target_w) // 2
    else:
        top, left = rng.randint(0, new_h - target_h), rng.randint(0, new_w - target_w)
    return img.crop((left, top, left + target_w, top + target_h)), (top, left)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> float tensor [3, H, W] in [-1, 1], as the VAE expects."""
    array = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class TrainDataset(torch.utils.data.Dataset):
    def __init__(self, records: list[ImageRecord], config: DataConfig, captions: list[str]):
        self.records = records
        self.config = config
        self.captions = captions
        self.size = (config.resolution, config.resolution)

    def __len__(self) -> int:
        return len(self.records) * self.config.repeats

    def caption_for(self, index: int, rng: random.Random) -> str:
        caption = self.captions[index]
        if self.config.trigger:
            caption = f"{self.config.trigger}, {caption}" if caption else self.config.trigger
        if self.config.caption_dropout and rng.random() < self.config.caption_dropout:
            return ""
        return caption

    def __getitem__(self, key: SampleKey) -> dict[str, Any]:
        record = self.records[key.index]
        rng = random.Random(key.seed)
        img = load_rgb(record.path)
        original_size = (img.height, img.width)
        img, crop_top_left = resize_and_crop(img, self.size, self.config.center_crop, rng)
        if key.flip:
            img = ImageOps.mirror(img)
        return {
            "pixel_values": to_tensor(img),
            "caption": self.caption_for(key.index, rng),
            "original_size": original_size,
            "crop_top_left": crop_top_left,
            "target_size": self.size,
            "loss_weight": 1.0,
        }

    def epoch_batches(self, epoch: int, batch_size: int, seed: int) -> list[list[SampleKey]]:
        """The batches of one epoch, in order: a permutation of (image, repeat) fixed by (seed, epoch)."""
        rng = random.Random(f"{seed}/{epoch}")
        order = [i for i in range(len(self.records)) for _ in range(self.config.repeats)]
        rng.shuffle(order)
        keys = [SampleKey(i, self.config.flip and rng.random() < 0.5, rng.getrandbits(63)) for i in order]
        # Drop the ragged tail so every batch has the same shape (static shapes compile once).
        usable = len(keys) - len(keys) % batch_size if len(keys) >= batch_size else len(keys)
        return [keys[i:i + batch_size] for i in range(0, usable, batch_size)]


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    batch: dict[str, Any] = {}
    for name in items[0]:
        values = [item[name] for item in items]
        batch[name] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    batch["loss_weight"] = torch.tensor(batch["loss_weight"], dtype=torch.float32)
    return batch


def build_dataset(config: DataConfig) -> TrainDataset:
    """Scan `config.dir`, read captions, and check there is something to train on."""
    if not config.dir:
        raise SdloraError("data.dir: not set; point it at a folder of images (e.g. --set data.dir=my_images)")
    records = scan_folder(Path(config.dir), config.caption_extension)
    if not records:
        raise SdloraError(f"data.dir: {config.dir} holds no images (png, jpg, jpeg, webp, bmp); add images "
                          f"or point data.dir elsewhere")
    missing = [r for r in records if r.caption_path is None]
    if missing:
        warnings.warn(f"{len(missing)} image(s) have no {config.caption_extension} caption (first: "
                      f"{missing[0].path}); using data.default_caption {config.default_caption!r}")
    captions = [read_caption(r, config.default_caption) for r in records]
    return TrainDataset(records, config, captions)


def summarize(dataset: TrainDataset) -> DataSummary:
    records = dataset.records
    return DataSummary(images=len(records), with_caption=sum(r.caption_path is not None for r in records),
                       repeats=dataset.config.repeats, resolution=dataset.config.resolution)
