"""Captions: trigger, tag shuffling with kept tokens, dropouts (deterministic per sample), long-caption warnings."""

from __future__ import annotations

import random
import warnings

from fixtures_data import gradient, save
from sdlora.config import DataConfig
from sdlora.data import SampleKey, build_dataset
from sdlora.data.captions import augment_caption, estimate_tokens, fixed_captions, read_caption, with_trigger

CAPTION = "sks, red hair, blue eyes, smiling, outdoors, trees, sky"


def variants(config: DataConfig, n: int = 200) -> list[str]:
    return [augment_caption(CAPTION, config, random.Random(seed)) for seed in range(n)]


def test_trigger_goes_first_once():
    assert with_trigger("a dog", "ohwx") == "ohwx, a dog"
    assert with_trigger("ohwx, a dog", "ohwx") == "ohwx, a dog"
    assert with_trigger("", "ohwx") == "ohwx"
    assert with_trigger("a dog", "") == "a dog"


def test_shuffle_keeps_the_first_keep_tokens_and_all_tags():
    config = DataConfig(shuffle_tags=True, keep_tokens=2)
    seen = variants(config)
    tags = CAPTION.split(", ")
    for caption in seen:
        parts = caption.split(", ")
        assert parts[:2] == tags[:2]
        assert sorted(parts) == sorted(tags)
    assert len(set(seen)) > 50  # 5! = 120 orders of the other five


def test_augmentation_is_a_function_of_the_seed():
    config = DataConfig(shuffle_tags=True, tag_dropout=0.3, caption_dropout=0.2, keep_tokens=1, trigger="ohwx")
    assert variants(config) == variants(config)


def test_tag_dropout_rate_and_kept_tags():
    config = DataConfig(tag_dropout=0.5, keep_tokens=1)
    seen = variants(config, 400)
    assert all(c.split(", ")[0] == "sks" for c in seen)
    kept = sum(len(c.split(", ")) - 1 for c in seen) / (400 * 6)
    assert 0.42 < kept < 0.58, kept


def test_caption_dropout_gives_the_empty_caption_at_its_rate():
    seen = variants(DataConfig(caption_dropout=0.25, trigger="ohwx"), 800)
    rate = seen.count("") / len(seen)
    assert 0.2 < rate < 0.3, rate
    assert set(seen) == {"", "ohwx, " + CAPTION}
    assert fixed_captions(CAPTION, DataConfig(caption_dropout=0.25, trigger="ohwx")) == ["ohwx, " + CAPTION, ""]
    assert fixed_captions(CAPTION, DataConfig(shuffle_tags=True)) == []


def test_dataset_captions_follow_the_sample_key(tmp_path):
    for i in range(3):
        save(gradient((64, 64), seed=i), tmp_path / f"{i}.png", CAPTION)
    dataset = build_dataset(DataConfig(dir=str(tmp_path), resolution=64, shuffle_tags=True, keep_tokens=1,
                                       trigger="ohwx"))
    first = [dataset[SampleKey(0, False, seed)]["caption"] for seed in range(20)]
    again = [dataset[SampleKey(0, False, seed)]["caption"] for seed in range(20)]
    assert first == again and len(set(first)) > 5
    assert all(c.startswith("ohwx, sks, ") for c in first)


def test_caption_file_with_bom_and_newlines_is_cleaned(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"\xef\xbb\xbfa  red\r\ncircle \n")
    assert read_caption(path) == ("a red circle", None)


def test_long_caption_warns_once_per_file_with_the_models_tokenizer(tmp_path):
    from transformers import CLIPTokenizer

    from sdlora.models.tiny import write_tokenizer

    write_tokenizer(tmp_path / "tok")
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path / "tok")
    long_caption = ", ".join(["red circle"] * 40)  # 40 x (2 words + comma) - 1 = 119 tokens
    save(gradient((64, 64)), tmp_path / "d" / "long.png", long_caption)
    save(gradient((64, 64)), tmp_path / "d" / "short.png", "a red circle")
    config = DataConfig(dir=str(tmp_path / "d"), resolution=64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = build_dataset(config)
        assert not caught  # no tokenizer yet: nothing to say
        dataset.check_caption_lengths(tokenizer)
        dataset.check_caption_lengths(tokenizer)  # a second call repeats nothing
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "long.png: caption is 119 tokens, longer than the 75" in messages[0]
    assert estimate_tokens(long_caption) == 119  # the estimate is exact for whole-word vocabularies
