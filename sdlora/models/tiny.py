"""The built-in `tiny` model: a small pipeline with the Stable Diffusion 1.x architecture, built with no downloads.

Same component classes as SD 1.5 (UNet2DConditionModel with cross-attention, AutoencoderKL, CLIPTextModel and a
CLIP BPE tokenizer, the SD noise schedule), only narrower and shallower, so every code path that serves a real
checkpoint serves this one. Images are 64 px; the VAE downsamples by 4, so latents are 4x16x16.

The tokenizer is a real CLIP BPE tokenizer whose merges are derived here from a word list (every listed word is
one token; other words fall back to smaller pieces, down to single bytes), so no vocabulary file is fetched.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sdlora.models.clip_vocab import bytes_to_unicode
from sdlora.models.ldm_configs import SD_SCHEDULER  # noqa: F401  (the tiny model trains on SD's schedule)

TINY_RESOLUTION = 64

# Words the tiny tokenizer keeps whole: the vocabulary of the procedural scenes and common caption words.
TINY_WORDS = """
a an the of and with on in at to is are small large big tiny medium huge left right top bottom center middle
upper lower corner background foreground image photo picture drawing painting art style scene simple flat plain
red orange yellow green cyan blue purple magenta pink white black gray grey brown gold silver teal navy lime
dark light bright pale
circle square triangle star ring cross diamond hexagon heart moon stripe stripes striped dots dotted checker
checkered checkerboard grid gradient noise solid smooth rough wavy waves zigzag textured texture pattern
shape shapes object objects one two three four five many several pair
sks ohwx zxq trigger token concept style subject character person face dog cat tree house sky sun flower
of by from for as it its this that very
""".split()

TINY_UNET = dict(
    sample_size=TINY_RESOLUTION // 4,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(64, 128, 128),
    layers_per_block=1,
    cross_attention_dim=128,
    attention_head_dim=8,
    norm_num_groups=32,
)
TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=16,
    sample_size=TINY_RESOLUTION,
)
TINY_TEXT = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=77,
    projection_dim=128,
)
# Stable Diffusion 1.x's training schedule (scaled-linear betas, epsilon prediction).
def _apply_merges(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Plain BPE: repeatedly merge the adjacent pair of lowest rank."""
    while len(symbols) > 1:
        pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))]
        best_rank, i = min(pairs)
        if best_rank == 1 << 30:
            break
        symbols = symbols[:i] + [symbols[i] + symbols[i + 1]] + symbols[i + 2:]
    return symbols


def build_clip_vocab(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A CLIP BPE vocabulary in which each of `words` is a single token."""
    byte_chars = list(bytes_to_unicode().values())
    vocab_list = byte_chars + [c + "</w>" for c in byte_chars]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in dict.fromkeys(w.lower() for w in words):
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        # Add the merge of the first remaining pair until BPE with all merges so far yields the whole word.
        while len(symbols := _apply_merges(symbols, ranks)) > 1:
            pair = (symbols[0], symbols[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            vocab_list.append(pair[0] + pair[1])
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}, merges


def write_tokenizer(folder: Path, words: list[str] = TINY_WORDS) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_clip_vocab(words)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                      encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    special = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")


def build_tiny_pipeline(seed: int = 0):
    """The tiny pipeline with random weights drawn from `seed` (deterministic)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_UNET)
    vae = AutoencoderKL(**TINY_VAE)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                                eos_token_id=tokenizer.eos_token_id,
                                                pad_token_id=tokenizer.pad_token_id, **TINY_TEXT))
    scheduler = DDIMScheduler(**SD_SCHEDULER)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
