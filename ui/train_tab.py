"""The Train tab: a preset and its settings, Start/Stop/Resume of `sdlora train`, and the run as it goes.

Everything shown about a run comes from its events.jsonl, polled by a timer; the run itself is a separate
process (ui.runner), so nothing here trains.
"""

from __future__ import annotations

import dataclasses
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from sdlora.atomic import write_text
from sdlora.config import Config, load_config
from sdlora.errors import SdloraError
from sdlora.models import builtin_models
from sdlora.train.requests import request
from ui.applies import applies, dependents, rule_for
from ui.chart import loss_chart
from sdlora.train.rundir import check_not_in_use
from ui.config_form import MAIN_KEYS, Field, config_fields, config_to_widgets, overrides, preset_yaml, \
    widgets_to_config
from ui import queue_panel
from ui.context import AppContext
from ui.paths import safe_name
from ui.run_view import EventTail, RunView
from ui.runs import COLUMNS, holds_training, run_row, seems_alive, status_markdown, trash_run
from ui.sample_sheet import sheet_html
from ui.subsets_panel import resolve_data_folders

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


def _widget(field: Field, ctx: AppContext, value, visible: bool = True) -> gr.components.Component:
    label = LABELS.get(field.key, field.key)
    info = f"{field.key}: {field.help}" if field.key in LABELS else field.help
    common = dict(label=label, info=info, value=value, elem_id="cfg-" + field.key.replace(".", "-"),
                  visible=visible)
    if field.key == "model":
        return gr.Dropdown(choices=list(builtin_models()), allow_custom_value=True, **common)
    if field.key == "mode":
        return gr.Radio(choices=[("standard", "standard"), ("LCM", "lcm")], **common)
    if field.kind == "choice":
        return gr.Dropdown(choices=list(field.choices), **common)
    if field.kind == "bool":
        return gr.Checkbox(**common)
    if field.kind in ("int", "float"):
        # Text boxes read strictly (ui.fields): an empty or malformed number is an error on this key, and an
        # optional one left empty means unset (a number box would show 0).
        return gr.Textbox(placeholder="default" if field.optional else "a number", max_lines=1, **common)
    if field.kind in ("list", "records"):
        return gr.Textbox(lines=2, **{**common, "info": field.help + " (one a line)"})
    return gr.Textbox(**common)


@dataclass
class TrainTab:
    """What other panels hook into: the preset picker, the form (widgets in the order of `fields`), the preset as
    loaded (`base`, a gr.State holding a Config; `--set` carries what differs from it) and the run picker."""

    preset: gr.Dropdown
    fields: list[Field]
    form: list
    base: gr.State
    run_pick: gr.Dropdown
    command: gr.Textbox


def build(ctx: AppContext, app: gr.Blocks | None = None) -> TrainTab:
    fields = config_fields()
    keys = [f.key for f in fields]
    presets = ctx.presets()
    first = "demo" if "demo" in presets else (presets[0] if presets else None)
    start_config = _load_preset(ctx, first)
    values = dict(zip(keys, config_to_widgets(fields, start_config)))
    base_state = gr.State(start_config)  # the preset as loaded: --set carries only what differs from it
    last_sig = gr.State(None)
    table_sig = gr.State(None)

    with gr.Row(equal_height=False):
        preset = gr.Dropdown(choices=presets, value=first, label="Preset", info="presets/NAME.yaml",
                             elem_id="train-preset", scale=2)
        new_preset = gr.Textbox(label="Save the settings as preset", placeholder="new preset name",
                                info="writes presets/NAME.yaml: what differs from the defaults, folders relative",
                                elem_id="train-new-preset", scale=2)
        save_preset = gr.Button("Save preset", elem_id="train-save-preset", scale=1)
    widgets: dict[str, gr.components.Component] = {}
    by_key = {f.key: f for f in fields}
    with gr.Group():
        for row in range(0, len(MAIN_KEYS), 4):
            with gr.Row(equal_height=False):
                for key in MAIN_KEYS[row:row + 4]:
                    widgets[key] = _widget(by_key[key], ctx, values[key])
    section_boxes: dict[str, gr.Accordion] = {}
    with gr.Accordion("Advanced (by section; options that do not apply to these settings are hidden)", open=False,
                      elem_id="train-advanced"):
        sections: dict[str, list[Field]] = {}
        for f in fields:
            if f.key not in MAIN_KEYS:
                sections.setdefault(f.section or "model", []).append(f)
        for section, section_fields in sections.items():
            visible = applies(section + ".", values) if rule_for(section + ".") else True
            with gr.Accordion(f"{section}: {_SECTION_HELP.get(section, '')}", open=False, visible=visible,
                              elem_id=f"train-section-{section}") as box:
                section_boxes[section] = box
                for row in range(0, len(section_fields), 3):
                    with gr.Row(equal_height=False):
                        for f in section_fields[row:row + 3]:
                            widgets[f.key] = _widget(f, ctx, values[f.key], visible=applies(f.key, values))
    ordered = [widgets[k] for k in keys]

    with gr.Row(equal_height=False):
        start = gr.Button("Start", variant="primary", elem_id="train-start")
        add_to_queue = queue_panel.add_button()
        stop = gr.Button("Stop", variant="stop", elem_id="train-stop")
        runs = ctx.runs()
        run_pick = gr.Dropdown(choices=runs, value=runs[0] if runs else None, label="Run", allow_custom_value=True,
                               info="outputs/NAME; Resume trains it up to Steps (raise Steps to extend a run)",
                               elem_id="train-run", scale=2)
        resume = gr.Button("Resume", elem_id="train-resume")
        retry = gr.Button("Retry", elem_id="train-retry")
        delete = gr.Button("Delete", elem_id="train-delete")
    command = gr.Textbox(label="Command", info="what the app runs (in the project folder); the same works in a "
                         "terminal", interactive=False, buttons=["copy"], max_lines=3, elem_id="train-command")
    status = gr.Markdown(elem_id="train-status")
    progress = gr.HTML(RunView().progress_html(), elem_id="train-progress")
    with gr.Row(equal_height=False):
        loss_plot = gr.HTML(loss_chart([]), elem_id="train-loss")
        samples = gr.Gallery(label="Latest samples", columns=4, height=260, interactive=False, object_fit="contain",
                             elem_classes=["sdlora-pixelated"], elem_id="train-samples")
    with gr.Accordion("Sample history (step × prompt; click an image for full size)", open=False,
                      elem_id="train-history-box"):
        with gr.Row(equal_height=False):
            sample_now = gr.Button("Sample now", elem_id="train-sample-now", interactive=False, scale=0)
            save_now = gr.Button("Save now", elem_id="train-save-now", interactive=False, scale=0)
            gr.Markdown("While the run trains: samples, or a checkpoint with the adapter, after the current step.")
        history = gr.HTML(sheet_html([]), elem_classes=["sdlora-pixelated"], elem_id="train-history")
    log = gr.Textbox(label="Log", lines=8, max_lines=8, autoscroll=True, elem_id="train-log")
    with gr.Accordion("Runs", open=False, elem_id="train-runs-box"):
        runs_table = gr.Dataframe(headers=COLUMNS, value=_table(ctx), interactive=False, wrap=True,
                                  elem_id="train-runs")
        with gr.Row(equal_height=False):
            gr.Markdown("Click a run to open it (its settings fill the form); then Resume, Retry or Delete above.")
            duplicate = gr.Button("Duplicate settings", elem_id="train-duplicate", scale=0)
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
            write_text(target, preset_yaml(config, fields, f"Saved from the app ({config.name}).", ctx.project))
        except SdloraError as exc:
            raise gr.Error(str(exc)) from None
        gr.Info(f"Saved presets/{filename}.yaml")
        return gr.update(choices=ctx.presets(), value=filename), config

    def start_fresh(preset_name, base, config: Config, replacing: bool = False) -> tuple[str, str]:
        """Start `sdlora train --preset ... --set ...`; `replacing`: the old run folder goes to the trash."""
        run_dir = _check_paths(ctx, config)
        rel = _rel(ctx, run_dir)
        if ctx.runner.running:
            raise SdloraError(f"a run is already going ({_rel(ctx, ctx.runner.run_dir)}); stop it first")
        if run_dir.exists():
            check_not_in_use(run_dir)  # trained right now by another process (a CLI run, the queue)
        if not replacing and holds_training(run_dir):
            raise SdloraError(f"{rel} already holds a run: pick it under Run and press Resume (continue it), Retry "
                              f"(start it again with these settings) or Delete, or change the name")
        args = ["--preset", _rel(ctx, _preset_file(ctx, preset_name, base))]
        for item in overrides(base, config, fields):
            args += ["--set", item]
        if replacing and run_dir.exists():
            trash_run(ctx.outputs_dir, run_dir)
        _tails.pop(run_dir / "events.jsonl", None)  # a new events.jsonl replaces the old one
        ctx.runner.start(args, run_dir)
        return rel, _command(args)

    def on_start(preset_name, base, *vals):
        try:
            rel, cmd = start_fresh(preset_name, base, widgets_to_config(fields, list(vals)))
        except SdloraError as exc:
            raise gr.Error(str(exc)) from None
        return gr.update(choices=ctx.runs() or [rel], value=rel), None, cmd

    def on_retry(run, preset_name, base, *vals):
        """Start the picked run again, with the settings in the form, under its own name."""
        try:
            run_dir = _picked(ctx, run)
            config = widgets_to_config(fields, list(vals))
            config = dataclasses.replace(config, name=run_dir.name, save=dataclasses.replace(
                config.save, output_dir=_rel(ctx, run_dir.parent)))
            rel, cmd = start_fresh(preset_name, base, config, replacing=True)
        except SdloraError as exc:
            raise gr.Error(str(exc)) from None
        gr.Info(f"{rel} starts again; the previous attempt is in {_rel(ctx, ctx.outputs_dir / '.trash')}")
        return gr.update(choices=ctx.runs() or [rel], value=rel), None, cmd, run_dir.name

    def on_resume(run, *vals):
        try:
            run_dir = ctx.roots.resolve(run or "", kind="dir")
            check_not_in_use(run_dir)
            done = load_config(run_dir / "config.yaml")
            args = ["--resume", _rel(ctx, run_dir)]
            steps = widgets_to_config(fields, list(vals)).train.steps
            if steps != done.train.steps:  # the Steps field decides where the resumed run ends
                args += ["--set", f"train.steps={steps}"]
            ctx.runner.start(args, run_dir)
        except SdloraError as exc:
            raise gr.Error(str(exc)) from None
        return None, _command(args)

    def on_delete(run):
        try:
            run_dir = _picked(ctx, run)
            where = trash_run(ctx.outputs_dir, run_dir)
        except SdloraError as exc:
            raise gr.Error(str(exc)) from None
        gr.Info(f"{run_dir.name} moved to {_rel(ctx, where)} (move it back to restore it)")
        left = ctx.runs()
        return gr.update(choices=left, value=left[0] if left else None), None, _table(ctx)

    def run_settings(run):
        run_dir = _run_dir(ctx, run)
        if run_dir is None or not (run_dir / "config.yaml").is_file():
            return None
        try:
            return load_config(run_dir / "config.yaml")
        except SdloraError as exc:
            gr.Warning(str(exc))
            return None

    def on_pick_run(run):
        """Show a run's own settings, so Resume (and Steps) start from what it was trained with."""
        config = run_settings(run)
        return [gr.skip()] * len(fields) if config is None else config_to_widgets(fields, config)

    def on_table_select(evt: gr.SelectData):
        run = (evt.row_value or [None])[-1]
        return [run, *on_pick_run(run)]

    def on_duplicate(run):
        config = run_settings(run)
        if config is None:
            raise gr.Error("Pick a run first (click it in the list or choose it under Run).")
        taken, n = set(Path(r).name for r in ctx.runs()), 2
        while f"{config.name}-{n}" in taken:
            n += 1
        gr.Info(f"The settings of {config.name}, named {config.name}-{n}: press Start to train them")
        return config_to_widgets(fields, dataclasses.replace(config, name=f"{config.name}-{n}"))

    def on_stop():
        if not ctx.runner.stop():
            gr.Info("No run is going.")
        else:
            gr.Info("Stopping after this step; the checkpoint and adapter are saved.")

    def on_request(run, what):
        run_dir = _run_dir(ctx, run)
        runner = ctx.runner
        live = run_dir is not None and ((runner.running and runner.run_dir == run_dir)
                                        or seems_alive(run_dir, _tail(run_dir).read()))
        if not live:
            raise gr.Error("The run is not training: sample now and save now act on a running run.")
        request(run_dir, what)
        gr.Info("Samples follow after the current step." if what == "sample" else
                "A checkpoint and the adapter are saved after the current step.")

    def on_tick(run, sig, tsig):
        run_dir = _run_dir(ctx, run)
        events = _tail(run_dir).read() if run_dir else []
        runner = ctx.runner
        mine = run_dir is not None and runner.run_dir == run_dir
        log_text = runner.log_tail() if mine else ""
        new_tsig = (tuple(ctx.runs()), runner.running, runner.returncode,
                    events[-1].get("event") if events else None)
        table = gr.skip() if new_tsig == tsig else _table(ctx)
        choices = gr.skip() if new_tsig == tsig else gr.update(choices=list(new_tsig[0]))
        new_sig = (str(run_dir), len(events), runner.running, runner.returncode, len(log_text), log_text[-200:])
        if new_sig == sig:
            return [gr.skip()] * 12 + [table, choices, sig, new_tsig]
        view = RunView.from_events(events) if run_dir else RunView()
        gallery = [(p, f"step {view.sample_step}") for p in view.sample_images if Path(p).is_file()]
        going = runner.running
        live = going and mine or (run_dir is not None and seems_alive(run_dir, events))
        idle = gr.update(interactive=not going)
        return [status_markdown(view, run_dir, ctx.runner, events), view.progress_html(),
                loss_chart(view.losses, view.lrs, validation=view.validation),
                gallery, log_text, idle, idle, idle, idle, sheet_html(view.history),
                gr.update(interactive=bool(live)), gr.update(interactive=bool(live)), table, choices, new_sig,
                new_tsig]

    def on_load():
        """A new page (a reload, a second tab): attach to the running run, with its settings in the form."""
        runs_now = ctx.runs()
        runner = ctx.runner
        if runner.running and runner.run_dir is not None:
            rel = _rel(ctx, runner.run_dir)
            config = run_settings(rel)
            form = config_to_widgets(fields, config) if config else [gr.skip()] * len(fields)
            return [gr.update(choices=runs_now or [rel], value=rel), _command(runner.command[len(
                runner.base_command):]), *form]
        return [gr.update(choices=runs_now, value=runs_now[0] if runs_now else None), gr.skip(),
                *[gr.skip()] * len(fields)]

    def follow(controller: str, deps: list[str], boxes: list[str]):
        def update(value):
            vals = {controller: value}
            return [gr.update(visible=applies(d, vals)) for d in deps] + \
                   [gr.update(visible=applies(b + ".", vals)) for b in boxes]
        targets = [widgets[d] for d in deps] + [section_boxes[b] for b in boxes]
        widgets[controller].change(update, [widgets[controller]], targets, show_progress="hidden")

    controlled = dependents(keys)
    section_rules: dict[str, list[str]] = {}
    for section in section_boxes:
        rule = rule_for(section + ".")
        if rule is not None and rule[0] in widgets:
            section_rules.setdefault(rule[0], []).append(section)
            controlled[rule[0]] = [d for d in controlled.get(rule[0], []) if not d.startswith(section + ".")]
    for controller in set(controlled) | set(section_rules):
        follow(controller, controlled.get(controller, []), section_rules.get(controller, []))

    preset.change(on_preset, [preset], [base_state, *ordered])
    save_preset.click(on_save_preset, [new_preset, *ordered], [preset, base_state])
    start.click(on_start, [preset, base_state, *ordered], [run_pick, last_sig, command])
    retry.click(on_retry, [run_pick, preset, base_state, *ordered], [run_pick, last_sig, command, widgets["name"]])
    resume.click(on_resume, [run_pick, *ordered], [last_sig, command])
    delete.click(on_delete, [run_pick], [run_pick, last_sig, runs_table])
    stop.click(on_stop, None, None)
    sample_now.click(lambda run: on_request(run, "sample"), [run_pick], None)
    save_now.click(lambda run: on_request(run, "save"), [run_pick], None)
    run_pick.input(on_pick_run, [run_pick], ordered)
    runs_table.select(on_table_select, None, [run_pick, *ordered])
    duplicate.click(on_duplicate, [run_pick], ordered)
    timer.tick(on_tick, [run_pick, last_sig, table_sig],
               [status, progress, loss_plot, samples, log, start, resume, retry, delete, history, sample_now,
                save_now, runs_table, run_pick, last_sig, table_sig], show_progress="hidden")
    if app is not None:
        app.load(on_load, None, [run_pick, command, *ordered])
    return TrainTab(preset=preset, fields=fields, form=ordered, base=base_state, run_pick=run_pick, command=command)


