"""The latent / text-embedding cache: a hit never runs the VAE or text encoder; an edit is always re-encoded."""

from __future__ import annotations

import copy
import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from fixtures_data import gradient, save
from sdlora.config import DataConfig
from sdlora.data import SampleKey, build_dataset, collate


class CountingVae(torch.nn.Module):
    """A stand-in VAE (4x average pooling to 4 channels) that counts the images it encodes."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor([scale]))
        self.images = 0

    @property
    def dtype(self):
        return self.weight.dtype

    def encode(self, pixels):
        self.images += len(pixels)
        pooled = F.avg_pool2d(pixels, 4) * self.weight
        mean = torch.cat([pooled, pooled[:, :1]], dim=1)
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=mean, std=torch.full_like(mean, 0.1)))


class CountingTextEncoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(8))
        self.captions = 0


class FakeTokenizer:
    model_max_length = 77

    def get_vocab(self):
        return {"a": 0}

    def __call__(self, text, **kwargs):
        return {"input_ids": text.split()}


class FakeEncoder:
    """What `attach_encoder` uses of a BatchEncoder: the modules, tokenizer, latent scaling, text_embeddings."""

    def __init__(self, vae_scale: float = 1.0):
        self.vae, self.text_encoder, self.tokenizer = CountingVae(vae_scale), CountingTextEncoder(), FakeTokenizer()
        self.text_encoder_2 = self.tokenizer_2 = None
        self.device, self.dtype, self.shift, self.scaling = torch.device("cpu"), torch.float32, 0.5, 0.25
        self.trains_text = False

    def text_features(self, captions):
        self.text_encoder.captions += len(captions)
        return {"text_embeddings": torch.stack([torch.full((4, 8), float(len(c))) for c in captions])}


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("SDLORA_CACHE", str(tmp_path / "user-cache"))
    return tmp_path / "user-cache"


def make_data(folder, count=4):
    for i in range(count):
        save(gradient((64, 96), seed=i), folder / f"{i}.png", f"image number {i}")
    return folder


def attach(folder, encoder=None, **options):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = build_dataset(DataConfig(dir=str(folder), resolution=64, **options))
        encoder = encoder or FakeEncoder()
        stats = dataset.attach_encoder(encoder)
    return dataset, encoder, stats, [str(w.message) for w in caught]


def test_second_run_hits_the_disk_cache_and_never_encodes(tmp_path, cache_root):
    data = make_data(tmp_path / "data")
    first, enc1, stats1, _ = attach(data, cache="disk", flip=True, caption_dropout=0.1)
    assert enc1.vae.images == 8 and stats1.latents_encoded == 8  # 4 images x 2 orientations
    assert enc1.text_encoder.captions == 5  # 4 captions and ""
    second, enc2, stats2, _ = attach(data, cache="disk", flip=True, caption_dropout=0.1)
    assert enc2.vae.images == 0 and enc2.text_encoder.captions == 0
    assert (stats2.latents_cached, stats2.texts_cached) == (8, 5)
    keys = [k for b in second.epoch_batches(0, 2, seed=1) for k in b]
    batch = collate([second[k] for k in keys[:2]])
    assert "pixel_values" not in batch and batch["latents"].shape == (2, 4, 16, 16)
    assert batch["text_embeddings"].shape == (2, 4, 8)
    assert torch.equal(batch["latents"], collate([first[k] for k in keys[:2]])["latents"])
    files = list((cache_root / "latents").rglob("*"))
    assert sum(f.suffix == ".safetensors" for f in files) == 8 and not [f for f in files if f.suffix == ".tmp"]


def test_an_edited_image_or_caption_is_encoded_again(tmp_path, cache_root):
    data = make_data(tmp_path / "data")
    attach(data, cache="disk")
    save(gradient((64, 96), seed=99), data / "2.png")  # new pixels, same name
    (data / "3.txt").write_text("a new caption", encoding="utf-8")
    _, encoder, stats, _ = attach(data, cache="disk")
    assert encoder.vae.images == 1 and stats.latents_cached == 3
    assert encoder.text_encoder.captions == 1 and stats.texts_cached == 3


def test_other_vae_weights_or_size_miss_the_cache(tmp_path, cache_root):
    data = make_data(tmp_path / "data")
    attach(data, cache="disk")
    _, encoder, _, _ = attach(data, FakeEncoder(vae_scale=2.0), cache="disk")
    assert encoder.vae.images == 4
    _, encoder, _, _ = attach(data, cache="disk", buckets=True, bucket_min=32, bucket_max=128, bucket_step=16)
    assert encoder.vae.images == 4  # a bucket size is another crop


def test_module_identity_follows_the_weights_not_the_threads():
    """The VAE's and text encoders' identity names their cache folders: the same weights give the same identity
    however many threads hash them; one changed element, a dtype or a tensor name gives another."""
    from sdlora.data.cache import module_identity

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 8))
    same = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 8))
    same.load_state_dict(module.state_dict())
    identity = module_identity(module, threads=1)
    assert len(identity) == 64
    assert module_identity(module, threads=4) == identity == module_identity(same, threads=3)
    with torch.no_grad():
        same[2].weight[3, 5] += 1e-3
    assert module_identity(same) != identity
    assert module_identity(copy.deepcopy(module).to(torch.bfloat16)) != identity
    renamed = torch.nn.Sequential()
    for name, layer in zip(("a", "b", "c"), copy.deepcopy(module)):
        renamed.add_module(name, layer)
    assert module_identity(renamed) != identity  # the same bytes under other names
    assert module_identity(module) == identity


def test_memory_cache_serves_samples_without_the_image_files(tmp_path, cache_root):
    data = make_data(tmp_path / "data")
    dataset, encoder, _, _ = attach(data, cache="memory")
    for image in data.glob("*.png"):
        image.unlink()
    item = dataset[SampleKey(2, False, 7)]
    assert item["latents"].shape == (4, 16, 16) and "pixel_values" not in item
    assert not cache_root.exists()  # memory means memory


def test_cached_latents_draw_the_posterior_with_the_sample_seed(tmp_path, cache_root):
    dataset, encoder, _, _ = attach(make_data(tmp_path / "data"), cache="memory")
    a, b = dataset[SampleKey(0, False, 1)]["latents"], dataset[SampleKey(0, False, 2)]["latents"]
    assert torch.equal(a, dataset[SampleKey(0, False, 1)]["latents"]) and not torch.equal(a, b)
    # (mean + std·ε - shift)·scaling with std 0.1: samples differ by 0.25·0.1·(ε1 - ε2).
    assert 0.01 < (a - b).std().item() < 0.1


def test_random_crops_give_way_to_the_center_crop_with_a_warning(tmp_path, cache_root):
    dataset, _, _, messages = attach(make_data(tmp_path / "data"), cache="memory", center_crop=False)
    assert any("data.center_crop false: cached latents hold one crop per image" in m for m in messages)
    assert {dataset[SampleKey(0, False, s)]["crop_top_left"] for s in range(10)} == {(16, 0)}  # portrait: 96 tall


def test_shuffled_captions_reach_the_text_encoder_but_dropout_is_cached(tmp_path, cache_root):
    folder = tmp_path / "data"
    for i in range(2):
        save(gradient((64, 64), seed=i), folder / f"{i}.png", "a, b, c, d, e")
    dataset, encoder, stats, _ = attach(folder, cache="memory", shuffle_tags=True, caption_dropout=0.5)
    assert encoder.text_encoder.captions == 1  # only ""
    items = [dataset[SampleKey(0, False, s)] for s in range(40)]
    dropped = [it for it in items if it["caption"] == ""]
    assert dropped and all("text_embeddings" in it for it in dropped)
    assert all("text_embeddings" not in it for it in items if it["caption"])
    assert "text_embeddings" not in collate([dropped[0], next(it for it in items if it["caption"])])


def test_tiny_model_cache_matches_the_training_path_and_skips_the_vae(tmp_path, monkeypatch):
    from sdlora.models import load_components
    from sdlora.train.encode import BatchEncoder

    components = load_components("tiny")  # from the usual model cache, before the data cache moves
    monkeypatch.setenv("SDLORA_CACHE", str(tmp_path / "user-cache"))
    encoder = BatchEncoder(components, torch.device("cpu"), torch.float32)
    data = make_data(tmp_path / "data", count=2)
    plain = build_dataset(DataConfig(dir=str(data), resolution=64))
    cached, _, stats, _ = attach(data, encoder, cache="disk", caption_dropout=0.2)
    assert stats.latents_encoded == 2 and stats.texts_encoded == 3
    key = SampleKey(1, False, 3)
    with torch.no_grad():
        mean = components.vae.encode(plain[key]["pixel_values"][None]).latent_dist.mean[0]
    entry = cached.records[1]
    stored = cached.cache.latent_store.get(cached.cache.latent_key(entry, False, (96, 64), (16, 0)))
    assert torch.allclose(stored["mean"], mean, atol=1e-5)
    expected_text = encoder.text_embeddings([cached[key]["caption"]])[0]
    assert torch.allclose(cached[key]["text_embeddings"], expected_text, atol=1e-6)
    components.vae.encode = components.text_encoder.forward = None  # calling either now fails
    latents, text = encoder(collate([cached[key], cached[SampleKey(0, False, 4)]]), None)
    assert latents.shape == (2, 4, 16, 16) and text.text_embeddings.shape[0] == 2
