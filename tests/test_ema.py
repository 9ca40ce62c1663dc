"""train.ema: the EMA follows its formula, is saved beside the adapter, and samples are drawn from it."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from sdlora.config import replace_keys
from sdlora.train.ema import AdapterEma

from test_recipe import recipe_config, train_run


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_equals_its_formula_after_n_updates(warmup):
    param = torch.nn.Parameter(torch.zeros(3))
    ema = AdapterEma([param], decay=0.9, warmup=warmup)
    expected = torch.zeros(3, dtype=torch.float64)
    for n in range(1, 8):
        with torch.no_grad():
            param.copy_(torch.tensor([n, -2.0 * n, 0.5]))
        ema.update()
        d = min(0.9, (1 + n) / (10 + n)) if warmup else 0.9
        expected = d * expected + (1 - d) * param.detach().double()
    assert torch.allclose(ema.shadow[0].double(), expected, atol=1e-6)
    with ema.weights_applied():
        assert torch.equal(param.detach(), ema.shadow[0])
    assert torch.equal(param.detach(), torch.tensor([7.0, -14.0, 0.5]))  # the training weights are back


def test_ema_file_is_written_and_samples_are_drawn_from_it(shapes_dir, tmp_path, monkeypatch):
    import sdlora.train.trainer as trainer_module

    sampled = []

    def fake_sample_images(components, unet, *args, **kwargs):
        sampled.append({n: p.detach().clone() for n, p in unet.named_parameters() if "lora_" in n})
        return []

    monkeypatch.setattr(trainer_module, "sample_images", fake_sample_images)
    config = recipe_config(shapes_dir, tmp_path / "out", steps=3, ema=True, ema_decay=0.5, ema_warmup=False)
    config = replace_keys(config, {"sample.prompts": ["a red circle"]})
    trainer, result, _ = train_run(config)
    run = tmp_path / "out" / "r"
    plain, ema = load_file(run / "r.safetensors"), load_file(run / "r-ema.safetensors")
    assert plain.keys() == ema.keys()
    assert (run / "checkpoints" / "step-000003" / "r-ema.safetensors").is_file()
    # The sample at the end saw the EMA weights, not the live ones.
    live = {n: p.detach() for n, p in trainer.accelerator.unwrap_model(trainer.unet).named_parameters()
            if "lora_" in n}
    shadow = dict(zip([n for n, p in trainer.accelerator.unwrap_model(trainer.unet).named_parameters()
                       if "lora_" in n and p.requires_grad], trainer.ema.shadow))
    assert all(torch.equal(sampled[-1][n], shadow[n]) for n in shadow)
    assert any(not torch.equal(sampled[-1][n], live[n]) for n in shadow)
