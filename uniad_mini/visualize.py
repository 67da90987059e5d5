"""Pictures a person can look at (paper Fig. 9): image | ground truth | anomaly map overlay, as PNG with Pillow."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw


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
