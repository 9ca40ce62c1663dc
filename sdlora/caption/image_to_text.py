"""A transformers image-to-text model from a local folder: BLIP, BLIP-2, GIT, Florence-2, or a chat VLM.

The model class is `AutoModelForImageTextToText` (transformers maps blip, blip-2, git, florence2, llava, qwen2-vl,
... to it), the inputs come from the folder's own processor. What each kind is asked:
- BLIP, BLIP-2, GIT: nothing (unconditional captioning), or `prompt` as the caption's start;
- Florence-2: a task token, `<MORE_DETAILED_CAPTION>` unless `prompt` gives another;
- a model whose processor has a chat template (Qwen-VL, LLaVA, ...): one user turn, the image and `prompt`.
Decoding is greedy (no sampling), so a fixed model and image always give the same caption.
"""

from __future__ import annotations

import json
from pathlib import Path

from sdlora.errors import SdloraError

UNCONDITIONAL = {"blip", "blip-2", "git"}
TASK_PROMPTS = {"florence2": "<MORE_DETAILED_CAPTION>"}
CHAT_PROMPT = "Describe this image in one or two sentences, as a caption for training an image model."


def pick_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SdloraError("--device cuda: no CUDA GPU is visible; use --device cpu")
    return torch.device(device)


class ImageToText:
    kind = "transformers"

    def __init__(self, folder: Path, device: str = "auto", max_length: int = 60, prompt: str | None = None,
                 trust_remote_code: bool = False):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # our own bar counts images; theirs counts weight files

        self.folder = Path(folder)
        config = json.loads((self.folder / "config.json").read_text(encoding="utf-8"))
        self.model_type = config.get("model_type", "")
        self.name = f"{self.model_type} ({self.folder.name})"
        self.device = pick_device(device)
        # Half precision on a GPU (bf16 where supported: no fp16 overflow in large vision towers).
        self.dtype = torch.float32 if self.device.type != "cuda" else (
            torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        kwargs = dict(local_files_only=True, trust_remote_code=trust_remote_code)
        try:
            self.processor = AutoProcessor.from_pretrained(self.folder, **kwargs)
            self.model = AutoModelForImageTextToText.from_pretrained(self.folder, dtype=self.dtype, **kwargs)
        except (OSError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            hint = (" (its config.json asks for the model's own code: pass --trust-remote-code if you trust it)"
                    if "auto_map" in config and not trust_remote_code else "")
            raise SdloraError(f"--model {self.folder}: transformers cannot load it as an image-to-text model with "
                              f"its processor: {first}{hint}") from None
        self.model.to(self.device).eval()
        self.max_length = max_length
        self.chat = self.model_type not in UNCONDITIONAL | set(TASK_PROMPTS) and bool(
            getattr(self.processor, "chat_template", None))
        self.prompt = prompt or TASK_PROMPTS.get(self.model_type) or (CHAT_PROMPT if self.chat else None)
        tokenizer = getattr(self.processor, "tokenizer", None)
        if tokenizer is not None and not self.model.config.is_encoder_decoder:
            tokenizer.padding_side = "left"  # a decoder-only model continues the last token of each row

    def _inputs(self, images: list):
        if self.chat:
            turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt}]}]
            text = self.processor.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
            return self.processor(images=images, text=[text] * len(images), padding=True, return_tensors="pt")
        if self.prompt:
            return self.processor(images=images, text=[self.prompt] * len(images), padding=True,
                                  return_tensors="pt")
        return self.processor(images=images, return_tensors="pt")

    def caption(self, images: list) -> list[str]:
        """One caption per PIL image (RGB)."""
        import torch

        inputs = self._inputs(images)
        # token_type_ids (BERT tokenizers: BLIP, GIT) are not generate() arguments of any captioning model.
        inputs = {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
                  for k, v in inputs.items() if k != "token_type_ids"}
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_length, do_sample=False, num_beams=1)
        prompt_ids = inputs.get("input_ids")
        if prompt_ids is not None and out.shape[1] >= prompt_ids.shape[1] and torch.equal(
                out[:, :prompt_ids.shape[1]], prompt_ids):
            out = out[:, prompt_ids.shape[1]:]  # decoder-only models return the prompt too
        texts = self.processor.batch_decode(out, skip_special_tokens=True)
        if self.prompt in TASK_PROMPTS.values():
            texts = [t.replace(self.prompt, "") for t in texts]
        return [" ".join(t.split()) for t in texts]
