"""UniAD end to end (paper Sec. 3, Fig. 2): frozen backbone -> feature tokens -> reconstruction -> anomaly map.

    images (B, 3, 224, 224) in [0, 1]
      -> EfficientNet taps at strides 2/4/8/16, resized to 14 x 14 and stacked  f (B, C, 14, 14)  `features`
      -> [standardised per channel with training-set statistics; off in the paper recipe]
      -> ReconstructionTransformer                                             f^ (B, C, 14, 14)
      -> per-token L2 of f^ - f, bilinear up to the image                      map (B, 224, 224)
      -> image score = max of a 16 x 16 average pool of the map                score (B,)

One model is trained on the normal images of every class at once, without class labels (the unified
setting). The backbone is frozen and nothing is augmented, so its features are computed once and cached:
training only ever runs the transformer.

Two recipes (`UniAD(recipe=...)`, any field can still be overridden):
  * "cpu" (default): standardised features, AdamW lr 1e-3, 5% warm-up + cosine, clip 1.0, no dropout,
    a few epochs -- converges in minutes on 2 CPU cores (docs/results.md).
  * "paper": the authors' config -- raw features, lr 1e-4, StepLR x0.1 at 80%, clip 0.1, dropout 0.1,
    1000 epochs.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import metrics
from .attention import BACKENDS
from .backbone import IMAGENET_MEAN, IMAGENET_STD, feature_stack, load_backbone
from .data import collate
from .progress import Progress
from .transformer import ReconstructionTransformer


@dataclass
class Config:
    recipe: str = "cpu"
    # backbone (paper: EfficientNet-B4; offline default: Lite0, shipped with its weights)
    backbone: str = "lite0"
    backbone_checkpoint: str | None = None
    input_norm: str = "native"  # "native": the range the weights were trained with; "imagenet": mean/std
    image_size: int = 224
    # reconstruction transformer
    hidden_dim: int = 256
    heads: int = 8
    layers: int = 4
    ffn_dim: int = 1024
    dropout: float = 0.0
    neighbor_size: int | list | None = 7  # None: no neighbor mask
    layerwise_query: bool = True
    jitter_scale: float = 20.0  # alpha; 0: no feature jittering
    jitter_prob: float = 1.0
    standardize: bool = True
    backend: str = "auto"  # attention: "auto" | "torch" | "triton"
    # training
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    schedule: str = "cosine"  # "cosine" | "step" (x0.1 at 80%) | "constant"
    warmup: float = 0.05  # fraction of all steps with a linear warm-up
    seed: int = 0


RECIPES = {
    "cpu": {},
    "paper": dict(dropout=0.1, standardize=False, epochs=1000, lr=1e-4, grad_clip=0.1, schedule="step", warmup=0.0),
}


def make_config(**kwargs) -> Config:
    """Config from a recipe name plus overrides, with every value checked."""
    recipe = kwargs.get("recipe", "cpu")
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {sorted(RECIPES)}")
    known = {f.name for f in fields(Config)}
    unknown = set(kwargs) - known
    if unknown:
        raise TypeError(f"unknown UniAD option(s) {sorted(unknown)}; known options: {sorted(known)}")
    cfg = Config(**{**RECIPES[recipe], **kwargs})
    if cfg.backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {cfg.backend!r}; choose one of {BACKENDS}")
    if cfg.input_norm not in ("native", "imagenet"):
        raise ValueError(f"unknown input_norm {cfg.input_norm!r}; choose native or imagenet")
    if cfg.schedule not in ("cosine", "step", "constant"):
        raise ValueError(f"unknown schedule {cfg.schedule!r}; choose cosine, step or constant")
    if cfg.image_size % 16 or cfg.image_size < 16:
        raise ValueError(f"image_size must be a positive multiple of 16, got {cfg.image_size}")
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ValueError("epochs and batch_size must be at least 1")
    return cfg


def learning_rate(cfg: Config, step: int, total: int) -> float:
    """The learning rate at optimizer step `step` of `total`."""
    warm = int(cfg.warmup * total)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
    if cfg.schedule == "step":
        return cfg.lr * (0.1 if step >= 0.8 * total else 1.0)
    return cfg.lr


def anomaly_map(rec: torch.Tensor, feats: torch.Tensor, size) -> torch.Tensor:
    """||f^ - f||_2 over channels per token, bilinear (align_corners) up to `size`: (B, C, h, w) -> (B, H, W)."""
    m = (rec - feats).pow(2).sum(1, keepdim=True).sqrt()  # (B, 1, h, w)
    return F.interpolate(m, size=size, mode="bilinear", align_corners=True)[:, 0]


def image_score(maps: torch.Tensor, pool: int = 16) -> torch.Tensor:
    """Max of the 16 x 16 average-pooled map (stride 1, no padding): (B, H, W) -> (B,)."""
    return F.avg_pool2d(maps[:, None], pool, stride=1).amax(dim=(1, 2, 3))


@dataclass
class Cache:
    """Backbone features of a data set, computed once (the backbone is frozen)."""

    features: torch.Tensor  # (N, C, h, w)
    labels: torch.Tensor  # (N,) 0 normal, 1 anomalous
    masks: torch.Tensor  # (N, S, S) uint8 ground truth
    classes: list[str] = field(default_factory=list)  # class name of each sample
    paths: list[str] = field(default_factory=list)


class UniAD(nn.Module):
    """One unified anomaly detector for many classes.  `UniAD(**config)`; see `Config` for every option."""

    def __init__(self, **config):
        super().__init__()
        self.config = make_config(**config)
        cfg = self.config
        self.backbone = load_backbone(cfg.backbone, cfg.backbone_checkpoint)
        if cfg.input_norm == "imagenet":  # an ablation: Lite0 was trained on [-1, 1] (see docs/results.md)
            self.backbone.mean, self.backbone.std = IMAGENET_MEAN, IMAGENET_STD
        C = sum(self.backbone.tap_channels)
        self.grid = (cfg.image_size // 16, cfg.image_size // 16)
        window = tuple(cfg.neighbor_size) if isinstance(cfg.neighbor_size, list) else cfg.neighbor_size
        with torch.random.fork_rng():  # the initial weights follow the seed; the global RNG is left alone
            torch.manual_seed(cfg.seed)
            self.transformer = ReconstructionTransformer(
                C, self.grid, cfg.hidden_dim, cfg.heads, cfg.layers, cfg.ffn_dim, cfg.dropout,
                window, cfg.layerwise_query, cfg.jitter_scale, cfg.jitter_prob, cfg.backend,
            )
        # per-channel statistics of the training features (identity until `fit` sets them)
        self.register_buffer("feature_mean", torch.zeros(C))
        self.register_buffer("feature_std", torch.ones(C))
        self.train_state: dict = {"epoch": 0, "history": []}

    @property
    def channels(self) -> int:
        return self.feature_mean.numel()

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # frozen: BatchNorm statistics never move
        return self

    # ---- features ------------------------------------------------------------------------------
    def _check_images(self, images) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a float tensor (B, 3, H, W) of RGB in [0, 1], got {shape}")
        if not images.is_floating_point():
            raise ValueError(f"images must be float in [0, 1], got dtype {images.dtype} (divide uint8 by 255)")
        if images.numel() and (images.min() < -1e-3 or images.max() > 1 + 1e-3):
            raise ValueError("images must lie in [0, 1]; got values outside (divide 0..255 images by 255)")
        return images.to(self.feature_mean.device, torch.float32)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Stacked backbone features `feature_align` (B, C, 14, 14) of images (B, 3, H, W) in [0, 1]."""
        images = self._check_images(images)
        S = self.config.image_size
        if images.shape[-2:] != (S, S):
            images = F.interpolate(images, size=(S, S), mode="bilinear", align_corners=False, antialias=True)
        return feature_stack(self.backbone.tap_features(images))

    def cache(self, data, batch_size: int = 16, progress: bool = True, desc: str = "features") -> Cache:
        """Run the backbone once over a data set (MVTecAD or SyntheticAD items) and keep the results."""
        if len(data) == 0:
            raise ValueError("the data set is empty")
        feats, labels, masks, classes, paths = [], [], [], [], []
        S = self.config.image_size
        with Progress(len(data), desc, enabled=progress) as bar:
            for start in range(0, len(data), batch_size):
                batch = collate([data[i] for i in range(start, min(start + batch_size, len(data)))])
                feats.append(self.features(batch["image"]).cpu())
                m = batch["mask"][:, None].float()  # (b, 1, s, s)
                masks.append(F.interpolate(m, size=(S, S), mode="nearest")[:, 0].to(torch.uint8))
                labels.append(batch["label"])
                classes += batch["cls"]
                paths += [str(p) for p in batch["path"]]
                bar.update(len(batch["cls"]))
        return Cache(torch.cat(feats), torch.cat(labels), torch.cat(masks), classes, paths)

    # ---- reconstruction and scores -------------------------------------------------------------
    def tokens(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) features -> (B, h*w, C) tokens, standardised when the recipe says so."""
        x = feats.to(self.feature_mean.device)
        x = (x - self.feature_mean[:, None, None]) / self.feature_std[:, None, None]
        return x.flatten(2).transpose(1, 2)

    def reconstruct(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(target, reconstruction), both (B, C, h, w) in the units the model is trained in."""
        x = self.tokens(feats)  # (B, N, C)
        rec = self.transformer(x)  # (B, N, C)
        B, N, C = x.shape
        to_grid = lambda t: t.transpose(1, 2).reshape(B, C, *self.grid)  # noqa: E731
        return to_grid(x), to_grid(rec)

    @torch.no_grad()
    def score_features(self, feats: torch.Tensor, size=None, batch_size: int = 32):
        """(image scores (B,), anomaly maps (B, H, W)) from cached features; maps at `size` (default image_size)."""
        was_training = self.training
        self.eval()
        S = self.config.image_size
        scores, maps = [], []
        for chunk in feats.split(batch_size):
            target, rec = self.reconstruct(chunk)
            m = anomaly_map(rec, target, (S, S))  # (b, S, S): the protocol's resolution
            scores.append(image_score(m).cpu())
            if size is not None and tuple(size) != (S, S):
                m = anomaly_map(rec, target, tuple(size))
            maps.append(m.cpu())
        self.train(was_training)
        return torch.cat(scores), torch.cat(maps)

    def predict(self, images: torch.Tensor):
        """Images (B, 3, H, W) in [0, 1] -> (scores (B,), anomaly maps (B, H, W)); higher = more anomalous."""
        images = self._check_images(images)
        return self.score_features(self.features(images), size=images.shape[-2:])

    # ---- training ------------------------------------------------------------------------------
    def fit(self, train_data, epochs: int | None = None, progress: bool = True, checkpoint=None, callback=None):
        """Train on normal images of every class at once (labels unused); resumes a loaded checkpoint.

        train_data: a data set (MVTecAD / SyntheticAD) or a `Cache` of its features.
        checkpoint: a path written after every epoch (resume with `UniAD.load(path).fit(...)`).
        callback(model, epoch, loss): called after every epoch (e.g. to evaluate along the way).
        """
        cache = train_data if isinstance(train_data, Cache) else self.cache(train_data, progress=progress)
        if self.train_state["epoch"] == 0:
            self._set_feature_stats(cache.features)
        return self.fit_features(cache.features, epochs, progress, checkpoint, callback)

    def _set_feature_stats(self, feats: torch.Tensor):
        if self.config.standardize:
            self.feature_mean.copy_(feats.mean(dim=(0, 2, 3)))
            self.feature_std.copy_(feats.std(dim=(0, 2, 3)).clamp_min(1e-6))

    def fit_features(self, feats, epochs=None, progress=True, checkpoint=None, callback=None):
        """The training loop on cached features (N, C, h, w): MSE(f^, f), AdamW, clipping, LR schedule."""
        cfg, state = self.config, self.train_state
        epochs = epochs or cfg.epochs
        N = feats.shape[0]
        steps_per_epoch = math.ceil(N / cfg.batch_size)
        total = epochs * steps_per_epoch
        opt = torch.optim.AdamW(self.transformer.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        if state["epoch"] == 0:
            torch.manual_seed(cfg.seed)
        else:  # resume exactly where the checkpoint stopped
            opt.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["rng"])
        self.train()
        for epoch in range(state["epoch"], epochs):
            order = torch.randperm(N, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
            running = 0.0
            with Progress(steps_per_epoch, f"epoch {epoch + 1}/{epochs}", enabled=progress) as bar:
                for i in range(steps_per_epoch):
                    step = epoch * steps_per_epoch + i
                    for group in opt.param_groups:
                        group["lr"] = learning_rate(cfg, step, total)
                    target, rec = self.reconstruct(feats[order[i * cfg.batch_size : (i + 1) * cfg.batch_size]])
                    loss = F.mse_loss(rec, target)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg.grad_clip:
                        nn.utils.clip_grad_norm_(self.transformer.parameters(), cfg.grad_clip)
                    opt.step()
                    running += loss.item()
                    bar.update(1, f"loss {running / (i + 1):.4f}")
            state.update(epoch=epoch + 1, optimizer=opt.state_dict(), rng=torch.get_rng_state())
            state["history"].append(running / steps_per_epoch)
            if checkpoint is not None:
                self.save(checkpoint)
            if callback is not None:
                callback(self, epoch + 1, state["history"][-1])
                self.train()
        self.eval()
        return self

    # ---- evaluation ----------------------------------------------------------------------------
    def evaluate(self, test_data, progress: bool = True) -> dict:
        """Per-class image and pixel AUROC (fractions in [0, 1]) and their unweighted mean.

        Returns {class: {"image_auroc": ..., "pixel_auroc": ...}, ..., "mean": {...}}.
        """
        cache = test_data if isinstance(test_data, Cache) else self.cache(test_data, progress=progress, desc="test")
        scores, maps = self.score_features(cache.features)
        return per_class_auroc(scores, maps, cache)

    # ---- checkpoints ---------------------------------------------------------------------------
    def save(self, path):
        """Config + trainable weights + feature statistics + training state; loads with weights_only=True.

        Written to a temporary file first, then renamed: an interrupted save never leaves half a checkpoint.
        """
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(
            {
                "config": asdict(self.config),
                "transformer": self.transformer.state_dict(),
                "feature_mean": self.feature_mean,
                "feature_std": self.feature_std,
                "train_state": self.train_state,
            },
            tmp,
        )
        os.replace(tmp, path)

    @classmethod
    def load(cls, path, map_location="cpu") -> "UniAD":
        try:
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
        except FileNotFoundError:
            raise FileNotFoundError(f"no checkpoint at {path}") from None
        except Exception as e:  # a truncated or foreign file
            raise ValueError(f"{path} is not a uniad_mini checkpoint ({e.__class__.__name__}: {e})") from None
        if not isinstance(ckpt, dict) or "config" not in ckpt or "transformer" not in ckpt:
            raise ValueError(f"{path} is not a uniad_mini checkpoint (no config/transformer entries)")
        model = cls(**ckpt["config"])
        model.transformer.load_state_dict(ckpt["transformer"])
        model.feature_mean.copy_(ckpt["feature_mean"])
        model.feature_std.copy_(ckpt["feature_std"])
        model.train_state = ckpt["train_state"]
        return model.eval()


def per_class_auroc(scores: torch.Tensor, maps: torch.Tensor, cache: Cache) -> dict:
    """{class: {"image_auroc", "pixel_auroc"}} over the samples of each class, plus the unweighted "mean"."""
    out = {}
    for name in sorted(set(cache.classes)):
        idx = torch.tensor([i for i, c in enumerate(cache.classes) if c == name])
        labels, masks = cache.labels[idx], cache.masks[idx]
        out[name] = {
            "image_auroc": metrics.auroc(scores[idx], labels),
            "pixel_auroc": metrics.auroc(maps[idx], masks),
        }
    keys = ("image_auroc", "pixel_auroc")
    out["mean"] = {k: sum(out[c][k] for c in out) / len(out) for k in keys}
    return out
