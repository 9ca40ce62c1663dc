"""ui.runs and ui.sample_sheet: the Runs list says each run's state from its events; a run goes to the trash, not
away; the sample sheet has a row per sample step and a column per prompt."""

from __future__ import annotations

import json
import os
import time

import pytest
from PIL import Image

from sdlora.errors import SdloraError
from ui.display import upscaled
from ui.runs import holds_training, run_row, trash_run
from ui.sample_sheet import file_url, sheet_html


def make_run(outputs, name, events, age_s=0.0):
    run = outputs / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"name: {name}\n")
    path = run / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    old = time.time() - age_s
    os.utime(path, (old, old))
    return run


def test_states_steps_and_adapter_come_from_the_events(tmp_path):
    out = tmp_path / "outputs"
    start = {"event": "start", "time": 1e9, "step": 0, "total_steps": 10}
    done = make_run(out, "done", [start, {"event": "step", "time": 1e9, "step": 10, "total_steps": 10, "loss": 1},
                                  {"event": "done", "time": 1e9, "step": 10, "total_steps": 10}])
    (done / "done.safetensors").write_bytes(b"x")
    failed = make_run(out, "failed", [{"event": "error", "time": 1e9, "message": "too small"}])
    gone = make_run(out, "gone", [start, {"event": "step", "time": 1e9, "step": 3, "total_steps": 10, "loss": 1}],
                    age_s=3600)
    live = make_run(out, "live", [start, {"event": "step", "time": 1e9, "step": 3, "total_steps": 10, "loss": 1},
                                  {"event": "validation", "time": 1e9, "step": 3, "loss": 0.125}])
    rows = {r.name: r for r in (run_row(tmp_path, d) for d in (done, failed, gone, live))}
    assert (rows["done"].state, rows["done"].step, rows["done"].total, rows["done"].adapter) == \
        ("done", 10, 10, "done.safetensors")
    assert rows["failed"].state == "error" and rows["failed"].adapter == ""
    assert rows["gone"].state == "interrupted"  # not final, silent for an hour: nothing trains it
    assert rows["live"].state == "running"  # written just now: maybe another process
    assert rows["live"].cells()[5] == "0.125" and rows["done"].cells()[5] == ""  # validation loss once it exists
    assert rows["done"].cells()[:3] == ["done", "done", "10 / 10"] and rows["done"].path == "outputs/done"
    assert holds_training(done) and holds_training(gone) and not holds_training(failed)


def test_trash_moves_a_run_aside_and_refuses_one_that_may_be_training(tmp_path):
    out = tmp_path / "outputs"
    failed = make_run(out, "failed", [{"event": "error", "time": 1e9, "message": "x"}])
    where = trash_run(out, failed)
    assert not failed.exists() and where.parent == out / ".trash" and where.name.startswith("failed-")
    assert (where / "events.jsonl").is_file()
    live = make_run(out, "live", [{"event": "start", "time": 1e9, "step": 0, "total_steps": 5}])
    with pytest.raises(SdloraError, match="may be training in another process"):
        trash_run(out, live)
    assert live.exists()


def test_the_sample_sheet_is_step_by_prompt(tmp_path):
    history = []
    for step in (0, 5):
        folder = tmp_path / f"step-{step:06d}"
        folder.mkdir()
        (folder / "prompts.txt").write_text("a red circle\na blue square\n")
        images = []
        for i in range(2):
            Image.new("RGB", (8, 8)).save(folder / f"{i:02d}.png")
            images.append(str(folder / f"{i:02d}.png"))
        history.append((step, images))
    table = sheet_html(list(reversed(history)))
    assert table.index('data-step="5"') < table.index('data-step="0"')  # newest step on top
    assert "<th>a red circle</th><th>a blue square</th>" in table
    assert table.count("<img") == 4 and f'href="{file_url(history[1][1][1])}"' in table
    assert 'title="step 5 · a blue square"' in table
    assert "No samples yet" in sheet_html([])


def test_small_images_are_shown_scaled_up_with_sharp_pixels():
    image = Image.new("RGB", (64, 32))
    image.putpixel((0, 0), (255, 0, 0))
    big = upscaled(image)
    assert big.size == (256, 128)
    assert big.getpixel((3, 3)) == (255, 0, 0) and big.getpixel((4, 4)) == (0, 0, 0)  # nearest: a 4x4 block
    assert upscaled(Image.new("RGB", (300, 200))).size == (300, 200)
