"""Small adapters for the browser tests, built with the adapters API (no training needed), and typing into a field."""

from __future__ import annotations

from pathlib import Path

import torch

TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def random_adapter(unet: torch.nn.Module, seed: int, rank: int = 4, scale: float = 0.5, mode: str = "standard"):
    """An adapter on the attention projections of `unet` with random A and B, so it visibly changes images."""
    from sdlora.lora.state import Adapter, LoraLayer

    gen = torch.Generator().manual_seed(seed)
    layers = {}
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and any(name.endswith("." + t) for t in TARGETS):
            down = torch.randn(rank, module.in_features, generator=gen) * scale
            up = torch.randn(module.out_features, rank, generator=gen) * scale
            layers[f"unet.{name}"] = LoraLayer(down=down, up=up, alpha=float(rank))
    return Adapter(layers=layers, metadata={"sdlora_mode": mode, "sdlora_base_model": "tiny",
                                            "ss_network_dim": str(rank), "ss_network_alpha": str(rank)})


def make_adapters(folder: Path) -> list[Path]:
    """adapters/red.safetensors and adapters/blue.safetensors for the built-in tiny model."""
    from sdlora.lora.io import save_adapter
    from sdlora.models import load_components

    unet = load_components("tiny").unet
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed, name in ((1, "red"), (2, "blue")):
        path = folder / f"{name}.safetensors"
        save_adapter(random_adapter(unet, seed), path, fmt="kohya", dtype="fp32")
        paths.append(path)
    return paths


def make_run(folder: Path, steps=(10, 20), name: str = "cmprun") -> Path:
    """A run folder as the trainer leaves it: config.yaml, checkpoints/step-N/ (adapter + trainer_state.json),
    the final adapter (the last checkpoint's step) and a validation loss per checkpoint in events.jsonl."""
    import json

    from sdlora.lora.io import save_adapter
    from sdlora.models import load_components

    unet = load_components("tiny").unet
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(f"name: {name}\nmodel: tiny\n", encoding="utf-8")
    events = []
    for i, step in enumerate(steps):
        ckpt = folder / "checkpoints" / f"step-{step:06d}"
        ckpt.mkdir(parents=True, exist_ok=True)
        adapter = random_adapter(unet, 10 + i, scale=0.2)
        adapter.metadata["ss_steps"] = str(step)
        save_adapter(adapter, ckpt / f"{name}.safetensors")
        (ckpt / "trainer_state.json").write_text(json.dumps({"step": step}), encoding="utf-8")
        events.append({"event": "validation", "time": 0, "step": step, "loss": 0.1 / (i + 1)})
    save_adapter(adapter, folder / f"{name}.safetensors")
    (folder / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    return folder


def type_into(page, selector: str, text: str) -> None:
    """Fill a field, leave it (Tab) as a user does, and wait until it shows the text: on a loaded machine a button
    clicked straight after a bare fill() once sent the field's old value (the Adapters tab resized to rank 4, not
    2)."""
    from playwright.sync_api import expect

    box = page.locator(selector).first
    expect(box).to_be_visible()
    # A tab's fields mount when the tab is first shown: on a busy machine a fill straight after the tab click went
    # into the field Gradio then replaced, which showed its initial value again (fresh-clone CI, session 20). A user
    # types into the field they see; so does this, again, while the value it shows is not the one typed.
    for attempt in range(3):
        box.fill(text)
        box.press("Tab")
        try:
            expect(box).to_have_value(text, timeout=5_000)  # the field took what was typed
            return
        except AssertionError:
            if attempt == 2:
                raise
