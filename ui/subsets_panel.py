"""The Dataset tab's Concepts panel: more data folders in one run (data.subsets), each with its own repeats,
trigger, loss weight and caption options. Added, removed and checked here; they live in the Train tab's
data.subsets field, so Start, the command shown, Save preset and the queue all carry them.

The editor's fields are generated from `SubsetConfig`, so a new subset option shows up here without touching it.
"""

from __future__ import annotations

import dataclasses
import html
from dataclasses import dataclass
from typing import Any

import gradio as gr

from sdlora.config import Config, DataConfig, SubsetConfig, config_from_dict
from sdlora.errors import SdloraError
from ui.check_view import check_html
from ui.config_form import Field, config_fields, from_widget, plain, records_text
from ui.context import AppContext
from ui.fields import parse_number

LABELS = {"dir": "Folder", "repeats": "Repeats", "trigger": "Trigger", "loss_weight": "Loss weight",
          "caption_extension": "Caption extension", "default_caption": "Default caption",
          "shuffle_tags": "Shuffle tags", "keep_tokens": "Keep tokens", "caption_dropout": "Caption dropout",
          "tag_dropout": "Tag dropout"}
INHERIT = "as data"  # an optional caption option left to data.*'s value


@dataclass
class SubsetsPanel:
    """The panel's components; `connect` wires them to the Train tab's data.subsets field."""

    fields: list[Field]
    editor: list
    add: gr.Button
    table: gr.HTML
    pick: gr.Dropdown
    remove: gr.Button
    check: gr.Button
    report: gr.HTML
    checks: list  # the Dataset tab's check settings: resolution, upscaling, caption extension


def _editor_widget(field: Field, folders: list[str]):
    label = LABELS.get(field.key, field.key)
    common = dict(label=label, info=f"{field.key}: {field.help}", elem_id="sub-" + field.key.replace("_", "-"))
    if field.key == "dir":
        return gr.Dropdown(choices=folders, value=None, allow_custom_value=True, **common)
    if field.kind == "bool":  # optional: on, off, or data's own setting
        return gr.Radio(choices=[INHERIT, "on", "off"], value=INHERIT, **common)
    placeholder = "as data" if field.optional else "a number" if field.kind in ("int", "float") else ""
    value = "" if field.default is None else str(field.default)
    return gr.Textbox(value=value, placeholder=placeholder, max_lines=1, **common)


def build(ctx: AppContext, folders: list[str], checks: list) -> SubsetsPanel:
    fields = config_fields(SubsetConfig)
    with gr.Accordion("Concepts: more folders in the same run (data.subsets)", open=False, elem_id="sub-box"):
        gr.Markdown("Each folder trains with its own repeats, trigger, loss weight and caption options (kohya's "
                    "dataset subsets, OneTrainer's concepts); the Train tab's **Data-set folder**, when set, is "
                    "trained too, with the data.* options. The list is the Train tab's `data.subsets` field.")
        editor = []
        for row in range(0, len(fields), 5):
            with gr.Row(equal_height=False):
                editor += [_editor_widget(f, folders) for f in fields[row:row + 5]]
        add = gr.Button("Add subset", variant="primary", elem_id="sub-add")
        table = gr.HTML(_table_html(ctx, []), elem_id="sub-table")
        with gr.Row(equal_height=False):
            pick = gr.Dropdown(choices=[], value=None, label="Subset", elem_id="sub-pick", scale=3)
            remove = gr.Button("Remove", elem_id="sub-remove", scale=1)
            check = gr.Button("Check", elem_id="sub-check", scale=1)
        report = gr.HTML(elem_id="sub-report")
    return SubsetsPanel(fields, editor, add, table, pick, remove, check, report, checks)


def item_from_editor(fields: list[Field], values: list[Any]) -> dict[str, Any]:
    """The data.subsets item the editor describes: the folder, and each key that differs from its default."""
    item: dict[str, Any] = {}
    for field, value in zip(fields, values):
        text = "" if value is None else str(value)
        if field.kind == "bool":
            if text in ("on", "off"):
                item[field.key] = text == "on"
            continue
        if field.optional and not text.strip():
            continue  # left to data.*
        if field.kind in ("int", "float"):
            parsed: Any = parse_number(text, f"{LABELS.get(field.key, field.key)} ({field.key})", field.kind)
        else:
            parsed = text.strip() if field.key == "dir" else text
        if field.key == "dir" or parsed != field.default:
            item[field.key] = parsed
    return item


def parse_subsets(text: str) -> list[SubsetConfig]:
    """The data.subsets field's text, validated (a `SdloraError` names the item and key)."""
    return config_from_dict({"data": {"subsets": from_widget(_subsets_field(), text)}}).data.subsets


def _subsets_field() -> Field:
    return next(f for f in config_fields() if f.key == "data.subsets")


def _files(ctx: AppContext, folder: str, extension: str) -> str:
    from sdlora.data.scan import scan_folder

    try:
        return str(len(scan_folder(ctx.roots.resolve(folder, kind="dir"), extension)))
    except SdloraError as exc:
        return f"⚠ {exc}"


