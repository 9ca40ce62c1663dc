"""The Dataset tab: open a data-set folder (or make one from uploads), edit captions, bulk edits, the check report."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from sdlora.config import load_config
from sdlora.errors import SdloraError
from ui import caption_panel, captions, subsets_panel
from ui.check_view import checked
from ui.context import AppContext
from ui.fields import parse_number
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


def preview_html(changes: list[captions.Change], folder: Path, shown: int = 12) -> str:
    """What a bulk edit would write: before and after for the first `shown` captions."""
    if not changes:
        return "<p>No caption would change.</p>"
    rows = "".join(f"<tr><td>{html.escape(str(c.image.relative_to(folder)))}</td>"
                   f"<td>{html.escape((c.old or '(no caption file)').strip())}</td>"
                   f"<td>{html.escape(c.new)}</td></tr>" for c in changes[:shown])
    more = f"<p>… and {len(changes) - shown} more.</p>" if len(changes) > shown else ""
    return (f'<div class="sdlora-check"><p><b>{len(changes)} caption file(s) would change.</b> Apply writes them; '
            f'Undo puts them back.</p><table><tr><th>image</th><th>before</th><th>after</th></tr>{rows}</table>'
            f'{more}</div>')


@dataclass
class DatasetTab:
    """What other panels hook into: the opened folder (a gr.State of its resolved path), the folder picker, and
    the check's preset (app.py keeps it on the Train tab's preset)."""

    folder_state: gr.State
    folder: gr.Dropdown
    check_preset: gr.Dropdown
    subsets: subsets_panel.SubsetsPanel | None = None  # the Concepts panel (data.subsets); app.py connects it


def build(ctx: AppContext) -> DatasetTab:
    folders = known_folders(ctx)
    presets = ctx.presets()
    first = "demo" if "demo" in presets else (presets[0] if presets else None)
    res0, up0, ext0 = _preset_check(ctx, first)
    if not isinstance(res0, str):  # an unreadable preset: the Train tab says why
        res0, up0 = "512", False
    pending = gr.State([])  # the planned bulk edit, shown before it is applied
    undo = gr.State([])  # the last applied bulk edit, for Undo
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
                    trigger_btn = gr.Button("Add to all…", elem_id="ds-add-trigger", scale=1)
                with gr.Row(equal_height=False):
                    find = gr.Textbox(label="Find", elem_id="ds-find")
                    repl = gr.Textbox(label="Replace with", elem_id="ds-replace")
                replace_btn = gr.Button("Replace in all…", elem_id="ds-replace-all")
                bulk_preview = gr.HTML(elem_id="ds-bulk-preview")
                with gr.Row(equal_height=False):
                    apply_btn = gr.Button("Apply", variant="primary", visible=False, elem_id="ds-bulk-apply")
                    cancel_btn = gr.Button("Cancel", visible=False, elem_id="ds-bulk-cancel")
                    undo_btn = gr.Button("Undo the last bulk edit", visible=False, elem_id="ds-bulk-undo")
    with gr.Row(equal_height=False):
        gr.Markdown("### Check", elem_id="ds-check-title")
        check_preset = gr.Dropdown(choices=presets, value=first, label="As the preset trains",
                                   info="its data.resolution and data.allow_upscale", elem_id="ds-check-preset")
        check_res = gr.Textbox(str(res0), label="Training resolution", elem_id="ds-check-resolution",
                               info="data.resolution", max_lines=1)
        check_up = gr.Checkbox(up0, label="Allow upscaling", info="data.allow_upscale", elem_id="ds-check-upscale")
        check_ext = gr.Textbox(ext0, label="Caption extension", info="data.caption_extension: the files read "
                               "and written here", elem_id="ds-check-ext", max_lines=1)
        check_btn = gr.Button("Check again", elem_id="ds-check", scale=0)
    report = gr.HTML(elem_id="ds-report")
    subsets = subsets_panel.build(ctx, folders, [check_res, check_up, check_ext])

    # ------------------------------------------------------------------------------------------ handlers
    def load(path: Path, res, up, ext, note: str = ""):
        entries = captions.list_entries(path, ext, allowed=ctx.roots.contains)
        refused = [e.refused for e in entries if e.refused]
        report_html, problems = checked(path, parse_number(res, "Training resolution", "int"), up,
                                        hide_tags=bool(refused), caption_extension=ext)
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

    def on_open(text, res, up, ext):
        try:
            return load(ctx.roots.resolve(text or "", kind="dir"), res, up, ext)
        except SdloraError as exc:
            raise gr.Error(str(exc)) from None

    def on_create(name, files, res, up, ext):
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
        try:
            shown = load(target, res, up, ext, result.summary())
        except SdloraError as exc:
            raise gr.Error(str(exc)) from None
        return (gr.update(choices=known_folders(ctx), value=rel), *shown)

    def on_select(paths, ext, evt: gr.SelectData):
        index = evt.index if isinstance(evt.index, int) else evt.index[0]
        image = Path(paths[index])
        path = captions.caption_path_for(image, ext)
        if path.exists() and not ctx.roots.contains(path):
            raise gr.Error(f"{path.name} leads outside the allowed folders through a symlink; not read")
        text = captions.read_caption(path)[0] if path.is_file() else ""
        return index, f"Editing **{image.name}** → `{path.name}`", text

    def on_save(path, paths, index, text, res, up, ext):
        if path is None or index is None:
            raise gr.Error("Open a folder and click an image first.")
        image = Path(paths[index])
        if not ctx.roots.contains(image):
            raise gr.Error(f"{image} is outside the allowed folders")
        written = captions.save_caption(image, text, ext)
        gr.Info(f"Saved {written.name}")
        entries = captions.list_entries(path, ext, allowed=ctx.roots.contains)
        try:
            report_html, problems = checked(path, parse_number(res, "Training resolution", "int"), up,
                                            hide_tags=any(e.refused for e in entries), caption_extension=ext)
        except SdloraError as exc:
            raise gr.Error(str(exc)) from None
        return _gallery(entries, path, problems), report_html

    def on_plan(path, plan, *args):
        """Show what a bulk edit would write; nothing is written until Apply."""
        if path is None:
            raise gr.Error("Open a folder first.")
        changes = plan(path, *args)
        return changes, preview_html(changes, path), gr.update(visible=bool(changes)), gr.update(visible=True)

    def on_apply(path, changes, res, up, ext):
        if path is None or not changes:
            raise gr.Error("Nothing to apply: press Add to all… or Replace in all… first.")
        if not all(ctx.roots.contains(c.caption_path) for c in changes):
            raise gr.Error("a caption file lies outside the allowed folders")
        changed = captions.apply_changes(changes)
        gr.Info(f"{changed} caption file(s) changed")
        try:
            shown = load(path, res, up, ext, f"{changed} caption file(s) changed; Undo puts them back")
        except SdloraError as exc:
            raise gr.Error(str(exc)) from None
        return (*shown, [], changes, "", gr.update(visible=False), gr.update(visible=False),
                gr.update(visible=True))

    def on_cancel():
        return [], "", gr.update(visible=False), gr.update(visible=False)

    def on_undo(path, changes, res, up, ext):
        if path is None or not changes:
            raise gr.Error("No bulk edit to undo.")
        restored = captions.undo_changes(changes)
        gr.Info(f"{restored} caption file(s) restored")
        try:
            shown = load(path, res, up, ext, f"{restored} caption file(s) restored")
        except SdloraError as exc:
            raise gr.Error(str(exc)) from None
        return (*shown, [], gr.update(visible=False))

    checks = [check_res, check_up, check_ext]
    # Open, or a folder chosen from the list (select, not input: typing a path and pressing Open would run
    # both and show an error twice).
    open_btn.click(on_open, [folder, *checks], outputs)
    folder.select(on_open, [folder, *checks], outputs)
    check_preset.change(lambda name: _preset_check(ctx, name), [check_preset], checks)
    create_btn.click(on_create, [new_name, uploads, *checks], [folder, *outputs])
    gallery.select(on_select, [paths_state, check_ext], [selected, image_name, caption])
    save_btn.click(on_save, [folder_state, paths_state, selected, caption, *checks], [gallery, report])
    plan_outputs = [pending, bulk_preview, apply_btn, cancel_btn]
    allowed = ctx.roots.contains  # a caption symlinked out of the allowed folders is neither read nor written
    trigger_btn.click(lambda p, t, ext: on_plan(p, captions.plan_trigger, t, ext, allowed),
                      [folder_state, trigger, check_ext], plan_outputs)
    replace_btn.click(lambda p, f, r, ext: on_plan(p, captions.plan_replace, f, r, ext, allowed),
                      [folder_state, find, repl, check_ext], plan_outputs)
    apply_btn.click(on_apply, [folder_state, pending, *checks],
                    [*outputs, pending, undo, bulk_preview, apply_btn, cancel_btn, undo_btn])
    cancel_btn.click(on_cancel, None, plan_outputs)
    undo_btn.click(on_undo, [folder_state, undo, *checks], [*outputs, undo, undo_btn])
    check_btn.click(lambda p, res, up, ext: on_open(str(p) if p else "", res, up, ext), [folder_state, *checks],
                    outputs)
    caption_panel.build(ctx, folder_state, load, checks, outputs)
    return DatasetTab(folder_state=folder_state, folder=folder, check_preset=check_preset, subsets=subsets)


def _preset_check(ctx: AppContext, name: str | None) -> tuple:
    """The data check's resolution, upscaling and caption extension as the preset trains (512, off and .txt
    without a preset)."""
    if not name:
        return "512", False, ".txt"
    try:
        data = load_config(ctx.roots.resolve(f"presets/{name}.yaml", kind="file")).data
    except SdloraError:
        return gr.skip(), gr.skip(), gr.skip()
    return str(data.resolution), data.allow_upscale, data.caption_extension


def _shown(ctx: AppContext, path: Path) -> str:
    try:
        return str(path.relative_to(ctx.project))
    except ValueError:
        return str(path)
