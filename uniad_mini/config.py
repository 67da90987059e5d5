"""Every option of a UniAD model in one place: `Config` (its defaults are the "cpu" recipe) and `RECIPES`.

Three kinds of option, kept apart because they travel differently:

    architecture and scoring   what the model *is*: saved in its checkpoint, fixed once built
    training                   the recipe that trained it: saved too (a resumed run continues it)
    run time (`RUNTIME`)       how the numbers are computed -- the attention backend, the fused fast path,
                               compilation: chosen each time a model is built or loaded, never saved, so a
                               model trained with the Triton kernel on a GPU scores on a laptop's CPU

`make_config(**options)` checks every value; `train_settings` hands the training loop its share.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from .attention import BACKENDS
from .errors import OptionError
from .geometry import RESIZE_DEFAULT, check_resize
from .training import TrainSettings

RUNTIME = ("backend", "fast", "compile")  # the run-time choices: not part of a saved model


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
    # scoring (paper: no smoothing, a 16 x 16 window; scoring.score)
    score_pool: int = 16  # the image score: max of the score_pool x score_pool average-pooled map
    map_sigma: float = 0.0  # Gaussian smoothing of the anomaly map, sigma in pixels of the image_size map
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
    # ---- run-time choices: how the numbers are computed, not which (never saved with a model) ----
    # speed (docs/performance.md): the same numbers within float rounding, checked in tests/core/test_speedups.py
    backend: str = "auto"  # attention: "auto" (the fastest measured per device and precision: attention.AUTO;
    #                        with fast=False the plain lines) | "torch" (the plain lines) | "sdpa" | "triton"
    fast: bool = True  # the fused optimizer and clipping (training.make_optimizer, train_step), the backbone
    #                    with BatchNorm folded in (backbone.fold_backbone), decoding in threads (features.py),
    #                    attention "auto" as measured; False: the plain reference path throughout
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


def saved(cfg: Config) -> dict:
    """The options a checkpoint keeps: every field but the run-time choices (`RUNTIME`)."""
    return {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in RUNTIME}
