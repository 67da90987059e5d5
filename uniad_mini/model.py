"""UniAD end to end (paper Sec. 3, Fig. 2): frozen backbone -> feature tokens -> reconstruction -> anomaly map.

    images (B, 3, 224, 224) in [0, 1]
      -> EfficientNet taps at strides 2/4/8/16, resized to 14 x 14 and stacked  f (B, C, 14, 14)  features.py
      -> standardised per channel with training-set statistics (off in the paper recipe)
      -> ReconstructionTransformer                                             f^ (B, C, 14, 14)  transformer.py
      -> per-token L2 of f^ - f, bilinear up to the image                      map (B, 224, 224)  evaluation.py
      -> image score = max of a 16 x 16 average pool of the map                score (B,)

One model is trained on the normal images of every class at once, without class labels (the unified
setting). The backbone is frozen and nothing is augmented, so its features are computed once and cached:
training (training.py, the project's one loop) only ever runs the transformer.

Recipes (`UniAD(recipe=...)`; any field can still be overridden) are listed in `RECIPES` with the measurements
that chose them in docs/results.md.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn

from . import calibration as _cal
from . import checks, distributed
from .attention import BACKENDS
from .evaluation import evaluate, left_out_line, score
from .fastpath import attention_backend
from .features import Cache, FeatureExtractor, cache_features, channel_stats, check_images, standardize
from .geometry import RESIZE_DEFAULT, check_resize, map_to_image, square_map_size, to_square
from .layouts import open_data
from .training import TrainSettings, train
from .transformer import OnTokens, ReconstructionTransformer
from .errors import OptionError
from .images import DataError

CHECKPOINT_FORMAT = 2  # 1: before the field existed (same keys); 2: adds "format" itself
CHECKPOINT_KEYS = {"config", "transformer", "feature_mean", "feature_std", "train_state"}


@dataclass
class Config:
    """Every option of a UniAD model. The field defaults are the default "cpu" recipe; `RECIPES` lists the others."""

    recipe: str = "cpu"
    # backbone (paper: EfficientNet-B4; offline default: Lite0, shipped with its weights)
    backbone: str = "lite0"
    backbone_checkpoint: str | None = None
    input_norm: str = "native"  # "native": the range the weights were trained with; "imagenet": mean/std
    image_size: int = 224
    resize: str = RESIZE_DEFAULT  # a non-square image onto the square: "squash" | "crop" | "pad" (geometry.py)
    # reconstruction transformer (paper: width 256, 8 heads, 4 + 4 layers, FFN 1024, dropout 0.1)
    hidden_dim: int = 256
    heads: int = 8
    layers: int = 2  # encoder and decoder layers each; 2 + 2 buys twice the epochs of 4 + 4 on a CPU
    ffn_dim: int = 1024
    dropout: float = 0.0  # attention weights, FFN and residual branches; 0.1 doubles a CPU step for no measured gain
    neighbor_size: int | list | None = 7  # None: no neighbor mask
    layerwise_query: bool = True
    jitter_scale: float = 20.0  # alpha; 0: no feature jittering
    jitter_prob: float = 1.0
    standardize: bool = True  # per-channel mean / std of the training features (paper: raw features)
    # scoring (paper: no smoothing, a 16 x 16 window; evaluation.score)
    score_pool: int = 16  # the image score: max of the score_pool x score_pool average-pooled map
    map_sigma: float = 0.0  # Gaussian smoothing of the anomaly map, sigma in pixels of the image_size map
    backend: str = "auto"  # attention: "auto" (sdpa on CUDA, else torch) | "torch" | "sdpa" | "triton"
    # training (paper: AdamW lr 1e-4, clip 0.1, x0.1 at 80%, 1000 epochs)
    balance: bool = False  # True: each class's training images repeated up to the largest class's (Cache.balanced)
    epochs: int = 80  # dev set: 11.4 min on 2 CPU cores in fp32, under 10 in bf16 with AMX (docs/performance.md)
    batch_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 1e-4
    grad_clip: float = 0.1
    schedule: str = "cosine"  # one of SCHEDULES: "cosine" | "step" (x0.1 at 80%) | "constant"
    warmup: float = 0.05  # fraction of all steps with a linear warm-up
    optimizer: str = "adamw"  # one of OPTIMIZERS
    precision: str = "auto"  # training matmuls: "auto" (bf16 where the hardware has it, else fp32) | "fp32" | "bf16"
    seed: int = 0
    # speed (docs/performance.md): the same numbers within float rounding, checked in tests/test_fastpath.py
    fast: bool = True  # fastpath.py: SDPA attention for backend "auto", fused AdamW, the backbone with BatchNorm
    #                    folded in (channels-last), decoding in parallel; False: the plain reference path
    compile: bool = False  # torch.compile the training step (CPU inductor; eager, with one line, without a C++
    #                        compiler); off: slower than the eager fast path on this project's CPU, minutes to compile


# How each recipe was chosen, with every run measured: docs/results.md ("Choosing the default recipe").
RECIPES = {
    "cpu": {},  # the Config defaults: minutes on 2 CPU cores
    "gpu": dict(dropout=0.1, precision="fp32"),  # the same model with dropout, as measured on an H200 (fp32)
    "paper": dict(layers=4, dropout=0.1, standardize=False, epochs=1000, lr=1e-4, schedule="step", warmup=0.0),
}


def make_config(**kwargs) -> Config:
    """Config from a recipe name plus overrides, with every value checked."""
    recipe = kwargs.get("recipe", "cpu")
    if recipe not in RECIPES:
        raise OptionError(f"unknown recipe {recipe!r}; choose one of {sorted(RECIPES)}")
    known = {f.name for f in fields(Config)}
    unknown = set(kwargs) - known
    if unknown:
        raise TypeError(f"unknown UniAD option(s) {sorted(unknown)}; known options: {sorted(known)}")
    cfg = Config(**{**RECIPES[recipe], **kwargs})
    if cfg.backend not in BACKENDS:
        raise OptionError(f"unknown attention backend {cfg.backend!r}; choose one of {BACKENDS}")
    if cfg.input_norm not in ("native", "imagenet"):
        raise OptionError(f"unknown input_norm {cfg.input_norm!r}; choose native or imagenet")
    if cfg.image_size % 16 or cfg.image_size < 16:
        raise OptionError(f"image_size must be a positive multiple of 16, got {cfg.image_size}")
    if not 1 <= cfg.score_pool <= cfg.image_size:
        raise OptionError(f"score_pool must be between 1 and image_size ({cfg.image_size}), got {cfg.score_pool}")
    if cfg.map_sigma < 0:
        raise OptionError(f"map_sigma must be 0 (no smoothing) or positive, got {cfg.map_sigma}")
    check_resize(cfg.resize)
    train_settings(cfg).check()
    return cfg


def train_settings(cfg: Config, epochs: int | None = None) -> TrainSettings:
    """The training loop's settings, field by field from a model config (`epochs` overrides cfg.epochs)."""
    return TrainSettings(epochs=cfg.epochs if epochs is None else epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                         weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip, schedule=cfg.schedule,
                         warmup=cfg.warmup, optimizer=cfg.optimizer, precision=cfg.precision, seed=cfg.seed,
                         fast=cfg.fast, compile=cfg.compile)


