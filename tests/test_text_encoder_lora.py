"""network.text_encoder: a LoRA on the CLIP text encoder, trained with its own learning rate, saved as lora_te_*."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_shape_folder
from safetensors.torch import load_file

from sdlora.config import config_from_dict, replace_keys
from sdlora.errors import SdloraError
from sdlora.events import EventBus
from sdlora.network import TEXT_ENCODER_TARGETS
from sdlora.train.rundir import RunPaths, new_run
from sdlora.train.trainer import StopFlag, Trainer

CAPTION = "a red circle on a white background"


def make_config(data_dir: Path, out_dir: Path, text_encoder: bool = True, **train):
    return config_from_dict({
        "name": "te", "model": "tiny",
        "data": {"dir": str(data_dir), "resolution": 64, "cache": "memory"},
        "network": {"rank": 4, "alpha": 4, "text_encoder": text_encoder},
        "train": {"steps": 4, "batch_size": 4, "lr": 2e-3, "seed": 5, **train},
        "save": {"output_dir": str(out_dir)},
    })


def text_output(pipe_or_encoder, tokenizer, caption: str = CAPTION) -> torch.Tensor:
    ids = tokenizer([caption], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        return pipe_or_encoder(ids)[0]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def unet_output(unet) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        return unet(latents, torch.tensor([50, 700]), text).sample


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 4-step run with the text-encoder LoRA on, its text-encoder calls recorded (shared by the tests that only
    read it: one training instead of three)."""
    root = tmp_path_factory.mktemp("te")
    config = make_config(make_shape_folder(root / "shapes"), root / "out", text_encoder_lr=5e-3)
    trainer = Trainer(config, new_run(config), EventBus())
    trainer.setup()
    te = trainer.components.text_encoder
    before = text_output(te.eval(), trainer.components.tokenizer)
    te.train()
    calls = []
    real = trainer.encoder.encode_text

    def recording(captions):
        out = real(captions)
        text = out["text_embeddings"]
        calls.append((list(captions), text.detach().clone(), text.requires_grad))
        return out

    trainer.encoder.encode_text = recording
    result = trainer.run()
    return trainer, result, before, calls


def test_text_encoder_lora_trains_with_its_own_lr_and_bypasses_the_text_cache(trained):
    trainer, result, before, calls = trained
    assert result.status == "done"
    te = trainer.components.text_encoder.eval()
    after = text_output(te, trainer.components.tokenizer)
    change = rel(after, before)
    print(f'text encoder output change {change:.3g}')
    assert change > 1e-3, change  # the text encoder's output for a caption moved
    assert any(p.abs().max() > 0 for n, p in trainer.unet.named_parameters() if "lora_B" in n)  # UNet LoRA too

    # Two param groups: UNet at train.lr, text encoder at train.text_encoder_lr; self.params = UNet then TE.
    lrs = [g["lr"] for g in trainer.optimizer.param_groups]
    assert lrs == [2e-3, 5e-3]
    unet_count = len(trainer.optimizer.param_groups[0]["params"])
    te_params = {id(p) for n, p in te.named_parameters() if "lora_" in n}
    assert len(te_params) == 2 * 6 * te.config.num_hidden_layers  # A and B of q/k/v/out_proj/fc1/fc2 per layer
    assert {id(p) for p in trainer.params[unet_count:]} == te_params

    # The text cache is bypassed (latents are still cached); every step ran the text encoder with gradients,
    # and the same caption at different steps gave different embeddings.
    assert trainer.cache_stats.texts_encoded == 0 and trainer.cache_stats.latents_encoded > 0
    assert len(calls) == 4 and all(grad for _, _, grad in calls)
    seen, pairs = {}, []
    for step, (captions, out, _) in enumerate(calls):
        for caption, row in zip(captions, out):
            for other_step, other in seen.get(caption, []):
                if other_step != step:
                    pairs.append((row - other).abs().max().item())
            seen.setdefault(caption, []).append((step, row))
    assert pairs and min(pairs) > 0, pairs


