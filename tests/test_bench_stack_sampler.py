"""bench/stack_sampler.py, which round eight's start figures come from (docs/PERFORMANCE.md): the wall time it
accounts for is the command's, and it lands on the sdlora step that spent it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from conftest import make_shape_folder

ROOT = Path(__file__).resolve().parent.parent


def test_sampler_accounts_for_a_dry_run_and_names_the_model_load(tmp_path):
    data = make_shape_folder(tmp_path / "data", count=4)
    out = tmp_path / "sampled.json"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "stack_sampler.py"), str(out), "train", "--preset",
                           str(ROOT / "presets" / "demo.yaml"), "--set", f"data.dir={data}", "--set",
                           "data.reg_dir=", "--dry-run"], capture_output=True, text=True, cwd=tmp_path)
    wall = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = json.loads(out.read_text())
    sampled = sum(found["by_sdlora"].values())
    # Every sample is charged the time since the last one, so the total is the command's wall time (less the
    # interpreter's start before the sampler runs), and the shares are of that.
    assert 0.8 * wall < sampled <= found["wall_s"] + 0.05 < wall
    assert found["samples"] > 50
    # --dry-run loads the model (config checks against it): the largest share of its time, named by the frame.
    load = sum(v for k, v in found["by_sdlora"].items() if k.startswith("models/loading.py"))
    assert load > 0.3 * sampled
    assert any(k.startswith("models/loading.py:load_components | ") for k in found["phases"])
    assert sum(found["stacks"].values()) <= sampled + 0.01
    # Outermost first: the loader's frame comes before the frames it called.
    assert any("models/loading.py:load_components;" in stack for stack in found["stacks"])
    assert found["timeline"] and all(len(entry) == 3 for entry in found["timeline"])