def build_transformer(cfg: Config, channels: int, grid: tuple[int, int]) -> ReconstructionTransformer:
    """The reconstruction transformer of a config, on `channels` stacked features over a `grid` of tokens."""
    window = tuple(cfg.neighbor_size) if isinstance(cfg.neighbor_size, list) else cfg.neighbor_size
    return ReconstructionTransformer(
        channels, grid=tuple(grid), dim=cfg.hidden_dim, heads=cfg.heads, layers=cfg.layers, ffn=cfg.ffn_dim,
        dropout=cfg.dropout, neighbor_size=window, layerwise_query=cfg.layerwise_query,
        jitter_scale=cfg.jitter_scale, jitter_prob=cfg.jitter_prob, backend=attention_backend(cfg.backend, cfg.fast))


def unreadable_checkpoint(path, e: Exception) -> str:
    """One line on why torch.load(weights_only=True) refused `path`: code it would run, or not a checkpoint."""
    text = str(e)
    blocked = re.search(r"GLOBAL (\S+)", text)  # a pickle naming functions or classes beyond tensors and data
    if "Weights only load failed" in text and blocked:
        return (f"{path} asks to run code when loaded ({blocked.group(1)}); refused: uniad_mini checkpoints hold "
                f"tensors and plain data only (weights_only=True) -- do not load this file with torch.load either")
    lines = [line for line in text.splitlines() if line.strip()]
    if "Weights only load failed" in text:  # torch's own first line advises weights_only=False: show the cause
        lines = [line for line in lines if line.startswith(("Unsupported", "Unpickling", "invalid", "WeightsUnpickler"))
                 and not line.endswith(": ")] or ["unpickling failed"]
    cause = lines[0] if lines else ""
    return f"{path} is not a uniad_mini checkpoint, or it is truncated ({type(e).__name__}: {cause})"


