"""Broken and odd files: which are skipped with which reason, and what the odd-but-valid ones look like."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from fixtures_data import gradient, save, write_broken, write_odd, write_rotated
from sdlora.config import DataConfig
from sdlora.data import SampleKey, build_dataset
from sdlora.data.images import BadImage, inspect_image, to_rgb
from sdlora.errors import SdloraError


def build(folder: Path, **options):
    """build_dataset, returning (dataset, warning messages)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = build_dataset(DataConfig(dir=str(folder), resolution=64, **options))
    return dataset, [str(w.message) for w in caught]


def pixels(dataset, name: str) -> torch.Tensor:
    """The training pixels of the image called `name`, back in 0..255."""
    index = next(i for i, e in enumerate(dataset.records) if e.path.name == name)
    return (dataset[SampleKey(index, False, 0)]["pixel_values"] + 1) * 127.5


def test_each_broken_file_is_skipped_once_with_its_reason(tmp_path):
    expected = write_broken(tmp_path / "data")
    save(gradient((64, 64)), tmp_path / "data" / "good.png", "a good image")
    dataset, messages = build(tmp_path / "data")
    assert [e.path.name for e in dataset.records] == ["good.png"]
    skipped = {p.path.name: p.reason for p in dataset.problems if p.skipped}
    assert set(skipped) == set(expected)
    for name, fragment in expected.items():
        assert fragment in skipped[name], (name, skipped[name])
        assert sum(name in m and fragment in m for m in messages) == 1, (name, messages)
    assert any("7 of 8 image file(s) skipped, 1 used" in m for m in messages)


def test_all_broken_folder_is_a_user_error_naming_the_folder(tmp_path):
    write_broken(tmp_path / "bad")
    with pytest.raises(SdloraError, match=r"data.dir: none of the 7 image file\(s\) in .*bad can be used"):
        build(tmp_path / "bad")


def test_empty_folder_is_a_user_error_naming_the_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(SdloraError, match=r"data.dir: .*empty holds no images"):
        build(tmp_path / "empty")


def test_odd_images_are_used_with_correct_colours(tmp_path):
    write_odd(tmp_path / "odd")
    dataset, messages = build(tmp_path / "odd")
    assert not [p for p in dataset.problems if p.skipped]
    assert len(dataset.records) == 10
    rgba = pixels(dataset, "rgba.png")  # (255, 0, 0) at alpha 128 over white
    assert torch.allclose(rgba[:, 32, 32], torch.tensor([255.0, 127.0, 127.0]), atol=1.01)
    la = pixels(dataset, "la.png")  # fully transparent black -> white
    assert torch.allclose(la, torch.full_like(la, 255.0), atol=0.01)
    trns = pixels(dataset, "palette_trns.png")  # palette index 0 is transparent -> white
    assert torch.allclose(trns, torch.full_like(trns, 255.0), atol=0.01)
    gray16 = pixels(dataset, "gray16.png")  # 128·257 of 65535 is mid gray, not clipped to white
    assert torch.allclose(gray16, torch.full_like(gray16, 128.0), atol=0.01)
    cmyk = pixels(dataset, "cmyk.jpg")[:, 32, 32]  # C0 M255 Y255 K0 is red
    assert cmyk[0] > 230 and cmyk[1] < 40 and cmyk[2] < 40, cmyk
    gray = pixels(dataset, "gray.png")
    assert torch.allclose(gray, torch.full_like(gray, 90.0), atol=0.01)


def test_exif_rotation_is_applied(tmp_path):
    path = write_rotated(tmp_path / "rot" / "rotated.jpg", side=64)
    assert Image.open(path).size == (128, 64)  # stored landscape
    assert inspect_image(path).size == (128, 64)  # (height, width): seen portrait
    dataset, _ = build(tmp_path / "rot", buckets=True, bucket_min=32, bucket_max=128, bucket_step=16)
    item = dataset[SampleKey(0, False, 0)]
    assert item["original_size"] == (128, 64)
    h, w = item["target_size"]
    assert h > w  # a portrait bucket
    image = (item["pixel_values"] + 1) * 127.5
    top, bottom = image[:, 2, w // 2], image[:, -3, w // 2]
    assert top[0] > 200 and top[2] < 60, top  # red on top
    assert bottom[2] > 200 and bottom[0] < 60, bottom  # blue at the bottom


def test_too_small_images_are_skipped_unless_upscaling_is_allowed(tmp_path):
    save(gradient((64, 64)), tmp_path / "d" / "big.png", "big")
    save(gradient((40, 80)), tmp_path / "d" / "small.png", "small")
    dataset, messages = build(tmp_path / "d")
    assert [e.path.name for e in dataset.records] == ["big.png"]
    assert any("small.png: too small: 40x80 is smaller than the training size 64x64" in m for m in messages)
    dataset, _ = build(tmp_path / "d", allow_upscale=True)
    assert len(dataset.records) == 2
    assert dataset[SampleKey(1, False, 0)]["pixel_values"].shape == (3, 64, 64)


def test_non_utf8_caption_is_used_with_replacement_and_warned(tmp_path):
    save(gradient((64, 64)), tmp_path / "d" / "cafe.png")
    (tmp_path / "d" / "cafe.txt").write_bytes("un café, photo".encode("latin-1"))
    dataset, messages = build(tmp_path / "d")
    assert dataset.records[0].caption == "un caf\ufffd, photo"
    assert sum("cafe.txt: caption is not UTF-8" in m for m in messages) == 1


def test_to_rgb_scales_sixteen_bit_and_keeps_eight_bit():
    half = Image.new("I;16", (2, 2), 65535)
    assert to_rgb(half).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("I", (2, 2), 100)).getpixel((0, 0)) == (100, 100, 100)


def test_inspect_image_raises_for_a_directory_named_like_an_image(tmp_path):
    with pytest.raises(BadImage, match="cannot read"):
        inspect_image(tmp_path)
