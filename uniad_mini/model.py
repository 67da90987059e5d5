"""UniAD (You et al., "A Unified Model for Multi-class Anomaly Detection", NeurIPS 2022, Sec. 3 and Fig. 2).

    images (B, 3, H, W) in [0, 1]
      -> frozen EfficientNet, taps at strides 2/4/8/16 resized to 14 x 14 and stacked   f  (B, C, 14, 14)
         (features.py, backbone.py: Sec. 3.1), standardised per channel with training statistics
      -> reconstruction transformer: neighbor-masked attention, layer-wise queries,
         feature jitter in training (transformer.py, attention.py: Sec. 3.2-3.4)          f^ (B, C, 14, 14)
      -> ||f^ - f|| per token, bilinear up to the image (evaluation.py: Sec. 3.5)        map (B, H, W)
      -> image score: max of the 16 x 16 average-pooled map                              score (B,)

`UniAD.forward` is that path, top to bottom. One model is trained on the normal images of every class at once,
without class labels (the unified setting), to reconstruct f from itself (training.py: the one loop and
step). The backbone is frozen and nothing is augmented, so training runs on cached features.

Around the paper, each in the module named for it: every option and recipe (config.py), `fit` / `evaluate` /
`calibrate` over data sets (pipeline.py), decisions (calibration.py), `save` / `load` (checkpoint.py).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn

from . import calibration as _cal
from . import checkpoint, pipeline
from .config import Config, make_config
from .features import Cache, FeatureExtractor, cache_features, channel_stats, check_images, standardize
from .geometry import map_to_image, square_map_size, to_square
from .images import as_batch
from .scoring import score, scores_and_maps
from .transformer import OnTokens, ReconstructionTransformer


class Output(NamedTuple):
    """What `UniAD.forward` gives for a batch of B images."""

    features: torch.Tensor  # f (B, C, h, w): standardised backbone features, the reconstruction's target
    reconstruction: torch.Tensor  # f^ (B, C, h, w)
    maps: torch.Tensor  # anomaly maps (B, H, W) over the images' own pixels, higher = more anomalous
    scores: torch.Tensor  # image scores (B,)


def build_transformer(cfg: Config, channels: int, grid: tuple[int, int]) -> ReconstructionTransformer:
    """The reconstruction transformer of a config, on `channels` stacked features over a `grid` of tokens;
    fast=False: the plain reference path throughout, so attention "auto" is the plain lines ("torch")."""
    backend = "torch" if cfg.backend == "auto" and not cfg.fast else cfg.backend
    window = tuple(cfg.neighbor_size) if isinstance(cfg.neighbor_size, list) else cfg.neighbor_size
    return ReconstructionTransformer(
        channels, grid=tuple(grid), dim=cfg.hidden_dim, heads=cfg.heads, layers=cfg.layers, ffn=cfg.ffn_dim,
        dropout=cfg.dropout, neighbor_size=window, layerwise_query=cfg.layerwise_query,
        jitter_scale=cfg.jitter_scale, jitter_prob=cfg.jitter_prob, backend=backend)


class UniAD(nn.Module):
    """One unified anomaly detector for many classes.  `UniAD(**options)`; `config.Config` lists every option."""

    def __init__(self, **options):
        super().__init__()
        self.config = cfg = make_config(**options)
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

    # ---- the paper's path ----------------------------------------------------------------------
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Stacked backbone features `feature_align` (B, C, 14, 14) of square images (B, 3, S, S) in [0, 1]."""
        return self.extractor(images)

    def standardize(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) features in the units the model is trained in (identity until `fit` sets the statistics)."""
        return standardize(feats, self.feature_mean, self.feature_std)

    def set_feature_stats(self, feats: torch.Tensor):
        """Standardise with the per-channel mean / std of training features (N, C, h, w), if the recipe says so."""
        if self.config.standardize:
            mean, std = channel_stats(feats)
            self.feature_mean.copy_(mean)
            self.feature_std.copy_(std)

    def tokens(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) features -> (B, h*w, C) standardised tokens, the transformer's input."""
        return self.standardize(feats).flatten(2).transpose(1, 2)

    def reconstructor(self) -> nn.Module:
        """The transformer as a grid model (B, C, h, w) -> (B, C, h, w), for the training loop and the scorer."""
        return OnTokens(self.transformer)

    def forward(self, images: torch.Tensor) -> Output:
        """Images (B, 3, H, W) in [0, 1] -> features, reconstruction, anomaly maps and image scores (`Output`).

        Non-square images go onto the model's square by `config.resize` and their maps come back to their own
        pixels (geometry.py). In training mode the transformer jitters its input (Sec. 3.4): score in eval mode.
        """
        (H, W), S, resize = images.shape[-2:], self.config.image_size, self.config.resize
        f = self.standardize(self.features(to_square(check_images(images), S, resize)))  # (B, C, h, w)
        f_hat = self.reconstructor()(f)  # (B, C, h, w)
        scores, maps = scores_and_maps(f_hat, f, (S, S), square_map_size(H, W, S, resize), **self.scoring())
        return Output(f, f_hat, map_to_image(maps, H, W, S, resize), scores)

    def reconstruct(self, feats: torch.Tensor) -> torch.Tensor:
        """The reconstruction f^ (B, C, h, w) of cached features, in the units of its target `standardize(feats)`."""
        return self.reconstructor()(self.standardize(feats))

    def scoring(self) -> dict:
        """How this model turns maps into scores (the image score's pool, the map's smoothing sigma): baselines
        scored beside it use the same, so their numbers stay comparable."""
        return dict(pool=self.config.score_pool, sigma=self.config.map_sigma)

    # ---- scoring many images -------------------------------------------------------------------
    @torch.no_grad()
    def score_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores (B,), anomaly maps (B, H, W)) of images (B, 3, H, W) in [0, 1]: `forward` in eval mode."""
        was_training = self.training
        out = self.eval()(images)
        self.train(was_training)
        return out.scores.cpu(), out.maps.cpu()

    def score_features(self, feats: torch.Tensor, size=None, batch_size: int = 32):
        """(image scores (B,), anomaly maps (B, H, W)) from cached features (B, C, h, w), as `forward` gives
        them, `batch_size` at a time; maps at `size` (default image_size)."""
        S = self.config.image_size
        return score(self.reconstructor(), self.standardize(feats), (S, S), size, batch_size, **self.scoring())

    def predict(self, images, classes=None) -> _cal.Prediction:
        """Images -> a `calibration.Prediction`; `scores, maps = model.predict(images)`.

        images: a tensor (B, 3, H, W) in [0, 1], or image files / PIL images (one, or a list of one size), each
        scored at its own size. Once calibrated, also decisions and defect masks, with the thresholds of
        `classes` (one name, one per image, or None: the global threshold).
        """
        return _cal.decide(*self.score_images(as_batch(images)), self.calibration, classes)

    def cache(self, data, batch_size: int = 16, progress: bool = True, desc: str = "features") -> Cache:
        """Run the backbone once over a data set and keep the features (and check every image on the way)."""
        return cache_features(self.extractor, data, batch_size, progress, desc)

    # ---- around the paper: each a call into the module that holds it ---------------------------
    def fit(self, train_data, epochs: int | None = None, progress: bool = True, checkpoint=None, callback=None,
            check=()):
        """Train on normal images of every class at once (labels unused); resumes a loaded checkpoint.

        train_data: a data set, DATA_ROOT itself (layouts.open_data) or a `Cache`. Every image is read once, and
        one DataError lists every problem of it and of the sets in `check` (e.g. the test split) before the
        first epoch. checkpoint: a path written after every epoch. callback(model, epoch, loss): after every
        epoch. Under torchrun (docs/distributed.md) the ranks share the backbone work. See pipeline.fit.
        """
        return pipeline.fit(self, train_data, epochs, progress, checkpoint, callback, check)

    def fit_features(self, feats, epochs=None, progress=True, checkpoint=None, callback=None):
        """Train on cached features (N, C, h, w) (pipeline.fit_features)."""
        return pipeline.fit_features(self, feats, epochs, progress, checkpoint, callback)

    def evaluate(self, test_data, progress: bool = True, metrics: str = "all") -> dict:
        """{class: {"image_auroc", ..., "aupro"}, ..., "mean": {...}} of a data set, DATA_ROOT or `Cache`
        (fractions in [0, 1]; metrics="auroc" for the two AUROCs; pipeline.evaluate)."""
        return pipeline.evaluate(self, test_data, progress, metrics)

    def calibrate(self, normal, fpr: float = _cal.DEFAULT_FPR, pixel_fpr: float = _cal.DEFAULT_PIXEL_FPR,
                  source: str = "", progress: bool = False) -> dict:
        """Per-class image and pixel thresholds at false-alarm rates `fpr` / `pixel_fpr` on normal images the
        model did not train on (`calibration.split` holds them out); kept in `self.calibration` and saved."""
        return pipeline.calibrate(self, normal, fpr, pixel_fpr, source, progress)

    def open(self, root, split: str = "test", classes=None):
        """One split of DATA_ROOT, read at this model's image size and geometry (pipeline.open_split)."""
        return pipeline.open_split(self, root, split, classes)

    def check_data(self, *data, progress: bool = True) -> list[str]:
        """Decode every image and mask of the data sets now: one DataError listing every problem, else the notes."""
        return pipeline.check_data(*data, progress=progress)

    def save(self, path):
        """Architecture, weights, feature statistics, calibration, training state; no run-time choice."""
        checkpoint.save(self, path)

    @classmethod
    def load(cls, path, device="cpu", **runtime) -> "UniAD":
        """A saved model on `device`, with the run-time choices `runtime` (backend, fast, compile) made now."""
        return checkpoint.load(cls, path, map_location="cpu", **runtime).to(device)