class UniAD(nn.Module):
    """One unified anomaly detector for many classes.  `UniAD(**config)`; see `Config` for every option."""

    def __init__(self, **config):
        super().__init__()
        self.config = cfg = make_config(**config)
        self.extractor = FeatureExtractor(cfg.backbone, cfg.backbone_checkpoint, cfg.input_norm, cfg.image_size)
        self.extractor.speed_up(cfg.fast)
        C, self.grid = self.extractor.channels, self.extractor.grid
        with torch.random.fork_rng():  # the initial weights follow the seed; the global RNG is left alone
            torch.manual_seed(cfg.seed)
            self.transformer = build_transformer(cfg, C, self.grid)
        # per-channel statistics of the training features (identity until `fit` sets them)
        self.register_buffer("feature_mean", torch.zeros(C))
        self.register_buffer("feature_std", torch.ones(C))
        self.train_state: dict = {"epoch": 0, "history": []}
        self.calibration: dict | None = None  # thresholds set by `calibrate` (calibration.py), saved with the model

    @property
    def backbone(self) -> nn.Module:
        return self.extractor.backbone

    @property
    def channels(self) -> int:
        return self.feature_mean.numel()

    # ---- features ------------------------------------------------------------------------------
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Stacked backbone features `feature_align` (B, C, 14, 14) of images (B, 3, H, W) in [0, 1]."""
        return self.extractor(images)

    def cache(self, data, batch_size: int = 16, progress: bool = True, desc: str = "features") -> Cache:
        """Run the backbone once over a data set (MVTecAD or SyntheticAD items) and keep the results."""
        return cache_features(self.extractor, data, batch_size, progress, desc)

    # ---- reconstruction and scores -------------------------------------------------------------
    def standardize(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) features in the units the model is trained in (identity until `fit` sets the statistics)."""
        return standardize(feats, self.feature_mean, self.feature_std)

    def tokens(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) features -> (B, h*w, C) standardised tokens, the transformer's input."""
        return self.standardize(feats).flatten(2).transpose(1, 2)

    def reconstructor(self) -> nn.Module:
        """The transformer as a grid model (B, C, h, w) -> (B, C, h, w), for the training loop and the scorer."""
        return OnTokens(self.transformer)

    def reconstruct(self, feats: torch.Tensor) -> torch.Tensor:
        """The reconstruction (B, C, h, w) of cached features, in the units the model is trained in: compare it
        with `standardize(feats)`, its target."""
        return self.reconstructor()(self.standardize(feats))

    def score_features(self, feats: torch.Tensor, size=None, batch_size: int = 32):
        """(image scores (B,), anomaly maps (B, H, W)) from cached features; maps at `size` (default image_size)."""
        S = self.config.image_size
        return score(self.reconstructor(), self.standardize(feats), (S, S), size, batch_size, **self.scoring())

    def scoring(self) -> dict:
        """How this model turns maps into scores (`evaluation.score`'s pool, sigma): baselines scored beside it
        use the same, so their numbers stay comparable."""
        return dict(pool=self.config.score_pool, sigma=self.config.map_sigma)

    def predict(self, images: torch.Tensor, classes=None) -> _cal.Prediction:
        """Images (B, 3, H, W) in [0, 1] -> a `calibration.Prediction`; `scores, maps = model.predict(images)`.

        scores (B,), anomaly maps (B, H, W), higher = more anomalous; once calibrated, also decisions and defect
        masks, with the thresholds of `classes` (one name, one per image, or None: the global threshold).
        """
        return _cal.decide(*self.score_images(images), self.calibration, classes)

    def score_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores (B,), anomaly maps (B, H, W)) of images (B, 3, H, W) in [0, 1], the maps over the images' own
        pixels: the config's `resize` puts an image on the model's square and its map back (geometry.py)."""
        (H, W), S, resize = images.shape[-2:], self.config.image_size, self.config.resize
        feats = self.features(to_square(check_images(images), S, resize))
        scores, maps = self.score_features(feats, size=square_map_size(H, W, S, resize))
        return scores, map_to_image(maps, H, W, S, resize)

    def calibrate(self, normal, fpr: float = _cal.DEFAULT_FPR, pixel_fpr: float = _cal.DEFAULT_PIXEL_FPR,
                  source: str = "", progress: bool = False) -> dict:
        """Set per-class image and pixel thresholds at false-alarm rates `fpr` / `pixel_fpr` on normal images
        the model did not train on (a data set or Cache; `calibration.split` holds them out). Returns and keeps
        the record (`self.calibration`, saved with the model); its "warnings" say where too few images."""
        cache = normal if isinstance(normal, Cache) else self.cache(normal, progress=progress, desc="calibration")
        if bool(cache.labels.any()):
            raise DataError("calibration takes normal images only; defective ones would raise the thresholds")
        self.calibration = _cal.calibrate(*self.score_features(cache.features), cache.classes, fpr, pixel_fpr, source)
        return self.calibration

    # ---- training ------------------------------------------------------------------------------
    def fit(self, train_data, epochs: int | None = None, progress: bool = True, checkpoint=None, callback=None):
        """Train on normal images of every class at once (labels unused); resumes a loaded checkpoint.

        train_data: a data set (MVTecAD / FolderAD / VisA / SyntheticAD), DATA_ROOT itself (a folder or .toml / .csv,
        layouts.open_data) or a `Cache` of its features. A data set is validated first (checks.validate): every
        unreadable file is found, all of them in one DataError, before any work.
        checkpoint: a path written after every epoch (resume with `UniAD.load(path).fit(...)`).
        callback(model, epoch, loss): called after every epoch (e.g. to evaluate along the way).
        Under torchrun (docs/distributed.md) each rank caches its share of a data set and all ranks gather the
        whole; a `Cache` must be the full set on every rank. The callback runs on every rank.
        """
        if isinstance(train_data, (str, os.PathLike)):
            train_data = self.open(train_data, "train")
        if isinstance(train_data, Cache):
            cache = train_data
        else:
            self.validate(train_data, progress=progress)
            cache = distributed.cache_features_sharded(self.extractor, train_data, progress=progress)
        if self.train_state["epoch"] == 0:
            self.set_feature_stats(cache.features)  # the statistics of the images as they are, balanced or not
        feats = cache.balanced().features if self.config.balance else cache.features
        return self.fit_features(feats, epochs, progress, checkpoint, callback)

    def set_feature_stats(self, feats: torch.Tensor):
        """Standardise with the per-channel mean / std of training features (N, C, h, w), if the recipe says so."""
        if self.config.standardize:
            mean, std = channel_stats(feats)
            self.feature_mean.copy_(mean)
            self.feature_std.copy_(std)

    def fit_features(self, feats, epochs=None, progress=True, checkpoint=None, callback=None):
        """`training.train` on cached features (N, C, h, w), standardised, with this model's recipe."""

        def after_epoch(_, epoch, loss, state):
            if checkpoint is not None:
                self.save(checkpoint)
            if callback is not None:
                callback(self, epoch, loss)

        train(self.reconstructor(), self.standardize(feats), train_settings(self.config, epochs),
              self.train_state, progress, after_epoch)
        self.eval()
        return self

    # ---- evaluation ----------------------------------------------------------------------------
    def evaluate(self, test_data, progress: bool = True, metrics: str = "all") -> dict:
        """Per-class metrics (fractions in [0, 1]) and their unweighted mean; see `evaluation.evaluate`.

        Returns {class: {"image_auroc", ..., "aupro"}, ..., "mean": {...}}; metrics="auroc" for the two AUROCs.
        test_data: a data set, DATA_ROOT itself (layouts.open_data) or a `Cache`. Defect images with an empty mask
        count for the image metrics only (evaluation.pixel_labelled; one line on stderr says how many).
        """
        if isinstance(test_data, (str, os.PathLike)):
            test_data = self.open(test_data, "test")
        if not isinstance(test_data, Cache):
            self.validate(test_data, progress=False)  # every unreadable file at once, before the backbone runs
        cache = test_data if isinstance(test_data, Cache) else self.cache(test_data, progress=progress, desc="test")
        scores, maps = self.score_features(cache.features)
        if progress and left_out_line(cache):
            print(left_out_line(cache), file=sys.stderr)
        return evaluate(scores, maps, cache, metrics)

    # ---- data ----------------------------------------------------------------------------------
    def open(self, root, split: str = "test", classes=None):
        """One split of DATA_ROOT (an MVTec-layout or VisA folder, a .toml or .csv: layouts.open_data), read at
        this model's image size and geometry."""
        return open_data(root, split, classes, self.config.image_size, self.config.resize)

    def validate(self, *data, progress: bool = True) -> list[str]:
        """Decode every image and mask of the data sets now; one DataError listing every problem, else the notes
        (printed unless progress=False). `fit` runs it on its data; run it on the test split up front."""
        notes = checks.validate(*data)
        for note in notes if progress else []:
            print(f"note: {note}", file=sys.stderr)
        return notes

    # ---- checkpoints ---------------------------------------------------------------------------
    def save(self, path):
        """Config + trainable weights + feature statistics + training state; loads with weights_only=True.

        Written to a temporary file first, then renamed: an interrupted save never leaves half a checkpoint.
        Under torchrun only rank 0 writes (the ranks hold the same weights); the others return.
        """
        if not distributed.is_main():
            return
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        try:
            torch.save(
                {
                    "format": CHECKPOINT_FORMAT,
                    "config": asdict(self.config),
                    "transformer": self.transformer.state_dict(),
                    "feature_mean": self.feature_mean,
                    "feature_std": self.feature_std,
                    "train_state": self.train_state,
                    **({"calibration": self.calibration} if self.calibration is not None else {}),
                },
                tmp,
            )
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path, map_location="cpu") -> "UniAD":
        try:
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
        except FileNotFoundError:
            raise FileNotFoundError(f"no checkpoint at {path}") from None
        except Exception as e:  # a truncated or foreign file, or a pickle that would run code
            raise DataError(unreadable_checkpoint(path, e)) from None
        missing = sorted(CHECKPOINT_KEYS - set(ckpt)) if isinstance(ckpt, dict) else sorted(CHECKPOINT_KEYS)
        if missing:
            raise DataError(f"{path} is not a uniad_mini checkpoint (no {'/'.join(missing)} entries)")
        version = ckpt.get("format", 1)
        if not isinstance(version, int) or version > CHECKPOINT_FORMAT:
            raise DataError(f"{path} has checkpoint format {version}; this uniad_mini reads up to "
                             f"{CHECKPOINT_FORMAT}: upgrade uniad_mini")
        known = {f.name for f in fields(Config)}
        try:
            model = cls(**{k: v for k, v in ckpt["config"].items() if k in known})
        except (TypeError, ValueError) as e:  # a value this version refuses (a recipe, backend... it lacks)
            raise DataError(f"{path} holds a config this uniad_mini cannot build: {e}") from None
        try:
            model.transformer.load_state_dict(ckpt["transformer"])
        except RuntimeError as e:
            raise DataError(f"{path} does not match its own config ({str(e).splitlines()[0]})") from None
        model.feature_mean.copy_(ckpt["feature_mean"])
        model.feature_std.copy_(ckpt["feature_std"])
        model.train_state = ckpt["train_state"]
        model.calibration = ckpt.get("calibration")
        return model.eval()
