"""The Dataset tab: open a data-set folder (or make one from uploads), edit captions, bulk edits, the check report."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from sdlora.errors import SdloraError
from ui import caption_panel, captions
from ui.check_view import checked
from ui.context import AppContext
from ui.paths import UnsafePath, safe_name
from ui.uploads import import_uploads

UPLOAD_TYPES = [".png", ".jpg", ".jpeg", ".webp", ".bmp", ".txt", ".caption", ".zip"]


def known_folders(ctx: AppContext) -> list[str]:
    """Data-set folders to offer: the children of datasets/ and examples/ in the project."""
    found = []
    for parent in ("datasets", "examples"):
        base = ctx.project / parent
        if base.is_dir():
            found += [str(p.relative_to(ctx.project)) for p in sorted(base.iterdir())
                      if p.is_dir() and not p.name.startswith(".") and ctx.roots.contains(p)]
    return found


def _gallery(entries: list[captions.Entry], folder: Path, problems: dict[str, str]) -> list[tuple[str, str]]:
    """(image, label): the caption, marked ⚠ with the reason where the check found a problem."""
    items = []
    for e in entries:
        if e.refused:  # never handed to the browser
            continue
        label = e.caption or "(no caption)"
        reason = problems.get(str(e.image.relative_to(folder)))
        items.append((str(e.image), f"⚠ {reason} | {label}" if reason else label))
    return items


def build(ctx: AppContext) -> None:
    folders = known_folders(ctx)
    folder_state = gr.State(None)  # the opened folder, resolved
    paths_state = gr.State([])  # image paths in gallery order
    selected = gr.State(None)  # index of the image being edited

    with gr.Row(equal_height=False):
        folder = gr.Dropdown(choices=folders, value=None, allow_custom_value=True, label="Data-set folder",
                             info="a folder under " + ctx.roots.describe(), elem_id="ds-folder", scale=4)
        open_btn = gr.Button("Open", variant="primary", elem_id="ds-open", scale=1)
    with gr.Accordion("New data set from uploaded images or a zip", open=False, elem_id="ds-new"):
        with gr.Row(equal_height=False):
            new_name = gr.Textbox(label="Name", placeholder="my-set", info="created as datasets/NAME",
                                  elem_id="ds-new-name")
            uploads = gr.File(file_count="multiple", file_types=UPLOAD_TYPES, label="Images, captions or a zip",
                              elem_id="ds-uploads")
        create_btn = gr.Button("Create data set", elem_id="ds-create")
    summary = gr.Markdown(elem_id="ds-summary")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            gallery = gr.Gallery(label="Images and captions", columns=6, height=420, allow_preview=False,
                                 object_fit="contain", interactive=False, elem_id="ds-gallery")
        with gr.Column(scale=2):
            image_name = gr.Markdown("Click an image to edit its caption.", elem_id="ds-image-name")
            caption = gr.Textbox(label="Caption", lines=4, interactive=True, elem_id="ds-caption")
            save_btn = gr.Button("Save caption", variant="primary", elem_id="ds-save")
            with gr.Accordion("Bulk edits (every caption in the folder)", open=True):
                with gr.Row(equal_height=False):
                    trigger = gr.Textbox(label="Trigger word", placeholder="sks", elem_id="ds-trigger", scale=3)
                    trigger_btn = gr.Button("Add to all", elem_id="ds-add-trigger", scale=1)
                with gr.Row(equal_height=False):
                    find = gr.Textbox(label="Find", elem_id="ds-find")
                    repl = gr.Textbox(label="Replace with", elem_id="ds-replace")
                replace_btn = gr.Button("Replace in all", elem_id="ds-replace-all")
    with gr.Row(equal_height=False):
        gr.Markdown("### Check", elem_id="ds-check-title")
        check_res = gr.Number(512, precision=0, label="Training resolution", elem_id="ds-check-resolution",
                              info="data.resolution")
        check_up = gr.Checkbox(False, label="Allow upscaling", info="data.allow_upscale", elem_id="ds-check-upscale")
        check_btn = gr.Button("Check again", elem_id="ds-check", scale=0)
    report = gr.HTML(elem_id="ds-report")

    # ------------------------------------------------------------------------------------------ handlers
    def load(path: Path, res, up, note: str = ""):
        entries = captions.list_entries(path, allowed=ctx.roots.contains)
        refused = [e.refused for e in entries if e.refused]
        report_html, problems = checked(path, res, up, hide_tags=bool(refused))
        entries = [e for e in entries if not e.refused]
        missing = sum(1 for e in entries if not e.has_file)
        rel = _shown(ctx, path)
        text = f"**{rel}**: {len(entries)} image(s)" + (f", {missing} without a caption" if missing else "")
        if refused:
            text += f" · ⚠ refused {len(refused)}: " + "; ".join(refused[:3]) + (" …" if len(refused) > 3 else "")
        if note:
            text += f" · {note}"
        return (path, [str(e.image) for e in entries], _gallery(entries, path, problems), text, None,
                "Click an image to edit its caption.", "", report_html)

    outputs = [folder_state, paths_state, gallery, summary, selected, image_name, caption, report]

    def on_open(text, res, up):
        try:
            return load(ctx.roots.resolve(text or "", kind="dir"), res, up)
        except SdloraError as exc:
            raise gr.Error(str(exc)) from None

    def on_create(name, files, res, up):
        try:
            if not files:
                raise UnsafePath("choose images, caption files or a zip to upload")
            target = ctx.roots.resolve(f"datasets/{safe_name(name or '', 'data-set name')}", must_exist=False)
            if target.exists() and any(target.iterdir()):
                raise UnsafePath(f"{_shown(ctx, target)} exists already and is not empty; choose another name")
            result = import_uploads([getattr(f, "name", f) for f in files], target, ctx.limits)
        except SdloraError as exc:
            raise gr.Error(str(exc)) from None
        rel = _shown(ctx, target)
        return (gr.update(choices=known_folders(ctx), value=rel), *load(target, res, up, result.summary()))

    def on_select(paths, evt: gr.SelectData):
        index = evt.index if isinstance(evt.index, int) else evt.index[0]
        image = Path(paths[index])
        path = captions.caption_path_for(image)
        if path.exists() and not ctx.roots.contains(path):
            raise gr.Error(f"{path.name} leads outside the allowed folders through a symlink; not read")
        text = captions.read_caption(path)[0] if path.is_file() else ""
        return index, f"Editing **{image.name}** → `{path.name}`", text

    def on_save(path, paths, index, text, res, up):
        if path is None or index is None:
            raise gr.Error("Open a folder and click an image first.")
        image = Path(paths[index])
        if not ctx.roots.contains(image):
            raise gr.Error(f"{image} is outside the allowed folders")
        written = captions.save_caption(image, text)
        gr.Info(f"Saved {written.name}")
        entries = captions.list_entries(path, allowed=ctx.roots.contains)
        report_html, problems = checked(path, res, up, hide_tags=any(e.refused for e in entries))
        return _gallery(entries, path, problems), report_html

    def on_bulk(path, res, up, action, *args):
        if path is None:
            raise gr.Error("Open a folder first.")
        changed = action(path, *args)
        gr.Info(f"{changed} caption file(s) changed")
        return load(path, res, up, f"{changed} caption file(s) changed")

    checks = [check_res, check_up]
    open_btn.click(on_open, [folder, *checks], outputs)
    folder.input(on_open, [folder, *checks], outputs)
    create_btn.click(on_create, [new_name, uploads, *checks], [folder, *outputs])
    gallery.select(on_select, [paths_state], [selected, image_name, caption])
    save_btn.click(on_save, [folder_state, paths_state, selected, caption, *checks], [gallery, report])
    trigger_btn.click(lambda p, res, up, t: on_bulk(p, res, up, captions.add_trigger, t, ".txt",
                                                    ctx.roots.contains),
                      [folder_state, *checks, trigger], outputs)
    replace_btn.click(lambda p, res, up, f, r: on_bulk(p, res, up, captions.replace_text, f, r, ".txt",
                                                       ctx.roots.contains),
                      [folder_state, *checks, find, repl], outputs)
    check_btn.click(lambda p, res, up: on_open(str(p) if p else "", res, up), [folder_state, *checks], outputs)
    caption_panel.build(ctx, folder_state, load, checks, outputs)


def _shown(ctx: AppContext, path: Path) -> str:
    try:
        return str(path.relative_to(ctx.project))
    except ValueError:
        return str(path)
