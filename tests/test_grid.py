"""`sdlora grid` end to end: a run folder's checkpoints x weights x prompts, every cell what `sdlora generate` gives
for the same settings, the sheet, cell files and index beside it; bad input is one line naming the argument."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_adapters_blend import TEXT, UNET
from test_adapters_fixtures import make_adapter, tiny_pipeline

from sdlora.adapters import save_adapter
from sdlora.cli import main
from sdlora.grid.plan import MAX_CELLS

LCM_META = {"sdlora_mode": "lcm", "sdlora_lcm_scheduler": "lcm", "sdlora_lcm_steps": "3", "sdlora_lcm_guidance": "1.5",
            "sdlora_lcm_original_steps": "25", "sdlora_lcm_timestep_scaling": "10.0"}


def write_run(folder, pipe, steps=(10, 20), name="shapes"):
    """A run folder as the trainer leaves it (DESIGN.md): config.yaml, checkpoints/step-N/ with the adapter and
    trainer_state.json, and the final adapter, whose step is the last checkpoint's."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"name: {name}\nmodel: tiny\n", encoding="utf-8")
    for i, step in enumerate(steps):
        ckpt = folder / "checkpoints" / f"step-{step:06d}"
        ckpt.mkdir(parents=True)
        adapter = make_adapter(pipe, ("to_q", "to_k", "to_v", "to_out.0", "conv1"), rank=4, alpha=4.0, seed=10 + i,
                               metadata={"sdlora_mode": "standard", "ss_steps": str(step)})
        save_adapter(adapter, ckpt / f"{name}.safetensors")
        (ckpt / "trainer_state.json").write_text(json.dumps({"step": step}), encoding="utf-8")
    if steps:
        save_adapter(adapter, folder / f"{name}.safetensors")
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("grid")
    pipe = tiny_pipeline()
    style = make_adapter(pipe, UNET, TEXT, rank=4, alpha=2.0, seed=1)  # UNet attention, conv and text encoder
    lcm = make_adapter(pipe, ("to_k", "to_v"), rank=2, alpha=2.0, seed=3, metadata=LCM_META)
    return {"run": write_run(folder / "outputs" / "shapes", pipe),
            "style": save_adapter(style, folder / "style.safetensors", fmt="diffusers"),
            "lcm": save_adapter(lcm, folder / "fast.safetensors"),
            "empty": write_run(folder / "outputs" / "empty", pipe, steps=())}  # started, no adapter yet


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def generate(capsys, tmp_path, cell, model="tiny", **extra):
    out = tmp_path / "generated.png"
    args = ["generate", "--model", model, "--prompt", cell["prompt"], "--seed", cell["seed"], "--out", out]
    if cell["weight"]:
        args += ["--lora", f"{cell['adapter']}:{cell['weight']}"]
    for key, value in extra.items():
        args += [f"--{key}", value]
    code, _, err = cli(capsys, *args)
    assert code == 0, err
    return pixels(out)


def test_every_cell_of_a_run_grid_equals_sdlora_generate(inputs, tmp_path, capsys):
    out = tmp_path / "cmp" / "grid.png"
    code, stdout, err = cli(capsys, "grid", "--model", "tiny", "--lora", inputs["run"], inputs["style"],
                            "--weights", "0.5,1", "--prompt", "a red circle", "a blue square", "--seed", 3,
                            "--steps", 3, "--guidance", 5, "--batch", 5, "--out", out, "--json")
    assert code == 0, err
    index = json.loads(stdout)
    assert index == json.loads((tmp_path / "cmp" / "grid.json").read_text())
    # the run folder gives its checkpoints in step order, the final adapter once (same step as the last one)
    labels = [c["label"] for c in index[::6]]
    assert labels == ["step 10", "step 20 (final)", "style"]
    assert index[6]["adapter"] == str(inputs["run"] / "shapes.safetensors")
    assert [(c["weight"], c["prompt"]) for c in index[:6]] == [
        (0.0, "a red circle"), (0.0, "a blue square"), (0.5, "a red circle"), (0.5, "a blue square"),
        (1.0, "a red circle"), (1.0, "a blue square")]
    assert all(c["seed"] == 3 and c["steps"] == 3 and c["guidance"] == 5 for c in index)
    files = {c["file"] for c in index}
    assert len(files) == 2 + 3 * 4  # one base image per prompt, shared by the rows
    assert all(Path(f).is_file() and Path(f).parent == tmp_path / "cmp" / "grid-cells" for f in files)
    sheet = Image.open(out)
    assert sheet.width > 6 * 128 and sheet.height > 3 * 128  # 64 px cells shown at 128 px with labels around
    base = pixels(index[0]["file"])
    for cell in (index[0], index[3], index[10], index[17]):  # base; step 10 at 0.5; final at 1; style at 1
        expected = generate(capsys, tmp_path, cell, steps=3, guidance=5)
        assert np.abs(pixels(cell["file"]) - expected).max() <= 2, cell  # float rounding of batched matmuls
        if cell["weight"]:
            assert np.abs(pixels(cell["file"]) - pixels(index[cell["column"] % 2]["file"])).mean() > 1
    assert np.abs(base - pixels(index[1]["file"])).mean() > 1  # the prompts differ


