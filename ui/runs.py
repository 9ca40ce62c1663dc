"""The run folders of the project as the Runs list shows them, and what the app may do to one that is not running:
move it to the trash (outputs/.trash/, nothing is deleted for good) or find that it holds no training yet.

State comes from the run's events.jsonl (the contract in DESIGN.md) through `RunView`, so the list says what the
Train tab would say about each run.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from sdlora.errors import SdloraError
from sdlora.events import read_events
from sdlora.train.rundir import RunPaths, has_training
from ui.run_view import FINAL, RunView

TRASH = ".trash"
QUIET_S = 120  # a run not final whose events.jsonl is older than this is taken as not running anywhere


@dataclass(frozen=True)
class RunRow:
    path: str  # relative to the project, e.g. outputs/demo
    name: str
    state: str  # running | starting | done | stopped | error | interrupted | new
    step: int
    total: int
    date: str
    adapter: str
    val_loss: float | None = None  # the last `validation` event's loss, where the run validates

    def cells(self) -> list:
        steps = f"{self.step} / {self.total}" if self.total else ""
        val = "" if self.val_loss is None else f"{self.val_loss:.4g}"
        return [self.name, self.state, steps, self.date, self.adapter, val, self.path]


COLUMNS = ["name", "state", "steps", "date", "adapter", "val. loss", "folder"]


def run_row(project: Path, run_dir: Path, running_here: bool = False) -> RunRow:
    events = list(read_events(run_dir / "events.jsonl"))
    view = RunView.from_events(events)
    state = view.state if events else "new"
    if state in ("running", "starting") and not running_here and not seems_alive(run_dir, events):
        state = "interrupted"
    if running_here:
        state = view.state if view.state in ("running", "starting") else "starting"
    adapter = run_dir / f"{run_dir.name}.safetensors"
    stamp = events[0].get("time") if events else (run_dir / "config.yaml").stat().st_mtime
    return RunRow(path=str(run_dir.relative_to(project)), name=run_dir.name, state=state, step=view.step,
                  total=view.total, date=time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp)),
                  adapter=adapter.name if adapter.is_file() else "",
                  val_loss=next((float(e["loss"]) for e in reversed(events)
                                 if e.get("event") == "validation" and isinstance(e.get("loss"), (int, float))),
                                None))


def seems_alive(run_dir: Path, events: list[dict]) -> bool:
    """A run whose last event is not final and was written recently: another process may be training it."""
    if events and events[-1].get("event") in FINAL:
        return False
    path = run_dir / "events.jsonl"
    return path.is_file() and time.time() - path.stat().st_mtime < QUIET_S


def holds_training(run_dir: Path) -> bool:
    """Whether starting afresh would throw work away (an adapter, a checkpoint, logged steps): as `sdlora train`."""
    return has_training(RunPaths(run_dir, run_dir.name))


def trash_run(outputs: Path, run_dir: Path) -> Path:
    """Move `run_dir` to outputs/.trash/NAME-YYYYmmdd-HHMMSS; returns where it went."""
    run_dir = Path(run_dir)
    if seems_alive(run_dir, list(read_events(run_dir / "events.jsonl"))):
        raise SdloraError(f"{run_dir.name}: its events.jsonl was written in the last {QUIET_S} s, so it may be "
                          f"training in another process; stop it there first")
    trash = Path(outputs) / TRASH
    trash.mkdir(parents=True, exist_ok=True)
    target = trash / f"{run_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while target.exists():
        n += 1
        target = trash / f"{run_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}-{n}"
    shutil.move(str(run_dir), str(target))
    return target


def status_markdown(view: RunView, run_dir: Path | None, runner, events: list) -> str:
    """What the Train tab says about the picked run: going here, elsewhere, done, stopped, failed, and why."""
    mine = runner.run_dir is not None and run_dir is not None and runner.run_dir.resolve() == run_dir.resolve()
    code = runner.returncode if mine else None
    lines = []
    if run_dir is None:
        return "No run yet: choose a preset, adjust the settings and press **Start**."
    name = run_dir.name
    if mine and runner.running:
        going = "training" if view.state == "running" and view.total else "starting (loading the model and data)"
        lines.append(f"⏳ **{name}** is {going}…")
    elif view.state == "done":
        lines.append(f"✅ **{name}** is done: adapter `{view.adapter}`")
    elif view.state == "stopped":
        lines.append(f"⏹ **{name}** stopped at step {view.step} of {view.total}; **Resume** continues it.")
    elif view.state == "error":
        lines.append(f"❌ **{name}** failed: {_last_error(view)} · **Retry** starts it again with the settings "
                     f"above, **Delete** moves it to the trash.")
    elif mine and code is not None and code != 0:
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        hint = " (out of memory?)" if code in (-9, 137) else ""
        lines.append(f"❌ **{name}**: the training process {how}{hint}: `{runner.last_line() or 'no output'}`")
    elif view.state in ("running", "starting") and seems_alive(run_dir, events):
        lines.append(f"⏳ **{name}** is training in another process (step {view.step} of {view.total}).")
    elif view.state in ("running", "starting") and events:
        lines.append(f"**{name}**: not running (it stopped at step {view.step} of {view.total} without saying "
                     f"why); **Resume** continues from its last checkpoint.")
    lines += [f"⚠ {text}" for kind, text in view.messages if kind == "warning"][-3:]
    return "\n\n".join(lines)


def _last_error(view: RunView) -> str:
    errors = [text for kind, text in view.messages if kind == "error"]
    return errors[-1] if errors else "unknown error"
