"""The adapter commands end to end: convert, inspect, resize, generate, merge; bad files exit 2 with one line."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sdlora.adapters import load_adapter, save_adapter
from sdlora.lora.state import Adapter, LoraLayer
from sdlora.cli import main

META = {"ss_steps": "250", "ss_resolution": "(64, 64)", "ss_num_train_images": "12", "sdlora_mode": "standard",
        "ss_base_model_version": "sd_v1", "sdlora_base_model": "tiny"}
TO_K = "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k"
CONV = "unet.down_blocks.1.resnets.0.conv1"
TE = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"


def small_adapter(rank=8) -> Adapter:
    gen = torch.Generator().manual_seed(0)
    down = torch.randn(rank, 128, generator=gen)
    down[2:] = 0  # dW of TO_K has rank 2
    layers = {
        TO_K: LoraLayer(down=down, up=torch.randn(128, rank, generator=gen), alpha=4.0),
        CONV: LoraLayer(down=torch.randn(rank, 64, 3, 3, generator=gen), up=torch.randn(128, rank, 1, 1,
                                                                                        generator=gen), alpha=8.0),
        TE: LoraLayer(down=torch.randn(rank, 128, generator=gen), up=torch.randn(128, rank, generator=gen), alpha=1.0),
    }
    return Adapter(layers, dict(META))


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def tensors(path):
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, fh.metadata()


def test_convert_round_trip_is_bit_exact_and_keeps_metadata(tmp_path, capsys):
    src = save_adapter(small_adapter(), tmp_path / "a.safetensors", fmt="kohya", dtype="fp16")
    assert cli(capsys, "convert", str(src), str(tmp_path / "b.safetensors"), "--to", "diffusers")[0] == 0
    code, out, _ = cli(capsys, "convert", str(tmp_path / "b.safetensors"), str(tmp_path / "c.safetensors"),
                       "--to", "kohya")
    assert code == 0 and "diffusers -> kohya" in out
    (a, meta_a), (c, meta_c) = tensors(src), tensors(tmp_path / "c.safetensors")
    assert meta_a == meta_c == META
    assert set(a) == set(c) and all(c[k].dtype == a[k].dtype and torch.equal(c[k], a[k]) for k in a)
    b, _ = tensors(tmp_path / "b.safetensors")
    assert any(k.endswith(".lora_A.weight") for k in b) and b[TO_K + ".lora_A.weight"].dtype == torch.float16


def test_inspect_json_numbers_match_a_hand_computation(tmp_path, capsys):
    adapter = small_adapter()
    path = save_adapter(adapter, tmp_path / "a.safetensors")
    code, out, _ = cli(capsys, "inspect", str(path), "--json")
    report = json.loads(out)
    assert code == 0 and report["format"] == "kohya" and report["dtypes"] == ["float32"]
    assert report["family"] == "sd1" and report["base_model"] == "tiny"
    assert report["ranks"] == [8] and report["alphas"] == [1.0, 4.0, 8.0]
    assert report["num_parameters"] == sum(layer.down.numel() + layer.up.numel() for layer in adapter.layers.values())
    assert report["file_size"] == path.stat().st_size
    assert report["targets"] == {"attn2.to_k": 1, "conv1": 1, "self_attn.q_proj": 1}
    assert report["training"]["ss_steps"] == "250" and report["training"]["ss_num_train_images"] == "12"
    rows = {row["name"]: row for row in report["layers"]}
    layer = adapter.layers[TO_K]
    by_hand = float((0.5 * layer.up @ layer.down).norm())  # alpha/rank = 4/8
    assert abs(rows[TO_K]["norm"] - by_hand) < 1e-4 * by_hand and rows[TO_K]["effective_rank"] <= 2
    assert rows[CONV]["shape"] == [128, 64, 3, 3]
    code, text, _ = cli(capsys, "inspect", str(path))
    assert code == 0 and "ss_steps" in text and TO_K in text


def test_resize_writes_lower_rank_and_keeps_the_energy_it_prints(tmp_path, capsys):
    adapter = small_adapter()
    src = save_adapter(adapter, tmp_path / "a.safetensors", fmt="diffusers")
    out_path = tmp_path / "r.safetensors"
    code, out, _ = cli(capsys, "resize", str(src), "--rank", "3", "--out", str(out_path))
    assert code == 0
    resized = load_adapter(out_path)
    assert resized.ranks == {3}
    printed = {line.split()[0]: float(line.split()[-1]) for line in out.splitlines() if "energy kept" in line
               and line.startswith(("unet", "text_encoder"))}
    assert set(printed) == set(adapter.layers) and printed[TO_K] == pytest.approx(1.0, abs=1e-4)
    for name, layer in adapter.layers.items():
        dw, dw3 = layer.delta_weight().double(), resized.layers[name].delta_weight().double()
        measured = 1 - float((dw - dw3).norm() ** 2 / dw.norm() ** 2)
        assert measured >= printed[name] - 1e-4, name  # printed with four decimals
    assert cli(capsys, "resize", str(src), "--rank", "0", "--out", str(out_path))[0] == 2


@pytest.mark.parametrize("kind,fragment", [("pickle", "pickled PyTorch checkpoint"), ("garbage", "not a readable .safetensors file"),
                                           ("full", "full Stable Diffusion checkpoint"), ("flux", "LoRA for Flux"),
                                           ("missing", "no such file")])
@pytest.mark.parametrize("command", ["inspect", "convert", "resize"])
def test_bad_files_exit_2_with_one_line_naming_the_file(tmp_path, capsys, kind, fragment, command):
    path = tmp_path / "bad.safetensors"
    if kind == "pickle":
        path.write_bytes(pickle.dumps({"w": [1, 2]}))
    elif kind == "garbage":
        path.write_bytes(b"\x00\x01garbage" * 50)
    elif kind == "full":
        save_file({"model.diffusion_model.out.2.weight": torch.zeros(2), "cond_stage_model.w": torch.zeros(2)},
                  str(path))
    elif kind == "flux":
        save_file({"transformer.double_blocks.0.img_attn.qkv.lora_A.weight": torch.zeros(2, 2),
                   "transformer.double_blocks.0.img_attn.qkv.lora_B.weight": torch.zeros(2, 2)}, str(path))
    extra = {"inspect": [], "convert": [str(tmp_path / "o.safetensors"), "--to", "kohya"],
             "resize": ["--rank", "2", "--out", str(tmp_path / "o.safetensors")]}[command]
    code, _, err = cli(capsys, command, str(path), *extra)
    assert code == 2 and fragment in err and str(path) in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o.safetensors").exists()


def unet_adapter() -> Adapter:
    """A rank-4 adapter on the tiny UNet's cross-attention keys, strong enough to change the image."""
    gen = torch.Generator().manual_seed(5)
    names = [f"unet.{block}.attentions.{i}.transformer_blocks.0.attn2.to_k"
             for block, count in (("down_blocks.0", 1), ("down_blocks.1", 1), ("up_blocks.1", 2), ("up_blocks.2", 2))
             for i in range(count)] + ["unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k"]
    layers = {}
    for name in names:
        out = 64 if name.startswith(("unet.down_blocks.0.", "unet.up_blocks.2.")) else 128  # block widths
        layers[name] = LoraLayer(down=torch.randn(4, 128, generator=gen) * 0.3,
                                 up=torch.randn(out, 4, generator=gen) * 0.3, alpha=4.0)
    return Adapter(layers, {"sdlora_mode": "standard"})


