"""Folder layout and epochs: recursion, kohya `N_name` repeats, caption extensions, regularization images."""

from __future__ import annotations

import warnings

import torch

from fixtures_data import gradient, save
from sdlora.config import DataConfig
from sdlora.data import SampleKey, build_dataset, collate, summarize
from sdlora.data.scan import parse_repeat_folder


def quiet_build(**options):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = build_dataset(DataConfig(resolution=64, **options))
    return dataset, [str(w.message) for w in caught]


def test_repeat_folders_multiply_with_data_repeats(tmp_path):
    root = tmp_path / "data"
    save(gradient((64, 64), 1), root / "10_sks dog" / "a.png", "sks dog running")
    save(gradient((64, 64), 2), root / "10_sks dog" / "nested" / "b.png")  # no caption: the folder's name
    save(gradient((64, 64), 3), root / "2_style" / "c.png", "style")
    save(gradient((64, 64), 4), root / "plain" / "d.png", "plain")
    save(gradient((64, 64), 5), root / ".hidden" / "e.png", "ignored")
    dataset, _ = quiet_build(dir=str(root), repeats=3)
    by_name = {e.path.name: e for e in dataset.records}
    assert sorted(by_name) == ["a.png", "b.png", "c.png", "d.png"]
    assert [by_name[n].repeats for n in ("a.png", "b.png", "c.png", "d.png")] == [30, 30, 6, 3]
    assert by_name["b.png"].caption == "sks dog" and by_name["b.png"].caption_source == "folder"
    assert len(dataset) == 30 + 30 + 6 + 3
    epoch = [k.index for b in dataset.epoch_batches(0, 1, seed=0) for k in b]
    assert sorted(epoch) == sorted(dataset.pool)
    lines = "\n".join(summarize(dataset).lines())
    assert "10_sks dog x10 (2 images)" in lines and "-> 69 samples per epoch" in lines
    assert parse_repeat_folder("0_none") is None and parse_repeat_folder("5_a_b") == (5, "a b")


def test_caption_extension_is_configurable(tmp_path):
    save(gradient((64, 64)), tmp_path / "a.png")
    (tmp_path / "a.caption").write_text("from the caption file", encoding="utf-8")
    (tmp_path / "a.txt").write_text("from the txt file", encoding="utf-8")
    dataset, _ = quiet_build(dir=str(tmp_path), caption_extension="caption")
    assert dataset.records[0].caption == "from the caption file"


def test_missing_captions_use_the_default_with_one_warning(tmp_path):
    for i in range(3):
        save(gradient((64, 64), i), tmp_path / f"{i}.png")
    dataset, messages = quiet_build(dir=str(tmp_path), default_caption="a photo")
    assert [e.caption for e in dataset.records] == ["a photo"] * 3
    assert len([m for m in messages if "have no .txt caption" in m]) == 1


def test_regularization_samples_balance_training_and_carry_their_weight(tmp_path):
    for i in range(2):
        save(gradient((64, 64), i), tmp_path / "train" / f"t{i}.png", "sks dog")
    for i in range(3):
        save(gradient((64, 64), 10 + i), tmp_path / "reg" / f"r{i}.png", "a dog")
    dataset, messages = quiet_build(dir=str(tmp_path / "train"), reg_dir=str(tmp_path / "reg"), repeats=4,
                                    reg_weight=0.5)
    train = [i for i in dataset.pool if not dataset.records[i].is_reg]
    reg = [i for i in dataset.pool if dataset.records[i].is_reg]
    assert len(train) == len(reg) == 8  # as many regularization samples as training samples
    assert sorted({dataset.records[i].path.name for i in reg}) == ["r0.png", "r1.png", "r2.png"]
    batch = collate([dataset[SampleKey(i, False, 0)] for i in (train[0], reg[0])])
    assert torch.equal(batch["loss_weight"], torch.tensor([1.0, 0.5]))
    assert "regularization: 3 images, 8 samples per epoch, loss weight 0.5" in summarize(dataset).lines()


def test_more_regularization_than_training_samples_warns(tmp_path):
    save(gradient((64, 64)), tmp_path / "train" / "t.png", "sks")
    for i in range(3):
        save(gradient((64, 64), i), tmp_path / "reg" / f"r{i}.png", "a dog")
    dataset, messages = quiet_build(dir=str(tmp_path / "train"), reg_dir=str(tmp_path / "reg"))
    assert len(dataset) == 2
    assert any("3 regularization samples but an epoch uses only as many as training samples (1)" in m
               for m in messages)


def test_samples_are_a_function_of_their_key(tmp_path):
    for i in range(2):
        save(gradient((96, 64), i), tmp_path / f"{i}.png", "a, b, c, d")
    dataset, _ = quiet_build(dir=str(tmp_path), center_crop=False, flip=True, shuffle_tags=True)
    key = SampleKey(1, True, 12345)
    one, two = dataset[key], dataset[key]
    assert torch.equal(one["pixel_values"], two["pixel_values"]) and one["caption"] == two["caption"]
    assert one["crop_top_left"] == two["crop_top_left"]


def test_collate_drops_a_field_only_some_items_carry():
    items = [{"caption": "a", "loss_weight": 1.0, "text_embeddings": torch.zeros(2)},
             {"caption": "b", "loss_weight": 1.0}]
    batch = collate(items)
    assert "text_embeddings" not in batch and batch["caption"] == ["a", "b"]
