"""The Train tab's Queue panel: "Add to queue", the jobs with state and progress, reorder, cancel, stop, resume.

The queue is the library's (`sdlora.queue`, outputs/queue.json), shared with `sdlora queue`; its runner is its
own process (`sdlora queue run`), started by "Run queue", so closing or restarting the app leaves a running
queue running, and the panel shows it again on the next load. Nothing here trains.
"""

from __future__ import annotations

import dataclasses
import html
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gradio as gr

from sdlora.errors import SdloraError
from sdlora.models import builtin_models
from sdlora.queue import Queue
from ui.config_form import widgets_to_config
from ui.context import AppContext
from ui.subsets_panel import resolve_data_folders
from ui.paths import safe_name

_started: list[subprocess.Popen] = []  # runners this app started: polled, so a finished one is reaped
ICONS = {"queued": "⏳", "running": "▶", "done": "✅", "stopped": "⏹", "failed": "❌", "interrupted": "⚠"}


def add_button() -> gr.Button:
    """The "Add to queue" button, placed by the Train tab beside Start."""
    return gr.Button("Add to queue", elem_id="queue-add")


def queue_of(ctx: AppContext) -> Queue:
    return Queue(ctx.outputs_dir)


def start_runner(ctx: AppContext) -> bool:
    """Start `sdlora queue run` unless a runner runs already; True if one was started."""
    _reap()
    queue = queue_of(ctx)
    if queue.runner_pid() is not None:
        return False
    queue.private.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    with open(queue.private / "runner.log", "ab") as log:
        _started.append(subprocess.Popen(
            [sys.executable, "-m", "sdlora.cli", "queue", "--dir", str(queue.folder), "run"], cwd=ctx.project,
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True))
    # The runner takes its lock within a moment; wait for it so the next refresh shows it running.
    deadline = time.time() + 10
    while queue.runner_pid() is None and _started[-1].poll() is None and time.time() < deadline:
        time.sleep(0.05)
    return True


def _reap() -> None:
    for proc in list(_started):
        if proc.poll() is not None:
            _started.remove(proc)


def jobs_html(queue: Queue) -> str:
    jobs = queue.jobs()
    if not jobs:
        return "<p class='sdlora-queue-empty'>The queue is empty: set up a run and press <b>Add to queue</b>.</p>"
    clock = lambda t: time.strftime("%H:%M:%S", time.localtime(t)) if t else ""  # noqa: E731
    rows = []
    for job in jobs:
        step, total = job.progress()
        progress = f"{step} / {total}" if total else ""
        message = f"<br><small>{html.escape(job.message)}</small>" if job.message else ""
        rows.append(
            f"<tr data-id='{job.id}' data-name='{html.escape(job.name)}' data-state='{job.state}'>"
            f"<td>{job.id}</td><td>{html.escape(job.name)}</td><td>{html.escape(Path(job.preset).name)}</td>"
            f"<td>{ICONS.get(job.state, '')} {job.state}{message}</td><td>{progress}</td>"
            f"<td>{clock(job.started)}</td><td>{clock(job.ended)}</td></tr>")
    head = "".join(f"<th>{h}</th>" for h in ("ID", "Name", "Preset", "State", "Step", "Started", "Ended"))
    return f"<table class='sdlora-queue'><tr>{head}</tr>{''.join(rows)}</table>"


def runner_text(queue: Queue) -> str:
    pid = queue.runner_pid()
    if pid is not None:
        return f"Queue running (process {pid}); **Stop queue** stops the running job after its step and saves."
    queued = sum(1 for j in queue.jobs() if j.state == "queued")
    return f"Queue not running: {queued} job(s) waiting; **Run queue** starts them one after another."


def job_choices(queue: Queue) -> list[tuple[str, str]]:
    return [(f"{j.id} · {j.name} ({j.state})", str(j.id)) for j in queue.jobs()]


def tick_job_update(selected: str | None, choices: list[tuple[str, str]]) -> dict:
    """The Job dropdown's update from the timer: new choices, the value left alone. `selected` is the value when
    the tick was sent, and the user may have picked another job since: setting it back reset a fresh pick, and
    Cancel then acted on the job picked before (seen in the browser test). Only a job gone from the queue clears
    the pick."""
    if selected is None or selected in [value for _, value in choices]:
        return gr.update(choices=choices)
    return gr.update(choices=choices, value=None)


