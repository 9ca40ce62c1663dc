"""The Preview tab's Compare view: a run's checkpoints (with their steps, and validation loss where the run logged
one) and any adapter files x weights x prompts, sampled as one grid that fills in as cells finish. Clicking a cell
shows it with its settings and the `sdlora generate` line that gives the same image.

The cells go to the app's BatchEngine (ui.batch_engine), which samples them in batches that mix adapters; the rows,
weights and limits are `sdlora grid`'s own (sdlora.grid.plan).
"""

from __future__ import annotations

import concurrent.futures
import html
import shlex
from pathlib import Path

import gradio as gr
from PIL import Image

from sdlora.adapters.serving import Request
from sdlora.errors import SdloraError
from sdlora.grid.plan import GridSource, MAX_CELLS, parse_weights, plan_cells, run_sources
from sdlora.models import builtin_models
from ui.batch_engine import BatchEngine
from ui.context import AppContext

PENDING = (236, 236, 236)


def checkpoint_choices(ctx: AppContext, run: str | None) -> list[tuple[str, str]]:
    """(label, adapter path relative to the project) for each checkpoint and the final adapter of `run`."""
    if not run:
        return []
    folder = ctx.roots.resolve(run)
    losses = validation_losses(folder / "events.jsonl")
    choices = []
    for source in run_sources(folder, "run"):
        label = source.label + (f" · val loss {losses[source.step]:.4f}" if source.step in losses else "")
        choices.append((label, str(source.path.relative_to(ctx.project))))
    return choices


def validation_losses(events: Path) -> dict[int, float]:
    """step -> loss of the run's `validation` events (the recipe issue's held-out loss), where it logged any."""
    from sdlora.events import EventTail

    return {int(e["step"]): float(e["loss"]) for e in EventTail(events).read()
            if e.get("event") == "validation" and "step" in e and "loss" in e}


