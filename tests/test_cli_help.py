"""`sdlora COMMAND --help` says what the command does and shows examples; train says --preset or --resume is
required; generate explains --prompt and --seed."""

from __future__ import annotations

import pytest

from sdlora.cli import build_parser
from sdlora.commands.helptext import HELP


def help_text(command: str) -> str:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices[command].format_help()


@pytest.mark.parametrize("command", sorted(HELP))
def test_each_subcommand_has_a_description_and_examples(command):
    text = help_text(command)
    assert "examples:\n" in text
    examples = text.split("examples:\n", 1)[1].splitlines()
    assert examples and all(line.strip().startswith("sdlora " + command) for line in examples if line.strip())
    assert HELP[command][0].split()[0] in text  # the description is printed


def test_train_help_says_preset_or_resume_is_required_and_generate_explains_prompt_and_seed():
    train = " ".join(help_text("train").split())
    assert "one of the two is required" in train and "this or --resume is required" in train
    generate = " ".join(help_text("generate").split())
    assert "--prompt PROMPT what to draw" in generate and "--seed SEED random seed" in generate


def test_grid_help_names_the_batch_it_uses():
    """The grid's parser states its default batch without importing sdlora.adapters.serving (see below); the
    number it states is the one the grid runs with."""
    from sdlora.adapters.serving import DEFAULT_BATCH

    assert f"(default {DEFAULT_BATCH}, as the Preview)" in " ".join(help_text("grid").split())


def test_the_parser_and_the_light_commands_start_without_torch(tmp_path):
    """`sdlora --help`, `sdlora queue list` and every other command's parser import no torch, diffusers or
    bitsandbytes: they answer at once (0.3 s, where building the grid command's parser once took 5 s by importing
    sdlora.adapters.serving), and each test that calls the CLI waits that much less."""
    import subprocess
    import sys

    code = ("import sys\nfrom sdlora.cli import build_parser, main\nbuild_parser()\n"
            "status = main(['queue', 'list', '--json'])\n"
            "heavy = sorted(m for m in ('torch', 'diffusers', 'bitsandbytes', 'transformers') if m in sys.modules)\n"
            "print('heavy:', heavy, 'status:', status)")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "heavy: [] status: 0", done.stdout
