"""What `sdlora COMMAND --help` says above and below the options: a description and examples, per subcommand.

Kept apart from the parsers so each command module stays about its options; `sdlora.cli` applies these after the
modules register. A command without an entry keeps argparse's plain help.
"""

from __future__ import annotations

import argparse
import textwrap

HELP: dict[str, tuple[str, list[str]]] = {
    "train": ("Train a LoRA from a preset (presets/*.yaml), or continue a run. Give --preset FILE for a new run "
              "or --resume RUN_DIR to continue one: one of the two is required. The run folder outputs/NAME gets "
              "the adapter, config.yaml, events.jsonl, samples/ and checkpoints/. Ctrl-C stops after the current "
              "step and saves.",
              ["sdlora train --preset presets/demo.yaml",
               "sdlora train --preset presets/style.yaml --set model=/models/sd15 --set data.dir=/data/style",
               "sdlora train --preset presets/demo.yaml --dry-run",
               "sdlora train --resume outputs/demo --set train.steps=300"]),
    "generate": ("Render one image from a base model with any number of LoRA files blended at chosen weights "
                 "(an LCM adapter brings its own scheduler, steps and guidance).",
                 ["sdlora generate --model tiny --lora outputs/demo/demo.safetensors --prompt 'a sks ring' "
                  "--out ring.png",
                  "sdlora generate --model /models/sd15 --lora a.safetensors:0.8 --lora b.safetensors:-0.3 "
                  "--prompt 'a cat' --seed 7 --size 512x768 --out cat.png"]),
    "inspect": ("Show what a LoRA file holds: format, base-model family, ranks, targets, training metadata, and per "
                "layer the update's norm |dW| and effective rank (how many directions hold 90% of it).",
                ["sdlora inspect outputs/demo/demo.safetensors",
                 "sdlora inspect adapter.safetensors --json > report.json"]),
    "convert": ("Rewrite a LoRA file's keys in kohya format (A1111, ComfyUI) or diffusers/PEFT format; the tensors "
                "are kept bit for bit.",
                ["sdlora convert outputs/demo/demo.safetensors demo-diffusers.safetensors --to diffusers"]),
    "merge": ("Merge weighted LoRA files into the base model's weights and save the result as a diffusers folder "
              "(a model that needs no LoRA loading).",
              ["sdlora merge --model tiny --lora outputs/demo/demo.safetensors:0.8 --out models/tiny-demo"]),
    "resize": ("Lower a LoRA's rank: each layer becomes the best rank-R approximation of its update (truncated "
               "SVD); prints the share of energy kept per layer. A DyLoRA file is truncated instead.",
               ["sdlora resize adapter.safetensors --rank 8 --out adapter-r8.safetensors"]),
    "dataset": ("Check a training data folder as training would read it: images, sizes, buckets, captions, and "
                "the files that are skipped or suspicious.",
                ["sdlora dataset check examples/demo --resolution 64",
                 "sdlora dataset check /data/style --buckets --json"]),
    "caption": ("Write a caption file beside each image of a folder with a captioning model you have (a "
                "transformers image-to-text model or a WD14 tagger folder); existing captions are kept unless "
                "--overwrite.",
                ["sdlora caption datasets/mine --model /models/blip-base --prefix 'sks, '",
                 "sdlora caption datasets/mine --model /models/wd14 --threshold 0.4 --overwrite --json"]),
    "queue": ("Queue trainings and run them one after another (outputs/queue.json, shared with the app's Queue "
              "panel): add jobs, list them, run the queue, cancel or resume a job.",
              ["sdlora queue add --preset presets/demo.yaml --set train.steps=200",
               "sdlora queue list --json", "sdlora queue run", "sdlora queue cancel 3"]),
    "models": ("List the built-in models (no files needed) and the diffusers-format folders they live in.",
               ["sdlora models", "sdlora models --json"]),
}


def apply(parsers: dict[str, argparse.ArgumentParser]) -> None:
    """Give each registered subcommand parser its description and examples."""
    for name, parser in parsers.items():
        if name not in HELP:
            continue
        description, examples = HELP[name]
        parser.description = textwrap.fill(description, width=100)
        parser.epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples)
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