def run_model(ctx: AppContext, run: str | None) -> str | None:
    """The base model a run was trained on (its config.yaml's `model`)."""
    if not run:
        return None
    import yaml

    try:
        config = yaml.safe_load((ctx.roots.resolve(run) / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError, SdloraError):
        return None
    return config.get("model") if isinstance(config.get("model"), str) else None


def progress_html(done: int, total: int, text: str = "") -> str:
    share = 100 * done / total if total else 0
    return (f'<div class="sdlora-progress"><div class="sdlora-progress-fill" style="width:{share:.1f}%"></div>'
            f'<span>{done}/{total} cells {html.escape(text)}</span></div>')


def generate_command(cell: dict) -> str:
    args = ["sdlora", "generate", "--model", cell["model"], "--prompt", cell["prompt"], "--seed", str(cell["seed"]),
            "--steps", str(cell["steps"]), "--guidance", f"{cell['guidance']:g}", "--out", "cell.png"]
    if cell["weight"]:
        args[4:4] = ["--lora", f"{cell['adapter']}:{cell['weight']:g}"]
    return shlex.join(args)


def build(ctx: AppContext, engine: BatchEngine | None = None, generate_inputs: dict | None = None) -> None:
    """The view; with `generate_inputs` (the Generate view's model, adapters, prompt, seed, steps, guidance
    components) a button opens the clicked cell there."""
    engine = engine or ctx.batch_engine
    models = list(builtin_models())
    with gr.Row(equal_height=False):
        run = gr.Dropdown(choices=ctx.runs(), value=None, label="Run", info="outputs/NAME: its checkpoints",
                          elem_id="cmp-run", scale=2)
        model = gr.Dropdown(choices=models, value=models[0] if models else None, allow_custom_value=True,
                            label="Base model", info="the run's own when a run is picked", elem_id="cmp-model",
                            scale=2)
        refresh = gr.Button("Refresh", elem_id="cmp-refresh", scale=0)
    checkpoints = gr.CheckboxGroup(choices=[], label="Checkpoints (rows)", elem_id="cmp-checkpoints")
    with gr.Row(equal_height=False):
        weights = gr.Textbox("0,0.5,1", label="Weights", info="comma-separated, in [-2, 2]; 0 (the base) comes first",
                             elem_id="cmp-weights")
        prompts = gr.Textbox("a sks shape on a white background", lines=2, label="Prompts (one per line)",
                             elem_id="cmp-prompts")
    with gr.Row(equal_height=False):
        seed = gr.Number(0, precision=0, label="Seed", elem_id="cmp-seed")
        steps = gr.Slider(1, 100, 20, step=1, label="Steps", elem_id="cmp-steps")
        guidance = gr.Slider(0, 20, 5.0, step=0.1, label="Guidance", elem_id="cmp-guidance")
        start = gr.Button("Compare", variant="primary", elem_id="cmp-start")
    progress = gr.HTML(progress_html(0, 0), elem_id="cmp-progress")
    grid = gr.Gallery(label="Grid: one row per checkpoint, one column per weight x prompt", columns=3,
                      height="auto", interactive=False, elem_id="cmp-grid")
    with gr.Row(equal_height=False):
        picked = gr.Image(label="Cell", format="png", interactive=False, elem_id="cmp-cell", height=256)
        with gr.Column():
            details = gr.Markdown("Click a cell to see its settings.", elem_id="cmp-details")
            to_generate = gr.Button("Open in Generate", elem_id="cmp-to-generate", visible=bool(generate_inputs))
    cells_state = gr.State([])
    picked_cell = gr.State(None)

    def on_run(run_ref, current_model):
        try:
            choices = checkpoint_choices(ctx, run_ref)
        except SdloraError as exc:
            raise gr.Error(str(exc)) from None
        return gr.update(choices=choices, value=[value for _, value in choices]), run_model(ctx, run_ref) or current_model

    def on_compare(model_ref, chosen, weights_text, prompts_text, seed_v, steps_v, guidance_v):
        try:
            base = _model(ctx, model_ref)
            sources = [GridSource(ctx.roots.resolve(p, kind="file"), _label(p)) for p in chosen or []]
            if not sources:
                raise SdloraError("pick a run and at least one of its checkpoints")
            texts = [line.strip() for line in (prompts_text or "").splitlines() if line.strip()]
            cells = plan_cells(sources, parse_weights(weights_text or None, "Weights"), texts, MAX_CELLS)
        except SdloraError as exc:
            raise gr.Error(str(exc)) from None
        seed_i, steps_i, guidance_f = int(seed_v or 0), int(steps_v), float(guidance_v)
        futures: dict[Request, concurrent.futures.Future] = {}
        for cell in cells:
            request = Request(cell.prompt, () if cell.is_base else ((str(cell.source.path), cell.weight),),
                              seed=seed_i, steps=steps_i, guidance=guidance_f)
            if request not in futures:
                futures[request] = engine.submit(base, request)
        order = [Request(c.prompt, () if c.is_base else ((str(c.source.path), c.weight),), seed=seed_i,
                         steps=steps_i, guidance=guidance_f) for c in cells]
        columns = max(c.column for c in cells) + 1
        info = [{"adapter": str(c.source.path), "label": c.source.label, "weight": c.weight, "prompt": c.prompt,
                 "seed": seed_i, "steps": steps_i, "guidance": guidance_f, "model": base} for c in cells]
        pending = set(futures.values())
        yield (gr.update(value=_gallery(cells, order, futures), columns=columns), progress_html(0, len(cells)), info)
        while pending:
            finished, pending = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                if future.exception() is not None:
                    error = future.exception()
                    raise gr.Error(str(error) if isinstance(error, SdloraError) else
                                   f"{type(error).__name__}: {error}") from None
            done = sum(futures[r].done() for r in order)
            yield _gallery(cells, order, futures), progress_html(done, len(cells)), info
        yield _gallery(cells, order, futures), progress_html(len(cells), len(cells), "· done"), info

    def on_select(info, evt: gr.SelectData):
        if not info or evt.index is None or evt.index >= len(info):
            return None, "Click a cell to see its settings.", None
        cell = info[evt.index]
        value = evt.value or {}
        image = (value.get("image") or {}).get("path") if isinstance(value, dict) else None
        text = (f"**{html.escape(cell['label'])}** · weight {cell['weight']:g} · seed {cell['seed']} · "
                f"{cell['steps']} steps · guidance {cell['guidance']:g}\n\nprompt: {html.escape(cell['prompt'])}\n\n"
                f"adapter: `{cell['adapter']}`\n\nThe same image from the command line:\n\n"
                f"```\n{generate_command(cell)}\n```")
        return image, text, cell

    def on_to_generate(cell):
        from ui.preview_tab import find_adapters

        if not cell:
            raise gr.Error("click a cell of the grid first")
        adapter = Path(cell["adapter"])
        name = str(adapter.relative_to(ctx.project)) if adapter.is_relative_to(ctx.project) else str(adapter)
        choices = find_adapters(ctx)
        chosen = [name] if cell["weight"] else []
        note = f"Opened in Generate: set its weight slider to {cell['weight']:g}." if cell["weight"] else \
            "Opened in Generate (the base model: no adapter)."
        return (cell["model"], gr.update(choices=sorted(set(choices) | set(chosen)), value=chosen), cell["prompt"],
                cell["seed"], cell["steps"], cell["guidance"], note)

    run.change(on_run, [run, model], [checkpoints, model])
    refresh.click(lambda: gr.update(choices=ctx.runs()), None, [run])
    start.click(on_compare, [model, checkpoints, weights, prompts, seed, steps, guidance],
                [grid, progress, cells_state], trigger_mode="always_last")
    grid.select(on_select, [cells_state], [picked, details, picked_cell])
    if generate_inputs:
        g = generate_inputs
        to_generate.click(on_to_generate, [picked_cell], [g["model"], g["adapters"], g["prompt"], g["seed"],
                                                          g["steps"], g["guidance"], details])


def _gallery(cells, order, futures) -> list[tuple[Image.Image, str]]:
    items = []
    size = next((f.result().size for f in futures.values() if f.done() and f.exception() is None), (64, 64))
    for cell, request in zip(cells, order):
        future = futures[request]
        image = future.result() if future.done() and future.exception() is None else Image.new("RGB", size, PENDING)
        weight = "base" if cell.is_base else f"w {cell.weight:g}"
        items.append((image, f"{cell.source.label} · {weight} · {cell.prompt[:40]}"))
    return items


def _label(path: str) -> str:
    """`sdlora grid`'s row label: the checkpoint's step, the final adapter's step, else the file name."""
    parent = Path(path).parent
    if parent.parent.name == "checkpoints" and parent.name.startswith("step-"):
        return f"step {int(parent.name.removeprefix('step-'))}"
    if (parent / "config.yaml").is_file():
        final = next((s for s in run_sources(parent) if s.path == Path(path)), None)
        if final is not None:
            return final.label
    return Path(path).stem


def _model(ctx: AppContext, ref: str | None) -> str:
    if not ref:
        raise SdloraError("choose a base model")
    if ref in builtin_models():
        return ref
    return str(ctx.roots.resolve(ref))
