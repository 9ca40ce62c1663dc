"""Held-out validation loss (data.validation_dir or data.validation_split; train.validate_every).

Every evaluation uses the same images, VAE draws, noise and timesteps (each image at VALIDATION_TIMESTEPS spread
over the trained range), so the curve moves only because the weights do, and two runs with the same seed give
the same numbers. The images are seen without augmentation (no flip, centre crop, no caption dropout) and
without loss masks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import warnings

import torch

from sdlora.config import Config
from sdlora.data import SampleKey, TrainDataset, build_dataset, collate
from sdlora.errors import SdloraError
from sdlora.train.objective import denoising_loss
from sdlora.train.timesteps import timestep_range

VALIDATION_TIMESTEPS = 4  # per image: the midpoints of 4 equal slices of [timestep_min, timestep_max)
VALIDATION_SEED = 1_234_567


def _plain(config: Config, data=None):
    """The data settings a validation image is seen with: no augmentation, no repeats, no mask (`data`: those of
    one subset, whose trigger stays)."""
    return dataclasses.replace(data or config.data, flip=False, center_crop=True, shuffle_tags=False,
                               caption_dropout=0.0, tag_dropout=0.0, repeats=1, reg_dir="", masks="none",
                               validation_dir="", validation_split=0.0, subsets=[])


def _held_out(path) -> str:
    return hashlib.sha256(str(path.name).encode()).hexdigest()


def split_validation(dataset: TrainDataset, config: Config) -> tuple[TrainDataset, TrainDataset | None]:
    """(training set, validation set or None). validation_split holds out the images whose name hashes lowest
    (deterministic, independent of the seed and of the folder's location)."""
    data = config.data
    if data.validation_dir:
        val = build_dataset(dataclasses.replace(_plain(config), dir=data.validation_dir))
        return dataset, val
    if not data.validation_split:
        return dataset, None
    train_entries = [e for e in dataset.index.entries if not e.is_reg]
    count = max(1, math.floor(len(train_entries) * data.validation_split))
    if count >= len(train_entries):
        raise SdloraError(f"data.validation_split: {data.validation_split} of {len(train_entries)} images leaves "
                          f"none to train on; lower it or add images")
    held = {e.path for e in sorted(train_entries, key=lambda e: _held_out(e.path))[:count]}
    index = dataset.index
    kept = dataclasses.replace(index, entries=[e for e in index.entries if e.path not in held])
    val_index = dataclasses.replace(index, config=_plain(config), problems=[],
                                    subsets=[dataclasses.replace(s, config=_plain(config, s.config))
                                             for s in index.subsets],
                                    entries=[dataclasses.replace(e, repeats=1) for e in train_entries
                                             if e.path in held])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the training set's mask warnings were given when it was first built
        train = TrainDataset(kept)
    return train, TrainDataset(val_index)


class Validator:
    """validator(unet) -> the mean validation loss of the current weights."""

    def __init__(self, dataset: TrainDataset, config: Config, encoder, noise_scheduler, device: torch.device):
        self.dataset, self.config, self.encoder = dataset, config, encoder
        self.noise_scheduler, self.device = noise_scheduler, device
        low, high = timestep_range(config.train, noise_scheduler.config.num_train_timesteps)
        self.timesteps = [int(low + (k + 0.5) * (high - low) / VALIDATION_TIMESTEPS)
                          for k in range(VALIDATION_TIMESTEPS)]
        self.keys = [SampleKey(i, False, VALIDATION_SEED + i) for i in range(len(dataset.records))]
        self.batch_size = config.train.batch_size
        self.history: list[tuple[int, float]] = []

    @torch.no_grad()
    def __call__(self, unet, autocast) -> float:
        total, count = 0.0, 0
        for start in range(0, len(self.keys), self.batch_size):
            keys = self.keys[start:start + self.batch_size]
            batch = collate([self.dataset[k] for k in keys])
            generator = torch.Generator(self.device).manual_seed(VALIDATION_SEED + start)
            with autocast():
                latents, cond = self.encoder(batch, generator)
            for t in self.timesteps:
                noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
                timesteps = torch.full((latents.shape[0],), t, device=latents.device, dtype=torch.long)
                with autocast():
                    loss = denoising_loss(unet, self.noise_scheduler, latents, cond, self.config.train, generator,
                                          draw=(noise, timesteps))
                total += loss.float().sum().item()
                count += loss.shape[0]
        return total / max(count, 1)

    def record(self, step: int, loss: float) -> bool:
        """Keep the value; True when it is the lowest so far."""
        best = all(loss < previous for _, previous in self.history)
        self.history.append((step, loss))
        return best
