"""Aspect-ratio buckets: the bucket set, which image goes where, one bucket per batch, crops and SDXL sizes."""

from __future__ import annotations

import math
import random
import warnings

import pytest

from fixtures_data import gradient, save
from sdlora.config import DataConfig
from sdlora.data import SampleKey, build_dataset, collate, summarize
from sdlora.data.buckets import assign_bucket, make_buckets
from sdlora.data.images import crop_geometry
from sdlora.errors import SdloraError


def test_buckets_have_equal_area_and_step_multiple_sides():
    buckets = make_buckets(512, 256, 1024, 64)
    assert (512, 512) in buckets and (768, 320) in buckets and (320, 768) in buckets
    for h, w in buckets:
        assert h % 64 == 0 and w % 64 == 0 and 256 <= min(h, w) and max(h, w) <= 1024
        # At most resolution² pixels, and less than one step of the short side lost to rounding.
        assert 512 * 512 - 64 * max(h, w) < h * w <= 512 * 512
    assert buckets == sorted(buckets, key=lambda b: b[1] / b[0])  # tallest to widest
    assert set(buckets) == {(w, h) for h, w in buckets}  # both orientations


def test_bucket_min_above_resolution_names_the_key():
    with pytest.raises(SdloraError, match="data.bucket_min: 256 is larger than data.resolution 64"):
        make_buckets(64, 256, 1024, 64)


def test_images_go_to_the_nearest_aspect_without_upscaling():
    buckets = make_buckets(512, 256, 1024, 64)
    assert assign_bucket((1080, 1920), buckets, False) == (384, 640)  # 16:9 landscape (h, w)
    assert assign_bucket((1920, 1080), buckets, False) == (640, 384)
    assert assign_bucket((800, 800), buckets, False) == (512, 512)
    # 16:9 but only 600 px wide: the 640-wide bucket would enlarge it, so the nearest one it covers.
    assert assign_bucket((338, 600), buckets, False) is None  # smaller than every ~512² bucket
    assert assign_bucket((338, 600), buckets, True) == (384, 640)
    near = assign_bucket((700, 900), buckets, False)
    assert near[0] <= 700 and near[1] <= 900
    assert abs(math.log(near[1] / near[0]) - math.log(900 / 700)) < 0.15


def test_crop_geometry_covers_the_target_and_random_crops_stay_inside():
    (rh, rw), (top, left) = crop_geometry((400, 1000), (256, 512), True, None)
    assert (rh, rw) == (256, 640) and (top, left) == (0, 64)
    rng = random.Random(0)
    for _ in range(50):
        (rh, rw), (top, left) = crop_geometry((400, 1000), (256, 512), False, rng)
        assert 0 <= left <= rw - 512 and top == 0


def bucket_folder(tmp_path):
    """6 landscape, 5 portrait, 3 square images of different sizes."""
    folder = tmp_path / "mixed"
    sizes = [(192, 128)] * 6 + [(128, 192)] * 5 + [(160, 160)] * 3  # (w, h)
    for i, size in enumerate(sizes):
        save(gradient(size, seed=i), folder / f"{i:02d}.png", f"image {i}")
    return folder


def bucket_config(folder, **options) -> DataConfig:
    return DataConfig(dir=str(folder), resolution=128, buckets=True, bucket_min=64, bucket_max=256,
                      bucket_step=32, **options)


def test_batches_come_from_one_bucket_and_tails_are_dropped(tmp_path):
    dataset = build_dataset(bucket_config(bucket_folder(tmp_path), flip=True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = dataset.epoch_batches(0, 2, seed=7)
        dataset.epoch_batches(1, 2, seed=7)
    shapes = {dataset.records[b[0].index].bucket for b in batches}
    assert len(shapes) == 3
    for batch in batches:
        assert len(batch) == 2 and len({dataset.records[k.index].bucket for k in batch}) == 1
        items = collate([dataset[k] for k in batch])
        h, w = items["target_size"][0]
        assert items["pixel_values"].shape == (2, 3, h, w)
    assert len(batches) == 3 + 2 + 1  # 6 // 2 + 5 // 2 + 3 // 2
    assert dataset.dropped_per_epoch(2) == 2
    assert len([w for w in caught if "do not fill a batch of 2" in str(w.message)]) == 1  # once, not per epoch
    summary = "\n".join(summarize(dataset, batch_size=2).lines())
    assert "buckets: 3 in use" in summary and "2 samples per epoch do not fill a batch" in summary


def test_epoch_batches_are_deterministic_and_reshuffled_per_epoch(tmp_path):
    dataset = build_dataset(bucket_config(bucket_folder(tmp_path), flip=True, repeats=2))
    first = dataset.epoch_batches(3, 2, seed=11)
    assert first == dataset.epoch_batches(3, 2, seed=11)
    assert first != dataset.epoch_batches(4, 2, seed=11)
    assert first != dataset.epoch_batches(3, 2, seed=12)
    counts = {len(dataset.epoch_batches(e, 2, seed=11)) for e in range(5)}
    assert counts == {len(first)}  # the trainer's step arithmetic relies on a fixed count
    flips = [k.flip for b in first for k in b]
    assert any(flips) and not all(flips)


def test_sdxl_sizes_and_mirrored_crop_offsets(tmp_path):
    save(gradient((300, 150)), tmp_path / "wide" / "w.png", "wide")
    dataset = build_dataset(bucket_config(tmp_path / "wide", center_crop=False))
    entry = dataset.records[0]
    assert entry.bucket == (96, 160)
    plain = dataset[SampleKey(0, False, 5)]
    mirrored = dataset[SampleKey(0, True, 5)]
    assert plain["original_size"] == (150, 300) and plain["target_size"] == (96, 160)
    resized_w = round(300 * 96 / 150)  # 192: 32 px of horizontal slack
    assert 0 <= plain["crop_top_left"][1] <= resized_w - 160
    assert mirrored["crop_top_left"][1] == resized_w - 160 - plain["crop_top_left"][1]
    assert plain["pixel_values"].flip(-1).allclose(mirrored["pixel_values"])
    assert {dataset[SampleKey(0, False, s)]["crop_top_left"] for s in range(30)} != {plain["crop_top_left"]}


def test_batch_larger_than_every_bucket_is_a_user_error(tmp_path):
    dataset = build_dataset(bucket_config(bucket_folder(tmp_path)))
    with pytest.raises(SdloraError, match="train.batch_size: 8 is larger than every aspect bucket"):
        dataset.epoch_batches(0, 8, seed=0)


def test_square_mode_keeps_one_size(tmp_path):
    dataset = build_dataset(DataConfig(dir=str(bucket_folder(tmp_path)), resolution=128))
    assert {e.bucket for e in dataset.records} == {(128, 128)}
    assert len(dataset.epoch_batches(0, 4, seed=0)) == 14 // 4
    assert len(dataset.epoch_batches(0, 20, seed=0)) == 1  # fewer samples than a batch: one smaller batch
