"""A small synthetic anomaly-detection data set, drawn from a seed: the default data of `uniad-mini demo`.

No download: every image is painted with a few vectorised numpy lines, so the demo runs on a fresh machine.
It mimics the paper's unified setting on MVTec AD (Sec. 4.1): classes that look nothing alike (textures and
an object), only normal images to train one model on for all classes, test images with local defects and
pixel masks. Three classes:

    carpet  a woven fabric (colour): plain weave of two thread colours, orientation/period/phase jitter
    cap     a bottle cap seen from above (colour): knurled rim, ridged top, slot; small shifts and turns
            under a fixed top-left light, as on an inspection rig
    mesh    a metal wire mesh on a dark plate (grayscale, like MVTec's grid): offset/angle/width jitter

Every normal image also gets its own smooth uneven lighting and sensor noise, so that a model cannot
memorise one template. The set is fair to a detector that learns only from the training images: normal
test images are drawn exactly like the training images (no normal variation unseen in training), and
defects are local and big enough for a 14 x 14 feature grid (stride 16 at 224 pixels): blobs of radius
12-34 pixels, curves 3-6 wide and 50-120 long, at least MIN_DEFECT_PIXELS (about a token) changed.

Each class has four defect types, each a way of changing the painted image locally:

    missing  the background shows through a blob          (carpet "cut", cap "chip", mesh "broken")
    stain    a blob blended toward a different colour      (carpet "stain", cap "contamination", mesh "glue")
    curve    a curve drawn lighter or darker               (carpet "thread", cap "scratch", mesh "thread")
    warp     the pattern pushed aside by a local bump      (cap "dent", mesh "bent")
    swap     a blob of the same texture at another angle   (carpet "weave")

Contrasts run from faint to strong. The mask of a defect is exactly the pixels it changed visibly:
|defective - normal| > 12/255 (about three times the sensor noise) in some channel, closed with a 5 x 5
square to fill speckle, with the holes it encloses filled (e.g. the plate seen through a broken mesh).

Sample k of (class, split, defect folder) comes from its own random stream, keyed by the seed and those
four values, so a subset of classes, or one split, gives the same images as the full set.
`write_mvtec` saves the same images as PNGs in the MVTec AD layout, which `MVTecAD` reads back.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import shapes
from .shapes import GEN_SIZE, GRID_X, GRID_Y
from .data import SPLITS, Sample, pil_to_mask, pil_to_tensor
from .errors import DataError

MASK_THRESHOLD = 12  # a pixel is anomalous when the defect changed it by more than this (uint8 levels, ~3x the noise)
MIN_DEFECT_PIXELS = 18 * 18  # a defect that changed fewer pixels is redrawn: a token is 18 x 18 at GEN_SIZE

# defect folder name -> how it is painted, per class
DEFECTS = {
    "carpet": {"cut": "missing", "stain": "stain", "thread": "curve", "weave": "swap"},
    "cap": {"chip": "missing", "contamination": "stain", "scratch": "curve", "dent": "warp"},
    "mesh": {"broken": "missing", "glue": "stain", "thread": "curve", "bent": "warp"},
}
CLASSES = tuple(sorted(DEFECTS))
GRAYSCALE = {"mesh"}



# ---------------------------------------------------------------------------------------------------
# The three classes: draw parameters, then paint (image, background) at any coordinates
# ---------------------------------------------------------------------------------------------------


def _carpet_params(rng):
    bright = rng.uniform(0.88, 1.12)
    return {
        "theta": np.deg2rad(rng.uniform(-5, 5)),
        "period": 9.0 * rng.uniform(0.94, 1.06),
        "ox": rng.uniform(0, 18), "oy": rng.uniform(0, 18),
        "warp": np.array([0.66, 0.32, 0.22]) * rng.uniform(0.92, 1.08, 3) * bright,
        "weft": np.array([0.80, 0.55, 0.34]) * rng.uniform(0.92, 1.08, 3) * bright,
    }


def _carpet(p, X, Y):
    u, v = shapes.rotate(X - p["ox"], Y - p["oy"], p["theta"])
    pu, pv = u / p["period"], v / p["period"]
    across_u = 0.5 - 0.5 * np.cos(2 * np.pi * pu)  # 1 at the middle of a warp thread, 0 between threads
    across_v = 0.5 - 0.5 * np.cos(2 * np.pi * pv)
    on_top = np.clip(0.5 + 3 * np.sin(np.pi * pu) * np.sin(np.pi * pv), 0, 1)  # plain weave: over, under
    shade_u = (0.45 + 0.55 * across_u) * (0.85 + 0.15 * np.cos(4 * np.pi * pv))  # twisted yarn
    shade_v = (0.45 + 0.55 * across_v) * (0.85 + 0.15 * np.cos(4 * np.pi * pu))
    img = on_top[..., None] * shade_u[..., None] * p["warp"] + (1 - on_top[..., None]) * shade_v[..., None] * p["weft"]
    backing = np.broadcast_to(0.25 * p["warp"] + 0.03, img.shape)  # dark underlay, seen through a cut
    return img, backing


def _cap_params(rng):
    return {
        "cx": 128 + rng.uniform(-4, 4), "cy": 128 + rng.uniform(-4, 4),
        "R": 74 * rng.uniform(0.97, 1.03),
        "rot": np.deg2rad(rng.uniform(-8, 8)),
        "light": np.deg2rad(-135 + rng.uniform(-10, 10)),  # lit from the top left, as on a fixed rig
        "color": np.array([0.16, 0.42, 0.78]) * rng.uniform(0.93, 1.07, 3) * rng.uniform(0.88, 1.12),
        "table": np.array([0.80, 0.79, 0.74]) * rng.uniform(0.9, 1.05),
    }


def _cap(p, X, Y):
    dx, dy = X - p["cx"], Y - p["cy"]
    r = np.hypot(dx, dy) + 1e-6
    theta = np.arctan2(dy, dx) - p["rot"]
    lx, ly = float(np.cos(p["light"])), float(np.sin(p["light"]))
    R = p["R"] + 1.2 * np.cos(48 * theta)  # knurled edge
    shadow = 1 - 0.35 * shapes.coverage((R + 10 - np.hypot(dx - 5 * lx, dy - 5 * ly)) / 6)
    table = p["table"] * ((1 + 0.08 * (X / GEN_SIZE - 0.5)) * shadow)[..., None]
    rim = np.clip((r - 0.78 * p["R"]) / (0.22 * p["R"]), 0, 1)  # 0 on the flat top, 1 at the edge
    tilt = -(dx * lx + dy * ly) / r  # facing the light or away from it, on the bevelled rim
    light = 1 + rim * 0.45 * tilt - 0.25 * rim**2 + 0.03 * np.cos(2 * np.pi * r / 7) * (1 - rim)
    u, v = shapes.rotate(dx, dy, p["rot"])
    slot = shapes.coverage(np.minimum(0.45 * p["R"] - np.abs(u), 4.5 - np.abs(v)))  # the slot across the top
    dot = shapes.coverage(5 - np.hypot(u - 0.55 * p["R"], v))  # a small mark that shows the rotation
    light = light * (1 - 0.45 * slot) * (1 + 0.35 * dot)
    cap = p["color"] * light[..., None]
    inside = shapes.coverage(R - r)[..., None]
    return inside * cap + (1 - inside) * table, table


def _mesh_params(rng):
    return {
        "theta": np.deg2rad(rng.uniform(-3, 3)),
        "period": 16.0 * rng.uniform(0.97, 1.03),
        "half_width": rng.uniform(2.2, 2.8),
        "ox": rng.uniform(0, 16), "oy": rng.uniform(0, 16),
        "wire": 0.78 * rng.uniform(0.88, 1.12),
        "plate": 0.20 * rng.uniform(0.8, 1.2),
    }


def _mesh(p, X, Y):
    u, v = shapes.rotate(X - p["ox"], Y - p["oy"], p["theta"])
    P, hw = p["period"], p["half_width"]
    du, dv = np.abs(u - P * np.round(u / P)), np.abs(v - P * np.round(v / P))  # distance to nearest wire
    cyl_u = np.sqrt(np.clip(1 - (du / hw) ** 2, 0, 1))  # round wire: brightest along its middle
    cyl_v = np.sqrt(np.clip(1 - (dv / hw) ** 2, 0, 1))
    over = np.sin(np.pi * (u / P + 0.5)) * np.sin(np.pi * (v / P + 0.5)) > 0  # which wire is on top
    u_shows = np.where((cyl_u > 0) & (cyl_v > 0), over, cyl_u > 0)  # at a crossing, the wire on top
    shade = 0.5 + 0.5 * np.where(u_shows, cyl_u, cyl_v)
    cover = np.maximum(shapes.coverage(hw - du), shapes.coverage(hw - dv))
    plate = np.full_like(u, p["plate"])
    img = plate + cover * (p["wire"] * shade - plate)
    return img[..., None], plate[..., None]


_PAINT = {"carpet": (_carpet_params, _carpet), "cap": (_cap_params, _cap), "mesh": (_mesh_params, _mesh)}


# ---------------------------------------------------------------------------------------------------
# Defects
# ---------------------------------------------------------------------------------------------------


def _defect_site(cls, kind, p, rng):
    """Where the defect goes: on the rim or the top of the cap, anywhere on a texture."""
    if cls != "cap":
        return rng.uniform(24, GEN_SIZE - 24, 2)
    a = rng.uniform(0, 2 * np.pi)
    rad = p["R"] * (rng.uniform(0.93, 1.0) if kind in ("missing", "warp") else np.sqrt(rng.uniform(0, 0.75)))
    return np.array([p["cx"] + rad * np.cos(a), p["cy"] + rad * np.sin(a)])


def _paint_defect(cls, kind, p, img, background, rng):
    """The image `img` (painted with params p) with one defect of `kind` painted in."""
    paint = _PAINT[cls][1]
    cx, cy = map(float, _defect_site(cls, kind, p, rng))
    small, large = (16, 34) if kind in ("warp", "swap") else (12, 28)  # a pattern change needs room to show
    r = float(np.exp(rng.uniform(np.log(small), np.log(large))))  # blob radius in pixels: >= 3/4 of a token
    channels = img.shape[-1]
    if kind == "missing":
        a = shapes.blob(rng, cx, cy, r)[..., None]
        return img + a * (background - img)
    if kind == "stain":
        a = shapes.blob(rng, cx, cy, r)[..., None]
        under = (img * a).sum((0, 1)) / max(float(a.sum()), 1.0)  # (C,) mean colour under the blob
        for _ in range(50):  # a colour that differs from what it covers (else the stain could be invisible)
            colour = rng.uniform(0.05, 0.95, channels).astype(np.float32)
            if np.abs(colour - under).max() > 0.3:
                break
        return img + a * float(rng.uniform(0.4, 0.9)) * (colour - img)  # opacity: faint .. strong
    if kind == "curve":
        a = shapes.curve(rng, cx, cy, length=rng.uniform(50, 120), width=rng.uniform(3.0, 6.0))[..., None]
        delta = float(rng.choice([-1, 1]) * rng.uniform(0.2, 0.5))  # darker or lighter, faint .. strong
        return img + a * delta
    if kind == "warp":
        g = np.exp(-((GRID_X - cx) ** 2 + (GRID_Y - cy) ** 2) / (2 * (0.7 * r) ** 2))  # (G, G) bump
        amount = float(rng.uniform(5.0, 10.0))
        # a dent pushes the cap's rim toward the centre; a mesh is bent any way
        direction = float(np.arctan2(cy - p["cy"], cx - p["cx"]) if cls == "cap" else rng.uniform(0, 2 * np.pi))
        return paint(p, GRID_X - amount * float(np.cos(direction)) * g, GRID_Y - amount * float(np.sin(direction)) * g)[0]
    if kind == "swap":
        q = _float32(dict(p, theta=p["theta"] + rng.choice([-1, 1]) * np.deg2rad(rng.uniform(20, 70)),
                 period=p["period"] * rng.uniform(0.75, 1.3), ox=rng.uniform(0, 18), oy=rng.uniform(0, 18)))
        a = shapes.blob(rng, cx, cy, r)[..., None]
        return img + a * (paint(q, GRID_X, GRID_Y)[0] - img)
    raise ValueError(f"unknown defect kind {kind!r}")


# ---------------------------------------------------------------------------------------------------
# One sample
# ---------------------------------------------------------------------------------------------------


def _float32(params: dict) -> dict:
    """Parameters as Python floats and float32 arrays, so that painting stays in float32 (NumPy 2 would
    otherwise promote every image that touches a float64 scalar)."""
    return {k: v.astype(np.float32) if isinstance(v, np.ndarray) else float(v) for k, v in params.items()}


def _code(name: str) -> int:
    return zlib.crc32(name.encode())


def generate(cls: str, split: str = "train", defect: str = "good", index: int = 0, seed: int = 0) -> dict:
    """Paint sample `index` of folder `cls/split/defect` at GEN_SIZE.

    Returns {"image": uint8 (G, G, 3) or (G, G) for grayscale classes, "mask": bool (G, G),
    "clean": the same sample without its defect (equal to "image" for "good")}.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if cls not in DEFECTS:
        raise DataError(f"unknown synthetic class {cls!r}; available: {list(CLASSES)}")
    if defect != "good" and defect not in DEFECTS[cls]:
        raise DataError(f"unknown defect {defect!r} for synthetic class {cls!r}; available: {list(DEFECTS[cls])}")
    rng = np.random.default_rng([seed, _code(cls), SPLITS.index(split), _code(defect), index])
    make_params, paint = _PAINT[cls]
    p = _float32(make_params(rng))
    img, background = paint(p, GRID_X, GRID_Y)  # (G, G, C), C = 3 or 1
    C = img.shape[-1]
    lighting = (1 + 0.05 * shapes.smooth_noise(rng, 4) + 0.015 * shapes.smooth_noise(rng, 8))[..., None]  # uneven light
    noise = rng.normal(0, 0.015, (GEN_SIZE, GEN_SIZE, C)).astype(np.float32)  # sensor noise

    def finish(x):  # light, noise, quantise: float (G, G, C) -> uint8 (G, G, C)
        return np.round(np.clip(x * lighting + noise, 0, 1) * 255).astype(np.uint8)

    clean = finish(img)
    image, mask = clean, np.zeros((GEN_SIZE, GEN_SIZE), bool)
    if defect != "good":
        for _ in range(20):  # redraw a defect that (by chance) changed almost nothing
            image = finish(_paint_defect(cls, DEFECTS[cls][defect], p, img, background, rng))
            changed = (np.abs(image.astype(np.int16) - clean).max(-1) > MASK_THRESHOLD)
            mask = shapes.fill_holes(shapes.close(changed))
            if mask.sum() >= MIN_DEFECT_PIXELS:
                break
        else:
            raise RuntimeError(f"could not paint a visible {defect!r} defect for {cls} sample {index}")
    if C == 1:
        image, clean = image[..., 0], clean[..., 0]
    return {"image": image, "mask": mask, "clean": clean}


