"""Feature extraction (paper Sec. 3.1 and Fig. 2, left): frozen backbone -> stacked feature grid `feature_align`.

    images (B, 3, H, W) in [0, 1] --resize to S x S--> EfficientNet taps at strides 2, 4, 8, 16
        --bilinear (align_corners) to the stride-16 grid, concatenated on channels--> f (B, C, S/16, S/16)

`f` is both the reconstruction transformer's input and its target. The backbone is frozen and nothing is
augmented, so the features of a data set are computed once (`cache_features`) and every training run,
seed, baseline and experiment reads the same `Cache`. Building a `FeatureExtractor` builds no transformer.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbone import IMAGENET_MEAN, IMAGENET_STD, feature_stack, fold_backbone, load_backbone
from .data import MIN_SIDE, collate
from .progress import Progress
from .errors import OptionError
from .errors import DataError


def check_images(images) -> torch.Tensor:
    """A float RGB batch (B >= 1, 3, H >= 16, W >= 16) in [0, 1], or a ValueError that says what to change."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a float tensor (B, 3, H, W) of RGB in [0, 1], got {shape}")
    if images.shape[0] == 0:
        raise ValueError("images is an empty batch (0, 3, H, W); pass at least one image")
    if min(images.shape[-2:]) < MIN_SIDE:
        raise ValueError(f"images must be at least {MIN_SIDE} x {MIN_SIDE} pixels (one scoring window), "
                         f"got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be float in [0, 1], got dtype {images.dtype} (divide uint8 by 255)")
    if images.numel() and not torch.isfinite(images).all():
        raise ValueError("images contain NaN or inf values")
    if images.numel() and (images.min() < -1e-3 or images.max() > 1 + 1e-3):
        raise ValueError("images must lie in [0, 1]; got values outside (divide 0..255 images by 255)")
    return images


class FeatureExtractor(nn.Module):
    """The frozen backbone and the feature stacking: images (B, 3, H, W) in [0, 1] -> f (B, C, S/16, S/16)."""

    def __init__(self, backbone: str = "lite0", checkpoint: str | None = None, input_norm: str = "native",
                 image_size: int = 224):
        super().__init__()
        if input_norm not in ("native", "imagenet"):
            raise OptionError(f"unknown input_norm {input_norm!r}; choose native or imagenet")
        self.backbone = load_backbone(backbone, checkpoint)
        if input_norm == "imagenet":  # an ablation: Lite0 was trained on (p - 127) / 128 (docs/results.md)
            self.backbone.mean, self.backbone.std = IMAGENET_MEAN, IMAGENET_STD
        self.image_size = image_size
        self.channels = sum(self.backbone.tap_channels)  # C: 16 + 24 + 40 + 112 = 192 for Lite0
        self.grid = (image_size // 16, image_size // 16)  # (h, w): 14 x 14 at 224
        self.decode_workers = 0  # threads decoding the next batch during `cache_features` (fast path: 2)
        self.fast_backbone = None  # the fast path's inference copy of the backbone (`speed_up`)

    def speed_up(self, on: bool = True) -> "FeatureExtractor":
        """The fast path (Config.fast): forward runs a copy of the backbone with every BatchNorm folded into its
        convolution, in channels-last order, and `cache_features` decodes the next batch in two threads while
        this one runs. on=False: the plain path. (Call it again after changing the backbone's weights.)"""
        self.fast_backbone = fold_backbone(self.backbone) if on else None
        self.decode_workers = 2 if on else 0
        return self

    def train(self, mode: bool = True):
        return super().train(False)  # frozen: BatchNorm statistics never move

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, C, h, w)
        device = next(self.backbone.parameters()).device
        images = check_images(images).to(device, torch.float32)
        S = self.image_size
        if images.shape[-2:] != (S, S):
            images = F.interpolate(images, size=(S, S), mode="bilinear", align_corners=False, antialias=True)
        backbone = self.backbone if self.fast_backbone is None else self.fast_backbone
        return feature_stack(backbone.tap_features(images))


