"""The run folder (DESIGN.md): outputs/NAME/ with the adapter, config.yaml, events.jsonl, samples/, checkpoints/."""

from __future__ import annotations

import contextlib
import copy
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from sdlora.atomic import write_text
from sdlora.config import Config, config_from_dict, apply_overrides, read_yaml
from sdlora.errors import SdloraError
from sdlora.events import read_events
from sdlora.lockfile import hold, lock_owner

LOCK_NAME = ".lock"


@dataclass(frozen=True)
class RunPaths:
    root: Path
    name: str

    @property
    def adapter(self) -> Path:
        return self.root / f"{self.name}.safetensors"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def events(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"


def new_run(config: Config) -> RunPaths:
    """Create outputs/NAME for a fresh run; refuse to write over an existing run's files."""
    paths = RunPaths(Path(config.save.output_dir) / config.name, config.name)
    if has_training(paths):
        raise SdloraError(f"{paths.root} already holds a run: continue it with --resume {paths.root}, or start "
                          f"a new one with --set name={config.name}-2")
    paths.root.mkdir(parents=True, exist_ok=True)
    # A folder left by a start that failed before its first step holds nothing to keep: begin it anew.
    paths.events.unlink(missing_ok=True)
    remove_stale_temps(paths.root)
    write_text(paths.config, config.to_yaml())
    return paths


def has_training(paths: RunPaths) -> bool:
    """Whether the folder holds work worth keeping: an adapter, a checkpoint, or logged training steps."""
    if paths.adapter.exists() or any(paths.checkpoints.glob("step-*")):
        return True
    return any(e.get("event") == "step" for e in read_events(paths.events))


def open_run(run_dir: Path, overrides: list[str]) -> tuple[Config, RunPaths, dict[str, list]]:
    """Load a run's resolved config.yaml with `--set` overrides (e.g. more steps) to resume it.

    Returns the config, the paths and the changes ({dotted key: [old, new]}); an override of a key that cannot
    change on resume (sdlora.train.resume.RESUMABLE) is a `SdloraError` naming it. Nothing is written here: the
    caller records the changes (`record_changes`) once it holds the run's lock.
    """
    from sdlora.train.resume import resume_changes

    run_dir = Path(run_dir)
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise SdloraError(f"--resume {run_dir}: no config.yaml there; give a run folder such as outputs/NAME")
    recorded_raw = read_yaml(config_file)
    try:
        recorded = config_from_dict(copy.deepcopy(recorded_raw))
    except SdloraError as exc:
        raise SdloraError(f"{config_file}: {exc}") from None
    config = config_from_dict(apply_overrides(recorded_raw, overrides))
    changes = resume_changes(recorded, config)
    return config, RunPaths(run_dir, config.name), changes


def record_changes(paths: RunPaths, config: Config, changes: dict[str, list]) -> None:
    """config.yaml records what the run trains with from now on (the `start` event records what changed)."""
    if changes:
        write_text(paths.config, config.to_yaml())


@contextlib.contextmanager
def run_lock(root: Path | str, purpose: str = "training") -> Iterator[Path]:
    """Own the run folder for the block: a second writer (`sdlora train`, `--resume`, the app's run, the queue) is
    refused with a `SdloraError` naming this process; the lock of a process killed with -9 is taken over."""
    root = Path(root)
    with contextlib.ExitStack() as stack:
        try:
            root.mkdir(parents=True, exist_ok=True)
            lock = stack.enter_context(hold(root / LOCK_NAME, purpose, what=f"run folder {root}"))
        except OSError as exc:
            raise SdloraError(f"{root}: cannot write the run folder ({exc.strerror or exc}); choose a writable "
                              f"folder with --set save.output_dir=DIR") from None
        yield lock


def check_not_in_use(root: Path | str) -> None:
    """Raise `SdloraError` naming the process that holds the run folder's lock, if a live one does."""
    owner = lock_owner(Path(root) / LOCK_NAME)
    if owner is not None:
        raise SdloraError(f"run folder {root} is in use by process {owner['pid']} ({owner.get('purpose', '?')}); "
                          f"wait for it to finish or stop it first")


def remove_stale_temps(root: Path | str) -> list[Path]:
    """Delete the temp files and folders of writes that a kill cut off (`.NAME.*.tmp`, `.step-N.tmp`).

    Only while holding the run's lock: then no write of this run is under way, so every temp file is dead.
    """
    removed = []
    for path in sorted(Path(root).rglob(".*.tmp")):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed
