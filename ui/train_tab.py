"""The Train tab: a preset and its settings, Start/Stop/Resume of `sdlora train`, and the run as it goes.

Everything shown about a run comes from its events.jsonl, polled by a timer; the run itself is a separate
process (ui.runner), so nothing here trains.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import gradio as gr
import pandas as pd

from sdlora.atomic import write_text
from sdlora.config import Config, load_config
from sdlora.errors import SdloraError
from sdlora.models import builtin_models
from sdlora.train.rundir import check_not_in_use
from ui.config_form import MAIN_KEYS, Field, config_fields, config_to_widgets, overrides, preset_yaml, \
    widgets_to_config
from ui import queue_panel
from ui.context import AppContext
from ui.paths import safe_name
from ui.run_view import EventTail, RunView

_tails: dict[Path, EventTail] = {}


def _tail(run_dir: Path) -> EventTail:
    path = run_dir / "events.jsonl"
    tail = _tails.get(path)
    if tail is None or (path.is_file() and path.stat().st_size < tail.offset):
        tail = _tails[path] = EventTail(path)  # new, or the file was replaced
    return tail


# Plain words for the settings in view; the rest show their preset key (what --set and presets/ use).
LABELS = {"name": "Run name", "model": "Base model", "data.dir": "Data-set folder", "mode": "Mode",
          "network.rank": "Rank", "network.alpha": "Alpha", "train.steps": "Steps", "train.batch_size": "Batch size",
          "train.lr": "Learning rate", "data.resolution": "Resolution", "train.mixed_precision": "Mixed precision",
          "train.optimizer": "Optimizer"}


def _widget(field: Field, ctx: AppContext, value) -> gr.components.Component:
    label = LABELS.get(field.key, field.key)
    info = f"{field.key}: {field.help}" if field.key in LABELS else field.help
    common = dict(label=label, info=info, value=value, elem_id="cfg-" + field.key.replace(".", "-"))
    if field.key == "model":
        return gr.Dropdown(choices=list(builtin_models()), allow_custom_value=True, **common)
    if field.key == "mode":
        return gr.Radio(choices=[("standard", "standard"), ("LCM", "lcm")], **common)
    if field.kind == "choice":
        return gr.Dropdown(choices=list(field.choices), **common)
    if field.kind == "bool":
        return gr.Checkbox(**common)
    if field.optional and field.kind in ("int", "float"):
        return gr.Textbox(placeholder="default", **common)  # empty means unset; a number box would show 0
    if field.kind == "int":
        return gr.Number(precision=0, **common)
    if field.kind == "float":
        return gr.Number(**common)
    if field.kind == "list":
        return gr.Textbox(lines=2, **{**common, "info": field.help + " (one a line)"})
    return gr.Textbox(**common)


def _loss_frame(view: RunView) -> pd.DataFrame:
    """Training loss per step, and the validation loss (data.validation_*) as a second series."""
    rows = [(s, v, "train") for s, v in view.losses] + [(s, v, "validation") for s, v in view.validation]
    return pd.DataFrame(rows, columns=["step", "loss", "series"]).astype({"step": int, "loss": float})


def _status(view: RunView, run_dir: Path | None, ctx: AppContext) -> str:
    runner = ctx.runner
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
        lines.append(f"❌ **{name}** failed: {_last_error(view)}")
    elif mine and code is not None and code != 0:
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        hint = " (out of memory?)" if code in (-9, 137) else ""
        lines.append(f"❌ **{name}**: the training process {how}{hint}: `{runner.last_line() or 'no output'}`")
    elif view.state in ("running", "starting"):
        lines.append(f"**{name}**: not running here (step {view.step} of {view.total}); **Resume** continues it.")
    lines += [f"⚠ {text}" for kind, text in view.messages if kind == "warning"][-3:]
    return "\n\n".join(lines)


def _last_error(view: RunView) -> str:
    errors = [text for kind, text in view.messages if kind == "error"]
    return errors[-1] if errors else "unknown error"


def build(ctx: AppContext) -> None:
    fields = config_fields()
    presets = ctx.presets()
    first = "demo" if "demo" in presets else (presets[0] if presets else None)
    start_config = _load_preset(ctx, first)
    values = dict(zip([f.key for f in fields], config_to_widgets(fields, start_config)))
    base_state = gr.State(start_config)  # the preset as loaded: --set carries only what differs from it
    last_sig = gr.State(None)

    with gr.Row(equal_height=False):
        preset = gr.Dropdown(choices=presets, value=first, label="Preset", info="presets/NAME.yaml",
                             elem_id="train-preset", scale=2)
        new_preset = gr.Textbox(label="Save the settings as preset", placeholder="new preset name",
                                elem_id="train-new-preset", scale=2)
        save_preset = gr.Button("Save preset", elem_id="train-save-preset", scale=1)
    widgets: dict[str, gr.components.Component] = {}
    by_key = {f.key: f for f in fields}
    with gr.Group():
        for row in range(0, len(MAIN_KEYS), 4):
            with gr.Row(equal_height=False):
                for key in MAIN_KEYS[row:row + 4]:
                    widgets[key] = _widget(by_key[key], ctx, values[key])
    with gr.Accordion("Advanced", open=False, elem_id="train-advanced"):
        sections: dict[str, list[Field]] = {}
        for f in fields:
            if f.key not in MAIN_KEYS:
                sections.setdefault(f.section or "run", []).append(f)
        for section, section_fields in sections.items():
            gr.Markdown(f"**{section}**")
            for row in range(0, len(section_fields), 3):
                with gr.Row(equal_height=False):
                    for f in section_fields[row:row + 3]:
                        widgets[f.key] = _widget(f, ctx, values[f.key])
    ordered = [widgets[f.key] for f in fields]

    with gr.Row(equal_height=False):
        start = gr.Button("Start", variant="primary", elem_id="train-start")
        add_to_queue = queue_panel.add_button()
        stop = gr.Button("Stop", variant="stop", elem_id="train-stop")
        runs = ctx.runs()
        run_pick = gr.Dropdown(choices=runs, value=runs[0] if runs else None, label="Run", allow_custom_value=True,
                               info="outputs/NAME; Resume trains it up to Steps (raise Steps to extend a run)",
                               elem_id="train-run", scale=2)
        resume = gr.Button("Resume", elem_id="train-resume")
    status = gr.Markdown(elem_id="train-status")
    progress = gr.HTML(RunView().progress_html(), elem_id="train-progress")
    with gr.Row(equal_height=False):
        loss_plot = gr.LinePlot(_loss_frame(RunView()), x="step", y="loss", color="series", title="Loss",
                                height=260, elem_id="train-loss")
        samples = gr.Gallery(label="Latest samples", columns=4, height=260, interactive=False,
                             elem_id="train-samples")
    log = gr.Textbox(label="Log", lines=8, max_lines=8, autoscroll=True, elem_id="train-log")
    queue_panel.build(ctx, add_to_queue, fields, ordered, preset, base_state)
    timer = gr.Timer(1.0)

    # ------------------------------------------------------------------------------------------ handlers
    def on_preset(name):
        config = _load_preset(ctx, name)
        return [config, *config_to_widgets(fields, config)]

    def on_save_preset(name, *vals):
        try:
            filename = safe_name(name, "preset name")
            config = widgets_to_config(fields, list(vals))
            target = ctx.presets_dir / f"{filename}.yaml"
            if target.exists():
                raise SdloraError(f"presets/{filename}.yaml exists already; choose another name")
            write_text(target, preset_yaml(config, fields, f"Saved from the app ({config.name})."))
        except SdloraError as exc:
            raise gr.Error(str(exc)) from None
        gr.Info(f"Saved presets/{filename}.yaml")
        return gr.update(choices=ctx.presets(), value=filename), config

    def on_start(preset_name, base, *vals):
        try:
            config = widgets_to_config(fields, list(vals))
            run_dir = _check_paths(ctx, config)
            check_not_in_use(run_dir)  # trained right now by another process (a CLI run, the queue)
            if (run_dir / "config.yaml").exists():
                raise SdloraError(f"{run_dir.relative_to(ctx.project)} already holds a run: pick it under Run and "
                                  f"press Resume, or change the name")
            args = ["--preset", str(_preset_file(ctx, preset_name, base))]
            for item in overrides(base, config, fields):
                args += ["--set", item]
            ctx.runner.start(args, run_dir)
        except SdloraError as exc:
            raise gr.Error(str(exc)) from None
        rel = str(run_dir.relative_to(ctx.project))
        return gr.update(choices=ctx.runs() or [rel], value=rel), None

    def on_resume(run, *vals):
        try:
            run_dir = ctx.roots.resolve(run or "", kind="dir")
            check_not_in_use(run_dir)
            done = load_config(run_dir / "config.yaml")
            args = ["--resume", str(run_dir)]
            steps = widgets_to_config(fields, list(vals)).train.steps
            if steps != done.train.steps:  # the Steps field decides where the resumed run ends
                args += ["--set", f"train.steps={steps}"]
            ctx.runner.start(args, run_dir)
        except SdloraError as exc:
            raise gr.Error(str(exc)) from None
        return None

    def on_pick_run(run):
        """Show a run's own settings, so Resume (and Steps) start from what it was trained with."""
        run_dir = _run_dir(ctx, run)
        if run_dir is None or not (run_dir / "config.yaml").is_file():
            return [gr.skip()] * len(fields)
        try:
            return config_to_widgets(fields, load_config(run_dir / "config.yaml"))
        except SdloraError as exc:
            gr.Warning(str(exc))
            return [gr.skip()] * len(fields)

    def on_stop():
        if not ctx.runner.stop():
            gr.Info("No run is going.")
        else:
            gr.Info("Stopping after this step; the checkpoint and adapter are saved.")

    def on_tick(run, sig):
        run_dir = _run_dir(ctx, run)
        events = _tail(run_dir).read() if run_dir else []
        runner = ctx.runner
        log_text = runner.log_tail() if run_dir and runner.run_dir == run_dir else ""
        new_sig = (str(run_dir), len(events), runner.running, runner.returncode, len(log_text), log_text[-200:])
        if new_sig == sig:
            return [gr.skip()] * 7 + [sig]
        view = RunView.from_events(events) if run_dir else RunView()
        gallery = [(p, f"step {view.sample_step}") for p in view.sample_images if Path(p).is_file()]
        going = runner.running
        return [_status(view, run_dir, ctx), view.progress_html(), _loss_frame(view), gallery, log_text,
                gr.update(interactive=not going), gr.update(interactive=not going), new_sig]

    preset.change(on_preset, [preset], [base_state, *ordered])
    save_preset.click(on_save_preset, [new_preset, *ordered], [preset, base_state])
    start.click(on_start, [preset, base_state, *ordered], [run_pick, last_sig])
    resume.click(on_resume, [run_pick, *ordered], [last_sig])
    stop.click(on_stop, None, None)
    run_pick.input(on_pick_run, [run_pick], ordered)
    timer.tick(on_tick, [run_pick, last_sig], [status, progress, loss_plot, samples, log, start, resume, last_sig],
               show_progress="hidden")


