"""Anomaly maps a person can look at (paper Fig. 9), drawn with Pillow alone (matplotlib is not a runtime
dependency):

    panel(image, amap, mask, vmin, vmax, title)   image | ground truth | anomaly-map overlay, one PNG strip
    roc_curve_png({"image": (fpr, tpr)}, ...)     a ROC plot (points from `metrics.roc_curve`)
    write_pictures(model, test, out_dir)          a panel per test image and a ROC plot per class

The notebooks' matplotlib figures live in `shortcut/figures.py`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from . import metrics
from .data import load_image
from .evaluation import pixel_labelled
from .features import Cache

PNG = dict(compress_level=1)  # how every PNG here is written: zlib's fastest level, several times faster than
#                               PIL's default (6) for slightly larger files


# --------------------------------------------------------------------------------------------------
# Panels


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8."""
    return (image.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)


def heat(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (H, W) -> a black-red-yellow-white colour map (H, W, 3) uint8."""
    v = np.clip(values, 0, 1)[..., None]
    rgb = np.concatenate([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)], axis=-1)
    return (rgb * 255).astype(np.uint8)


def overlay(image: torch.Tensor, amap: torch.Tensor, vmin: float, vmax: float, alpha: float = 0.5) -> np.ndarray:
    """Blend the heat map of `amap` (H, W), scaled from [vmin, vmax] to [0, 1], over `image` (3, H, W)."""
    scaled = (amap.cpu().numpy() - vmin) / max(vmax - vmin, 1e-12)
    return (alpha * heat(scaled) + (1 - alpha) * to_uint8(image)).astype(np.uint8)


def panel(image, amap, mask=None, vmin: float = 0.0, vmax: float | None = None, title: str = "") -> Image.Image:
    """image | ground truth (if given) | overlay, side by side, with a title line on top."""
    vmax = float(amap.max()) if vmax is None else vmax
    tiles = [to_uint8(image)]
    if mask is not None:
        tiles.append(np.repeat((mask.cpu().numpy() > 0).astype(np.uint8)[..., None] * 255, 3, axis=-1))
    tiles.append(overlay(image, amap, vmin, vmax))
    strip = np.concatenate(tiles, axis=1)
    out = Image.new("RGB", (strip.shape[1], strip.shape[0] + 14), "white")
    out.paste(Image.fromarray(strip), (0, 14))
    ImageDraw.Draw(out).text((2, 1), title, fill="black")
    return out


# --------------------------------------------------------------------------------------------------
# ROC curves


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


# --------------------------------------------------------------------------------------------------
# Every test image of a model


def _picture_name(path: str, i: int) -> str:
    if not path:
        return f"{i:04d}.png"
    p = Path(path)
    return f"{p.parent.name}_{p.stem}.png"  # DEFECT_NAME.png


def write_pictures(model, test, out_dir, data=None, progress: bool = False) -> list[Path]:
    """A PNG panel per test image (image | ground truth | anomaly-map overlay) and a ROC plot per class.

    test: a data set (MVTecAD / SyntheticAD) or a Cache of its features; data: the data set the Cache
    came from, to read the images (default: the image files at the Cache's paths).
    Writes OUT/CLASS/DEFECT_NAME.png and OUT/roc_CLASS.png. Within a class every overlay uses the
    same colour scale, from the smallest to the largest pixel score of that class's maps, so that
    panels of one class can be compared with one another. Returns the paths written.
    """
    if not isinstance(test, Cache):
        data = test
        test = model.cache(test, progress=progress, desc="test")
    if data is not None and len(data) != len(test.labels):
        raise ValueError(f"data has {len(data)} items but the cache {len(test.labels)}; pass the data set it came from")
    out_dir = Path(out_dir)
    scores, maps = model.score_features(test.features)  # (N,), (N, S, S)
    S = model.config.image_size
    written = []
    for c, idx in test.class_indices().items():
        (out_dir / c).mkdir(parents=True, exist_ok=True)
        vmin, vmax = float(maps[idx].min()), float(maps[idx].max())
        for i in idx:
            path = test.paths[i] if test.paths else ""
            if data is not None:
                image = data[i]["image"]
            elif path and Path(path).is_file():
                image = load_image(path, S, resize=model.config.resize)
            else:
                raise ValueError(f"cannot find the image of test sample {i} ({path!r}); pass data= the data set")
            if image.shape[-2:] != (S, S):
                image = torch.nn.functional.interpolate(image[None], size=(S, S), mode="bilinear")[0]
            state = "anomalous" if int(test.labels[i]) else "normal"
            title = f"{c}/{Path(path).parent.name}/{Path(path).name}  score {float(scores[i]):.3f}  {state}"
            target = out_dir / c / _picture_name(path, i)
            panel(image, maps[i], test.masks[i], vmin, vmax, title).save(target, **PNG)
            written.append(target)
        labels, labelled = test.labels[idx], pixel_labelled(test)
        pix = [i for i in idx if labelled[i]]  # as the table: no defect image with an empty mask
        curves, legend = {}, []
        if 0 < int(labels.sum()) < len(idx):
            curves["image"] = metrics.roc_curve(scores[idx], labels)[:2]
            legend.append(f"image AUROC {100 * metrics.auroc(scores[idx], labels):.1f}%")
        if 0 < int(test.masks[pix].sum()) < test.masks[pix].numel():
            curves["pixel"] = metrics.roc_curve(maps[pix], test.masks[pix])[:2]
            legend.append(f"pixel AUROC {100 * metrics.auroc(maps[pix], test.masks[pix]):.1f}%")
        target = out_dir / f"roc_{c}.png"
        roc_curve_png(curves, title=f"{c}: ROC", legend=legend).save(target, **PNG)
        written.append(target)
    return written
