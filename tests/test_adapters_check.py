"""sdlora.lora.check: a broken or mismatched adapter is refused by every command and the Preview tab, naming
the tensor or layer, before it can make a garbage image or a model full of NaN (issue #15, case 7)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from sdlora.adapters import save_adapter
from sdlora.lora.check import check_fit, check_values, delta_shape, layer_tensors
from sdlora.adapters.merge import merge_into
from sdlora.lora.state import Adapter, LoraLayer
from sdlora.cli import main
from sdlora.errors import SdloraError
from test_adapters_fixtures import tiny_pipeline
from test_cli_adapters import CONV, TO_K, small_adapter


def poisoned(value: float, where: str = "up", alpha: float | None = None) -> Adapter:
    adapter = small_adapter()
    layer = adapter.layers[TO_K]
    getattr(layer, where)[3, 1] = value
    if alpha is not None:
        layer.alpha = alpha
    return adapter


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_layers_are_seen_through_their_tensors_and_delta_shape():
    layer = small_adapter().layers[CONV]
    assert set(layer_tensors(layer)) == {"down", "up"}
    assert delta_shape(layer) == tuple(layer.delta_weight().shape) == (128, 64, 3, 3)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_named(value):
    with pytest.raises(SdloraError, match=f"x.safetensors: layer {TO_K}: up holds 1 non-finite value"):
        check_values(poisoned(value), "x.safetensors")


@pytest.mark.parametrize("alpha", [float("nan"), 1e30, -1e30])
def test_an_absurd_alpha_is_refused(alpha):
    with pytest.raises(SdloraError, match=f"layer {TO_K}: alpha .* is not a number within"):
        check_values(poisoned(0.0, alpha=alpha), "x.safetensors")


def test_fit_names_the_first_layer_of_another_shape_and_counts_missing_ones():
    pipe = tiny_pipeline()
    adapter = small_adapter()
    adapter.layers["unet.no_such_block.to_q"] = LoraLayer(torch.zeros(2, 8), torch.zeros(8, 2), 2.0)
    with pytest.warns(UserWarning, match="1 of its 4 layers are not in this model .*no_such_block"):
        fit = check_fit(adapter, pipe, "x.safetensors")
    assert len(fit.matched) == 3 and fit.unmatched == ["unet.no_such_block.to_q"]
    adapter.layers[TO_K] = LoraLayer(torch.zeros(4, 1024), torch.zeros(128, 4), 4.0)  # SD 2.x cross-attention
    with pytest.raises(SdloraError, match=f"layer {TO_K} has shape \\(128, 1024\\) but the model's weight is "
                                          f"\\(128, 128\\)"):
        check_fit(adapter, pipe, "x.safetensors")
    with pytest.raises(SdloraError, match="none of its 1 layers matches this model"):
        check_fit(Adapter({"unet.no_such_block.to_q": adapter.layers["unet.no_such_block.to_q"]}), pipe, "x")


def test_merge_in_memory_refuses_nan_before_touching_the_model():
    pipe = tiny_pipeline()
    before = pipe.unet.mid_block.attentions[0].transformer_blocks[0].attn2.to_k.weight.clone()
    with pytest.raises(SdloraError, match="non-finite"):
        merge_into(pipe, [(poisoned(float("nan")), 1.0)], sources=["nan.safetensors"])
    assert torch.equal(pipe.unet.mid_block.attentions[0].transformer_blocks[0].attn2.to_k.weight, before)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("broken")
    shaped = small_adapter()
    shaped.layers[TO_K] = LoraLayer(torch.zeros(4, 1024), torch.zeros(128, 4), 4.0)
    partial = small_adapter()
    partial.layers["unet.no_such_block.to_q"] = LoraLayer(torch.zeros(2, 8), torch.zeros(8, 2), 2.0)
    return {
        "nan": save_adapter(poisoned(float("nan")), folder / "nan.safetensors"),
        "inf": save_adapter(poisoned(float("inf"), "down"), folder / "inf.safetensors"),
        "alpha": save_adapter(poisoned(0.0, alpha=1e30), folder / "alpha.safetensors"),
        "shape": save_adapter(shaped, folder / "shape.safetensors"),
        "partial": save_adapter(partial, folder / "partial.safetensors"),
    }


@pytest.mark.parametrize("kind", ["nan", "inf", "alpha"])
def test_every_command_refuses_a_broken_adapter_with_exit_2(files, kind, tmp_path, capsys):
    path = files[kind]
    runs = {
        "generate": ["generate", "--model", "tiny", "--lora", path, "--prompt", "a circle", "--steps", "1",
                     "--size", "64x64", "--out", tmp_path / "x.png"],
        "merge": ["merge", "--model", "tiny", "--lora", path, "--out", tmp_path / "merged"],
        "inspect": ["inspect", path],
        "resize": ["resize", path, "--rank", "2", "--out", tmp_path / "r.safetensors"],
        "convert": ["convert", path, tmp_path / "c.safetensors", "--to", "diffusers"],
    }
    for command, argv in runs.items():
        code, out, err = cli(capsys, *argv)
        assert code == 2, (command, err)
        assert f"{path}: layer {TO_K}" in err and "Traceback" not in err, (command, err)
    assert not [p for p in tmp_path.iterdir()]  # no image, no merged model, no resized or converted file


def test_generate_names_a_layer_of_another_shape(files, tmp_path, capsys):
    code, _, err = cli(capsys, "generate", "--model", "tiny", "--lora", files["shape"], "--prompt", "a circle",
                       "--steps", "1", "--size", "64x64", "--out", tmp_path / "x.png")
    assert code == 2 and f"layer {TO_K} has shape (128, 1024)" in err


@pytest.mark.slow
def test_generate_warns_of_layers_the_model_lacks_in_one_line(files, tmp_path):
    # In its own process: what a user's terminal shows (this one may have shown the same warning already).
    proc = subprocess.run([sys.executable, "-m", "sdlora.cli", "generate", "--model", "tiny", "--lora",
                           str(files["partial"]), "--prompt", "a circle", "--steps", "1", "--size", "64x64", "--out",
                           str(tmp_path / "y.png")], capture_output=True, text=True, timeout=300)
    err = proc.stderr
    assert proc.returncode == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("sdlora generate: warning")]
    assert warnings == [f"sdlora generate: warning: {files['partial']}: 1 of its 4 layers are not in this model and "
                        f"are left out (e.g. lora_unet_no_such_block_to_q); was it made for another base model?"]
    assert (tmp_path / "y.png").is_file()


def test_merge_leaves_out_missing_layers_with_a_warning(files, tmp_path, capsys):
    code, out, err = cli(capsys, "merge", "--model", "tiny", "--lora", files["partial"], "--out", tmp_path / "m")
    assert code == 0, err
    assert "1 of its 4 layers are not in this model" in err and (tmp_path / "m" / "model_index.json").is_file()


def test_the_preview_tab_engine_refuses_a_broken_adapter(files):
    from ui.preview_engine import GenParams, PreviewEngine

    engine = PreviewEngine()
    params = GenParams(prompt="a circle", steps=1)
    for kind, message in [("nan", "non-finite"), ("alpha", "alpha"), ("shape", "has shape")]:
        with pytest.raises(SdloraError, match=message):
            engine.generate("tiny", [(files[kind], 1.0)], params)
