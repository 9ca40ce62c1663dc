"""The Preview tab: a base model, any number of adapters each with a weight, the base and blended images side by
side, and optionally a row over one adapter's weight. Generation is the library's blender (ui.preview_engine
keeps one per base model), so moving a slider re-weights the adapters without reloading the base model.
"""

from __future__ import annotations

from dataclasses import dataclass
import warnings
from pathlib import Path

import gradio as gr

from sdlora.adapters.blend import WEIGHT_RANGE
from sdlora.errors import SdloraError
from sdlora.models import builtin_models
from ui.context import AppContext
from ui.display import upscaled
from ui.fields import parse_number
from ui.preview_engine import PREVIEW_DEFAULTS, SCHEDULERS, GenParams, PreviewEngine, adapter_mode

ROW_WEIGHTS = [0.0, 0.25, 0.5, 0.75, 1.0]


def find_adapters(ctx: AppContext) -> list[str]:
    """Final adapters of the runs in outputs/ and every .safetensors under adapters/, relative to the project."""
    found = []
    if ctx.outputs_dir.is_dir():
        found += [p for p in sorted(ctx.outputs_dir.glob("*/*.safetensors")) if p.stem == p.parent.name]
    adapters_dir = ctx.project / "adapters"
    if adapters_dir.is_dir():
        found += sorted(adapters_dir.rglob("*.safetensors"))
    return [str(p.relative_to(ctx.project)) for p in found if ctx.roots.contains(p)]


@dataclass
class PreviewTab:
    """What other panels (e.g. a compare view) hook into: the base model, VAE, adapters and sampling fields."""

    model: gr.Dropdown
    vae: gr.Textbox
    adapters: gr.Dropdown
    prompt: gr.Textbox
    negative: gr.Textbox
    seed: gr.Textbox
    steps: gr.Slider
    guidance: gr.Slider
    width: gr.Slider
    height: gr.Slider
    scheduler: gr.Dropdown
    engine: PreviewEngine


