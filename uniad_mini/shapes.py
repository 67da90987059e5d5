"""Defect shapes drawn on pixel grids: blobs, curves, smooth noise, and the morphology that tidies a mask.

No part of the paper: the synthetic data set (`synthetic.py`) paints its classes and defects with these.
Every function works on (G, G) float32 coordinate grids or boolean masks, in numpy.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

GEN_SIZE = 256  # shapes are drawn at this size (like the shared real data); the data set resizes them
GRID_Y, GRID_X = np.mgrid[0:GEN_SIZE, 0:GEN_SIZE].astype(np.float32)  # (G, G) pixel coordinates


def rotate(x, y, angle):
    c, s = float(np.cos(angle)), float(np.sin(angle))
    return c * x + s * y, -s * x + c * y


def smooth_noise(rng, cells: int) -> np.ndarray:
    """(G, G) smooth random field, roughly N(0, 1): a cells x cells grid of normals, bicubic upsampled."""
    small = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(small).resize((GEN_SIZE, GEN_SIZE), Image.BICUBIC))


def coverage(signed_distance):
    """Anti-aliased inside-ness (0..1) from a signed distance in pixels (positive inside)."""
    return np.clip(signed_distance + 0.5, 0.0, 1.0)


def blob(rng, cx, cy, r):
    """(G, G) alpha of an irregular blob: an ellipse whose radius wobbles with the angle."""
    angle, aspect = float(rng.uniform(0, np.pi)), float(rng.uniform(0.5, 1.0))
    u, v = rotate(GRID_X - cx, GRID_Y - cy, angle)
    v = v / aspect
    theta = np.arctan2(v, u)
    wobble = sum(float(rng.uniform(0, 0.18)) * np.cos(k * theta + float(rng.uniform(0, 2 * np.pi))) for k in (2, 3, 5))
    return coverage(r * (1 + wobble) - np.hypot(u, v))


def curve(rng, cx, cy, length, width):
    """(G, G) alpha of a thin quadratic Bezier curve through (cx, cy), `width` pixels wide."""
    a = rng.uniform(0, 2 * np.pi)
    d = np.array([np.cos(a), np.sin(a)]) * length / 2
    bend = np.array([-d[1], d[0]]) * rng.uniform(-0.8, 0.8)
    p0, p1, p2 = np.array([cx, cy]) - d, np.array([cx, cy]) + bend, np.array([cx, cy]) + d
    t = np.linspace(0, 1, max(8, int(length / 3)))[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2  # (n, 2) points along the curve
    lo = np.clip(np.floor(pts.min(0) - width - 2), 0, GEN_SIZE).astype(int)
    hi = np.clip(np.ceil(pts.max(0) + width + 2), 0, GEN_SIZE).astype(int)
    alpha = np.zeros((GEN_SIZE, GEN_SIZE), np.float32)
    if (hi <= lo).any():
        return alpha
    px = np.stack([GRID_X[lo[1]:hi[1], lo[0]:hi[0]], GRID_Y[lo[1]:hi[1], lo[0]:hi[0]]], -1)[..., None, :]  # (h, w, 1, 2)
    a, b = pts[:-1], pts[1:]  # (n-1, 2) segment ends
    ab = b - a
    t = np.clip(((px - a) * ab).sum(-1) / (ab * ab).sum(-1).clip(1e-6), 0, 1)  # (h, w, n-1)
    dist = np.linalg.norm(px - (a + t[..., None] * ab), axis=-1).min(-1)  # (h, w) distance to the curve
    alpha[lo[1]:hi[1], lo[0]:hi[0]] = coverage(width / 2 - dist)
    return alpha


def close(mask: np.ndarray, r: int = 2) -> np.ndarray:
    """Binary closing with a (2r+1)^2 square: fills pinholes and gaps narrower than 2r+1 pixels."""

    def dilate(m):  # separable max filter, zeros beyond the border
        for axis in (0, 1):
            p = np.pad(m, [(r, r) if a == axis else (0, 0) for a in (0, 1)])
            m = np.logical_or.reduce([np.take(p, range(k, k + m.shape[axis]), axis=axis) for k in range(2 * r + 1)])
        return m

    return ~dilate(~dilate(mask))  # dilate, then erode (= dilate the complement)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """The mask with every region it encloses filled in (e.g. the plate seen through a broken mesh)."""
    if not mask.any():
        return mask
    at = np.argwhere(mask)
    (y0, x0), (y1, x1) = at.min(0), at.max(0) + 1  # any hole lies inside the bounding box
    framed = np.pad(mask[y0:y1, x0:x1], 1).astype(np.uint8)  # a 1-pixel frame of background all round
    outside = Image.fromarray(framed).copy()  # a copy: PIL 13 does not flood-fill an image that wraps an array
    ImageDraw.floodfill(outside, (0, 0), 2)  # 2: background reachable from the frame (pure Python: keep it small)
    filled = mask.copy()
    filled[y0:y1, x0:x1] = np.asarray(outside)[1:-1, 1:-1] != 2
    return filled
