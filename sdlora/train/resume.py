"""Resuming a run: which settings may change on `--resume`, and where the resumed run starts.

Both are decided before anything is written, so a refused resume leaves the run folder as it was (config.yaml,
events.jsonl and checkpoints untouched) and a later plain `--resume` still works.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdlora.atomic import atomic_path
from sdlora.config import Config
from sdlora.errors import SdloraError
from sdlora.train.checkpoint import Checkpoint, list_checkpoints
from sdlora.train.rundir import RunPaths

# What may change on resume: how long the run goes on (and with it where a decaying lr schedule ends), sampling,
# saving, and how often progress is read back. Every other key shaped the weights, the optimizer state or the
# data order of the steps already taken (network shape, targets, type, data set, seed, batch, lr, model...):
# changing it would train another run than config.yaml says, or fail on tensor shapes. A section ends with ".".
RESUMABLE = ("train.steps", "train.report_every", "train.max_bad_steps", "train.validate_every", "train.log_with",
             "data.num_workers", "sample.", "save.every", "save.keep_checkpoints", "save.format", "save.dtype")


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def may_change(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE)


def resume_changes(recorded: Config, wanted: Config) -> dict[str, list]:
    """{dotted key: [recorded, wanted]} for each key that differs; `SdloraError` for the first that may not."""
    old, new = _flatten(recorded.to_dict()), _flatten(wanted.to_dict())
    changes = {}
    for key, value in new.items():
        if old.get(key) == value:
            continue
        if not may_change(key):
            raise SdloraError(f"{key}: cannot change on --resume (the run was trained with {old.get(key)!r}, not "
                              f"{value!r}); only train.steps, sampling and saving may change. Start a new run for "
                              f"it (--set name=NEW)")
        changes[key] = [old.get(key), value]
    return changes


@dataclass
class ResumePlan:
    checkpoint: Checkpoint | None  # None: no complete checkpoint, the run starts again from step 0
    finished: bool = False  # the run had trained every step; only its final adapter was missing
    note: str | None = None  # a warning for the run's events


def plan_resume(config: Config, paths: RunPaths) -> ResumePlan:
    """Where `--resume` starts, or a `SdloraError` (before any event is written) when there is nothing to do."""
    checkpoints = list_checkpoints(paths.checkpoints)
    if not checkpoints:
        return ResumePlan(None, note=f"no complete checkpoint in {paths.checkpoints}: training starts again from "
                                     f"step 0 with the run's config.yaml")
    latest = checkpoints[-1]
    if latest.step < config.train.steps:
        return ResumePlan(latest)
    saved = latest.path / paths.adapter.name
    if not paths.adapter.is_file() and saved.is_file():
        return ResumePlan(latest, finished=True)
    raise SdloraError(f"{paths.root}: already trained {latest.step} of {config.train.steps} steps; continue with "
                      f"--set train.steps=N (N > {latest.step})")


def finish_from_checkpoint(plan: ResumePlan, paths: RunPaths) -> Path:
    """Write the final adapter of a finished run from its last checkpoint (a copy of the same bytes)."""
    with atomic_path(paths.adapter) as tmp:
        shutil.copyfile(plan.checkpoint.path / paths.adapter.name, tmp)
    return paths.adapter