_SECTION_HELP = {"model": "model family, VAE, pickle files", "data": "captions, augmentation, buckets, cache",
                 "network": "LoRA targets, dropout, text encoder", "train": "optimizer, schedule, precision, speed",
                 "sample": "sample images during training", "save": "adapter format, checkpoints, output folder",
                 "lcm": "LCM-LoRA distillation (mode lcm)"}


def _table(ctx: AppContext) -> list[list]:
    runner = ctx.runner
    rows = []
    for rel in ctx.runs():
        run_dir = ctx.project / rel
        try:
            here = runner.running and runner.run_dir is not None and runner.run_dir == run_dir.resolve()
            rows.append(run_row(ctx.project, run_dir, running_here=here).cells())
        except OSError:
            continue  # moved or deleted while listing
    return rows or [[""] * len(COLUMNS)]


def _rel(ctx: AppContext, path: Path) -> str:
    try:
        return str(Path(path).relative_to(ctx.project))
    except ValueError:
        return str(path)


def _command(args: list[str]) -> str:
    return "sdlora train " + shlex.join(args)


def _picked(ctx: AppContext, run: str | None) -> Path:
    """The picked run folder, which must not be the one training here."""
    if not run:
        raise SdloraError("pick a run under Run (or click it in the Runs list) first")
    run_dir = ctx.roots.resolve(run, kind="dir")
    if not (run_dir / "config.yaml").is_file():
        raise SdloraError(f"{run}: not a run folder (no config.yaml)")
    runner = ctx.runner
    if runner.running and runner.run_dir is not None and runner.run_dir.resolve() == run_dir:
        raise SdloraError(f"{run} is training; press Stop first")
    check_not_in_use(run_dir)  # trained by another process (a CLI run, the queue)
    return run_dir


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
    resolve_data_folders(ctx, config)  # data.dir (unless data.subsets names the folders), reg_dir, subsets
    if config.model not in builtin_models():
        ctx.roots.resolve(config.model)  # a diffusers folder or a single-file checkpoint
    if config.vae:
        ctx.roots.resolve(config.vae)  # a VAE file or folder, inside the roots like every other path
    return ctx.roots.resolve(config.save.output_dir, must_exist=False) / config.name


def _run_dir(ctx: AppContext, run: str | None) -> Path | None:
    if not run:
        return None
    try:
        return ctx.roots.resolve(run, must_exist=False)
    except SdloraError:
        return None