def build(ctx: AppContext, add: gr.Button, fields, widgets: list, preset, base_state) -> None:
    """The panel, below the Start row; `add` is the button from `add_button()`, `widgets` the settings."""
    queue = queue_of(ctx)
    with gr.Accordion("Queue", open=True, elem_id="queue-panel"):
        table = gr.HTML(jobs_html(queue), elem_id="queue-table")
        with gr.Row(equal_height=False):
            job = gr.Dropdown(choices=job_choices(queue), value=None, label="Job", elem_id="queue-job", scale=3)
            up = gr.Button("Move up", elem_id="queue-up", scale=1)
            down = gr.Button("Move down", elem_id="queue-down", scale=1)
            cancel = gr.Button("Cancel", elem_id="queue-cancel", scale=1)
            resume = gr.Button("Retry / resume", elem_id="queue-resume", scale=1)
        with gr.Row(equal_height=False):
            run = gr.Button("Run queue", variant="primary", elem_id="queue-run")
            stop = gr.Button("Stop queue", variant="stop", elem_id="queue-stop")
        status = gr.Markdown(runner_text(queue), elem_id="queue-status")
    timer = gr.Timer(1.0)
    last = gr.State(None)

    def refresh(selected=None):
        q = queue_of(ctx)
        choices = job_choices(q)
        value = selected if selected in [c[1] for c in choices] else None
        return jobs_html(q), gr.update(choices=choices, value=value), runner_text(q)

    def guarded(action):
        def handler(selected, *args):
            try:
                note = action(selected, *args)
            except SdloraError as exc:
                raise gr.Error(str(exc)) from None
            if note:
                gr.Info(note)
            return refresh(selected)
        return handler

    def job_id(selected) -> int:
        if not selected:
            raise SdloraError("choose a job under Job first")
        return int(selected)

    def on_add(selected, preset_name, base, *vals):
        config = widgets_to_config(fields, list(vals))
        config = _resolved(ctx, config)
        label = f"presets/{safe_name(preset_name, 'preset')}.yaml" if preset_name else "app"
        new = queue_of(ctx).add(config, preset=label, cwd=ctx.project)
        return f"Job {new.id} ({new.name}) queued"

    def on_resume(selected):
        requeued = queue_of(ctx).requeue(job_id(selected))
        started = start_runner(ctx)
        return f"Job {requeued.id} queued first to resume" + ("; the queue is running" if started else "")

    def on_run(selected):
        if not start_runner(ctx):
            return "The queue is running already."
        return "Queue started"

    def on_stop(selected):
        pid = queue_of(ctx).runner_pid()
        if pid is None:
            return "The queue is not running."
        os.kill(pid, signal.SIGTERM)
        return "Stopping the running job after its step (saved); the queue stops after it."

    outputs = [table, job, status]
    add.click(guarded(on_add), [job, preset, base_state, *widgets], outputs)
    up.click(guarded(lambda s: queue_of(ctx).move(job_id(s), -1)), [job], outputs)
    down.click(guarded(lambda s: queue_of(ctx).move(job_id(s), 1)), [job], outputs)
    cancel.click(guarded(lambda s: queue_of(ctx).cancel(job_id(s))), [job], outputs)
    resume.click(guarded(on_resume), [job], outputs)
    run.click(guarded(on_run), [job], outputs)
    stop.click(guarded(on_stop), [job], outputs)

    def on_tick(selected, sig):
        _reap()
        q = queue_of(ctx)
        try:
            stamp = q.file.stat().st_mtime_ns
        except OSError:
            stamp = None
        running = [j for j in q.jobs() if j.state == "running"]
        new_sig = (stamp, q.runner_pid(), tuple(j.progress() for j in running))
        if new_sig == sig:
            return gr.skip(), gr.skip(), gr.skip(), sig
        return jobs_html(q), tick_job_update(selected, job_choices(q)), runner_text(q), new_sig

    timer.tick(on_tick, [job, last], [*outputs, last], show_progress="hidden")


def _resolved(ctx: AppContext, config):
    """The config with its folders checked against the app's roots and made absolute, as a queued job needs."""
    data = resolve_data_folders(ctx, config)
    if config.model not in builtin_models():
        ctx.roots.resolve(config.model)  # a diffusers folder or a single file
    ctx.roots.resolve(config.save.output_dir, must_exist=False)
    return dataclasses.replace(config, data=data)