def test_an_lcm_adapter_gets_its_own_steps_and_guidance_as_generate_gives_it(inputs, tmp_path, capsys):
    out = tmp_path / "lcm.png"
    code, stdout, err = cli(capsys, "grid", "--model", "tiny", "--lora", inputs["lcm"], "--weights", "1",
                            "--prompt", "a green square", "--out", out, "--json")
    assert code == 0, err
    base, lcm = json.loads(stdout)
    assert (base["steps"], base["guidance"]) == (25, 7.5)
    assert (lcm["steps"], lcm["guidance"], lcm["scheduler"]) == (3, 1.5, "lcm")
    assert np.abs(pixels(lcm["file"]) - generate(capsys, tmp_path, lcm)).max() <= 2


def test_another_network_type_falls_back_to_one_adapter_per_batch_with_a_note(tmp_path, capsys):
    pipe = tiny_pipeline()
    other = make_adapter(pipe, ("to_q",), rank=2, seed=4, metadata={"sdlora_network_type": "dora"})
    path = save_adapter(other, tmp_path / "other.safetensors")
    code, stdout, err = cli(capsys, "grid", "--model", "tiny", "--lora", path, "--weights", "1", "--prompt", "a cat",
                            "--steps", 2, "--out", tmp_path / "g.png", "--json")
    assert code == 0, err
    assert "note: " in err and "other.safetensors: network type 'dora', sampled one adapter at a time" in err
    cell = json.loads(stdout)[1]
    assert np.abs(pixels(cell["file"]) - generate(capsys, tmp_path, cell, steps=2)).max() <= 2


def test_a_lokr_and_a_loha_batch_beside_each_other_with_no_note(tmp_path, capsys):
    from test_network_types import file_of, trained_pipe

    base = tiny_pipeline()
    paths = [file_of(trained_pipe(base, kind), tmp_path, kind) for kind in ("lokr", "loha")]
    code, stdout, err = cli(capsys, "grid", "--model", "tiny", "--lora", *paths, "--weights", "1", "--prompt",
                            "a cat", "--steps", 2, "--out", tmp_path / "g.png", "--json")
    assert code == 0, err
    assert "note: " not in err  # no one-at-a-time fallback
    cells = json.loads(stdout)
    for cell in cells:
        if cell["weight"]:
            assert np.abs(pixels(cell["file"]) - generate(capsys, tmp_path, cell, steps=2)).max() <= 2


def test_bad_input_is_one_line_naming_the_argument(inputs, tmp_path, capsys):
    pipe = tiny_pipeline()
    xl = save_adapter(make_adapter(pipe, ("to_k",), rank=2, metadata={"ss_base_model_version": "sdxl_base_v1-0"}),
                      tmp_path / "xl.safetensors")
    base = ["grid", "--model", "tiny", "--prompt", "a cat", "--out", tmp_path / "bad.png"]
    cases = [
        (["--lora", inputs["empty"]], r"--lora .*empty: this run folder holds no adapter yet"),
        (["--lora", tmp_path / "missing"], r"--lora .*missing: no such file or folder"),
        (["--lora", inputs["style"], "--weights", "0.5,2.5"], r"--weights 2.5: weight 2.5 is outside \[-2, 2\]"),
        (["--lora", inputs["style"], "--weights", "0.5,x"], r"--weights '0.5,x': 'x' is not a number"),
        (["--lora", *[inputs["style"]] * 40, "--weights", "0.5,1"],
         rf"--max-cells: the grid has 120 cells \(40 adapters x 3 weights x 1 prompts\), over the limit of "
         rf"{MAX_CELLS}; .* raise the limit with --max-cells 120"),
        (["--lora", xl], r"xl.safetensors: this LoRA is for sdxl .* but the model is an SD 1.x/2.x model"),
    ]
    for extra, message in cases:
        code, out, err = cli(capsys, *base, *extra)
        assert code == 2 and re.search(message, err), (extra, err)
        assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "bad.png").exists()


@pytest.mark.slow
def test_an_sdxl_grid_equals_sdlora_generate(tmp_path, capsys):
    """SDXL's two text encoders, pooled embeddings and micro-conditioning go through the batched path too."""
    from architectures import random_sdxl_pipeline
    from sdlora.models.storage import save_pipeline_folder

    pipe = random_sdxl_pipeline(seed=0, tiny=True)
    model = save_pipeline_folder(pipe, tmp_path / "xl-model") or tmp_path / "xl-model"
    meta = {"sdlora_mode": "standard", "ss_base_model_version": "sdxl_base_v1-0"}
    adapter = make_adapter(pipe, ("to_q", "to_k", "to_v", "to_out.0"), ("q_proj", "v_proj"), rank=2, alpha=2.0,
                           seed=7, metadata=meta)
    path = save_adapter(adapter, tmp_path / "xl.safetensors")
    out = tmp_path / "xl-grid.png"
    code, stdout, err = cli(capsys, "grid", "--model", model, "--lora", path, "--weights", "1", "--prompt",
                            "a red circle", "a blue square", "--steps", 2, "--size", "64x64", "--scheduler", "euler",
                            "--out", out, "--json")
    assert code == 0, err
    index = json.loads(stdout)
    for cell in (index[0], index[3]):  # the base for the first prompt; the adapter for the second
        expected = generate(capsys, tmp_path, cell, model=model, steps=2, size="64x64", scheduler="euler")
        assert np.abs(pixels(cell["file"]) - expected).max() <= 2, cell
    assert np.abs(pixels(index[3]["file"]) - pixels(index[1]["file"])).mean() > 0.5
