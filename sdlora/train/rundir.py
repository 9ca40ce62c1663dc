"""The run folder (DESIGN.md): outputs/NAME/ with the adapter, config.yaml, events.jsonl, samples/, checkpoints/."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sdlora.atomic import write_text
from sdlora.config import Config, config_from_dict, apply_overrides, read_yaml
from sdlora.errors import SdloraError
from sdlora.events import read_events


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
    write_text(paths.config, config.to_yaml())
    return paths


def has_training(paths: RunPaths) -> bool:
    """Whether the folder holds work worth keeping: an adapter, a checkpoint, or logged training steps."""
    if paths.adapter.exists() or any(paths.checkpoints.glob("step-*")):
        return True
    return any(e.get("event") == "step" for e in read_events(paths.events))


def open_run(run_dir: Path, overrides: list[str]) -> tuple[Config, RunPaths]:
    """Load a run's resolved config.yaml (with `--set` overrides, e.g. more steps) to resume it."""
    run_dir = Path(run_dir)
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise SdloraError(f"--resume {run_dir}: no config.yaml there; give a run folder such as outputs/NAME")
    raw = apply_overrides(read_yaml(config_file), overrides)
    try:
        config = config_from_dict(raw)
    except SdloraError as exc:
        raise SdloraError(f"{config_file}: {exc}") from None
    if overrides:
        from sdlora.network import check_same_network

        check_same_network(config_from_dict(read_yaml(config_file)).network, config.network)
    paths = RunPaths(run_dir, config.name)
    if overrides:
        write_text(paths.config, config.to_yaml())
    return config, paths
