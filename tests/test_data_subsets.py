"""Several concepts in one run (data.subsets): each folder's repeats, trigger, caption options and loss weight,
validated key by key, listed in the summary, and working with the cache, validation split, masks and resume."""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from conftest import make_shape_folder
from fixtures_data import gradient, save
from sdlora.commands.train import resolve_data_dir
from sdlora.config import config_from_dict, load_config, replace_keys
from sdlora.data import SampleKey, build_dataset, collate, summarize
from sdlora.errors import SdloraError
from sdlora.train.validation import split_validation
from test_data_cache import FakeEncoder
from test_recipe import recipe_config, resume_cut_off_copy, train_run

ROOT = Path(__file__).resolve().parents[1]


def folders(tmp_path: Path) -> tuple[Path, Path]:
    dogs, cats = tmp_path / "dogs", tmp_path / "cats"
    for i in range(2):
        save(gradient((64, 64), i), dogs / f"d{i}.png", f"a dog, sitting, grass, number {i}")
    for i in range(3):
        save(gradient((64, 64), 10 + i), cats / f"c{i}.png", f"a cat, lying, sofa, number {i}")
    return dogs, cats


def data(**options):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = config_from_dict({"data": {"resolution": 64, **options}})
        dataset = build_dataset(config.data)
    return dataset, [str(w.message) for w in caught]


def epoch_counts(dataset, epochs: int = 3) -> Counter:
    """How often each subset's images are drawn, counted over whole epochs of batches."""
    counts: Counter = Counter()
    for epoch in range(epochs):
        for batch in dataset.epoch_batches(epoch, 1, seed=7):
            counts[dataset.records[batch[0].index].subset] += 1
    return counts


def test_repeats_set_how_often_each_subset_is_drawn(tmp_path):
    dogs, cats = folders(tmp_path)
    dataset, _ = data(subsets=[{"dir": str(dogs), "repeats": 3}, {"dir": str(cats), "repeats": 1}])
    assert len(dataset) == 2 * 3 + 3 * 1
    assert epoch_counts(dataset) == {0: 3 * 6, 1: 3 * 3}  # three epochs
    # data.dir is one more subset (the first), with data's own repeats; the others keep theirs.
    both, _ = data(dir=str(dogs), repeats=2, subsets=[{"dir": str(cats), "repeats": 4}])
    assert epoch_counts(both, epochs=1) == {0: 2 * 2, 1: 3 * 4}


def test_each_subset_has_its_own_trigger_and_caption_options(tmp_path):
    dogs, cats = folders(tmp_path)
    dataset, _ = data(shuffle_tags=True, keep_tokens=1, subsets=[
        {"dir": str(dogs), "trigger": "sks dog", "shuffle_tags": False},
        {"dir": str(cats), "trigger": "ohwx cat", "caption_dropout": 1.0}])
    by_subset: dict[int, list[str]] = {0: [], 1: []}
    for i, entry in enumerate(dataset.records):
        by_subset[entry.subset] += [dataset[SampleKey(i, False, seed)]["caption"] for seed in range(20)]
    # Dogs: the trigger first, tags in file order (the subset turns data's shuffle_tags off).
    assert set(by_subset[0]) == {"sks dog, a dog, sitting, grass, number 0", "sks dog, a dog, sitting, grass, number 1"}
    # Cats: caption dropout 1.0 empties every caption; data.shuffle_tags (not overridden) would have applied.
    assert set(by_subset[1]) == {""}
    cats_only, _ = data(shuffle_tags=True, keep_tokens=1, subsets=[{"dir": str(cats), "trigger": "ohwx cat"}])
    captions = {cats_only[SampleKey(0, False, seed)]["caption"] for seed in range(20)}
    assert len(captions) > 1 and all(c.startswith("ohwx cat, a cat, ") for c in captions)  # inherited shuffling


