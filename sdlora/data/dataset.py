"""The training data set: checked images -> per-sample tensors, with every random choice fixed by a `SampleKey`.

All randomness of a sample (flip, crop position, caption augmentation, the VAE posterior draw of a cached
latent) comes from its key, and the keys of an epoch come from (seed, epoch). So the data order and
augmentation of any step can be recomputed from the step number alone, which is what makes a resumed run
bitwise identical to an uninterrupted one.

An epoch holds each training image `repeats` times and, with data.reg_dir, as many regularization samples as
training samples (kohya's prior-preservation balance: the regularization images cycled in sorted order, the
same multiset every epoch). Batches never mix training sizes: with buckets each batch comes from one bucket and
a bucket's ragged tail is left out of that epoch (a different tail each epoch, since the order is reshuffled).
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import torch

from sdlora.config import DataConfig
from sdlora.data.captions import augment_caption
from sdlora.data.images import crop_geometry, describe_size, load_cropped, to_tensor
from sdlora.data.index import DataIndex, Entry, Problem, build_index, long_caption_problem
from sdlora.data.masks import find_masks, load_mask
from sdlora.data.scan import IMAGE_KINDS
from sdlora.errors import SdloraError


class SampleKey(NamedTuple):
    index: int  # into TrainDataset.records
    flip: bool
    seed: int  # for this sample's crop, caption and latent draw


class TrainDataset(torch.utils.data.Dataset):
    def __init__(self, index: DataIndex):
        self.index = index
        self.config: DataConfig = index.config
        self.records: list[Entry] = index.entries
        self.problems: list[Problem] = index.problems
        self.cache = None  # a FeatureCache once `attach_encoder` ran with data.cache memory|disk
        self.tokenizer_checked = False
        self._warned_batch_sizes: set[int] = set()
        train = [i for i, e in enumerate(self.records) if not e.is_reg for _ in range(e.repeats)]
        reg = [i for i, e in enumerate(self.records) if e.is_reg for _ in range(e.repeats)]
        self.reg_samples = [reg[j % len(reg)] for j in range(len(train))] if reg else []
        self.pool = train + self.reg_samples  # the multiset of record indices one epoch visits
        # data.masks: image -> mask source ({} when none); a mask folder mirrors each image's own folder
        self.masks = find_masks(self.records, self.config, roots=[s.dir for s in index.subsets])

    def __len__(self) -> int:
        return len(self.pool)

    # ----------------------------------------------------------------------------------------------- samples
    def __getitem__(self, key: SampleKey) -> dict[str, Any]:
        entry = self.records[key.index]
        # Separate streams, so turning one augmentation on or off does not change the others.
        crop_rng, caption_rng = random.Random(f"{key.seed}/crop"), random.Random(f"{key.seed}/caption")
        center = self.config.center_crop or (self.cache is not None and self.cache.has_latents)
        resized, crop_top_left = crop_geometry(entry.size, entry.bucket, center, crop_rng)
        caption = augment_caption(entry.caption, self.index.config_of(entry), caption_rng)
        item: dict[str, Any] = {}
        latents = self.cache.latents(entry, key, resized, crop_top_left) if self.cache is not None else None
        if latents is not None:
            item["latents"] = latents
        else:
            image = load_cropped(entry.path, resized, crop_top_left, entry.bucket, key.flip)
            item["pixel_values"] = to_tensor(image)
        text = self.cache.text_features(caption) if self.cache is not None else None
        if text is not None:
            item.update(text)  # text_embeddings (and SDXL's pooled_text_embeddings)
        if self.masks:
            item["mask"] = load_mask(self.masks.get(entry.path), self.config.masks == "alpha", resized,
                                     crop_top_left, entry.bucket, key.flip)
        top, left = crop_top_left
        if key.flip:  # SDXL's crop conditioning describes the image it saw: the mirrored one
            left = resized[1] - left - entry.bucket[1]
        item.update(caption=caption, original_size=entry.size, crop_top_left=(top, left),
                    target_size=entry.bucket, loss_weight=self.loss_weight(entry))
        return item

    def loss_weight(self, entry: Entry) -> float:
        """What the sample's loss is multiplied by: its subset's loss_weight (data.reg_weight for regularization)."""
        if self.index.subsets:
            return self.index.subsets[entry.subset].loss_weight
        return self.config.reg_weight if entry.is_reg else 1.0

    # ----------------------------------------------------------------------------------------------- batches
    def epoch_batches(self, epoch: int, batch_size: int, seed: int) -> list[list[SampleKey]]:
        """The batches of one epoch, in order, fixed by (seed, epoch); each batch from a single bucket.

        The number of batches is the same every epoch (bucket counts do not change), which the trainer's
        step -> (epoch, batch) arithmetic relies on.
        """
        rng = random.Random(f"{seed}/{epoch}")
        order = list(self.pool)
        rng.shuffle(order)
        keys = [SampleKey(i, self.config.flip and rng.random() < 0.5, rng.getrandbits(63)) for i in order]
        by_bucket: dict[tuple[int, int], list[SampleKey]] = {}
        for key in keys:
            by_bucket.setdefault(self.records[key.index].bucket, []).append(key)
        if len(by_bucket) == 1 and len(keys) < batch_size:
            return [keys] if keys else []  # a set smaller than one batch trains as one smaller batch
        batches = []
        for bucket in sorted(by_bucket):
            group = by_bucket[bucket]
            # Drop the ragged tail so every batch has the same shape (static shapes compile once).
            batches += [group[i:i + batch_size] for i in range(0, len(group) - batch_size + 1, batch_size)]
        if not batches:
            largest = max(len(g) for g in by_bucket.values())
            raise SdloraError(f"train.batch_size: {batch_size} is larger than every aspect bucket (the largest "
                              f"holds {largest} samples per epoch); lower train.batch_size, raise data.repeats, "
                              f"or set data.buckets false")
        if len(by_bucket) > 1:
            rng.shuffle(batches)  # interleave the buckets
        self._warn_dropped(batch_size, by_bucket)
        return batches

    def dropped_per_epoch(self, batch_size: int) -> int:
        """Samples per epoch left out because their bucket's count is not a multiple of `batch_size`."""
        counts: dict[tuple[int, int], int] = {}
        for i in self.pool:
            counts[self.records[i].bucket] = counts.get(self.records[i].bucket, 0) + 1
        if len(counts) == 1 and len(self.pool) < batch_size:
            return 0
        return sum(n % batch_size for n in counts.values())

    def _warn_dropped(self, batch_size: int, by_bucket: dict) -> None:
        dropped = sum(len(g) % batch_size for g in by_bucket.values())
        if len(by_bucket) > 1 and dropped and batch_size not in self._warned_batch_sizes:
            self._warned_batch_sizes.add(batch_size)
            sizes = ", ".join(f"{describe_size(b)}: {len(g) % batch_size}" for b, g in sorted(by_bucket.items())
                              if len(g) % batch_size)
            warnings.warn(f"{dropped} of {len(self.pool)} samples per epoch do not fill a batch of {batch_size} "
                          f"in their bucket and are left out of each epoch ({sizes}); a smaller batch or more "
                          f"repeats wastes less")

    # ----------------------------------------------------------------------------------------------- model
    def check_caption_lengths(self, tokenizer) -> list[Problem]:
        """Warn once per file whose caption is longer than the tokenizer's window (it is truncated)."""
        if self.tokenizer_checked or tokenizer is None:
            return []
        self.tokenizer_checked = True
        found = [p for e in self.records if (p := long_caption_problem(e, self.index.config_of(e), tokenizer))]
        for problem in found:
            warnings.warn(problem.line())
        self.problems.extend(found)
        return found

    def attach_encoder(self, encoder) -> Any:
        """Hand the dataset the loaded model's `BatchEncoder`; call once after the model is loaded.

        Checks caption lengths against its tokenizer and, with data.cache memory|disk, encodes whatever the
        cache lacks (VAE latents, text embeddings), so that training never runs the VAE encoder, nor the text
        encoder for a cached caption. Returns the cache's statistics (None without a cache).
        """
        self.check_caption_lengths(encoder.tokenizer)
        if self.config.cache == "none":
            return None
        from sdlora.data.cache import FeatureCache

        self.cache = FeatureCache(self.config.cache, encoder)
        return self.cache.fill(self)


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, list the rest. A field only some items carry (text embeddings of uncached captions) is
    dropped, so the encoder computes it for the whole batch."""
    batch: dict[str, Any] = {}
    for name in items[0]:
        if not all(name in item for item in items):
            continue
        values = [item[name] for item in items]
        batch[name] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    batch["loss_weight"] = torch.tensor(batch["loss_weight"], dtype=torch.float32)
    return batch


def report_problems(index: DataIndex) -> None:
    """One warning per problem file, the missing-caption count, and the count of skipped files."""
    for problem in index.problems:
        warnings.warn(problem.line())
    for number, (subset, files) in enumerate(zip(index.subsets, index.subset_files)):
        defaults = [e for e in index.entries if e.caption_source == "default" and e.subset == number]
        if defaults:  # data.default_caption, or the subset's own
            warnings.warn(f"{len(defaults)} image(s) have no {subset.config.caption_extension} caption (first: "
                          f"{defaults[0].path}); using {subset.option_key('default_caption')} "
                          f"{subset.config.default_caption!r}")
        skipped = sum(p.skipped for p in index.problems if Path(subset.dir) in p.path.parents)
        if files and skipped:
            used = sum(e.subset == number for e in index.entries)
            warnings.warn(f"{subset.dir}: {skipped} of {files} image file(s) skipped, {used} used (reasons above)")
    reg = index.reg_entries()
    train_samples = sum(e.repeats for e in index.train_entries())
    if reg and sum(e.repeats for e in reg) > train_samples:
        warnings.warn(f"data.reg_dir: {sum(e.repeats for e in reg)} regularization samples but an epoch uses "
                      f"only as many as training samples ({train_samples}); the last ones are never seen")


def _nothing_usable(key: str, folder: str, files: int, index: DataIndex) -> SdloraError:
    if not files:
        return SdloraError(f"{key}: {folder} holds no images ({IMAGE_KINDS}); add images or point {key} elsewhere")
    first = next(p for p in index.skipped if Path(folder) in p.path.parents)
    return SdloraError(f"{key}: none of the {files} image file(s) in {folder} can be used (first: {first.line()}); "
                       f"fix or remove them (details: sdlora dataset check {folder})")


def build_dataset(config: DataConfig, tokenizer=None) -> TrainDataset:
    """Scan and check `config.dir` (and reg_dir); warn about every problem file; refuse if nothing is usable.

    `tokenizer` (optional, e.g. the model's CLIPTokenizer) lets over-long captions be reported now rather
    than at `attach_encoder`.
    """
    if not config.dir and not config.subsets:
        raise SdloraError("data.dir: not set; point it at a folder of images (e.g. --set data.dir=my_images)")
    index = build_index(config, tokenizer)
    report_problems(index)
    for number, (subset, files) in enumerate(zip(index.subsets, index.subset_files)):
        if not any(e.subset == number for e in index.entries):  # each folder must give something to train on
            raise _nothing_usable(subset.dir_key, subset.dir, files, index)
    dataset = TrainDataset(index)
    dataset.tokenizer_checked = tokenizer is not None
    return dataset


__all__ = ["SampleKey", "TrainDataset", "build_dataset", "collate"]
