"""The Adapters tab: the adapter tools of the command line in the browser, each a small panel over the same
library call: inspect (`sdlora inspect`: per-layer |dW| and effective rank, as a chart), resize (`sdlora resize`),
convert (`sdlora convert`) and merge into a model (`sdlora merge`). New files go to adapters/ (where Preview finds
them) and merged models to models/, inside the project.
"""

from __future__ import annotations

import html
from pathlib import Path

import gradio as gr

from sdlora.errors import SdloraError
from sdlora.models import builtin_models
from ui.chart import bar_chart
from ui.context import AppContext
from ui.fields import parse_number
from ui.paths import safe_name
from ui.preview_tab import find_adapters


def inspect_report(path: Path) -> tuple[str, str]:
    """(summary HTML, chart SVG) for an adapter file: what `sdlora inspect` prints."""
    from sdlora.adapters.analysis import describe
    from sdlora.lora.io import read_adapter_file

    found = read_adapter_file(path)
    r = describe(found.adapter)
    listing = lambda values: ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)  # noqa: E731
    rows = [("format", f"{found.format} ({', '.join(sorted(found.dtypes))})"),
            ("family", f"{r['family']} (from {r['family_source']})"),
            ("base model", r["base_model"] or "not recorded"),
            ("layers", f"{r['num_layers']} (" + ", ".join(f"{c} {n}" for c, n in r["components"].items()) + ")"),
            ("rank / alpha", f"{listing(r['ranks'])} / {listing(r['alphas'])}"),
            ("parameters", f"{r['num_parameters']:,}"),
            ("targets", ", ".join(f"{kind} x{n}" for kind, n in r["targets"].items()))]
    rows += list(r["training"].items())
    table = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    summary = f'<div class="sdlora-check" id="ad-summary-table"><table>{table}</table></div>'
    share = int(r["effective_rank_energy"] * 100)
    chart = bar_chart([(layer["name"], layer["norm"], layer["effective_rank"]) for layer in r["layers"]],
                      f"{r['num_layers']} layers", "|dW|_F", f"effective rank ({share}% energy)")
    return summary, chart


