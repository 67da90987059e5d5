"""A validation set made from normal training images only, so that a recipe is chosen without the test split.

No part of the paper (its code picks checkpoints by test pixel AUROC; this project never does). A share of
each class's normal training images is held out (`calibration.held_out`, the project's one split), the
model trains on the rest, and the held-out images are scored twice over:

    as they are                                   label 0, empty mask
    with one drawn anomaly each, of every kind    label 1, mask = the pixels it changed

    cutpaste  a blob-shaped patch cut from another image of the class, from another place, pasted in
    scratch   a thin curve drawn lighter or darker (shapes.curve)
    blob      a blob blended toward a colour unlike what it covers (shapes.blob)
    colour    the colours inside a blob shifted: a gain per channel, the texture kept
    bend      the pixels of a disc turned about its centre by an angle that fades to 0 at its edge (a swirl):
              no new colour, straight structures come out bent -- the kind of defect a periodic texture has
              (a bent or pulled wire), which the four above, all painted on top, do not make

Shapes are drawn at `shapes.GEN_SIZE` (256) and resized to the image, so a defect covers the same share of
any image size: blobs of radius 12-34 and curves 3-6 wide, 50-120 long, at 256, like `synthetic.py`. The
mask is exactly the pixels changed by more than MASK_THRESHOLD (12/255) in some channel, closed with a 5 x 5
square and its holes filled; pixels outside it are set back to the original, so "outside the mask" means
"untouched". A drawing that changes fewer than MIN_DEFECT_PIXELS (about one 16 x 16 token at 224) is redrawn.

Everything is deterministic: anomaly k of held-out image i of class c comes from its own random stream,
keyed by the seed, c, the image's position within its class, and k. `Validation` has the items of a data
set (`MVTecAD`'s layout), so `cache_features` turns it into a `Cache` that `evaluation.evaluate` scores like
a test split. Drawn anomalies are not real defects: they rank recipes, they do not replace a test split.
"""
from __future__ import annotations

import zlib

import numpy as np
import torch
import torch.nn.functional as F

from . import metrics as M
from . import shapes
from .calibration import DEFAULT_SHARE, held_out, item_classes

KINDS = ("cutpaste", "scratch", "blob", "colour", "bend")  # appended only: each kind keeps its random stream
MASK_THRESHOLD = 12 / 255  # a pixel is anomalous when the drawing changed it by more than this (as synthetic.py)
MIN_DEFECT_PIXELS = 16 * 16  # at 224: about one token; smaller drawings are redrawn
TRIES = 20


def _alpha(a: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """(G, G) alpha drawn at GEN_SIZE -> (1, H, W) at the image size (bilinear)."""
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0].clamp(0, 1)


