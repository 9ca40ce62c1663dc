"""data.masks: masks follow their image through buckets, crops and flips, and a pixel with mask 0 gets no
gradient."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image
from safetensors.torch import load_file

from sdlora.config import DataConfig, TrainConfig
from sdlora.data import SampleKey, build_dataset
from sdlora.errors import SdloraError
from sdlora.models.ldm_configs import SD_SCHEDULER
from sdlora.train.objective import denoising_loss

from test_recipe import recipe_config, train_run


def test_a_masked_region_gets_no_gradient():
    scheduler = DDPMScheduler(**{k: v for k, v in SD_SCHEDULER.items() if k != "set_alpha_to_one"})
    prediction = torch.nn.Parameter(torch.zeros(2, 4, 8, 8))

    class Learner(torch.nn.Module):
        def forward(self, noisy, t, text, **kw):
            return SimpleNamespace(sample=prediction)

    mask = torch.ones(2, 1, 64, 64)
    mask[:, :, :, :32] = 0.0  # left half ignored (pixel resolution; the loss resizes it to the 8x8 latents)
    mask[1, :, :32, 32:] = 0.5  # grey: half weight
    for train in (TrainConfig(), TrainConfig(loss="huber")):
        prediction.grad = None
        loss = denoising_loss(Learner(), scheduler, torch.randn(2, 4, 8, 8), torch.zeros(2, 77, 8), train,
                              torch.Generator().manual_seed(0), mask=mask)
        loss.sum().backward()
        grad = prediction.grad
        assert grad[:, :, :, :4].abs().max().item() == 0.0
        assert (grad[:, :, :, 4:].abs() > 0).float().mean().item() > 0.99
    unmasked = torch.ones(2, 1, 64, 64)
    prediction.grad = None
    denoising_loss(Learner(), scheduler, torch.randn(2, 4, 8, 8), torch.zeros(2, 77, 8), TrainConfig(),
                   torch.Generator().manual_seed(0), mask=unmasked).sum().backward()
    assert (prediction.grad[:, :, :, :4].abs() > 0).all()


def _alpha_image(path, size=(96, 64)):
    """A red disc on a transparent background: opaque (alpha 255) exactly where the pixels are red."""
    width, height = size
    yy, xx = np.mgrid[:height, :width]
    inside = (xx - width * 0.3) ** 2 + (yy - height * 0.5) ** 2 < (height * 0.35) ** 2
    rgba = np.zeros((height, width, 4), np.uint8)
    rgba[inside] = (255, 0, 0, 255)
    Image.fromarray(rgba, "RGBA").save(path)
    path.with_suffix(".txt").write_text("a red disc", encoding="utf-8")


def test_alpha_masks_follow_buckets_random_crops_and_flips(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(3):
        _alpha_image(folder / f"img{i}.png")
    config = DataConfig(dir=str(folder), resolution=64, buckets=True, bucket_min=32, bucket_max=128, bucket_step=16,
                        center_crop=False, flip=True, masks="alpha")
    dataset = build_dataset(config)
    checked = 0
    for seed in range(6):
        for flip in (False, True):
            item = dataset[SampleKey(seed % 3, flip, seed)]
            pixels, mask = item["pixel_values"], item["mask"][0]
            assert mask.shape == pixels.shape[1:] and pixels.shape[1] != pixels.shape[2]  # a bucket, not a square
            red = (pixels[0] > 0.5) & (pixels[1] < 0.0)  # red on the white composite
            agree = ((mask > 0.5) == red).float().mean().item()
            assert agree > 0.97, (seed, flip, agree)
            checked += 1
    assert checked == 12


def test_mask_folder_errors_and_alpha_warnings_name_the_image(tmp_path):
    folder, masks = tmp_path / "data", tmp_path / "masks"
    folder.mkdir()
    masks.mkdir()
    Image.new("RGB", (64, 64), "blue").save(folder / "a.png")
    Image.new("RGB", (64, 64), "blue").save(folder / "b.jpg")
    Image.new("L", (64, 64), 255).save(masks / "a.png")
    with pytest.raises(SdloraError) as err:
        build_dataset(DataConfig(dir=str(folder), resolution=64, masks=str(masks)))
    assert str(err.value).startswith("data.masks:") and "b.jpg" in str(err.value)
    Image.new("L", (32, 64), 255).save(masks / "b.png")
    with pytest.raises(SdloraError, match="b.png is 32x64 but its image .*b.jpg is 64x64"):
        build_dataset(DataConfig(dir=str(folder), resolution=64, masks=str(masks)))
    Image.new("L", (64, 64), 128).save(masks / "b.png")
    dataset = build_dataset(DataConfig(dir=str(folder), resolution=64, masks=str(masks)))
    grey = dataset[SampleKey(1, False, 0)]["mask"]
    assert torch.allclose(grey, torch.full_like(grey, 128 / 255))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = build_dataset(DataConfig(dir=str(folder), resolution=64, masks="alpha"))
    assert any("a.png: no alpha channel" in str(w.message) for w in caught)
    assert torch.equal(dataset[SampleKey(0, False, 0)]["mask"], torch.ones(1, 64, 64))


def test_black_masks_leave_the_lora_untrained(shapes_dir, tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    for image in shapes_dir.glob("*.png"):
        Image.new("L", (64, 64), 0).save(masks / image.name)
    config = recipe_config(shapes_dir, tmp_path / "out", steps=2, data={"masks": str(masks)})
    _, result, _ = train_run(config)
    ups = [t for k, t in load_file(result.adapter_path).items() if k.endswith("lora_up.weight")]
    # LoRA's B starts at zero (Hu et al. 2021) and only a gradient moves it: with every pixel masked out, none did.
    assert result.losses == [0.0, 0.0] and ups and all(t.abs().max().item() == 0.0 for t in ups)