def test_a_subset_caption_extension_reads_its_own_files(tmp_path):
    dogs, cats = folders(tmp_path)
    for image in cats.glob("*.png"):
        image.with_suffix(".caption").write_text("from the caption file", encoding="utf-8")
    dataset, _ = data(subsets=[{"dir": str(dogs)}, {"dir": str(cats), "caption_extension": ".caption"}])
    assert {e.caption for e in dataset.records if e.subset == 1} == {"from the caption file"}
    assert {e.caption for e in dataset.records if e.subset == 0} != {"from the caption file"}


def test_the_loss_weight_is_each_samples_own(tmp_path):
    dogs, cats = folders(tmp_path)
    reg = make_shape_folder(tmp_path / "reg", count=2)
    dataset, _ = data(reg_dir=str(reg), reg_weight=0.25,
                      subsets=[{"dir": str(dogs), "loss_weight": 0.0}, {"dir": str(cats), "loss_weight": 2.5}])
    weights = {e.subset: dataset[SampleKey(i, False, 0)]["loss_weight"] for i, e in enumerate(dataset.records)}
    assert weights == {0: 0.0, 1: 2.5, 2: 0.25}  # the regularization folder is the last subset
    batch = collate([dataset[SampleKey(i, False, 0)] for i in range(len(dataset.records))])
    assert batch["loss_weight"].tolist() == [0.0, 0.0, 2.5, 2.5, 2.5, 0.25, 0.25]


@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_a_subset_with_loss_weight_zero_gives_no_gradient(shapes_dir, tmp_path, weight):
    other = make_shape_folder(tmp_path / "other", count=4, seed=3)
    config = recipe_config(shapes_dir, tmp_path / "out", steps=2, weight_decay=0.0, data={
        "dir": "", "subsets": [{"dir": str(shapes_dir), "loss_weight": weight},
                               {"dir": str(other), "loss_weight": weight, "trigger": "zxq"}]})
    _, result, _ = train_run(config)
    ups = [t for k, t in load_file(result.adapter_path).items() if k.endswith("lora_up.weight")]
    # LoRA's B starts at zero and only a gradient moves it (weight decay off): with every sample weighted 0, none
    # did; the same run at weight 1 moves it.
    assert ups and all(t.abs().max().item() == 0.0 for t in ups) == (weight == 0.0)
    assert (result.losses == [0.0, 0.0]) == (weight == 0.0)


def test_subset_keys_are_validated_one_by_one(tmp_path):
    dogs, _ = folders(tmp_path)
    cases = [
        ({"dir": str(dogs)}, {"dir": str(dogs), "repeats": 0}, "data.subsets[1].repeats: 0 is out of range [1, "),
        ({"dir": str(dogs), "loss_weight": -1}, None, "data.subsets[0].loss_weight: -1.0 is out of range [0.0, "),
        ({"dir": str(dogs), "keep_tokens": 101}, None, "data.subsets[0].keep_tokens: 101 is out of range"),
        ({"dir": str(dogs)}, {"dir": str(dogs), "repats": 2}, "unknown key 'data.subsets[1].repats': did you mean "
                                                             "'data.subsets[1].repeats'?"),
        ({"repeats": 2}, None, "data.subsets[0].dir: not set"),
        ({"dir": str(dogs), "caption_extension": "a/b"}, None, "data.subsets[0].caption_extension: 'a/b' is not"),
        ({"dir": str(dogs), "shuffle_tags": "yes"}, None, "data.subsets[0].shuffle_tags: expected bool"),
        ("just/a/path", None, "data.subsets[0]: expected a mapping of keys, got str"),
    ]
    for first, second, message in cases:
        subsets = [first] + ([second] if second else [])
        with pytest.raises(SdloraError) as err:
            config_from_dict({"data": {"subsets": subsets}})
        assert message in str(err.value) and "\n" not in str(err.value), (subsets, str(err.value))
    with pytest.raises(SdloraError, match=r"^data.subsets\[1\].dir: .*missing is not a folder"):
        build_dataset(config_from_dict({"data": {"subsets": [{"dir": str(dogs)},
                                                             {"dir": str(tmp_path / "missing")}]}}).data)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SdloraError, match=r"^data.subsets\[0\].dir: .*empty holds no images"):
        build_dataset(config_from_dict({"data": {"dir": str(dogs), "resolution": 64,
                                                 "subsets": [{"dir": str(empty)}]}}).data)