@dataclass
class Cache:
    """Backbone features of a data set, computed once, with what evaluation needs of each sample."""

    features: torch.Tensor  # (N, C, h, w) feature_align
    labels: torch.Tensor  # (N,) 0 normal, 1 anomalous
    masks: torch.Tensor  # (N, S, S) uint8 ground truth at the evaluation resolution
    classes: list[str] = field(default_factory=list)  # class name of each sample (never seen by the model)
    paths: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices) -> "Cache":
        """The samples at `indices` (a list or 1-D tensor of positions), in that order."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        pick = idx.tolist()
        return Cache(self.features[idx], self.labels[idx], self.masks[idx], [self.classes[i] for i in pick],
                     [self.paths[i] for i in pick] if self.paths else [])

    def balanced(self) -> "Cache":
        """Every class's samples cycled up to the size of the largest class, so that each class weighs the same in
        an epoch (the class names choose what is repeated; a model never sees them)."""
        groups = list(self.class_indices().values())
        most = max(len(g) for g in groups)
        return self.subset([g[i % len(g)] for g in groups for i in range(most)])

    def class_indices(self) -> dict[str, list[int]]:
        """{class: positions of its samples}, classes sorted by name."""
        out: dict[str, list[int]] = {}
        for i, c in enumerate(self.classes):
            out.setdefault(c, []).append(i)
        return dict(sorted(out.items()))

    def by_class(self) -> dict[str, "Cache"]:
        """One Cache per class (the separate setting's training and test sets)."""
        return {c: self.subset(idx) for c, idx in self.class_indices().items()}


def cache_features(extractor: FeatureExtractor, data, batch_size: int = 16, progress: bool = True,
                   desc: str = "features") -> Cache:
    """Run the backbone once over a data set (MVTecAD or SyntheticAD items) and keep the results on the CPU.

    This is also the data check of the set (each image is read once): an item that cannot be read is noted
    and the pass goes on, and at the end one DataError lists every problem found, the indexing's included
    (`data.problems`). With `extractor.decode_workers` > 0, threads decode the next batch while the backbone
    runs on this one (`prefetched_batches`); the batches and so the features are the same either way.
    """
    problems = list(getattr(data, "problems", []))
    if len(data) == 0:
        raise DataError.of(problems or ["the data set is empty"])
    feats, labels, masks, classes, paths = [], [], [], [], []
    S = extractor.image_size
    with Progress(len(data), desc, enabled=progress) as bar:
        for items in prefetched_batches(data, batch_size, getattr(extractor, "decode_workers", 0)):
            problems += [str(item) for item in items if isinstance(item, DataError)]
            items = [item for item in items if not isinstance(item, DataError)]
            bar.update(len(items))
            if problems:  # the backbone's work is wasted now: only the reading goes on
                continue
            batch = collate(items)
            feats.append(extractor(batch["image"]).cpu())
            m = batch["mask"][:, None].float()  # (b, 1, s, s)
            masks.append(F.interpolate(m, size=(S, S), mode="nearest")[:, 0].to(torch.uint8))
            labels.append(batch["label"])
            classes += batch["cls"]
            paths += [str(p) for p in batch["path"]]
        bar.update(0, f"{len(data) / max(time.perf_counter() - bar.start, 1e-9):.1f} images/s")
    if problems:
        raise DataError.of(list(dict.fromkeys(problems)))  # in order, each once
    return Cache(torch.cat(feats), torch.cat(labels), torch.cat(masks), classes, paths)


def channel_stats(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (C,) of training features (N, C, h, w), pooled over samples and positions."""
    return feats.mean(dim=(0, 2, 3)), feats.std(dim=(0, 2, 3)).clamp_min(1e-6)


def standardize(feats: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(f - mean) / std per channel: (B, C, h, w) -> (B, C, h, w) on the statistics' device."""
    return (feats.to(mean.device) - mean[:, None, None]) / std[:, None, None]


def read_item(data, i: int):
    """data[i], or the DataError that says why it cannot be read (returned, not raised: the pass goes on)."""
    try:
        return data[i]
    except DataError as e:
        return e


def prefetched_batches(data, batch_size: int, workers: int = 2):
    """[read_item(data, i) ...] for consecutive batches of `data`, in order, the same as a plain loop yields.

    While the caller computes on one batch, `workers` threads decode the items of the next (PIL and torch
    release the GIL while they decode and resize); workers=0 is the plain loop.
    """
    n = len(data)
    starts = range(0, n, batch_size)
    if workers <= 0:
        for s in starts:
            yield [read_item(data, i) for i in range(s, min(s + batch_size, n))]
        return
    with ThreadPoolExecutor(workers) as pool:
        def submit(s):
            return [pool.submit(read_item, data, i) for i in range(s, min(s + batch_size, n))]

        ahead = submit(0)
        for s in starts:
            items = [f.result() for f in ahead]
            ahead = submit(s + batch_size) if s + batch_size < n else []
            yield items