def build(ctx: AppContext, engine: PreviewEngine | None = None) -> PreviewTab:
    engine = engine or PreviewEngine()
    models = list(builtin_models())
    adapters = find_adapters(ctx)
    # interactive=True throughout: Gradio makes a field editable only when an event known at build time reads
    # it, and Generate's events are made inside @gr.render (they take the weight sliders), so it must be said.
    with gr.Row(equal_height=False):
        model = gr.Dropdown(choices=models, value=models[0] if models else None, allow_custom_value=True,
                            interactive=True, label="Base model", info="a built-in model, or a diffusers folder or checkpoint file "
                            "(.safetensors) under the allowed folders", elem_id="pv-model", scale=2)
        vae = gr.Textbox(label="VAE (optional)", interactive=True, info="a VAE file or folder in place of the model's own",
                         elem_id="pv-vae", scale=1)
        picked = gr.Dropdown(choices=adapters, value=[], multiselect=True, label="Adapters",
                             info="outputs/NAME/NAME.safetensors and adapters/", elem_id="pv-adapters", scale=4)
        refresh = gr.Button("Refresh list", elem_id="pv-refresh", scale=0)
    with gr.Row(equal_height=False):
        with gr.Column(scale=2):
            prompt = gr.Textbox(label="Prompt", lines=2, elem_id="pv-prompt", interactive=True,
                                value=PREVIEW_DEFAULTS.prompt)
            negative = gr.Textbox(label="Negative prompt", elem_id="pv-negative", interactive=True)
            with gr.Row(equal_height=False):
                # PREVIEW_DEFAULTS: a seed where the demo adapter draws its ring, so the first image shows the concept.
                seed = gr.Textbox(str(PREVIEW_DEFAULTS.seed), label="Seed", elem_id="pv-seed", interactive=True,
                                  max_lines=1)
                steps = gr.Slider(1, 100, PREVIEW_DEFAULTS.steps, step=1, label="Steps", elem_id="pv-steps",
                                  interactive=True)
                guidance = gr.Slider(0, 20, PREVIEW_DEFAULTS.guidance, step=0.1, label="Guidance",
                                     elem_id="pv-guidance", interactive=True)
            with gr.Row(equal_height=False):
                width = gr.Slider(64, 1024, 64, step=8, label="Width", elem_id="pv-width", interactive=True)
                height = gr.Slider(64, 1024, 64, step=8, label="Height", elem_id="pv-height", interactive=True)
                scheduler = gr.Dropdown(choices=SCHEDULERS, value="ddim", label="Scheduler",
                                        info="LCM is chosen for an LCM adapter", elem_id="pv-scheduler",
                                        interactive=True)
        with gr.Column(scale=2, elem_id="pv-weights"):
            gr.Markdown(f"**Weights** ({WEIGHT_RANGE[0]:g} to {WEIGHT_RANGE[1]:g})")

            @gr.render(inputs=[picked])
            def weights(names):
                sliders = [gr.Slider(*WEIGHT_RANGE, 1.0, step=0.05, label=name, key=f"weight:{name}", interactive=True,
                                     elem_classes=["pv-weight"]) for name in names or []]
                if not sliders:
                    gr.Markdown("Pick adapters above; each gets a weight slider here.")
                state_inputs = [model, vae, prompt, negative, seed, steps, guidance, width, height, scheduler,
                                picked, row_on, row_adapter]
                # always_last: a click while a generation runs (one a slider started, say) renders the latest
                # settings once that one ends; Gradio's default for clicks drops it, and the click seems lost.
                generate.click(on_generate, [*state_inputs, *sliders], [base_img, blend_img, row, note],
                               trigger_mode="always_last")
                for slider in sliders:
                    # On release only: a drag would queue a generation per pixel moved.
                    slider.release(on_generate, [*state_inputs, *sliders], [base_img, blend_img, row, note],
                                   trigger_mode="always_last")

    with gr.Row(equal_height=False):
        generate = gr.Button("Generate", variant="primary", elem_id="pv-generate", scale=2)
        row_on = gr.Checkbox(False, label="Also a row over one adapter's weight (0, 0.25 … 1)", elem_id="pv-row-on",
                             interactive=True)
        row_adapter = gr.Dropdown(choices=[], label="Row adapter", elem_id="pv-row-adapter", interactive=True)
    note = gr.Markdown(elem_id="pv-note")
    with gr.Row(equal_height=False):
        base_img = gr.Image(label="Base model", format="png", interactive=False, elem_id="pv-base", height=320)
        blend_img = gr.Image(label="With adapters", format="png", interactive=False, elem_id="pv-blend",
                             height=320)
    # contain, not the default cover: the whole image is shown, with its weight as the caption below it.
    row = gr.Gallery(label="Weight row", columns=len(ROW_WEIGHTS), height=280, object_fit="contain",
                     interactive=False, elem_id="pv-row")

    # ------------------------------------------------------------------------------------------ handlers
    def on_generate(model_ref, vae_ref, text, neg, seed_v, steps_v, guidance_v, w, h, sched, names, row_flag,
                    row_name, *weights_v):
        try:
            base = _model(ctx, model_ref)
            vae_path = str(ctx.roots.resolve(vae_ref)) if (vae_ref or "").strip() else None
            files = [ctx.roots.resolve(name, kind="file") for name in names or []]
            params = GenParams(prompt=text or "", negative=neg or "", seed=parse_number(seed_v, "Seed", "int"),
                               steps=int(steps_v), guidance=float(guidance_v), width=int(w), height=int(h),
                               scheduler=sched)
            pairs = list(zip(files, [float(v) for v in weights_v]))
            base_image = engine.generate(base, [], params, vae_path)
            with warnings.catch_warnings(record=True) as caught:  # the adapter check's: layers the model lacks
                warnings.simplefilter("always")
                blended = engine.generate(base, pairs, params, vae_path) if pairs else None
            for w in caught:
                if issubclass(w.category, UserWarning):
                    gr.Warning(str(w.message))
            row_images = []
            if row_flag and row_name in (names or []):
                at = list(names).index(row_name)
                for weight in ROW_WEIGHTS:
                    varied = [(p, weight if i == at else wv) for i, (p, wv) in enumerate(pairs)]
                    row_images.append((upscaled(engine.generate(base, varied, params, vae_path)),
                                       f"{Path(row_name).stem} {weight:g}"))
        except SdloraError as exc:
            raise gr.Error(str(exc)) from None
        shown = ", ".join(f"{Path(p).stem} {wv:+.2f}" for p, wv in pairs) or "no adapters picked"
        note_text = (f"`{model_ref}` · “{params.prompt}” · {params.width}x{params.height}, {sched}, {params.steps} steps, guidance {params.guidance:g}, "
                     f"seed {params.seed} · {shown}")
        return upscaled(base_image), upscaled(blended), row_images, note_text

    def on_pick(names, sched, steps_v, guidance_v):
        lcm = [n for n in names or [] if adapter_mode(ctx.roots.resolve(n, kind="file")).get("mode") == "lcm"]
        row_update = gr.update(choices=list(names or []), value=(names or [None])[0])
        if lcm:
            info = adapter_mode(ctx.roots.resolve(lcm[0], kind="file"))
            return row_update, info["scheduler"], info["steps"], info["guidance"]
        return row_update, "ddim" if sched == "lcm" else sched, steps_v, guidance_v

    picked.change(on_pick, [picked, scheduler, steps, guidance], [row_adapter, scheduler, steps, guidance])
    refresh.click(lambda cur: gr.update(choices=find_adapters(ctx), value=[c for c in cur or []
                                                                         if c in find_adapters(ctx)]),
                  [picked], [picked])
    from ui import compare_view  # the Compare view: a run's checkpoints x weights x prompts as one grid

    with gr.Accordion("Compare: checkpoints x weights x prompts", open=False, elem_id="pv-compare"):
        compare_view.build(ctx, generate_inputs=dict(model=model, adapters=picked, prompt=prompt, seed=seed,
                                                     steps=steps, guidance=guidance))
    return PreviewTab(model=model, vae=vae, adapters=picked, prompt=prompt, negative=negative, seed=seed, steps=steps,
                      guidance=guidance, width=width, height=height, scheduler=scheduler, engine=engine)


def _model(ctx: AppContext, ref: str | None) -> str:
    if not ref:
        raise SdloraError("choose a base model")
    if ref in builtin_models():
        return ref
    return str(ctx.roots.resolve(ref))  # a diffusers folder or a single-file checkpoint: the loader tells them apart
