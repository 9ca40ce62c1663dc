"""ui.preview_engine: one base model load per model; re-weighting adapters changes the image, not the base."""

from __future__ import annotations

import numpy as np
import pytest

from browser.fixtures import random_adapter
from ui.preview_engine import GenParams, PreviewEngine, adapter_mode


@pytest.fixture(scope="module")
def adapter_files(tmp_path_factory):
    from sdlora.lora.io import save_adapter
    from sdlora.models import load_components

    folder = tmp_path_factory.mktemp("adapters")
    unet = load_components("tiny").unet
    red = save_adapter(random_adapter(unet, 1), folder / "red.safetensors")
    lcm = save_adapter(random_adapter(unet, 2, mode="lcm"), folder / "fast.safetensors")
    return red, lcm


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_sliders_reweight_without_reloading_the_base_model(adapter_files, monkeypatch):
    import sdlora.models

    calls = []
    real = sdlora.models.load_pipeline
    monkeypatch.setattr(sdlora.models, "load_pipeline", lambda ref, **kw: calls.append(ref) or real(ref, **kw))
    red, lcm = adapter_files
    engine = PreviewEngine()
    params = GenParams(prompt="a red circle", steps=3, seed=1)
    base = pixels(engine.generate("tiny", [], params))
    images = [pixels(engine.generate("tiny", [(red, w), (lcm, 0.5)], params)) for w in (0.0, 1.0, 2.0)]
    zero = pixels(engine.generate("tiny", [(red, 0.0), (lcm, 0.0)], params))
    assert calls == ["tiny"]  # loaded once, whatever the weights
    assert np.abs(images[1] - images[0]).mean() > 1 and np.abs(images[2] - images[1]).mean() > 1
    assert np.array_equal(zero, base)  # all weights 0: exactly the base model
    assert np.array_equal(pixels(engine.generate("tiny", [], params)), base)


def test_lcm_adapters_are_recognized_from_their_metadata(adapter_files):
    red, lcm = adapter_files
    assert adapter_mode(red) == {"mode": "standard"}
    info = adapter_mode(lcm)
    assert info["mode"] == "lcm" and info["scheduler"] == "lcm" and info["steps"] >= 1


def test_a_file_that_is_not_an_adapter_is_a_readable_error(tmp_path):
    from sdlora.errors import SdloraError

    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(SdloraError, match="x.safetensors"):
        adapter_mode(bad)
