"""ui.run_view and ui.runner: what the Train tab shows comes from events.jsonl; the run is its own process."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ui.run_view import EventTail, RunView, format_duration, format_remaining
from ui.runner import TrainingProcess


def write_events(path: Path, events: list[dict], partial: str = "") -> None:
    with open(path, "a", encoding="utf-8") as fh:
        for e in events:
            fh.write(json.dumps(e) + "\n")
        fh.write(partial)


def step(n: int, t: float, loss: float = 0.5) -> dict:
    return {"event": "step", "time": t, "step": n, "total_steps": 10, "loss": loss, "samples_per_s": 4.0}


def test_progress_eta_and_loss_curve_from_events(tmp_path):
    events = [{"event": "start", "time": 100.0, "step": 0, "total_steps": 10}]
    events += [step(n, 100.0 + 2 * n, loss=1.0 / n) for n in range(1, 5)]
    view = RunView.from_events(events)
    assert (view.step, view.total, view.state) == (4, 10, "running")
    assert view.eta_s == 12.0  # 6 steps left at 2 s a step
    assert [s for s, _ in view.losses] == [1, 2, 3, 4] and view.losses[-1][1] == 0.25
    html = view.progress_html()
    assert "step 4 of 10" in html and "about 12 s left" in html and "4.00 samples/s" in html and 'data-step="4"' in html


def test_final_states_samples_and_messages():
    folder = "/x/samples/step-000010"
    base = [{"event": "start", "time": 0, "step": 0, "total_steps": 10}, step(10, 1)]
    done = RunView.from_events(base + [
        {"event": "sample", "time": 2, "step": 10, "path": folder, "images": [folder + "/00.png"]},
        {"event": "warning", "time": 2, "message": "img3.png has no caption"},
        {"event": "done", "time": 3, "step": 10, "total_steps": 10, "path": "/x/x.safetensors"}])
    assert done.state == "done" and done.adapter == "/x/x.safetensors" and done.eta_s is None
    assert done.sample_images == [folder + "/00.png"] and done.sample_step == 10
    assert done.messages == [("warning", "img3.png has no caption")]
    error = RunView.from_events(base + [{"event": "error", "time": 3, "message": "CUDA out of memory"}])
    assert error.state == "error" and error.messages[-1] == ("error", "CUDA out of memory")
    # Resuming a stopped run: a new start event makes it running again, from the step it had reached.
    stopped = base + [{"event": "stopped", "time": 2, "step": 10, "total_steps": 10, "path": "a"}]
    resumed = RunView.from_events(stopped + [{"event": "start", "time": 5, "step": 10, "total_steps": 20}])
    assert (resumed.state, resumed.step, resumed.total) == ("running", 10, 20)


def test_event_tail_reads_only_complete_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    tail = EventTail(path)
    assert tail.read() == []
    write_events(path, [step(1, 1)], partial='{"event": "step", "ti')
    assert len(tail.read()) == 1
    write_events(path, [], partial='me": 2, "step": 2}\n')
    assert [e["step"] for e in tail.read()] == [1, 2]


def test_format_duration():
    assert format_duration(65) == "1:05" and format_duration(3725) == "1:02:05"


def test_the_time_left_reads_as_a_duration_not_a_clock_time():
    assert [format_remaining(s) for s in (12, 65, 1265, 3725, 7200)] == \
        ["12 s", "1 min 5 s", "21 min", "1 h 2 min", "2 h"]


def test_learning_rate_and_every_sample_step_are_kept_for_the_charts_and_the_sheet():
    events = [{"event": "start", "time": 0, "step": 0, "total_steps": 10}]
    events += [dict(step(n, n), lr=lr) for n, lr in ((1, 1e-4), (2, 2e-4), (3, 3e-4))]
    events += [{"event": "sample", "time": 4, "step": s, "images": [f"/s/{s}/00.png", f"/s/{s}/01.png"]}
               for s in (0, 2)]
    view = RunView.from_events(events)
    assert view.lrs == [(1, 1e-4), (2, 2e-4), (3, 3e-4)]
    assert [s for s, _ in view.history] == [0, 2] and view.history[1][1] == ["/s/2/00.png", "/s/2/01.png"]


def test_a_failing_run_leaves_the_app_alive_with_the_error_line(tmp_path):
    runner = TrainingProcess(tmp_path)
    runner.start(["--preset", "missing.yaml"], tmp_path / "outputs" / "x")
    assert runner.wait(60) == 2
    assert not runner.running and runner.returncode == 2
    assert "missing.yaml" in runner.last_line() and "preset file not found" in runner.last_line()


def test_one_run_at_a_time_and_stop_sends_sigterm(tmp_path):
    import pytest

    from sdlora.errors import SdloraError

    # A stand-in for `sdlora train` that saves and exits 0 on SIGTERM, as the real one does.
    script = tmp_path / "fake.py"
    script.write_text("import signal, sys, time\n"
                      "signal.signal(signal.SIGTERM, lambda *a: (print('stopped cleanly', flush=True), sys.exit(0)))\n"
                      "print('training', flush=True)\n"
                      "time.sleep(60)\n")
    runner = TrainingProcess(tmp_path, base_command=[sys.executable, str(script)])
    runner.start([], tmp_path / "run")
    deadline = time.time() + 20
    while "training" not in runner.log_tail() and time.time() < deadline:
        time.sleep(0.05)
    assert runner.running
    with pytest.raises(SdloraError, match="already going"):
        runner.start([], tmp_path / "run2")
    assert runner.stop() is True
    assert runner.wait(20) == 0
    assert runner.last_line() == "stopped cleanly"
    assert runner.stop() is False


def test_validation_events_become_a_second_loss_curve():
    from ui.chart import loss_chart

    events = [{"event": "start", "time": 0, "step": 0, "total_steps": 10},
              {"event": "validation", "time": 0.5, "step": 0, "loss": 0.4}, step(1, 1, 0.5), step(2, 2, 0.3),
              {"event": "validation", "time": 2.5, "step": 2, "loss": 0.35}]
    view = RunView.from_events(events)
    assert view.validation == [(0, 0.4), (2, 0.35)]
    svg = loss_chart(view.losses, view.lrs, validation=view.validation)
    assert svg.count('class="validation-point"') == 2 and 'data-points="2"' in svg  # 2 train steps, 2 validations
