"""A ROC curve as a PNG, drawn with Pillow alone (matplotlib is not a runtime dependency).

    roc_curve_png({"image": (fpr, tpr), "pixel": (fpr, tpr)}, title="bottle", legend=[...]) -> PIL image

The points come from `metrics.roc_curve` (every distinct threshold); a curve with millions of points
(all pixels of a test set) is thinned to the points that move at least one screen pixel before drawing.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]


def _screen_points(fpr, tpr, x0: int, y0: int, side: int) -> list[tuple[int, int]]:
    """(FPR, TPR) in [0, 1]^2 -> pixel coordinates in the square plot area, consecutive duplicates dropped."""
    x = np.round(x0 + np.asarray(fpr, dtype=np.float64) * side).astype(np.int64)
    y = np.round(y0 + (1.0 - np.asarray(tpr, dtype=np.float64)) * side).astype(np.int64)  # TPR grows upwards
    keep = np.ones(x.size, dtype=bool)
    keep[1:] = (np.diff(x) != 0) | (np.diff(y) != 0)
    return list(zip(x[keep].tolist(), y[keep].tolist()))


def roc_curve_png(curves: dict, title: str = "", legend: list[str] | None = None, size: int = 360) -> Image.Image:
    """A square ROC plot: axes with ticks at 0, 0.5, 1, the chance diagonal, one coloured curve per entry.

    curves: {name: (fpr, tpr)}; legend: one line per curve (default: the names), e.g. "image AUROC 99.2%".
    """
    legend = list(curves) if legend is None else legend
    margin_left, margin_top, margin_bottom = 42, 22, 34
    side = size - margin_left - 12  # the plot area is a square
    out = Image.new("RGB", (size, margin_top + side + margin_bottom), "white")
    draw = ImageDraw.Draw(out)
    x0, y0 = margin_left, margin_top
    draw.text((x0, 4), title, fill="black")
    draw.rectangle([x0, y0, x0 + side, y0 + side], outline="black")
    for t in (0.0, 0.5, 1.0):  # ticks and their labels
        px, py = x0 + round(t * side), y0 + round((1 - t) * side)
        draw.line([px, y0 + side, px, y0 + side + 4], fill="black")
        draw.text((px - 8, y0 + side + 6), f"{t:g}", fill="black")
        draw.line([x0 - 4, py, x0, py], fill="black")
        draw.text((x0 - 26, py - 5), f"{t:g}", fill="black")
    draw.text((x0 + side // 2 - 45, y0 + side + 19), "false positive rate", fill="black")
    draw.text((4, y0 + side // 2 - 20), "TPR", fill="black")
    for k in range(0, side, 8):  # the chance diagonal, dashed
        a, b = k / side, min(k + 4, side) / side
        draw.line([x0 + a * side, y0 + (1 - a) * side, x0 + b * side, y0 + (1 - b) * side], fill=(160, 160, 160))
    for i, (name, (fpr, tpr)) in enumerate(curves.items()):
        colour = COLOURS[i % len(COLOURS)]
        draw.line(_screen_points(fpr, tpr, x0, y0, side), fill=colour, width=2)
        ly = y0 + side - 16 * (len(curves) - i) - 4  # legend in the lower right, where ROC curves are not
        draw.line([x0 + side - 150, ly + 6, x0 + side - 134, ly + 6], fill=colour, width=2)
        draw.text((x0 + side - 130, ly), legend[i], fill="black")
    return out
