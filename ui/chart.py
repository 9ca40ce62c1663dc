"""Small SVG charts for the app, drawn here so the axes say what they mean: whole-number steps (no "12.5"), the
loss with a moving average over the raw points, the learning rate on its own axis, and bars per layer.
"""

from __future__ import annotations

import html
import math

W, H = 640, 260
PAD_L, PAD_R, PAD_T, PAD_B = 56, 62, 26, 34


def nice_ticks(lo: float, hi: float, count: int = 5, integer: bool = False) -> list[float]:
    """Round tick values covering [lo, hi]; whole numbers only when `integer`."""
    if hi <= lo:
        hi = lo + (1 if integer else abs(lo) or 1.0)
    raw = (hi - lo) / max(1, count)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    if integer:
        step = max(1, round(step))
    first = math.ceil(lo / step) * step
    ticks, t = [], first
    while t <= hi + step * 1e-9:
        ticks.append(int(round(t)) if integer else t)
        t += step
    return ticks


def moving_average(values: list[float], window: int) -> list[float]:
    """The mean of each value and the `window - 1` before it (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def smoothing_window(n: int) -> int:
    return max(1, min(50, n // 10))


def _fmt(v: float) -> str:
    return f"{v:.3g}" if v and (abs(v) < 1e-2 or abs(v) >= 1e4) else f"{v:.4g}"


def loss_chart(losses: list[tuple[int, float]], lrs: list[tuple[int, float]] | None = None,
               title: str = "Loss", validation: list[tuple[int, float]] | None = None) -> str:
    """Raw loss (thin), its moving average (thick), the validation loss (dots, same axis) and the learning rate
    (dashed, right axis) over steps."""
    if not losses:
        return (f'<svg class="sdlora-chart" viewBox="0 0 {W} {H}" data-points="0"><text x="{W / 2}" y="{H / 2}" '
                f'text-anchor="middle" fill="#888">{html.escape(title)}: no steps yet</text></svg>')
    steps = [s for s, _ in losses]
    values = [v for _, v in losses]
    validation = validation or []
    x0, x1 = min(steps), max(max(steps), min(steps) + 1)
    y0, y1 = min(values + [v for _, v in validation]), max(values + [v for _, v in validation])
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - 0.5 * (abs(y0) or 1), y1 + 0.5 * (abs(y1) or 1)
    px = lambda s: PAD_L + (s - x0) / (x1 - x0) * (W - PAD_L - PAD_R)  # noqa: E731
    py = lambda v: PAD_T + (y1 - v) / (y1 - y0) * (H - PAD_T - PAD_B)  # noqa: E731
    out = [f'<svg class="sdlora-chart" viewBox="0 0 {W} {H}" data-points="{len(losses)}" '
           f'font-size="11" font-family="sans-serif">',
           f'<text x="{PAD_L}" y="16" font-weight="bold">{html.escape(title)}</text>']
    for t in nice_ticks(x0, x1, 6, integer=True):
        x = px(t)
        out.append(f'<line x1="{x:.1f}" y1="{PAD_T}" x2="{x:.1f}" y2="{H - PAD_B}" stroke="#eee"/>'
                   f'<text class="x-tick" x="{x:.1f}" y="{H - PAD_B + 14}" text-anchor="middle">{t}</text>')
    for t in nice_ticks(y0, y1, 5):
        if y0 <= t <= y1:
            y = py(t)
            out.append(f'<line x1="{PAD_L}" y1="{y:.1f}" x2="{W - PAD_R}" y2="{y:.1f}" stroke="#eee"/>'
                       f'<text x="{PAD_L - 4}" y="{y + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    out.append(f'<text x="{(PAD_L + W - PAD_R) / 2}" y="{H - 4}" text-anchor="middle">step</text>')
    out.append(_polyline([(px(s), py(v)) for s, v in losses], "#9ab", 1, "raw"))
    window = smoothing_window(len(values))
    smooth = moving_average(values, window)
    out.append(_polyline([(px(s), py(v)) for s, v in zip(steps, smooth)], "#1f6fd1", 2.2, "smoothed"))
    legend = [("#9ab", "loss"), ("#1f6fd1", f"mean of {window}")]
    if validation:
        out.append(_polyline([(px(s), py(v)) for s, v in validation], "#2a9d4b", 1.5, "validation"))
        out += [f'<circle class="validation-point" cx="{px(s):.1f}" cy="{py(v):.1f}" r="3" fill="#2a9d4b"/>'
                for s, v in validation]
        legend.append(("#2a9d4b", "validation"))
    if lrs:
        l0, l1 = min(v for _, v in lrs), max(v for _, v in lrs)
        if l1 - l0 < 1e-15:
            l0, l1 = 0.0, l1 * 1.25 or 1.0
        ly = lambda v: PAD_T + (l1 - v) / (l1 - l0) * (H - PAD_T - PAD_B)  # noqa: E731
        out.append(_polyline([(px(s), ly(v)) for s, v in lrs], "#d17a1f", 1.5, "lr", dash="5,3"))
        for t in (l0, l1):
            out.append(f'<text x="{W - PAD_R + 4}" y="{ly(t) + 4:.1f}" fill="#d17a1f">{_fmt(t)}</text>')
        legend.append(("#d17a1f", "learning rate (right)"))
    x = PAD_L + 80
    for color, label in legend:
        out.append(f'<rect x="{x}" y="8" width="12" height="3" fill="{color}"/>'
                   f'<text x="{x + 16}" y="13">{html.escape(label)}</text>')
        x += 30 + 6.5 * len(label)
    out.append("</svg>")
    return "".join(out)


def bar_chart(rows: list[tuple[str, float, float]], title: str, left: str, right: str) -> str:
    """One row per layer: a bar of its first value (left, e.g. |dW|) and a dot of its second (e.g. eff. rank)."""
    if not rows:
        return '<svg class="sdlora-chart" viewBox="0 0 640 40"><text x="10" y="24">no layers</text></svg>'
    row_h, label_w, bar_w = 14, 300, 220
    height = PAD_T + row_h * len(rows) + 10
    a_max = max(r[1] for r in rows) or 1.0
    b_max = max(r[2] for r in rows) or 1.0
    out = [f'<svg class="sdlora-chart sdlora-bars" viewBox="0 0 {label_w + 2 * bar_w + 40} {height}" '
           f'data-rows="{len(rows)}" font-size="10" font-family="sans-serif">',
           f'<text x="4" y="14" font-weight="bold">{html.escape(title)}</text>',
           f'<text x="{label_w}" y="14" fill="#1f6fd1">{html.escape(left)} (max {_fmt(a_max)})</text>',
           f'<text x="{label_w + bar_w + 30}" y="14" fill="#d17a1f">{html.escape(right)} (max {_fmt(b_max)})</text>']
    for i, (name, a, b) in enumerate(rows):
        y = PAD_T + i * row_h
        short = name if len(name) <= 58 else "…" + name[-57:]
        out.append(f'<text x="{label_w - 6}" y="{y + 10}" text-anchor="end"><title>{html.escape(name)}</title>'
                   f'{html.escape(short)}</text>'
                   f'<rect x="{label_w}" y="{y + 2}" width="{bar_w * a / a_max:.1f}" height="{row_h - 4}" '
                   f'fill="#1f6fd1"/><rect x="{label_w + bar_w + 30}" y="{y + 2}" '
                   f'width="{bar_w * b / b_max:.1f}" height="{row_h - 4}" fill="#d17a1f"/>'
                   f'<text x="{label_w + bar_w + 34 + bar_w * b / b_max:.1f}" y="{y + 10}">{_fmt(b)}</text>')
    out.append("</svg>")
    return "".join(out)


def _polyline(points: list[tuple[float, float]], color: str, width: float, cls: str, dash: str = "") -> str:
    coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    dashed = f' stroke-dasharray="{dash}"' if dash else ""
    return (f'<polyline class="{cls}" points="{coords}" fill="none" stroke="{color}" stroke-width="{width}"'
            f'{dashed}/>')