def draw(image: torch.Tensor, kind: str, rng: np.random.Generator, donor: torch.Tensor | None = None) -> torch.Tensor:
    """`image` (3, H, W) in [0, 1] with one anomaly of `kind` drawn in (no mask yet; see `paint`).

    donor: another image of the class (3, H, W), for "cutpaste".
    """
    G = shapes.GEN_SIZE
    H, W = image.shape[-2:]
    cx, cy = (float(v) for v in rng.uniform(24, G - 24, 2))
    r = float(np.exp(rng.uniform(np.log(12), np.log(34))))
    if kind == "bend":
        return bend(image, cx, cy, 1.2 * r, float(rng.choice([-1, 1]) * rng.uniform(0.5, 1.2)))
    if kind == "scratch":
        a = _alpha(shapes.curve(rng, cx, cy, length=rng.uniform(50, 120), width=rng.uniform(3.0, 6.0)), (H, W))
        delta = float(rng.choice([-1, 1]) * rng.uniform(0.25, 0.5))
        return (image + a * delta).clamp(0, 1)
    a = _alpha(shapes.blob(rng, cx, cy, r), (H, W))
    if kind == "cutpaste":
        if donor is None:
            raise ValueError("cutpaste needs a donor image of the same class")
        dy, dx = (int(v) for v in rng.integers(H // 8, H - H // 8, 2))  # the patch comes from another place
        return image + a * (torch.roll(donor, shifts=(dy, dx), dims=(1, 2)) - image)
    if kind == "blob":
        under = (image * a).sum((1, 2)) / a.sum().clamp_min(1.0)  # (3,) mean colour under the blob
        colour = torch.from_numpy(rng.uniform(0.05, 0.95, 3).astype(np.float32))
        for _ in range(50):  # a colour that differs from what it covers
            if float((colour - under).abs().max()) > 0.3:
                break
            colour = torch.from_numpy(rng.uniform(0.05, 0.95, 3).astype(np.float32))
        return image + a * float(rng.uniform(0.5, 0.9)) * (colour[:, None, None] - image)
    if kind == "colour":
        gain = torch.from_numpy(rng.uniform(0.55, 1.45, 3).astype(np.float32))
        shift = torch.from_numpy(rng.uniform(-0.15, 0.15, 3).astype(np.float32))
        return image + a * ((image * gain[:, None, None] + shift[:, None, None]).clamp(0, 1) - image)
    raise ValueError(f"unknown anomaly kind {kind!r}; choose one of {KINDS}")


def bend(image: torch.Tensor, cx: float, cy: float, r: float, angle: float) -> torch.Tensor:
    """`image` (3, H, W) with the disc of radius r around (cx, cy) (GEN_SIZE units) swirled by up to `angle`.

    Each output pixel p takes the input at c + R(angle * w) (p - c), w = (1 - |p - c|^2 / r^2)^2 inside the
    disc, 0 outside: a smooth, one-to-one warp that only moves pixels (bilinear sampling).
    """
    G = shapes.GEN_SIZE
    H, W = image.shape[-2:]
    y = (torch.arange(H, dtype=torch.float32) + 0.5) * G / H - cy  # (H,) offsets from the centre, GEN_SIZE units
    x = (torch.arange(W, dtype=torch.float32) + 0.5) * G / W - cx  # (W,)
    dy, dx = torch.meshgrid(y, x, indexing="ij")  # (H, W) each
    w = (1 - (dx**2 + dy**2) / r**2).clamp_min(0) ** 2
    c, s = torch.cos(angle * w), torch.sin(angle * w)
    sx, sy = cx + c * dx - s * dy, cy + s * dx + c * dy  # (H, W) where each pixel samples, GEN_SIZE units
    grid = torch.stack([sx / G * 2 - 1, sy / G * 2 - 1], -1)[None]  # (1, H, W, 2), align_corners=False
    return F.grid_sample(image[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]


def changed_mask(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """(H, W) bool: the pixels changed by more than MASK_THRESHOLD in some channel, closed, holes filled."""
    changed = ((after - before).abs().amax(0) > MASK_THRESHOLD).numpy()
    return torch.from_numpy(shapes.fill_holes(shapes.close(changed)))


def paint(image: torch.Tensor, kind: str, rng: np.random.Generator, donor: torch.Tensor | None = None):
    """(anomalous image (3, H, W), mask (H, W) float 0/1): pixels outside the mask equal `image` exactly."""
    for _ in range(TRIES):
        drawn = draw(image, kind, rng, donor)
        mask = changed_mask(image, drawn)
        if int(mask.sum()) >= MIN_DEFECT_PIXELS:
            return torch.where(mask[None], drawn, image), mask.float()
    raise RuntimeError(f"could not draw a visible {kind!r} anomaly in {TRIES} tries (is the image flat?)")


class Validation(torch.utils.data.Dataset):
    """The held-out normal images of a training split, each as it is and once per anomaly kind.

    data: a training split (MVTecAD, FolderAD, VisA, SyntheticAD: items with "image", "cls", "path");
    share, seed: which images are held out (`calibration.held_out`); `train` is the rest, to train on.
    Items are dicts in the data sets' layout: {"image", "mask", "label", "cls", "defect", "path"}, with
    "defect" "good" or the kind and "path" the source image's path plus "#kind".
    """

    def __init__(self, data, share: float = DEFAULT_SHARE, seed: int = 0, kinds=KINDS):
        bad = [k for k in kinds if k not in KINDS]
        if bad or not kinds:
            raise ValueError(f"unknown anomaly kind(s) {bad}; choose from {KINDS}")
        self.data, self.share, self.seed, self.kinds = data, share, seed, tuple(kinds)
        classes = item_classes(data)
        self.kept, self.held = held_out(classes, share, seed)
        self.train = torch.utils.data.Subset(data, self.kept)
        self._of_class: dict[str, list[int]] = {}
        for i, c in enumerate(classes):
            self._of_class.setdefault(c, []).append(i)
        self.items = []  # (position in data, its class, its position within the class, kind or None)
        for i in self.held:
            c = classes[i]
            self.items += [(i, c, self._of_class[c].index(i), k) for k in (None, *self.kinds)]
        self.classes = sorted(set(classes))
        self.labels = [int(k is not None) for *_, k in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def rng(self, j: int) -> np.random.Generator:
        i, c, within, kind = self.items[j]
        return np.random.default_rng([self.seed, zlib.crc32(c.encode()), within, KINDS.index(kind)])

    def __getitem__(self, j: int) -> dict:
        j = range(len(self))[j]
        i, c, within, kind = self.items[j]
        item = self.data[i]
        image = item["image"]
        if kind is None:
            mask = torch.zeros(image.shape[-2:])
        else:
            rng = self.rng(j)
            others = [k for k in self._of_class[c] if k != i]
            donor = self.data[others[int(rng.integers(len(others)))]]["image"] if kind == "cutpaste" and others else image
            image, mask = paint(image, kind, rng, donor)
        return {"image": image, "mask": mask, "label": int(kind is not None), "cls": c,
                "defect": kind or "good", "path": f"{item['path']}#{kind}" if kind else str(item["path"])}


def kind_of(path: str) -> str:
    """The drawn kind of a validation item from its path ("...png#scratch" -> "scratch"), "good" without one."""
    _, sep, kind = str(path).rpartition("#")
    return kind if sep and kind in KINDS else "good"


def kind_aurocs(scores: torch.Tensor, cache) -> dict[str, dict[str, float]]:
    """{class: {kind: image AUROC}}: each class's normal images against its anomalies of one drawn kind.

    scores (N,): image scores of the validation cache's samples, in its order; cache: a `features.Cache` of a
    `Validation` (its paths carry the kinds). Says which kinds of drawn anomaly a scorer misses.
    """
    kinds = [kind_of(p) for p in cache.paths]
    out = {}
    for name, idx in cache.class_indices().items():
        normal = [i for i in idx if kinds[i] == "good"]
        out[name] = {}
        for kind in KINDS:
            drawn = [i for i in idx if kinds[i] == kind]
            if normal and drawn:
                pick = torch.tensor(normal + drawn)
                out[name][kind] = M.auroc(scores[pick], torch.tensor([0] * len(normal) + [1] * len(drawn)))
    return out