def test_relative_subset_dirs_are_found_like_data_dir(tmp_path, monkeypatch):
    project = tmp_path / "project"
    dogs, _ = folders(project / "data")
    (project / "presets").mkdir()
    preset = project / "presets" / "p.yaml"
    preset.write_text("data: {subsets: [{dir: data/dogs}]}\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    config = resolve_data_dir(load_config(preset), preset)
    assert config.data.subsets[0].dir == str(dogs.resolve())
    preset.write_text("data: {subsets: [{dir: data/dogs}, {dir: data/nowhere}]}\n", encoding="utf-8")
    with pytest.raises(SdloraError, match=r"^data.subsets\[1\].dir: folder 'data/nowhere' not found"):
        resolve_data_dir(load_config(preset), preset)


def test_the_summary_lists_each_subset_with_its_counts(tmp_path):
    dogs, cats = folders(tmp_path)
    save(gradient((64, 64), 99), cats / "3_extra" / "x.png", "extra")  # a kohya N_name folder inside a subset
    dataset, _ = data(dir=str(dogs), subsets=[{"dir": str(cats), "repeats": 2, "trigger": "ohwx cat",
                                               "loss_weight": 0.5}])
    lines = summarize(dataset).lines()
    assert "subsets: 2 folders" in lines
    assert f"    data.dir {dogs}: 2 image(s) x1 -> 2 samples per epoch, loss weight 1" in lines
    assert (f"    data.subsets[0] {cats}: 4 image(s) x2 -> 12 samples per epoch, loss weight 0.5, trigger 'ohwx cat'"
            in lines)
    assert any("3_extra x3 (1 images)" in line and "-> 14 samples per epoch" in line for line in lines)


def test_validation_split_and_the_cache_keep_each_subsets_trigger(tmp_path, monkeypatch):
    monkeypatch.setenv("SDLORA_CACHE", str(tmp_path / "cache"))
    dogs, cats = folders(tmp_path)
    config = config_from_dict({"data": {"resolution": 64, "validation_split": 0.4, "cache": "memory", "subsets": [
        {"dir": str(dogs), "trigger": "sks dog", "caption_dropout": 0.5},
        {"dir": str(cats), "trigger": "ohwx cat"}]}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train, val = split_validation(build_dataset(config.data), config)
    assert len(train.records) == 3 and len(val.records) == 2
    for ds in (train, val):
        for i, entry in enumerate(ds.records):
            trigger = "sks dog" if entry.subset == 0 else "ohwx cat"
            assert ds[SampleKey(i, False, 1)]["caption"] in ("", f"{trigger}, {entry.caption}")
    # Held-out images are seen without caption dropout, with their subset's trigger.
    assert all(val[SampleKey(i, False, s)]["caption"] for i in range(2) for s in range(10))
    encoder = FakeEncoder()
    train.attach_encoder(encoder)
    expected = {f"{'sks dog' if e.subset == 0 else 'ohwx cat'}, {e.caption}" for e in train.records} | {""}
    assert set(train.cache.text_keys) == expected  # each caption with its own trigger, and "" (dropout)


def test_mask_folders_mirror_each_subsets_folder(tmp_path):
    dogs, cats = tmp_path / "dogs", tmp_path / "cats"
    save(gradient((64, 64), 1), dogs / "a" / "x.png", "dog")
    save(gradient((64, 64), 2), cats / "b" / "x.png", "cat")  # the same file name in another subset
    masks = tmp_path / "masks"
    for rel, value in (("a/x.png", 255), ("b/x.png", 0)):
        (masks / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (64, 64), value).save(masks / rel)
    dataset, _ = data(masks=str(masks), subsets=[{"dir": str(dogs)}, {"dir": str(cats)}])
    means = {e.subset: dataset[SampleKey(i, False, 0)]["mask"].mean().item() for i, e in enumerate(dataset.records)}
    assert means == {0: 1.0, 1: 0.0}


def test_buckets_group_the_images_of_every_subset(tmp_path):
    dogs, cats = tmp_path / "dogs", tmp_path / "cats"
    for i in range(2):
        save(gradient((96, 64), i), dogs / f"w{i}.png", "wide dog")
        save(gradient((64, 96), i), cats / f"t{i}.png", "tall cat")
    dataset, _ = data(buckets=True, bucket_min=32, bucket_max=128, bucket_step=16,
                      subsets=[{"dir": str(dogs)}, {"dir": str(cats), "repeats": 2}])
    batches = dataset.epoch_batches(0, 2, seed=1)
    assert len(batches) == 3  # 2 wide, 4 tall samples
    for batch in batches:
        assert len({dataset.records[k.index].subset for k in batch}) == 1  # one bucket: one shape, one subset here


def test_a_resumed_run_with_subsets_ends_bitwise_identical(shapes_dir, tmp_path):
    other = make_shape_folder(tmp_path / "other", count=4, seed=3)
    config = recipe_config(shapes_dir, tmp_path / "out", steps=4, data={
        "repeats": 2, "shuffle_tags": True, "subsets": [{"dir": str(other), "trigger": "zxq", "loss_weight": 0.5,
                                                         "caption_dropout": 0.3}]})
    config = replace_keys(config, {"save.every": 2})
    _, result, _ = train_run(config)
    full, part = tmp_path / "out" / "r", tmp_path / "part"
    resumed, _ = resume_cut_off_copy(config, full, part, ("r.safetensors",))
    assert resumed.status == "done" and resumed.step == 4
    a, b = load_file(full / "r.safetensors"), load_file(part / "r.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    recorded = yaml.safe_load((full / "config.yaml").read_text(encoding="utf-8"))
    assert recorded["data"]["subsets"][0]["dir"] == str(other) and recorded["data"]["subsets"][0]["trigger"] == "zxq"


def test_the_two_concepts_preset_draws_its_folders_as_the_demo_does(monkeypatch):
    monkeypatch.chdir(ROOT)
    preset = ROOT / "presets" / "two-concepts.yaml"
    config = resolve_data_dir(load_config(preset), preset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = build_dataset(config.data)
    rings, shapes = dataset.index.subsets
    assert epoch_counts(dataset, epochs=1) == {0: 80, 1: 80}  # the demo's 80 rings and 80 regularization samples
    assert (rings.loss_weight, shapes.loss_weight) == (1.0, 0.5)
    assert (rings.config.caption_dropout, shapes.config.caption_dropout) == (0.1, 0.0)  # inherited / its own


@pytest.mark.slow  # ~15-20 s: --dry-run loads the model
def test_the_two_concepts_preset_dry_runs_and_lists_both_folders(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sdlora.cli", "train", "--preset",
                           str(ROOT / "presets" / "two-concepts.yaml"), "--dry-run"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "subsets: 2 folders" in proc.stdout
    demo, reg = len(list((ROOT / "examples" / "demo").glob("*.png"))), len(list((ROOT / "examples" / "demo-reg")
                                                                                .glob("*.png")))
    assert f"data.subsets[0] {ROOT / 'examples' / 'demo'}: {demo} image(s)" in proc.stdout
    assert f"data.subsets[1] {ROOT / 'examples' / 'demo-reg'}: {reg} image(s)" in proc.stdout


def test_a_missing_caption_names_the_default_caption_its_folder_uses(tmp_path):
    dogs, cats = tmp_path / "dogs", tmp_path / "cats"
    save(gradient((64, 64), 1), dogs / "d.png")
    save(gradient((64, 64), 2), cats / "c.png")
    dataset, messages = data(default_caption="a photo", subsets=[
        {"dir": str(dogs)}, {"dir": str(cats), "default_caption": "a cat", "caption_extension": ".caption"}])
    assert [e.caption for e in dataset.records] == ["a photo", "a cat"]
    assert any(f"1 image(s) have no .txt caption (first: {dogs / 'd.png'}); using data.default_caption 'a photo'"
               in m for m in messages)
    assert any(f"1 image(s) have no .caption caption (first: {cats / 'c.png'}); using "
               f"data.subsets[1].default_caption 'a cat'" in m for m in messages)
