"""What the Train tab shows of a run, read from its events.jsonl (the contract in DESIGN.md), nothing else."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdlora.events import EventTail  # noqa: F401  (the Train tab takes it from here)

FINAL = ("done", "stopped", "error")


@dataclass
class RunView:
    step: int = 0
    total: int = 0
    state: str = "idle"  # idle | starting | running | done | stopped | error
    losses: list[tuple[int, float]] = field(default_factory=list)
    lrs: list[tuple[int, float]] = field(default_factory=list)
    history: list[tuple[int, list[str]]] = field(default_factory=list)  # every sample event: (step, images)
    samples_per_s: float | None = None
    eta_s: float | None = None
    sample_images: list[str] = field(default_factory=list)
    sample_step: int | None = None
    messages: list[tuple[str, str]] = field(default_factory=list)  # (kind, text): warnings and errors
    adapter: str | None = None
    validation: list[tuple[int, float]] = field(default_factory=list)  # (step, held-out loss)

    @classmethod
    def from_events(cls, events: list[dict[str, Any]]) -> "RunView":
        view = cls(state="starting" if not events else "running")
        step_times: list[tuple[int, float]] = []
        for e in events:
            kind = e.get("event")
            view.total = int(e.get("total_steps") or view.total)
            if kind == "start":
                view.step = int(e.get("step") or 0)
                view.state, view.adapter = "running", None
                step_times = []  # a resumed run starts timing afresh
            elif kind == "step":
                view.step = int(e["step"])
                loss = e.get("loss")
                if isinstance(loss, (int, float)):
                    # A resumed run repeats nothing, but a restarted one may: keep the last loss per step.
                    while view.losses and view.losses[-1][0] >= view.step:
                        view.losses.pop()
                    view.losses.append((view.step, float(loss)))
                lr = e.get("lr")
                if isinstance(lr, (int, float)):
                    while view.lrs and view.lrs[-1][0] >= view.step:
                        view.lrs.pop()
                    view.lrs.append((view.step, float(lr)))
                view.samples_per_s = e.get("samples_per_s")
                step_times.append((view.step, float(e.get("time", 0))))
            elif kind == "sample":
                view.sample_images = [str(p) for p in e.get("images") or []] or _pngs(e.get("path"))
                view.sample_step = e.get("step")
                view.history = [h for h in view.history if h[0] != view.sample_step]
                view.history.append((int(view.sample_step or 0), view.sample_images))
            elif kind == "validation" and isinstance(e.get("loss"), (int, float)):
                view.validation = [v for v in view.validation if v[0] < int(e["step"])]
                view.validation.append((int(e["step"]), float(e["loss"])))
            elif kind in ("warning", "error"):
                view.messages.append((kind, str(e.get("message", ""))))
            if kind in FINAL:
                view.state = kind
                view.step = int(e.get("step") or view.step)
                view.adapter = e.get("path") if kind != "error" else None
        if view.state == "running":
            view.eta_s = _eta(step_times, view.total)
        return view

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total) if self.total else 0.0

    def progress_html(self) -> str:
        """A progress bar: step of total, percent, ETA and samples/s."""
        parts = [f"step {self.step} of {self.total}" if self.total else "waiting for the run to start"]
        if self.total:
            parts.append(f"{100 * self.fraction:.0f}%")
        if self.eta_s is not None:
            parts.append(f"about {format_remaining(self.eta_s)} left")
        if self.samples_per_s:
            parts.append(f"{self.samples_per_s:.2f} samples/s")
        label = html.escape(" · ".join(parts))
        return (f'<div class="sdlora-progress" data-state="{self.state}" data-step="{self.step}" '
                f'data-total="{self.total}"><div class="sdlora-progress-fill" '
                f'style="width:{100 * self.fraction:.1f}%"></div><span>{label}</span></div>')


def _pngs(folder: Any) -> list[str]:
    if not folder or not Path(folder).is_dir():
        return []
    return [str(p) for p in sorted(Path(folder).glob("*.png"))]


def _eta(step_times: list[tuple[int, float]], total: int, window: int = 20) -> float | None:
    """Remaining steps times the mean step time of the last `window` steps."""
    recent = step_times[-window:]
    if len(recent) < 2 or not total:
        return None
    (s0, t0), (s1, t1) = recent[0], recent[-1]
    if s1 <= s0:
        return None
    return max(0.0, (total - s1) * (t1 - t0) / (s1 - s0))


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_remaining(seconds: float) -> str:
    """A time left in words ("3 min 5 s", "1 h 20 min"), which no one reads as a clock time."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if minutes < 10 and secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"
