"""Captions: read them (any encoding, with a warning), put the trigger in front, and augment them per sample.

Augmentation follows kohya's conventions: a caption is comma-separated tags; the first `keep_tokens` tags stay
where they are; the rest may be shuffled (`shuffle_tags`) and each dropped at rate `tag_dropout`; the whole
caption is replaced by "" at rate `caption_dropout` (the unconditional case classifier-free guidance needs).
The trigger is never shuffled or dropped, except with the whole caption.

A caption longer than the text encoder's window (77 tokens with start/end, so 75 of text for CLIP) is
truncated, as Stable Diffusion itself does at inference: the tokenizer cuts the end. We warn once per file
instead of splitting into 75-token chunks, because chunking changes the conditioning the base model was
trained with and needs the text encoder to run several times per caption.
"""

from __future__ import annotations

import codecs
import random
import re
from pathlib import Path

from sdlora.config import DataConfig

# CLIP's pre-tokenizer splits text into letter runs, single digits and punctuation runs; each piece is at least
# one BPE token, so counting pieces gives a lower bound of the token count when no tokenizer is at hand.
_PIECES = re.compile(r"[^\W\d_]+|\d|[^\w\s]+|_+")


def read_caption(path: Path) -> tuple[str, str | None]:
    """(caption with whitespace collapsed, problem or None). Bytes that are not UTF-8 are replaced."""
    raw = path.read_bytes()
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    problem = None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        text = raw.decode("utf-8", errors="replace")
        problem = (f"caption is not UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start}); undecodable "
                   f"bytes replaced with U+FFFD, re-save it as UTF-8")
    return " ".join(text.split()), problem


def split_tags(caption: str) -> list[str]:
    return [tag.strip() for tag in caption.split(",") if tag.strip()]


def with_trigger(caption: str, trigger: str) -> str:
    """The trigger in front, unless the caption already starts with it."""
    if not trigger:
        return caption
    if not caption:
        return trigger
    if split_tags(caption)[:1] == [trigger]:
        return caption
    return f"{trigger}, {caption}"


def augment_caption(caption: str, config: DataConfig, rng: random.Random) -> str:
    """The caption one sample trains with; every random draw comes from `rng` (seeded by the sample key)."""
    dropped = config.caption_dropout > 0 and rng.random() < config.caption_dropout
    if config.shuffle_tags or config.tag_dropout:
        tags = split_tags(caption)
        kept, rest = tags[:config.keep_tokens], tags[config.keep_tokens:]
        if config.shuffle_tags:
            rng.shuffle(rest)
        if config.tag_dropout:
            rest = [tag for tag in rest if rng.random() >= config.tag_dropout]
        caption = ", ".join(kept + rest)
    return "" if dropped else with_trigger(caption, config.trigger)


def fixed_captions(caption: str, config: DataConfig) -> list[str]:
    """The captions a sample of this image can train with, when that set is small enough to cache.

    Without tag shuffling or tag dropout: the caption (with trigger), plus "" under caption dropout. With them
    the variants are combinatorial, so only "" is listed; other variants go through the text encoder.
    """
    variants = [] if config.shuffle_tags or config.tag_dropout else [with_trigger(caption, config.trigger)]
    if config.caption_dropout > 0:
        variants.append("")
    return variants


def estimate_tokens(caption: str) -> int:
    """A lower bound of CLIP tokens (without start/end) when no tokenizer is loaded."""
    return len(_PIECES.findall(caption))


def count_tokens(caption: str, tokenizer=None) -> int:
    """Tokens of `caption` without the start/end tokens; estimated when `tokenizer` is None."""
    if tokenizer is None:
        return estimate_tokens(caption)
    # verbose=False: the length check is ours; transformers would log its own over-length notice.
    return len(tokenizer(caption, add_special_tokens=False, verbose=False)["input_ids"])


def token_window(tokenizer) -> int:
    """Caption tokens the text encoder sees: the model's window less the start and end tokens."""
    return int(getattr(tokenizer, "model_max_length", 77)) - 2 if tokenizer is not None else 75