def _load_preset(ctx: AppContext, name: str | None) -> Config:
    if not name:
        return Config()
    try:
        return load_config(ctx.roots.resolve(f"presets/{safe_name(name, 'preset')}.yaml", kind="file"))
    except SdloraError as exc:
        gr.Warning(str(exc))
        return Config()


def _preset_file(ctx: AppContext, name: str | None, base: Config) -> Path:
    """The preset file the run starts from; without one, the loaded settings written to a temporary preset."""
    if name:
        return ctx.roots.resolve(f"presets/{safe_name(name, 'preset')}.yaml", kind="file")
    fd, path = tempfile.mkstemp(prefix="sdlora-ui-", suffix=".yaml")
    with open(fd, "w", encoding="utf-8") as fh:
        fh.write(base.to_yaml())
    return Path(path)


def _check_paths(ctx: AppContext, config: Config) -> Path:
    """Refuse data, model and output folders outside the roots; the run folder that training will write."""
    ctx.roots.resolve(config.data.dir or "", kind="dir")
    if config.data.reg_dir:
        ctx.roots.resolve(config.data.reg_dir, kind="dir")
    if config.model not in builtin_models():
        ctx.roots.resolve(config.model, kind="dir")
    return ctx.roots.resolve(config.save.output_dir, must_exist=False) / config.name


def _run_dir(ctx: AppContext, run: str | None) -> Path | None:
    if not run:
        return None
    try:
        return ctx.roots.resolve(run, must_exist=False)
    except SdloraError:
        return None