def build(ctx: AppContext) -> None:
    adapters = find_adapters(ctx)
    with gr.Row(equal_height=False):
        picked = gr.Dropdown(choices=adapters, value=adapters[0] if adapters else None, allow_custom_value=True,
                             interactive=True, label="Adapter", info="a LoRA .safetensors under the allowed folders",
                             elem_id="ad-file", scale=4)
        refresh = gr.Button("Refresh list", elem_id="ad-refresh", scale=0)
    with gr.Tabs():
        with gr.Tab("Inspect", id="ad-inspect-tab"):
            inspect_btn = gr.Button("Inspect", variant="primary", elem_id="ad-inspect")
            summary = gr.HTML(elem_id="ad-summary")
            chart = gr.HTML(elem_id="ad-chart")
        with gr.Tab("Resize", id="ad-resize-tab"):
            with gr.Row(equal_height=False):
                rank = gr.Textbox("4", label="New rank", info="at most this rank per layer (truncated SVD of dW)",
                                  max_lines=1, elem_id="ad-rank")
                resize_out = gr.Textbox(label="Save as", placeholder="NAME", info="adapters/NAME.safetensors",
                                        elem_id="ad-resize-out")
            resize_btn = gr.Button("Resize", variant="primary", elem_id="ad-resize")
            resize_note = gr.Markdown(elem_id="ad-resize-note")
        with gr.Tab("Convert", id="ad-convert-tab"):
            with gr.Row(equal_height=False):
                to = gr.Radio(["kohya", "diffusers"], value="diffusers", label="Key format to write",
                              elem_id="ad-to")
                convert_out = gr.Textbox(label="Save as", placeholder="NAME", info="adapters/NAME.safetensors",
                                         elem_id="ad-convert-out")
            convert_btn = gr.Button("Convert", variant="primary", elem_id="ad-convert")
            convert_note = gr.Markdown(elem_id="ad-convert-note")
        with gr.Tab("Merge into a model", id="ad-merge-tab"):
            with gr.Row(equal_height=False):
                models = list(builtin_models())
                model = gr.Dropdown(choices=models, value=models[0] if models else None, allow_custom_value=True,
                                    interactive=True, label="Base model", info="built-in or a diffusers folder",
                                    elem_id="ad-model")
                weight = gr.Textbox("1.0", label="Weight", info="-2 to 2", max_lines=1, elem_id="ad-weight")
                merge_out = gr.Textbox(label="Save as", placeholder="NAME", info="models/NAME (a diffusers folder)",
                                       elem_id="ad-merge-out")
            merge_btn = gr.Button("Merge", variant="primary", elem_id="ad-merge")
            merge_note = gr.Markdown(elem_id="ad-merge-note")

    def adapter_file(name) -> Path:
        if not (name or "").strip():
            raise SdloraError("choose an adapter file first")
        return ctx.roots.resolve(name, kind="file")

    def new_adapter_path(name) -> Path:
        target = ctx.roots.resolve(f"adapters/{safe_name(name or '', 'file name')}.safetensors", must_exist=False)
        if target.exists():
            raise SdloraError(f"adapters/{target.name} exists already; choose another name")
        return target

    def on_inspect(name):
        try:
            return inspect_report(adapter_file(name))
        except SdloraError as exc:
            raise gr.Error(str(exc)) from None

    def on_resize(name, rank_text, out):
        from sdlora.adapters.analysis import resize_adapter
        from sdlora.lora.io import read_adapter_file, save_adapter

        try:
            new_rank = parse_number(rank_text, "New rank", "int")
            if new_rank < 1:
                raise SdloraError(f"New rank: {new_rank}; give a whole number of 1 or more")
            found = read_adapter_file(adapter_file(name))
            target = new_adapter_path(out)
            resized, kept = resize_adapter(found.adapter, new_rank)
            save_adapter(resized, target, fmt=found.format, dtype=None)
        except SdloraError as exc:
            raise gr.Error(str(exc)) from None
        values = list(kept.values())
        rel = str(target.relative_to(ctx.project))
        return (gr.update(choices=find_adapters(ctx)),
                f"Wrote `{rel}`: {len(values)} layers at rank ≤ {new_rank}; energy kept min {min(values):.4f}, "
                f"mean {sum(values) / len(values):.4f}")

    def on_convert(name, fmt, out):
        from sdlora.lora.io import read_adapter_file, save_adapter

        try:
            found = read_adapter_file(adapter_file(name))
            target = new_adapter_path(out)
            save_adapter(found.adapter, target, fmt=fmt, dtype=None)  # renames keys; the tensors keep their bits
        except SdloraError as exc:
            raise gr.Error(str(exc)) from None
        rel = str(target.relative_to(ctx.project))
        skipped = f"; {len(found.skipped_keys)} key(s) that are not LoRA layers left out" if found.skipped_keys else ""
        return (gr.update(choices=find_adapters(ctx)),
                f"Wrote `{rel}`: {len(found.adapter.layers)} layers, {found.format} → {fmt}{skipped}")

    def on_merge(name, model_ref, weight_text, out):
        from sdlora.adapters.merge import merge

        try:
            path = adapter_file(name)
            w = parse_number(weight_text, "Weight")
            base = model_ref if model_ref in builtin_models() else str(ctx.roots.resolve(model_ref or "",
                                                                                       kind="dir"))
            target = ctx.roots.resolve(f"models/{safe_name(out or '', 'folder name')}", must_exist=False)
            if target.exists():
                raise SdloraError(f"models/{target.name} exists already; choose another name")
            merged = merge(base, [(path, w)], target)
        except SdloraError as exc:
            raise gr.Error(str(exc)) from None
        return (f"Wrote `{Path(merged).relative_to(ctx.project)}`: {model_ref} with {Path(name).name} at {w:g} "
                f"merged in (diffusers format; use it as a base model)")

    refresh.click(lambda cur: gr.update(choices=find_adapters(ctx), value=cur), [picked], [picked])
    inspect_btn.click(on_inspect, [picked], [summary, chart])
    resize_btn.click(on_resize, [picked, rank, resize_out], [picked, resize_note])
    convert_btn.click(on_convert, [picked, to, convert_out], [picked, convert_note])
    merge_btn.click(on_merge, [picked, model, weight, merge_out], [merge_note])