def png(path):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(path), dtype=np.int16)


def test_generate_and_merge_from_the_command_line(tmp_path, capsys):
    lora = save_adapter(unet_adapter(), tmp_path / "style.safetensors")
    common = ["--model", "tiny", "--prompt", "a red circle", "--steps", "2", "--seed", "3", "--size", "64x64"]
    assert cli(capsys, "generate", *common, "--out", str(tmp_path / "base.png"))[0] == 0
    assert cli(capsys, "generate", *common, "--lora", f"{lora}:0", "--out", str(tmp_path / "zero.png"))[0] == 0
    code, out, _ = cli(capsys, "generate", *common, "--lora", f"{lora}:1.2", "--scheduler", "dpmpp_2m",
                       "--out", str(tmp_path / "lora.png"))
    assert code == 0 and "style.safetensors:1.2" in out
    base, zero, with_lora = png(tmp_path / "base.png"), png(tmp_path / "zero.png"), png(tmp_path / "lora.png")
    assert base.shape == (64, 64, 3) and (zero == base).all() and abs(with_lora - base).max() > 0
    code, out, _ = cli(capsys, "merge", "--model", "tiny", "--lora", f"{lora}:1.2", "--out", str(tmp_path / "m"))
    assert code == 0 and (tmp_path / "m" / "unet").is_dir()
    assert cli(capsys, "generate", *common, "--model", str(tmp_path / "m"), "--scheduler", "dpmpp_2m",
               "--out", str(tmp_path / "merged.png"))[0] == 0
    assert abs(png(tmp_path / "merged.png") - with_lora).max() <= 2


@pytest.mark.parametrize("argv,fragment", [
    (["--lora", "missing.safetensors:0.5"], "missing.safetensors: no such file"),
    (["--lora", "{lora}:3"], "outside [-2, 2]"),
    (["--size", "64by64"], "--size '64by64'"),
    (["--scheduler", "plms"], "scheduler 'plms' is unknown"),
])
def test_generate_refuses_bad_arguments_with_exit_2(tmp_path, capsys, argv, fragment):
    lora = save_adapter(unet_adapter(), tmp_path / "style.safetensors")
    argv = [a.replace("{lora}", str(lora)) for a in argv]
    code, _, err = cli(capsys, "generate", "--model", "tiny", "--prompt", "x", "--out", str(tmp_path / "o.png"), *argv)
    assert code == 2 and fragment in err and err.count("\n") == 1
    assert not (tmp_path / "o.png").exists()


def test_merge_of_a_non_lora_file_exits_2_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}}, bad)
    code, _, err = cli(capsys, "merge", "--model", "tiny", "--lora", f"{bad}:1", "--out", str(tmp_path / "m"))
    assert code == 2 and "pickled PyTorch checkpoint" in err and not (tmp_path / "m").exists()
