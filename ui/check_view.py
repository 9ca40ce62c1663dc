"""The `sdlora dataset check` report (`sdlora.data.check.check_folder`) as HTML, with problems highlighted."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from sdlora.config import config_from_dict
from sdlora.errors import SdloraError


def run_check(folder: Path, resolution: int = 512, allow_upscale: bool = False,
              caption_extension: str = ".txt") -> dict[str, Any]:
    """The check report of `folder` as training at `resolution` would see it (raises `SdloraError`)."""
    from sdlora.data.check import check_folder

    data = config_from_dict({"data": {"dir": str(folder), "resolution": int(resolution),
                                      "allow_upscale": bool(allow_upscale),
                                      "caption_extension": caption_extension or ".txt"}}).data
    return check_folder(data)


def problem_files(report: dict[str, Any] | None) -> dict[str, str]:
    """Relative file path -> reason, for marking images in the gallery."""
    return {p["file"]: p["reason"] for p in (report or {}).get("problems", [])}


def check_html(report: dict[str, Any] | None, error: str = "") -> str:
    if error:
        return f'<div class="sdlora-check"><p class="problem">❌ {escape(error)}</p></div>'
    if not report:
        return ""
    r = report
    usable_class = "problem" if not r["usable"] else ("warn" if r["skipped"] else "")
    out = ['<div class="sdlora-check">',
           f'<p class="{usable_class}"><b>{r["usable"]} of {r["image_files"]}</b> image file(s) usable at '
           f'{r["resolution"]}px, {r["skipped"]} skipped; {r["samples_per_epoch"]} samples per epoch.</p>']
    sizes = r.get("sizes") or {}
    if sizes:
        out.append(f'<p>Sizes: smallest {escape(sizes["smallest"])}, median {escape(sizes["median"])}, largest '
                   f'{escape(sizes["largest"])}; {sizes["landscape"]} landscape, {sizes["portrait"]} portrait, '
                   f'{sizes["square"]} square.</p>')
    for row in r.get("repeat_folders", []):
        out.append(f'<p>{escape(row["folder"])}: {row["images"]} image(s) × {row["repeats"]} repeats</p>')
    c = r.get("captions") or {}
    if c and r["usable"]:
        tokens = c["tokens"]
        over = tokens["over_window"]
        out.append(f'<p class="{"warn" if over or c["default"] else ""}">Captions: {c["from_file"]} from files, '
                   f'{c["from_folder_name"]} from folder names, {c["default"]} default; words mean '
                   f'{c["words"]["mean"]}, max {c["words"]["max"]}; {over} over the {tokens["window"]}-token '
                   f'window.</p>')
        if c.get("top_tags"):
            tags = ", ".join(f'{escape(t["tag"])} ({t["count"]})' for t in c["top_tags"])
            out.append(f"<p>Top tags: {tags}</p>")
    problems = r.get("problems", [])
    if problems:
        out.append(f'<p class="problem"><b>Problems: {len(problems)} file(s)</b></p><table>'
                   '<tr><th>file</th><th>problem</th><th></th></tr>')
        for p in problems:
            cls = "problem" if p["skipped"] else "warn"
            out.append(f'<tr class="{cls}"><td>{escape(p["file"])}</td><td>{escape(p["reason"])}</td>'
                       f'<td>{"skipped" if p["skipped"] else "used"}</td></tr>')
        out.append("</table>")
    else:
        out.append("<p>Problems: none ✓</p>")
    out.append("</div>")
    return "".join(out)


def checked(folder: Path | None, resolution: int, allow_upscale: bool,
            hide_tags: bool = False, caption_extension: str = ".txt") -> tuple[str, dict[str, str]]:
    """(HTML, problem files) for the Dataset tab; a failing check becomes a readable message, not an exception.

    `hide_tags`: leave out the top tags (when a caption leads outside the allowed folders, its words would show).
    """
    if folder is None:
        return "", {}
    try:
        report = run_check(folder, resolution or 512, allow_upscale, caption_extension)
    except SdloraError as exc:
        return check_html(None, str(exc)), {}
    if hide_tags and report.get("captions"):
        report["captions"]["top_tags"] = []
    return check_html(report), problem_files(report)
