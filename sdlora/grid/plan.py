"""What a grid shows: the adapters (a run folder stands for its checkpoints and final adapter), the weights, the
prompts, and the cells they make, checked before any model is loaded."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sdlora.errors import SdloraError

DEFAULT_WEIGHTS = (0.0, 0.5, 1.0)
MAX_CELLS = 100  # rows x columns; `--max-cells` raises it (each cell is one image to sample)
ADAPTER_SUFFIX = ".safetensors"
CHECKPOINT_STATE = "trainer_state.json"  # sdlora.train.checkpoint: its presence marks a complete checkpoint


@dataclass(frozen=True)
class GridSource:
    """One row of the grid: an adapter file and its label (the file, or the run's checkpoint step)."""

    path: Path
    label: str
    step: int | None = None
    run: Path | None = None


@dataclass(frozen=True)
class Cell:
    row: int
    column: int
    source: GridSource
    weight: float
    prompt_index: int
    prompt: str

    @property
    def is_base(self) -> bool:
        return self.weight == 0.0


def expand_sources(specs: list[str], what: str = "--lora") -> list[GridSource]:
    """Adapter files and run folders -> grid rows; a run folder gives its checkpoints and final adapter, in step
    order (the final one once, when the last checkpoint is the same step)."""
    if not specs:
        raise SdloraError(f"{what}: give at least one adapter file or run folder")
    sources: list[GridSource] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir() and not (path / "pytorch_lora_weights.safetensors").is_file():
            sources += run_sources(path, what)
        elif path.is_file() or path.is_dir():
            sources.append(GridSource(path, path.stem if path.is_file() else path.name))
        else:
            raise SdloraError(f"{what} {spec}: no such file or folder; give a LoRA .safetensors file or a run "
                              f"folder such as outputs/NAME")
    return sources


def run_sources(run: Path, what: str = "--lora") -> list[GridSource]:
    """A run folder's checkpoints (checkpoints/step-N/NAME.safetensors) and final adapter, by step."""
    name = _run_name(run)
    found: dict[int | None, GridSource] = {}
    for folder in sorted((run / "checkpoints").glob("step-*")):
        state, adapter = folder / CHECKPOINT_STATE, folder / f"{name}{ADAPTER_SUFFIX}"
        if state.is_file() and adapter.is_file():  # a checkpoint cut off while written has no state file
            step = int(json.loads(state.read_text(encoding="utf-8"))["step"])
            found[step] = GridSource(adapter, f"step {step}", step, run)
    final = run / f"{name}{ADAPTER_SUFFIX}"
    if final.is_file():
        step = _adapter_steps(final)
        label = f"step {step} (final)" if step is not None else "final"
        found[step] = GridSource(final, label, step, run)  # the same step as the last checkpoint: once
    if not found:
        raise SdloraError(f"{what} {run}: this run folder holds no adapter yet (no {name}{ADAPTER_SUFFIX}, no "
                          f"checkpoints/step-*/{name}{ADAPTER_SUFFIX}); train it first or give an adapter file")
    return sorted(found.values(), key=lambda s: (s.step is None, s.step or 0))


def _run_name(run: Path) -> str:
    """The run's name from its config.yaml (the adapter files carry it), else the folder's name."""
    config = run / "config.yaml"
    if config.is_file():
        import yaml

        try:
            name = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("name")
        except (yaml.YAMLError, AttributeError):
            name = None
        if isinstance(name, str) and name:
            return name
    return run.name


def _adapter_steps(path: Path) -> int | None:
    from sdlora.lora.metadata import read_metadata
    from sdlora.tensorfile import read_safetensors

    try:
        return read_metadata(read_safetensors(path, tensors=False)[1]).steps
    except SdloraError:  # no metadata or not a number: the label says "final"; a damaged file fails on loading
        return None


def parse_weights(text: str | None, what: str = "--weights") -> list[float]:
    """`0,0.5,1` -> weights in the library's range, base (0) first, each once."""
    from sdlora.adapters.blend import check_weight

    if text is None:
        return list(DEFAULT_WEIGHTS)
    weights = [0.0]
    for part in text.split(","):
        try:
            weight = float(part)
        except ValueError:
            raise SdloraError(f"{what} '{text}': '{part.strip()}' is not a number; give weights like "
                              f"0,0.5,1") from None
        weight = check_weight(weight, f"{what} {part.strip()}") + 0.0  # -0.0 is the base too
        if weight not in weights:
            weights.append(weight)
    return weights


def plan_cells(sources: list[GridSource], weights: list[float], prompts: list[str],
               max_cells: int = MAX_CELLS) -> list[Cell]:
    """One row per source, one column per weight x prompt (weight-major, the base weight first)."""
    if not prompts or any(not p.strip() for p in prompts):
        raise SdloraError("--prompt: give at least one prompt, none of them empty")
    columns = [(w, i) for w in weights for i in range(len(prompts))]
    total = len(sources) * len(columns)
    if total > max_cells:
        raise SdloraError(f"--max-cells: the grid has {total} cells ({len(sources)} adapters x {len(weights)} "
                          f"weights x {len(prompts)} prompts), over the limit of {max_cells}; give fewer, or raise "
                          f"the limit with --max-cells {total}")
    return [Cell(r, c, source, w, i, prompts[i]) for r, source in enumerate(sources)
            for c, (w, i) in enumerate(columns)]
