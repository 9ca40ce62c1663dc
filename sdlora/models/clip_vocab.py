"""The real CLIP tokenizer (49,408 BPE tokens), derived offline from the BPE file shipped in sdlora/configs/.

CLIP's own tokenizer builds its vocabulary from that file: the 256 byte symbols, the same with the end-of-word
marker `</w>`, one token per merge (the first 48,894 merges), then <|startoftext|> and <|endoftext|>. The
transformers `CLIPTokenizer` reads the same thing as vocab.json + merges.txt, which we write from it.

SD 1.x (OpenAI CLIP ViT-L) pads prompts with <|endoftext|>; SD 2.x and SDXL's second encoder (OpenCLIP) pad
with "!" (token 0). The pad token changes the text embeddings of every padded position, so it must match the
encoder the model was trained with.
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

BPE_FILE = Path(__file__).resolve().parent.parent / "configs" / "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # as CLIP's SimpleTokenizer: the vocabulary ends at 49,408 tokens
PAD_TOKENS = {"clip": "<|endoftext|>", "open_clip": "!"}



def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible byte -> printable character table (the public BPE convention)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


@lru_cache(maxsize=1)
def clip_bpe() -> tuple[dict[str, int], list[str]]:
    """(vocab token -> id, merge lines "a b") of CLIP's tokenizer."""
    lines = gzip.decompress(BPE_FILE.read_bytes()).decode("utf-8").split("\n")
    merges = lines[1:NUM_MERGES + 1]  # line 0 is a version header
    byte_symbols = list(bytes_to_unicode().values())
    tokens = byte_symbols + [s + "</w>" for s in byte_symbols] + [m.replace(" ", "") for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def write_clip_tokenizer(folder: Path, *, pad: str = "clip", max_length: int = 77) -> None:
    """Write a CLIPTokenizer folder; `pad` is 'clip' (SD 1.x, SDXL encoder 1) or 'open_clip' (SD 2.x, SDXL 2)."""
    vocab, merges = clip_bpe()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": PAD_TOKENS[pad]}
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": max_length, "do_lower_case": True, **special}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