def test_adapter_with_text_encoder_loads_in_diffusers_and_reproduces_both(trained, tmp_path):
    from sdlora.lora.io import load_adapter, save_adapter
    from sdlora.models import load_pipeline

    trainer, result, _, _ = trained
    keys = load_file(result.adapter_path)
    te_stems = {k.rsplit(".", 2)[0] for k in keys if k.startswith("lora_te_")}
    layers = trainer.components.text_encoder.config.num_hidden_layers
    assert len(te_stems) == len(TEXT_ENCODER_TARGETS) * layers
    assert "lora_te_text_model_encoder_layers_0_mlp_fc1" in te_stems

    te = trainer.components.text_encoder.eval()
    unet = trainer.unet.eval()
    expected_text = text_output(te, trainer.components.tokenizer)
    expected_unet = unet_output(unet)
    diffusers_file = save_adapter(load_adapter(result.adapter_path), tmp_path / "peft.safetensors", fmt="diffusers")
    assert any(k.startswith("text_encoder.") for k in load_file(diffusers_file))
    for path in (result.adapter_path, diffusers_file):
        pipe = load_pipeline("tiny")
        base_text = text_output(pipe.text_encoder, pipe.tokenizer)
        pipe.load_lora_weights(str(path))
        got_text = text_output(pipe.text_encoder, pipe.tokenizer)
        print(f'{path.name}: text rel {rel(got_text, expected_text):.3g}, base text rel '
              f'{rel(base_text, expected_text):.3g}, unet rel {rel(unet_output(pipe.unet), expected_unet):.3g}')
        assert rel(got_text, expected_text) < 1e-4, (path, rel(got_text, expected_text))
        assert rel(base_text, expected_text) > 1e-3  # the adapter really changes the text encoder
        assert rel(unet_output(pipe.unet), expected_unet) < 1e-4


def test_default_leaves_the_text_encoder_untouched_and_writes_no_te_keys(shapes_dir, tmp_path):
    from sdlora.models import load_components

    config = make_config(shapes_dir, tmp_path / "out", text_encoder=False, steps=2)
    assert config_from_dict({}).network.text_encoder is False
    trainer = Trainer(config, new_run(config), EventBus())
    trainer.setup()
    result = trainer.run()
    fresh = load_components("tiny").text_encoder.state_dict()
    live = trainer.components.text_encoder.state_dict()
    assert live.keys() == fresh.keys() and all(torch.equal(live[k], fresh[k]) for k in fresh)
    assert len(trainer.optimizer.param_groups) == 1
    assert trainer.cache_stats.texts_encoded > 0  # frozen text encoder: captions are cached as before
    keys = load_file(result.adapter_path)
    assert keys and not any(k.startswith("lora_te") for k in keys)


def test_resume_restores_text_encoder_lora_and_both_param_groups_exactly(shapes_dir, tmp_path):
    def run(root: Path, stop_at: int = 0, resume: bool = False):
        config = make_config(shapes_dir, root, steps=4, text_encoder_lr=5e-3, scheduler="linear")
        paths = RunPaths(root / config.name, config.name) if resume else new_run(config)
        stop = StopFlag()

        def on_event(event):
            if event["event"] == "step" and event["step"] == stop_at:
                stop.request("test stop")

        trainer = Trainer(config, paths, EventBus([on_event]), stop)
        trainer.setup()
        return trainer, trainer.run(resume=resume)

    # Straight 4 steps vs stopped after 2, then resumed (linear schedule: both groups' lr move each step).
    _, full = run(tmp_path / "full")
    _, stopped = run(tmp_path / "part", stop_at=2)
    assert stopped.status == "stopped" and stopped.step == 2
    trainer, part = run(tmp_path / "part", resume=True)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [0.0, 0.0]  # the end of the linear schedule
    a, b = load_file(full.adapter_path), load_file(part.adapter_path)
    assert a.keys() == b.keys() and any(k.startswith("lora_te_") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_refused_for_lcm():
    with pytest.raises(SdloraError, match="network.text_encoder"):
        config_from_dict({"mode": "lcm", "network": {"text_encoder": True}})


def test_samples_during_training_use_the_trained_text_encoder(trained, tmp_path):
    import numpy as np
    from PIL import Image

    trainer, _, _, _ = trained
    trainer.config = replace_keys(trainer.config, {"sample.prompts": [CAPTION], "sample.steps": 2})
    te = trainer.components.text_encoder.train()
    trainer.sample(99)
    with_lora = np.asarray(Image.open(trainer.paths.samples / "step-000099" / "00.png"), dtype=np.float32)
    assert te.training  # sampling put the text encoder back in train mode
    from peft.tuners.tuners_utils import BaseTunerLayer

    lora_layers = [m for m in te.modules() if isinstance(m, BaseTunerLayer)]
    for layer in lora_layers:  # the LoRA injected through peft directly: switch it off layer by layer
        layer.enable_adapters(False)
    try:
        trainer.sample(100)
    finally:
        for layer in lora_layers:
            layer.enable_adapters(True)
    without = np.asarray(Image.open(trainer.paths.samples / "step-000100" / "00.png"), dtype=np.float32)
    print(f'sample pixel difference {np.abs(with_lora - without).mean():.3g}')
    assert np.abs(with_lora - without).mean() > 0.5  # pixel levels: the text encoder's LoRA shapes the sample
