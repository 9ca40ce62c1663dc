"""The latent and text-embedding cache (data.cache: memory | disk): encode once, never serve a stale entry.

Keys are content hashes, not names or dates:
- a latent: sha256 of the image file's bytes, the VAE's identity (`module_identity`: a hash of its weights and
  dtype), the training size, resize, crop and flip, and `RECIPE` (bump it when decoding or resizing changes pixels);
- a text embedding: the text encoder's and tokenizer's identity (SDXL: both encoders and tokenizers), the
  output dtype, and the caption string after trigger and augmentation. An SDXL entry also holds the pooled
  embedding of its second encoder; SD 1.x/2.x keys are unchanged by that.
So an edited image or caption, another model or another size is simply a miss, and is encoded again.

What is stored for a latent is the VAE posterior N(mean, std²) before scaling; each sample draws from it with
its own key's seed, so cached training keeps the VAE's sampling noise and stays deterministic. One crop per image
and flip is cached: while latents are cached, random crops are replaced by the center crop (with a warning),
and with data.flip both orientations are encoded. Text: the captions that can occur are cached (the caption with
trigger, and "" under caption dropout); with shuffle_tags or tag_dropout the variants are too many to list, so
those captions reach the text encoder during training as before. While the text encoder trains
(network.text_encoder, `encoder.trains_text`), its output changes every step: no text is cached, latents still are.

disk: `<user cache>/latents/<vae id>/` and `<user cache>/text/<text encoder id>/`, one safetensors file per
entry, written atomically; shared by all runs on the machine, so a second run starts at once. The user cache is
$SDLORA_CACHE or ~/.cache/sdlora; deleting those folders is always safe. memory: the same, in this process.
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file

from sdlora.atomic import atomic_path
from sdlora.hashing import sha256_text
from sdlora.tensorfile import read_safetensors
from sdlora.data.captions import fixed_captions
from sdlora.data.images import crop_geometry, load_cropped, to_tensor

RECIPE = "sdlora-pixels-1"
LATENT_BATCH = 4  # images per VAE call while filling: fits SD at 1024 px in a few GB
TEXT_BATCH = 32


def _tensor_digest(tensor: torch.Tensor) -> bytes:
    return hashlib.sha256(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()).digest()


def module_identity(module: torch.nn.Module, threads: int | None = None) -> str:
    """sha256 over a module's class and, per tensor of its state dict, the name, dtype, shape and the sha256 of
    its bytes. The tensors are hashed on `threads` threads (default: up to 8): hashlib and the copy off the GPU
    release the GIL, and one core hashes ~1 GB/s, so SDXL's three encoders (1.6 GB in bf16) took 1.7 s of every
    start on the H200 machine one after another (round eight, docs/PERFORMANCE.md). The value does not depend on
    the thread count."""
    from concurrent.futures import ThreadPoolExecutor

    items = list(module.state_dict().items())
    threads = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        digests = list(pool.map(_tensor_digest, [tensor for _, tensor in items]))
    digest = hashlib.sha256(type(module).__qualname__.encode())
    for (name, tensor), tensor_digest in zip(items, digests):
        digest.update(f"|{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor_digest)
    return digest.hexdigest()


def tokenizer_identity(tokenizer) -> str:
    digest = hashlib.sha256(f"{type(tokenizer).__qualname__}|{tokenizer.model_max_length}|".encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)  # a fast tokenizer: vocabulary and merges as JSON
    digest.update((backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))).encode())
    return digest.hexdigest()


class FeatureStore:
    """key -> a few named tensors; in this process's memory (folder None) or as files under `folder`."""

    def __init__(self, folder: Path | None):
        self.folder = folder
        self.memory: dict[str, dict[str, torch.Tensor]] = {}

    def path(self, key: str) -> Path:
        assert self.folder is not None
        return self.folder / key[:2] / f"{key}.safetensors"

    def __contains__(self, key: str) -> bool:
        return key in self.memory if self.folder is None else self.path(key).is_file()

    def get(self, key: str) -> dict[str, torch.Tensor]:
        if self.folder is None:
            return self.memory[key]
        return read_safetensors(self.path(key), label=f"cache file {self.path(key)}",
                                advice="delete it and its features are encoded again")[0]

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
        if self.folder is None:
            self.memory[key] = tensors
            return
        with atomic_path(self.path(key)) as tmp:  # a crash leaves the old file or none, never half of one
            save_file(tensors, str(tmp))


@dataclass
class CacheStats:
    latents_encoded: int = 0
    latents_cached: int = 0
    texts_encoded: int = 0
    texts_cached: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        return (f"cache: {self.latents_encoded} latents encoded, {self.latents_cached} found; "
                f"{self.texts_encoded} captions encoded, {self.texts_cached} found ({self.seconds:.1f} s)")


