"""The Dataset tab's Caption panel: captions written by a model on disk, previewed before anything is written.

The captioning is the library's (`sdlora.caption`); the model is loaded once per path and threshold and kept
for the next preview or run. Model folders must lie under the app's allowed folders (`sdlora-ui --root DIR`).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import gradio as gr

from sdlora.errors import SdloraError
from ui.context import AppContext

PREVIEW_COUNT = 4
_loaded: dict[tuple[str, float], object] = {}
_loading = threading.Lock()


def captioner(ctx: AppContext, model: str, threshold: float):
    """The captioner for `model` (checked against the roots), loaded once."""
    from sdlora.caption import load_captioner

    path = ctx.roots.resolve(model or "", must_exist=True)
    key = (str(path), float(threshold))
    with _loading:
        if key not in _loaded:
            _loaded.clear()  # one model in memory at a time
            _loaded[key] = load_captioner(path, threshold=float(threshold))
        return _loaded[key]


def preview(ctx: AppContext, folder: Path, model: str, prefix: str, overwrite: bool,
            threshold: float) -> list[tuple[str, str]]:
    """(image, caption) for the first few images that would be captioned; nothing is written."""
    from sdlora.caption import caption_folder

    report = caption_folder(folder, captioner(ctx, model, threshold), overwrite=overwrite, prefix=prefix,
                            limit=PREVIEW_COUNT, write=False, bar=False)
    return [(str(image), caption) for image, _, caption in report.written]


def write(ctx: AppContext, folder: Path, model: str, prefix: str, overwrite: bool, threshold: float):
    """Caption the folder; yields progress lines, the last one the summary."""
    from sdlora.caption import caption_folder

    cap = captioner(ctx, model, threshold)
    state = {"done": 0, "total": 0, "report": None, "error": None}

    def work():
        try:
            state["report"] = caption_folder(folder, cap, overwrite=overwrite, prefix=prefix, bar=False,
                                             progress=lambda d, t: state.update(done=d, total=t))
        except Exception as exc:  # shown in the panel; the app stays up
            state["error"] = exc

    start = time.perf_counter()
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.5)
        if state["total"]:
            speed = state["done"] / max(time.perf_counter() - start, 1e-9)
            yield f"Captioning… {state['done']} / {state['total']} images ({speed:.2f} images/s)"
    if state["error"] is not None:
        raise state["error"]
    report = state["report"]
    skipped = "".join(f"\n- skipped `{p.name}`: {reason}" for p, reason in report.skipped)
    yield (f"{len(report.written)} caption(s) written, {len(report.kept)} kept (existing; tick Overwrite to "
           f"replace them), {len(report.skipped)} skipped{skipped}")


def build(ctx: AppContext, folder_state, reload, reload_inputs: list, outputs: list) -> None:
    """The panel; `reload(folder, *reload_inputs)` gives the tab's `outputs`, to show the new captions."""
    with gr.Accordion("Caption with a model", open=False, elem_id="ds-caption-panel"):
        gr.Markdown("A captioning model on this machine: a transformers image-to-text folder (BLIP, BLIP-2, GIT, "
                    "Florence-2, ...) or a WD14 tagger folder (.onnx + tags .csv). Nothing is downloaded.")
        with gr.Row(equal_height=False):
            model = gr.Textbox(label="Model folder", placeholder="models/blip-large", elem_id="ds-cap-model",
                               scale=3)
            prefix = gr.Textbox(label="Prefix", placeholder="sks", info="put before each caption, e.g. the "
                                "trigger word", elem_id="ds-cap-prefix", scale=2)
            threshold = gr.Slider(0.05, 0.95, value=0.35, step=0.05, label="Tag threshold",
                                  info="taggers: tags scored above it", elem_id="ds-cap-threshold", scale=2)
            overwrite = gr.Checkbox(False, label="Overwrite existing captions", elem_id="ds-cap-overwrite")
        with gr.Row(equal_height=False):
            preview_btn = gr.Button("Preview", elem_id="ds-cap-preview")
            write_btn = gr.Button("Write captions", variant="primary", elem_id="ds-cap-write")
        shown = gr.Gallery(label=f"Preview: the first {PREVIEW_COUNT} captions (nothing written yet)", columns=4,
                           height=220, allow_preview=False, object_fit="contain", interactive=False,
                           elem_id="ds-cap-shown")
        progress = gr.Markdown(elem_id="ds-cap-progress")

    def on_preview(folder, model_path, text, over, thr):
        if folder is None:
            raise gr.Error("Open a folder first.")
        try:
            items = preview(ctx, Path(folder), model_path, text, over, thr)
        except SdloraError as exc:
            raise gr.Error(str(exc)) from None
        note = "" if items else "No image needs a caption (tick Overwrite to replace existing ones)."
        return items, note

    def on_write(folder, model_path, text, over, thr, *extra):
        if folder is None:
            raise gr.Error("Open a folder first.")
        skip = [gr.skip()] * len(outputs)
        line = ""
        try:
            for line in write(ctx, Path(folder), model_path, text, over, thr):
                yield [line, *skip]
        except SdloraError as exc:
            raise gr.Error(str(exc)) from None
        yield [line, *reload(Path(folder), *extra)]

    preview_btn.click(on_preview, [folder_state, model, prefix, overwrite, threshold], [shown, progress])
    write_btn.click(on_write, [folder_state, model, prefix, overwrite, threshold, *reload_inputs],
                    [progress, *outputs])
