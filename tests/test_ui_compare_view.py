"""ui.compare_view: a run's checkpoints listed with steps and validation loss, its base model, and the command line
that gives a cell's image."""

from __future__ import annotations

import shlex

from browser.fixtures import make_run
from ui.compare_view import checkpoint_choices, generate_command, progress_html, run_model
from ui.context import AppContext
from ui.paths import Roots


def test_a_runs_checkpoints_are_listed_by_step_with_their_validation_loss(tmp_path):
    make_run(tmp_path / "outputs" / "cmprun", steps=(10, 20, 30))
    ctx = AppContext(roots=Roots.of(tmp_path))
    assert ctx.runs() == ["outputs/cmprun"]
    choices = checkpoint_choices(ctx, "outputs/cmprun")
    assert [label for label, _ in choices] == ["step 10 · val loss 0.1000", "step 20 · val loss 0.0500",
                                               "step 30 (final) · val loss 0.0333"]
    assert choices[0][1] == "outputs/cmprun/checkpoints/step-000010/cmprun.safetensors"
    assert choices[-1][1] == "outputs/cmprun/cmprun.safetensors"
    assert run_model(ctx, "outputs/cmprun") == "tiny"


def test_a_cell_comes_with_the_generate_line_that_gives_it_and_progress_counts_cells():
    cell = {"model": "tiny", "prompt": "a red circle", "seed": 3, "steps": 20, "guidance": 5.0,
            "adapter": "outputs/r/r.safetensors", "weight": 0.5}
    line = shlex.split(generate_command(cell))
    assert line[:6] == ["sdlora", "generate", "--model", "tiny", "--lora", "outputs/r/r.safetensors:0.5"]
    assert "--seed" in line and line[line.index("--seed") + 1] == "3"
    assert "--lora" not in shlex.split(generate_command({**cell, "weight": 0.0}))  # the base cell has none
    assert "3/12 cells" in progress_html(3, 12) and "width:25.0%" in progress_html(3, 12)