class FeatureCache:
    """The dataset's view of the cache: fill it from a `BatchEncoder`, then look samples up by content."""

    def __init__(self, mode: str, encoder, root: Path | None = None):
        from sdlora.userdata import cache_dir

        self.mode = mode
        self.shift, self.scaling = float(encoder.shift), float(encoder.scaling)
        self.vae_id = module_identity(encoder.vae)
        text_id = f"{module_identity(encoder.text_encoder)}|{tokenizer_identity(encoder.tokenizer)}|{encoder.dtype}"
        if encoder.text_encoder_2 is not None:  # SDXL: the second encoder shapes both stored tensors
            text_id += f"|{module_identity(encoder.text_encoder_2)}|{tokenizer_identity(encoder.tokenizer_2)}"
        self.text_id = sha256_text(text_id)
        root = root or cache_dir()
        disk = mode == "disk"
        self.latent_store = FeatureStore(root / "latents" / self.vae_id[:16] if disk else None)
        self.text_store = FeatureStore(root / "text" / self.text_id[:16] if disk else None)
        self.text_keys: dict[str, str] = {}  # caption -> key, for the captions filled
        self.has_latents = False
        self._encoder = encoder  # dropped after `fill`: worker processes need only the stores

    # ----------------------------------------------------------------------------------------------- keys
    def latent_key(self, entry, flip: bool, resized: tuple[int, int], crop_top_left: tuple[int, int]) -> str:
        return sha256_text(f"{RECIPE}|{self.vae_id}|{entry.content_hash}|{entry.size}|{entry.bucket}|{resized}|"
                           f"{crop_top_left}|{int(flip)}")

    def text_key(self, caption: str) -> str:
        return sha256_text(f"{self.text_id}|{caption}")

    # ----------------------------------------------------------------------------------------------- filling
    @torch.no_grad()
    def fill(self, dataset, progress: Callable[[int, int], None] | None = None) -> CacheStats:
        """Encode every latent and caption of `dataset` that the cache lacks. Returns what it did."""
        encoder, config, stats, start = self._encoder, dataset.config, CacheStats(), time.perf_counter()
        if not config.center_crop:
            warnings.warn("data.center_crop false: cached latents hold one crop per image, so images are center-"
                          "cropped while data.cache is on; set data.cache none to train on random crops")
        jobs: dict[tuple[int, int], list[tuple]] = {}
        for entry in dataset.records:
            resized, crop = crop_geometry(entry.size, entry.bucket, True, None)
            for flip in (False, True) if config.flip else (False,):
                key = self.latent_key(entry, flip, resized, crop)
                if key in self.latent_store:
                    stats.latents_cached += 1
                else:
                    jobs.setdefault(entry.bucket, []).append((entry, flip, resized, crop, key))
        total = sum(len(group) for group in jobs.values())
        for bucket in sorted(jobs):  # one VAE call never mixes sizes
            group = jobs[bucket]
            for i in range(0, len(group), LATENT_BATCH):
                self._encode_latents(encoder, group[i:i + LATENT_BATCH])
                stats.latents_encoded += len(group[i:i + LATENT_BATCH])
                if progress:
                    progress(stats.latents_encoded, total)
        self.has_latents = True

        config_of = dataset.index.config_of  # each image's subset: its trigger and caption dropout
        captions = [] if encoder.trains_text else \
            list(dict.fromkeys(c for e in dataset.records for c in fixed_captions(e.caption, config_of(e))))
        missing = []
        for caption in captions:
            self.text_keys[caption] = self.text_key(caption)
            if self.text_keys[caption] in self.text_store:
                stats.texts_cached += 1
            else:
                missing.append(caption)
        for i in range(0, len(missing), TEXT_BATCH):
            chunk = missing[i:i + TEXT_BATCH]
            features = encoder.text_features(chunk)  # "text_embeddings" (+ "pooled_text_embeddings" for SDXL)
            for j, caption in enumerate(chunk):
                self.text_store.put(self.text_keys[caption], {name: t[j] for name, t in features.items()})
            stats.texts_encoded += len(chunk)
        self._encoder = None
        stats.seconds = time.perf_counter() - start
        return stats

    def _encode_latents(self, encoder, jobs: list[tuple]) -> None:
        pixels = torch.stack([to_tensor(load_cropped(e.path, resized, crop, e.bucket, flip))
                              for e, flip, resized, crop, _ in jobs])
        posterior = encoder.vae.encode(pixels.to(encoder.device, dtype=encoder.vae.dtype)).latent_dist
        for j, job in enumerate(jobs):
            self.latent_store.put(job[4], {"mean": posterior.mean[j].float(), "std": posterior.std[j].float()})

    # ----------------------------------------------------------------------------------------------- lookup
    def latents(self, entry, key, resized: tuple[int, int], crop_top_left: tuple[int, int]) -> torch.Tensor | None:
        """The scaled latents of one sample, drawn from the cached posterior with the sample's seed."""
        if not self.has_latents:
            return None
        cache_key = self.latent_key(entry, key.flip, resized, crop_top_left)
        try:
            stored = self.latent_store.get(cache_key)
        except (KeyError, FileNotFoundError):
            raise RuntimeError(f"{entry.path}: no cached latents for this crop and flip in "
                               f"{self.latent_store.folder or 'memory'} (deleted during the run?); restart to "
                               f"refill the cache") from None
        generator = torch.Generator().manual_seed(key.seed)
        noise = torch.randn(stored["mean"].shape, generator=generator, dtype=stored["mean"].dtype)
        # The same scaling as the VAE path: (sample - shift) * scaling (Rombach et al. 2022, sec. 4.3.2).
        return (stored["mean"] + stored["std"] * noise - self.shift) * self.scaling

    def text_features(self, caption: str) -> dict[str, torch.Tensor] | None:
        """The cached text tensors of `caption` by name (what `BatchEncoder.text_features` gave), or None."""
        key = self.text_keys.get(caption)
        return None if key is None else self.text_store.get(key)
