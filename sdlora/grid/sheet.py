"""The labelled grid image: one row per adapter, one column per weight x prompt, the prompts spelled out below."""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

FONT_SIZE = 14
PAD = 6
MIN_CELL = 128  # small cells (the tiny model's 64 px) are shown enlarged so the sheet stays readable


def _font(size: int = FONT_SIZE):
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled scalable font (needs FreeType)
    except (TypeError, OSError):
        return ImageFont.load_default()


def _text_width(draw: ImageDraw.ImageDraw, text: str, font) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return right - left


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """`text`, cut with an ellipsis to fit `width` pixels."""
    if _text_width(draw, text, font) <= width:
        return text
    while text and _text_width(draw, text + "…", font) > width:
        text = text[:-1]
    return text + "…"


def draw_sheet(images: list[list[Image.Image]], row_labels: list[str], column_labels: list[list[str]],
               legend: list[str]) -> Image.Image:
    """`images[row][column]` with a label left of each row, label lines above each column, `legend` lines below."""
    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    first = images[0][0]
    zoom = max(1, MIN_CELL // max(first.size))  # whole pixels, so the cells stay sharp
    cell_w, cell_h = first.width * zoom, first.height * zoom
    line = FONT_SIZE + 4
    label_w = min(260, max(_text_width(probe, label, font) for label in row_labels) + 2 * PAD)
    header_h = max(len(lines) for lines in column_labels) * line + PAD
    legend_w = max((_text_width(probe, text, font) for text in legend), default=0)
    width = max(label_w + len(column_labels) * (cell_w + PAD) + PAD, legend_w + 2 * PAD)
    height = header_h + len(images) * (cell_h + PAD) + PAD + len(legend) * line + (PAD if legend else 0)
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    for c, lines in enumerate(column_labels):
        x = label_w + c * (cell_w + PAD)
        for k, text in enumerate(lines):
            draw.text((x + 2, PAD + k * line), _fit(draw, text, font, cell_w - 2), fill="black", font=font)
    for r, row in enumerate(images):
        y = header_h + r * (cell_h + PAD)
        draw.text((PAD, y + cell_h // 2 - line // 2), _fit(draw, row_labels[r], font, label_w - 2 * PAD),
                  fill="black", font=font)
        for c, image in enumerate(row):
            x = label_w + c * (cell_w + PAD)
            shown = image if image.size == (cell_w, cell_h) else image.resize((cell_w, cell_h), Image.NEAREST)
            sheet.paste(shown.convert("RGB"), (x, y))
    y = header_h + len(images) * (cell_h + PAD) + PAD // 2
    for k, text in enumerate(legend):
        draw.text((PAD, y + k * line), text, fill="black", font=font)
    return sheet
