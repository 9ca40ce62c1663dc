"""What the tabs share within one app process: the allowed roots, the training run, the limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ui.paths import Roots
from ui.runner import TrainingProcess
from ui.uploads import Limits


@dataclass
class AppContext:
    roots: Roots
    limits: Limits = field(default_factory=Limits)
    runner: TrainingProcess | None = None
    batch_engine: object = None  # ui.batch_engine.BatchEngine: the Compare view's and the API's generations

    def __post_init__(self) -> None:
        if self.runner is None:
            self.runner = TrainingProcess(self.roots.project)
        if self.batch_engine is None:
            from ui.batch_engine import BatchEngine

            self.batch_engine = BatchEngine()

    @property
    def project(self) -> Path:
        return self.roots.project

    @property
    def presets_dir(self) -> Path:
        return self.project / "presets"

    @property
    def outputs_dir(self) -> Path:
        return self.project / "outputs"

    def presets(self) -> list[str]:
        """Preset names (file stems) in presets/."""
        if not self.presets_dir.is_dir():
            return []
        return sorted(p.stem for p in self.presets_dir.glob("*.yaml") if self.roots.contains(p))

    def runs(self) -> list[str]:
        """Run folders in outputs/ (those with a config.yaml), newest first, as paths relative to the project."""
        if not self.outputs_dir.is_dir():
            return []
        found = [p.parent for p in self.outputs_dir.glob("*/config.yaml") if self.roots.contains(p)]
        found.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        return [str(p.relative_to(self.project)) for p in found]