# ---------------------------------------------------------------------------------------------------
# The data set, and the same data as files
# ---------------------------------------------------------------------------------------------------


def _folders(split, cls, n_train, n_test_good, n_test_bad) -> dict[str, int]:
    """Images per folder of one class: {"good": n} for train; good plus an even share per defect for test."""
    if split == "train":
        return {"good": n_train}
    kinds = list(DEFECTS[cls])
    counts = {"good": n_test_good}
    for j, d in enumerate(kinds):
        counts[d] = n_test_bad // len(kinds) + (j < n_test_bad % len(kinds))
    return counts


class SyntheticAD(torch.utils.data.Dataset):
    """The synthetic classes as a data set with MVTecAD's interface: items are dicts

    {"image": (3, S, S) float in [0, 1], "mask": (S, S) float 0/1, "label": 0/1, "cls", "defect", "path"}

    in the order MVTecAD would list the files `write_mvtec` writes. Painted on first access, then cached.
    """

    def __init__(self, split: str = "train", classes=None, image_size: int | None = 224, seed: int = 0,
                 n_train: int = 40, n_test_good: int = 10, n_test_bad: int = 15):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        classes = list(CLASSES) if classes is None else [classes] if isinstance(classes, str) else list(classes)
        for c in classes:
            if c not in DEFECTS:
                raise DataError(f"unknown synthetic class {c!r}; available: {list(CLASSES)}")
        self.root, self.split, self.classes, self.image_size, self.seed = None, split, classes, image_size, seed
        self.samples, self._keys = [], []
        for c in classes:
            counts = _folders(split, c, n_train, n_test_good, n_test_bad)
            if sum(counts.values()) == 0:
                raise DataError(f"empty class {c!r}: no {split} images requested")
            for d in sorted(counts):
                for k in range(counts[d]):
                    mask_path = None if d == "good" else f"{c}/ground_truth/{d}/{k:03d}_mask.png"
                    self.samples.append(Sample(f"{c}/{split}/{d}/{k:03d}.png", mask_path, c, d, int(d != "good")))
                    self._keys.append((c, split, d, k))
        self.labels = [s.label for s in self.samples]
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def raw(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 image at GEN_SIZE, bool mask) of item i, painted once and cached."""
        if i not in self._cache:
            c, split, d, k = self._keys[i]
            g = generate(c, split, d, k, self.seed)
            self._cache[i] = (g["image"], g["mask"])
        return self._cache[i]

    def __getitem__(self, i: int) -> dict:
        i = range(len(self))[i]  # allow negative indices, raise IndexError past the end
        image, mask = self.raw(i)
        s = self.samples[i]
        return {
            "image": pil_to_tensor(Image.fromarray(image), self.image_size),  # (3, S, S)
            "mask": pil_to_mask(Image.fromarray(mask.astype(np.uint8) * 255), self.image_size),  # (S, S)
            "label": s.label, "cls": s.cls, "defect": s.defect, "path": s.path,
        }

    def __repr__(self) -> str:
        return (f"SyntheticAD(split={self.split!r}, classes={self.classes}, image_size={self.image_size}, "
                f"seed={self.seed}, n={len(self)}, anomalous={sum(self.labels)})")


def write_mvtec(root, seed: int = 0, classes=None, n_train: int = 40, n_test_good: int = 10,
                n_test_bad: int = 15) -> Path:
    """Save the synthetic data set as PNGs (GEN_SIZE, masks 0/255) in the MVTec AD layout under `root`."""
    root = Path(root)
    for split in SPLITS:
        ds = SyntheticAD(split, classes, None, seed, n_train, n_test_good, n_test_bad)
        for s, (c, _, d, k) in zip(ds.samples, ds._keys):
            g = generate(c, split, d, k, seed)
            (root / s.path).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(g["image"]).save(root / s.path)
            if s.mask_path is not None:
                (root / s.mask_path).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(g["mask"].astype(np.uint8) * 255).save(root / s.mask_path)
    return root