def _table_html(ctx: AppContext, subsets: list[SubsetConfig]) -> str:
    if not subsets:
        return "<p>No subsets: the run trains the Data-set folder alone.</p>"
    rows = []
    for i, (subset, item) in enumerate(zip(subsets, plain(subsets))):
        other = ", ".join(f"{k} {v}" for k, v in item.items() if k not in ("dir", "repeats", "trigger", "loss_weight"))
        cells = [f"data.subsets[{i}]", subset.dir, _files(ctx, subset.dir, subset.caption_extension or ".txt"),
                 subset.repeats, subset.trigger or "—", f"{subset.loss_weight:g}", other or "as data"]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("subset", "folder", "images", "repeats", "trigger", "loss weight",
                                             "caption options"))
    return f'<div class="sdlora-check"><table><tr>{head}</tr>{"".join(rows)}</table></div>'


def _choices(subsets: list[SubsetConfig]) -> list[tuple[str, str]]:
    return [(f"data.subsets[{i}] {s.dir}", str(i)) for i, s in enumerate(subsets)]


def check_subset(ctx: AppContext, subset: SubsetConfig, number: int, resolution: int, allow_upscale: bool,
                 extension: str) -> str:
    """The data check of one subset as training sees it (its repeats, trigger and caption extension), as HTML."""
    from sdlora.data.check import check_folder

    folder = ctx.roots.resolve(subset.dir, kind="dir")
    data = config_from_dict({"data": {"dir": str(folder), "resolution": resolution, "allow_upscale": allow_upscale,
                                      "caption_extension": subset.caption_extension or extension or ".txt",
                                      "repeats": subset.repeats, "trigger": subset.trigger}}).data
    title = f"<p><b>data.subsets[{number}]</b> {html.escape(subset.dir)}</p>"
    return title + check_html(check_folder(data))


def connect(panel: SubsetsPanel, ctx: AppContext, subsets_box, app: gr.Blocks | None = None) -> None:
    """Wire the panel to the Train tab's data.subsets field (`subsets_box`), the one place the list lives."""

    def render(text):
        try:
            subsets = parse_subsets(text)
        except SdloraError as exc:
            return f'<div class="sdlora-check"><p class="problem">❌ {html.escape(str(exc))}</p></div>', gr.skip()
        choices = _choices(subsets)
        return _table_html(ctx, subsets), gr.update(choices=choices, value=choices[-1][1] if choices else None)

    def on_add(text, *values):
        try:
            item = item_from_editor(panel.fields, list(values))
            if not item.get("dir"):
                raise SdloraError("Folder: choose or type the folder of this subset's images")
            ctx.roots.resolve(item["dir"], kind="dir")
            current = plain(parse_subsets(text))
            subsets = parse_subsets(records_text(current + [item]))
        except SdloraError as exc:
            raise gr.Error(str(exc)) from None
        gr.Info(f"data.subsets[{len(subsets) - 1}] added: {item['dir']}")
        return records_text(subsets)

    def on_remove(text, picked):
        try:
            subsets = parse_subsets(text)
        except SdloraError as exc:
            raise gr.Error(str(exc)) from None
        if picked in (None, "") or not 0 <= int(picked) < len(subsets):
            raise gr.Error("Pick a subset to remove.")
        del subsets[int(picked)]
        return records_text(subsets)

    def on_check(text, picked, resolution, allow_upscale, extension):
        try:
            subsets = parse_subsets(text)
            if picked in (None, "") or not 0 <= int(picked) < len(subsets):
                raise SdloraError("Pick a subset to check (add one first).")
            number = int(picked)
            res = parse_number(resolution, "Training resolution", "int")
            return check_subset(ctx, subsets[number], number, res, bool(allow_upscale), extension)
        except SdloraError as exc:
            raise gr.Error(str(exc)) from None

    panel.add.click(on_add, [subsets_box, *panel.editor], [subsets_box])
    panel.remove.click(on_remove, [subsets_box, panel.pick], [subsets_box])
    panel.check.click(on_check, [subsets_box, panel.pick, *panel.checks], [panel.report])
    subsets_box.change(render, [subsets_box], [panel.table, panel.pick], show_progress="hidden")
    if app is not None:
        app.load(render, [subsets_box], [panel.table, panel.pick], show_progress="hidden")


def resolve_data_folders(ctx: AppContext, config: Config) -> DataConfig:
    """The config's data folders checked against the app's roots, made absolute: data.dir (required unless
    data.subsets names the folders), data.reg_dir, and each subset's dir."""
    data = config.data
    if data.dir or not data.subsets:
        data = dataclasses.replace(data, dir=str(ctx.roots.resolve(data.dir or "", kind="dir")))
    if data.reg_dir:
        data = dataclasses.replace(data, reg_dir=str(ctx.roots.resolve(data.reg_dir, kind="dir")))
    subsets = [dataclasses.replace(s, dir=str(ctx.roots.resolve(s.dir, kind="dir"))) for s in data.subsets]
    return dataclasses.replace(data, subsets=subsets)

