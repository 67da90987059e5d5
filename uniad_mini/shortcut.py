"""The "identical shortcut" (paper Sec. 3.1, Fig. 5a), made runnable: small reconstructors and the experiments.

A reconstruction model trained on normal features only should fail on anomalies. It does not when it can
learn the identity: then it reconstructs *everything*, anomalies included, and the anomaly map goes flat.

    fully connected  y = W x + b            MSE on normal x  ->  W -> I, b -> 0 (on the span of the data)
    convolution      y = K * x              a 1 x 1 conv is that layer at every position; an n x n conv
                                            can hold the delta kernel (the identity)
    attention with   y = softmax(q x^T / sqrt(C)) x
    a learned query                         copying needs A -> I, i.e. a query q that singles out each
                                            normal token; q is fixed after training, so an anomalous token
                                            is not singled out and is rebuilt from normal-looking ones

Every reconstructor maps standardised feature grids (B, C, h, w) to (B, C, h, w), so one loop (`train`)
trains all of them on the same cached backbone features (`UniAD.cache`, then `prepare`):

    build("linear")       MLP(C, layers=1), the layer y = W x + b, from W = 0
    build("mlp")          C -> 256 -> 256 -> C, ReLU, per token
    build("cnn3x3")       the same with 3 x 3 convolutions, 128 wide; build("conv3x3"): one 3 x 3 conv
    build("attention")    QueryAttention, the formula above and nothing else
    build("transformer")  `ReconstructionTransformer` with UniAD's three switches off; build("uniad"): on

Experiments, each returning plain dicts: `identity_trajectory` (distance to the identity and the errors on
normal / anomalous tokens along training), `fig5a` (loss and per-class image / pixel AUROC along training;
`fig5a_report` says where the paper's claim holds), `ablation` (UniAD's three fixes one at a time). The
`plot_*` helpers import matplotlib when called: it is a notebook extra, not a dependency of the package.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import neighbor_mask
from .data import DataError, MVTecAD
from .evaluation import anomaly_map, evaluate as evaluate_maps, image_score
from .features import Cache
from .synthetic import SyntheticAD
from .transformer import ReconstructionTransformer, feature_jitter

# ---------------------------------------------------------------------------------------------------
# Reconstructors: (B, C, h, w) -> (B, C, h, w)
# ---------------------------------------------------------------------------------------------------


class MLP(nn.Module):
    """A per-token MLP; `layers=1` is the fully connected layer y = W x + b of the derivation."""

    def __init__(self, channels: int, hidden: int = 256, layers: int = 3):
        super().__init__()
        widths = [channels] + [hidden] * (layers - 1) + [channels]
        mods = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            mods += [nn.Linear(a, b)] + ([nn.ReLU()] if i < layers - 1 else [])
        self.net = nn.Sequential(*mods)

    def forward(self, x):  # (B, C, h, w)
        return self.net(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # tokens last, then back


class CNN(nn.Module):
    """A stack of k x k convolutions (padding k // 2 keeps the grid); `layers=1` is one conv C -> C."""

    def __init__(self, channels: int, kernel: int = 3, hidden: int = 256, layers: int = 3):
        super().__init__()
        widths = [channels] + [hidden] * (layers - 1) + [channels]
        mods = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            mods += [nn.Conv2d(a, b, kernel, padding=kernel // 2)] + ([nn.ReLU()] if i < layers - 1 else [])
        self.net = nn.Sequential(*mods)

    def forward(self, x):  # (B, C, h, w)
        return self.net(x)


class QueryAttention(nn.Module):
    """y = softmax(q x^T / sqrt(C)) x with one learned query per grid position, q (N, C); no other weights."""

    def __init__(self, channels: int, grid: tuple[int, int] = (14, 14)):
        super().__init__()
        self.grid = tuple(grid)
        self.query = nn.Parameter(torch.randn(grid[0] * grid[1], channels))  # q (N, C)

    def attention(self, x):  # (B, C, h, w) -> attention maps (B, N, N): row = query position, column = key
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
        return (self.query @ tokens.transpose(1, 2) / math.sqrt(x.shape[1])).softmax(dim=-1)

    def forward(self, x):  # (B, C, h, w)
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
        y = self.attention(x) @ tokens  # (B, N, C)
        return y.transpose(1, 2).reshape(x.shape)


class OnTokens(nn.Module):
    """Wrap a token model (B, N, C) -> (B, N, C) so that it takes and returns grids (B, C, h, w)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x):
        y = self.module(x.flatten(2).transpose(1, 2))  # (B, N, C)
        return y.transpose(1, 2).reshape(x.shape)


def transformer(channels: int, grid=(14, 14), dim: int = 256, heads: int = 8, layers: int = 4, ffn: int = 1024,
                neighbor_size=None, layerwise_query: bool = False, jitter_scale: float = 0.0) -> OnTokens:
    """`ReconstructionTransformer` on grids; all three UniAD switches off by default (a plain transformer
    whose decoder starts from one learned query table)."""
    return OnTokens(ReconstructionTransformer(channels, tuple(grid), dim, heads, layers, ffn, 0.0, neighbor_size,
                                              layerwise_query, jitter_scale, backend="torch"))


def zero_init(model: nn.Module) -> nn.Module:
    """Set every weight and bias to zero (for one-layer models: the start y = 0 of the derivation)."""
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model


# The reconstructors of Fig. 5a, by name. `size` picks the transformers' width and depth: "paper" is UniAD's,
# "small" trains in seconds per epoch on a CPU, "tiny" is for the fast notebook setting and the tests.
TRANSFORMER_SIZES = {
    "paper": dict(dim=256, heads=8, layers=4, ffn=1024),
    "small": dict(dim=96, heads=4, layers=2, ffn=192),
    "tiny": dict(dim=32, heads=2, layers=2, ffn=64),
}
UNIAD_SWITCHES = dict(neighbor_size=7, layerwise_query=True, jitter_scale=20.0)
NAMES = ("linear", "mlp", "cnn1x1", "cnn3x3", "conv3x3", "attention", "transformer", "uniad")


def build(name: str, channels: int, grid=(14, 14), size: str = "small") -> nn.Module:
    """A reconstructor by name:

    linear       y = W x + b per token (zero at start)  mlp      C -> 256 -> 256 -> C, ReLU, per token
    cnn1x1       the mlp as 1 x 1 convolutions, 128 wide (a 3 x 3 conv costs 9 linear layers, so the CNNs are narrower)
    cnn3x3       the same with 3 x 3 convolutions       conv3x3  one 3 x 3 convolution C -> C (zero at start)
    attention    y = softmax(q x^T / sqrt(C)) x         transformer / uniad   `ReconstructionTransformer`
                                                        with UniAD's three switches off / on
    """
    if name == "linear":  # starts from W = 0, b = 0, the map that reconstructs nothing: every step toward I is learned
        return zero_init(MLP(channels, layers=1))
    if name == "mlp":
        return MLP(channels)
    if name in ("cnn1x1", "cnn3x3"):
        return CNN(channels, kernel=1 if name == "cnn1x1" else 3, hidden=128)
    if name == "conv3x3":  # from K = 0 too
        return zero_init(CNN(channels, kernel=3, layers=1))
    if name == "attention":
        return QueryAttention(channels, grid)
    if size not in TRANSFORMER_SIZES:
        raise ValueError(f"unknown transformer size {size!r}; choose one of {sorted(TRANSFORMER_SIZES)}")
    if name == "transformer":
        return transformer(channels, grid, **TRANSFORMER_SIZES[size])
    if name == "uniad":
        return transformer(channels, grid, **TRANSFORMER_SIZES[size], **UNIAD_SWITCHES)
    raise ValueError(f"unknown reconstructor {name!r}; choose one of {NAMES}")


# ---------------------------------------------------------------------------------------------------
# How close a reconstructor is to the identity
# ---------------------------------------------------------------------------------------------------


def identity_distance(model: nn.Module, x: torch.Tensor | None = None) -> float:
    """||M - I||_F / ||I||_F for the one linear map of `model`:

    MLP(layers=1): M = W (C, C).  CNN(layers=1): M = K (C, C, k, k) against the delta kernel (I at the centre
    tap, zero elsewhere).  QueryAttention: M = its attention map (N, N) on the inputs x, averaged over x.
    """
    with torch.no_grad():
        if isinstance(model, QueryAttention):
            if x is None:
                raise ValueError("QueryAttention's distance to the identity is measured on inputs: pass x")
            A = model.attention(x)  # (B, N, N)
            eye = torch.eye(A.shape[-1])
            return ((A - eye).flatten(1).norm(dim=1) / eye.norm()).mean().item()
        linear = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        if len(linear) != 1:
            raise ValueError(f"identity_distance needs a single linear layer, {type(model).__name__} has {len(linear)}")
        W = linear[0].weight  # (C, C) or (C, C, k, k)
        eye = delta_kernel(W.shape[0], W.shape[-1]) if W.dim() == 4 else torch.eye(W.shape[0])
        return ((W - eye).norm() / eye.norm()).item()


def delta_kernel(channels: int, kernel: int) -> torch.Tensor:
    """The identity as a k x k convolution: I at the centre tap, zero elsewhere; (C, C, k, k)."""
    K = torch.zeros(channels, channels, kernel, kernel)
    K[:, :, kernel // 2, kernel // 2] = torch.eye(channels)
    return K


def centre_fraction(conv_weight: torch.Tensor) -> float:
    """Share of a k x k kernel's energy at its centre tap, ||K[..., c, c]||^2 / ||K||^2 (1 for the delta)."""
    k = conv_weight.shape[-1] // 2
    return (conv_weight[..., k, k].norm() ** 2 / conv_weight.norm() ** 2).item()


def least_squares_linear(x: torch.Tensor, ridge: float = 1e-6) -> torch.Tensor:
    """The closed-form minimiser of sum ||W x_i - x_i||^2 (+ ridge ||W||^2) over x (M, C) tokens (centred data, b = 0):

        W* = S (S + ridge I)^-1,  S = X^T X / M    ->  the projection onto the data's span as ridge -> 0.
    """
    x64 = x.double()  # float64: the small eigenvalues decide how close to I the result is
    S = x64.T @ x64 / x.shape[0]  # (C, C)
    W = torch.linalg.solve(S + ridge * torch.eye(S.shape[0], dtype=S.dtype), S).T  # S (S + rI)^-1, S symmetric
    return W.to(x.dtype)


# ---------------------------------------------------------------------------------------------------
# Data: where the notebooks' images come from, standardised feature grids, anomalous tokens
# ---------------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
FAST_ENV, DATA_ENV = "UNIAD_NOTEBOOK_FAST", "UNIAD_DATA"


def fast_mode() -> bool:
    """True when UNIAD_NOTEBOOK_FAST is set to 1/true/yes/on: tiny runs on the embedded synthetic data (CI)."""
    return os.environ.get(FAST_ENV, "0").strip().lower() in ("1", "true", "yes", "on")


def data_root() -> Path | None:
    """The real images: $UNIAD_DATA (an error if it is not a folder), else ../shared/data beside the repository,
    else None."""
    if os.environ.get(DATA_ENV):
        root = Path(os.environ[DATA_ENV])
        if not root.is_dir():
            raise DataError(f"{DATA_ENV}={root} is not a folder; point it at an MVTec-layout data folder or unset it")
        return root
    root = REPO.parent / "shared" / "data"
    return root if root.is_dir() else None


def experiment_data(fast: bool | None = None, classes=None, image_size: int = 224) -> dict:
    """{"train", "test": data sets, "source": one line saying which data, "fast": bool} for the notebooks.

    Fast setting: a few synthetic images per class (deterministic, seconds). Full setting: the real images
    when `data_root()` finds them, else the whole embedded synthetic set.
    """
    fast = fast_mode() if fast is None else fast
    root = None if fast else data_root()
    if root is not None:
        train_ds = MVTecAD(root, "train", classes, image_size)
        test_ds = MVTecAD(root, "test", classes, image_size)
        source = f"real images from {root} (classes {', '.join(train_ds.classes)})"
    else:
        sizes = dict(n_train=6, n_test_good=2, n_test_bad=4) if fast else {}
        train_ds = SyntheticAD("train", classes, image_size, **sizes)
        test_ds = SyntheticAD("test", classes, image_size, **sizes)
        why = "fast setting" if fast else "no real images found (set UNIAD_DATA)"
        source = f"embedded synthetic data, {why} (classes {', '.join(train_ds.classes)})"
    source += f": {len(train_ds)} training images, {len(test_ds)} test images ({sum(test_ds.labels)} anomalous)"
    return {"train": train_ds, "test": test_ds, "source": source, "fast": fast}


class Standardizer:
    """Per-channel mean and std of the training features, applied to any feature grid (B, C, h, w)."""

    def __init__(self, train_features: torch.Tensor):
        self.mean = train_features.mean(dim=(0, 2, 3))[:, None, None]  # (C, 1, 1)
        self.std = train_features.std(dim=(0, 2, 3)).clamp_min(1e-6)[:, None, None]

    def __call__(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats - self.mean) / self.std


def token_masks(cache: Cache, grid=None, cover: float = 0.25) -> torch.Tensor:
    """(N, h, w) bool: a token is anomalous when at least `cover` of its pixels are in the ground-truth mask."""
    grid = grid or tuple(cache.features.shape[-2:])
    frac = F.adaptive_avg_pool2d(cache.masks[:, None].float().clamp(0, 1), grid)[:, 0]  # (N, h, w)
    return frac >= cover


@dataclass
class Prepared:
    """Everything the experiments train and test on, in the units the reconstructors see."""

    train: torch.Tensor  # (N, C, h, w) standardised normal training features
    test: torch.Tensor  # (M, C, h, w) standardised test features
    anomalous: torch.Tensor  # (M, h, w) bool: tokens inside a defect
    normal: torch.Tensor  # (M, h, w) bool: every token of the normal test images
    cache: Cache  # the test cache (labels, masks, classes) for the AUROCs

    @property
    def channels(self) -> int:
        return self.train.shape[1]

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.train.shape[-2:])


def prepare(train_cache: Cache, test_cache: Cache, cover: float = 0.25) -> Prepared:
    """Standardise both caches with the training statistics and mark the anomalous / normal test tokens."""
    std = Standardizer(train_cache.features)
    anomalous = token_masks(test_cache, cover=cover) & (test_cache.labels[:, None, None] == 1)
    normal = (test_cache.labels == 0)[:, None, None].expand_as(anomalous)
    return Prepared(std(train_cache.features), std(test_cache.features), anomalous, normal, test_cache)


def example_pair(data: Prepared) -> tuple[int, int]:
    """(a normal, an anomalous) test image of the same class: the anomalous one with the most anomalous tokens."""
    counts = data.anomalous.flatten(1).sum(1).masked_fill(data.cache.labels == 0, -1)  # (M,), normal images last
    anomalous = int(counts.argmax())
    cls = data.cache.classes[anomalous]
    normal = next(i for i, (c, y) in enumerate(zip(data.cache.classes, data.cache.labels)) if c == cls and y == 0)
    return normal, anomalous


# ---------------------------------------------------------------------------------------------------
# Training and evaluation, the same for every reconstructor
# ---------------------------------------------------------------------------------------------------


def train(model: nn.Module, feats: torch.Tensor, epochs: int, lr: float = 1e-3, batch_size: int = 8,
          seed: int = 0, grad_clip: float = 1.0, schedule: str = "constant", callback=None) -> list[float]:
    """Adam, MSE(model(x), x) on standardised grids (N, C, h, w); returns the epoch losses.

    schedule: "constant" learning rate (Fig. 5a: nothing hides a late change), or "cosine" decay to zero
    (a trajectory that settles, for watching a weight converge).
    The loss is measured on the inputs the model sees in training (jittered ones for UniAD).
    callback(model, epoch, loss) runs after every epoch, with the model in eval mode.
    """
    torch.manual_seed(seed)
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"unknown schedule {schedule!r}; choose constant or cosine")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    steps, step = epochs * math.ceil(len(feats) / batch_size), 0
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        total = 0.0
        for batch in torch.randperm(len(feats), generator=gen).split(batch_size):
            if schedule == "cosine":
                for group in opt.param_groups:
                    group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
            step += 1
            x = feats[batch]
            loss = F.mse_loss(model(x), x)  # the target is the clean input: jitter happens inside the model
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            total += loss.item() * len(batch)
        history.append(total / len(feats))
        model.eval()
        if callback is not None:
            callback(model, epoch, history[-1])
    return history


@torch.no_grad()
def reconstruct(model: nn.Module, feats: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """model(feats) in eval mode (no jitter), in batches: (N, C, h, w) -> (N, C, h, w)."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(x) for x in feats.split(batch_size)])
    model.train(was_training)
    return out


def token_errors(model: nn.Module, feats: torch.Tensor) -> torch.Tensor:
    """Squared reconstruction error per token, summed over channels: (N, C, h, w) -> (N, h, w)."""
    return (reconstruct(model, feats) - feats).pow(2).sum(1)


def error_ratio(model: nn.Module, data: Prepared) -> dict:
    """Mean token error on anomalous tokens, on normal tokens, and their ratio (how far an anomaly stands out)."""
    err = token_errors(model, data.test)
    a, n = err[data.anomalous].mean().item(), err[data.normal].mean().item()
    return {"anomalous_error": a, "normal_error": n, "ratio": a / max(n, 1e-12)}


@torch.no_grad()
def evaluate(model: nn.Module, data: Prepared) -> dict:
    """Per-class image and pixel AUROC on the test features, by UniAD's protocol (`model.anomaly_map`,
    `model.image_score`, `model.per_class_auroc`): {cls: {"image_auroc", "pixel_auroc"}, "mean": {...}}."""
    size = tuple(data.cache.masks.shape[-2:])
    scores, maps = [], []
    for x in data.test.split(32):
        m = anomaly_map(reconstruct(model, x), x, size)  # (b, S, S)
        scores.append(image_score(m))
        maps.append(m)
    return evaluate_maps(torch.cat(scores), torch.cat(maps), data.cache, metrics="auroc")


# ---------------------------------------------------------------------------------------------------
# Experiment 1: does a reconstructor become the identity? (items 1-3 of the notebooks)
# ---------------------------------------------------------------------------------------------------


def identity_trajectory(model: nn.Module, data: Prepared, epochs: int, **train_kwargs) -> list[dict]:
    """Train `model` on data.train; before training and after every epoch record

        {"epoch", "loss", "anomalous_error", "normal_error", "ratio",
         "identity_distance" (single-layer models and QueryAttention), "centre_fraction" (one k x k conv)}
    """
    records = []

    def record(m, epoch, loss):
        r = {"epoch": epoch, "loss": loss, **error_ratio(m, data)}
        if isinstance(m, QueryAttention) or sum(isinstance(c, (nn.Linear, nn.Conv2d)) for c in m.modules()) == 1:
            r["identity_distance"] = identity_distance(m, data.test[data.cache.labels == 0])
        convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
        if len(convs) == 1 and convs[0].kernel_size[0] > 1:
            r["centre_fraction"] = centre_fraction(convs[0].weight.detach())
        records.append(r)

    record(model, 0, F.mse_loss(reconstruct(model, data.train), data.train).item())
    train(model, data.train, epochs, callback=record, **train_kwargs)
    return records


@torch.no_grad()
def self_attention_weight(model: QueryAttention, data: Prepared) -> dict:
    """How much a token attends to itself, A_ii, averaged over the tokens inside defects and over the tokens of
    normal test images; plus the share of anomalous images whose defect tokens attend to themselves less than
    the rest of their image does."""
    inside, normal, lower, images = [], [], 0, 0
    for i in range(len(data.test)):
        diag = model.attention(data.test[i : i + 1])[0].diagonal().reshape(data.grid)  # (h, w)
        if data.cache.labels[i] == 0:
            normal.append(diag.flatten())
        elif data.anomalous[i].any():
            a = data.anomalous[i]
            inside.append(diag[a])
            images += 1
            lower += int(diag[a].mean() < diag[~a].mean())
    mean = lambda parts: torch.cat(parts).mean().item() if parts else float("nan")  # noqa: E731
    return {"inside_defects": mean(inside), "normal_images": mean(normal),
            "images_lower_inside": lower, "anomalous_images": images}


def at_equal_normal_error(records: list[dict], normal_error: float) -> dict:
    """The first record of a trajectory whose normal error is at or below `normal_error` (else the last):
    to compare two reconstructors when they reconstruct normal tokens equally well."""
    for r in records:
        if r["normal_error"] <= normal_error:
            return r
    return records[-1]


# ---------------------------------------------------------------------------------------------------
# Experiment 2: the paper's Fig. 5a -- loss and AUROC along training, per reconstructor
# ---------------------------------------------------------------------------------------------------


def fig5a(train_cache: Cache, test_cache: Cache, names=("mlp", "cnn3x3", "transformer", "uniad"), epochs: int = 16,
          eval_every: int = 2, size: str = "small", lr: float = 1e-3, batch_size: int = 8, seed: int = 0,
          log=print) -> list[dict]:
    """Train each reconstructor on the same standardised training features with the same loop (`train`);
    before training, every `eval_every` epochs and at the end, record

        {"model", "epoch", "loss", "image_auroc", "pixel_auroc" (unweighted means over classes),
         "per_class": {cls: {"image_auroc", "pixel_auroc"}}, "ratio" (anomalous / normal token error),
         "seconds" (since this model started)}

    AUROCs are fractions in [0, 1]. Every AUROC is on the test set along training: this shows the curve,
    it selects nothing.
    """
    data = prepare(train_cache, test_cache)
    records = []
    for name in names:
        torch.manual_seed(seed)
        model = build(name, data.channels, data.grid, size)
        start = time.perf_counter()

        def record(m, epoch, loss):
            if epoch % eval_every and epoch != epochs:
                return
            res = evaluate(m, data)
            r = {"model": name, "epoch": epoch, "loss": loss, **res.pop("mean"), "per_class": res,
                 "ratio": error_ratio(m, data)["ratio"], "seconds": time.perf_counter() - start}
            records.append(r)
            if log:
                log(f"{name:12s} epoch {epoch:3d}  loss {loss:.4f}  image AUROC {100 * r['image_auroc']:5.1f}  "
                    f"pixel AUROC {100 * r['pixel_auroc']:5.1f}  ({r['seconds']:.0f} s)")

        record(model, 0, F.mse_loss(reconstruct(model, data.train), data.train).item())
        train(model, data.train, epochs, lr=lr, batch_size=batch_size, seed=seed, callback=record)
    return records


def curve_summary(records: list[dict], name: str, key: str, cls: str | None = None) -> dict:
    """Peak and last value of one AUROC curve (mean over classes, or one class): {"peak", "peak_epoch", "last",
    "drop" (peak - last), "loss_at_peak", "loss_last"}."""
    rs = [r for r in records if r["model"] == name]
    if not rs:
        raise ValueError(f"no records of model {name!r}")
    val = (lambda r: r[key]) if cls is None else (lambda r: r["per_class"][cls][key])  # noqa: E731
    peak = max(rs, key=val)
    return {"peak": val(peak), "peak_epoch": peak["epoch"], "last": val(rs[-1]), "drop": val(peak) - val(rs[-1]),
            "loss_at_peak": peak["loss"], "loss_last": rs[-1]["loss"], "last_epoch": rs[-1]["epoch"]}


PAPER_CLAIM = {  # the paper's Fig. 5a, per reconstructor
    "mlp": "drops", "cnn1x1": "drops", "cnn3x3": "drops", "linear": "drops",
    "transformer": "drops less", "uniad": "does not drop",
}


METRICS = ("image_auroc", "pixel_auroc")


def _points(v: float) -> float:
    """A fraction as AUROC points, rounded as printed (so a printed 1.0 and the verdict agree)."""
    return round(100 * v, 1)


def fig5a_summary(records: list[dict], drop: float = 1.0) -> list[dict]:
    """One row per model: loss first and last; for each mean AUROC its peak, last value and drop (in points);
    the class curve that fell most; and whether the paper's claim for that model holds here, per metric and
    overall. A "drop" is a fall of at least `drop` points from the peak to the last evaluation."""
    names = list(dict.fromkeys(r["model"] for r in records))
    classes = sorted(records[0]["per_class"])
    rows = []
    for name in names:
        rs = [r for r in records if r["model"] == name]
        curves = {k: curve_summary(records, name, k) for k in METRICS}
        worst = max(((c, k, curve_summary(records, name, k, c)) for c in classes for k in METRICS),
                    key=lambda t: t[2]["drop"])
        rows.append({"model": name, "loss_first": rs[0]["loss"], "loss_last": rs[-1]["loss"], **curves,
                     "drops": {k: _points(curves[k]["drop"]) >= drop for k in METRICS},
                     "largest_drop": max(_points(curves[k]["drop"]) for k in METRICS),
                     "worst_class": {"class": worst[0], "metric": worst[1], **worst[2]}})
    dropped = [r["largest_drop"] for r in rows if PAPER_CLAIM.get(r["model"]) == "drops" and any(r["drops"].values())]
    for row in rows:
        claim, note = PAPER_CLAIM.get(row["model"], ""), ""
        if claim == "drops":  # while the loss keeps falling
            per_metric = {k: row["drops"][k] and row["loss_last"] < row["loss_first"] for k in METRICS}
        elif claim == "drops less":  # than the MLP / CNN that did drop; nothing to compare with if none did
            per_metric = {k: _points(row[k]["drop"]) < min(dropped) if dropped else None for k in METRICS}
            note = "" if dropped else "cannot be judged: no MLP or CNN dropped here"
        elif claim == "does not drop":
            per_metric = {k: not row["drops"][k] for k in METRICS}
        else:
            per_metric, note = {k: None for k in METRICS}, "the paper makes no claim for this model"
        values = list(per_metric.values())
        holds = None if None in values else all(values) if claim != "drops" else any(values)
        row.update(claim=claim, holds=holds, holds_per_metric=per_metric, note=note)
    return rows


def auroc_resolution(cache: Cache) -> tuple[str, float]:
    """(class, points): how far one (anomalous, normal) image pair of the class with the fewest pairs moves the
    mean image AUROC over classes -- drops that small are one image's worth of noise."""
    classes = sorted(set(cache.classes))
    pairs = {c: sum(1 for k, y in zip(cache.classes, cache.labels) if k == c and y)
             * sum(1 for k, y in zip(cache.classes, cache.labels) if k == c and not y) for c in classes}
    c = min(pairs, key=pairs.get)
    return c, 100 / pairs[c] / len(classes)


def fig5a_report(records: list[dict], cache: Cache | None = None, drop: float = 1.0) -> str:
    """The summary as text: a table, then one line per model saying whether the paper's claim holds here, with
    the numbers; with the test `cache`, also how much one image pair moves the mean image AUROC."""
    rows = fig5a_summary(records, drop)
    pct = lambda v: f"{100 * v:5.1f}"  # noqa: E731
    table = [("model", "loss first -> last", "image AUROC peak (epoch) -> last", "pixel AUROC peak (epoch) -> last",
              "class curve that fell most")]
    for r in rows:
        w = r["worst_class"]
        table.append((r["model"], f"{r['loss_first']:.3f} -> {r['loss_last']:.3f}",
                      *(f"{pct(r[k]['peak'])} ({r[k]['peak_epoch']}) -> {pct(r[k]['last'])}" for k in METRICS),
                      f"{w['class']} {w['metric'].split('_')[0]} {pct(w['peak'])} -> {pct(w['last'])}"))
    lines = [format_table(table), "",
             f"A drop is a fall of at least {drop:.1f} AUROC points from the peak to the last evaluation."]
    if cache is not None:
        c, res = auroc_resolution(cache)
        lines.append(f"One (anomalous, normal) image pair of {c} moves the mean image AUROC by {res:.1f} points.")
    lines.append("")
    for r in rows:
        numbers = (f"loss {r['loss_first']:.3f} -> {r['loss_last']:.3f}; "
                   + "; ".join(f"{k.split('_')[0]} AUROC drop {_points(r[k]['drop']):.1f}" for k in METRICS))
        if r["holds"] is None:
            lines.append(f"{r['model']}: {r['note']} ({numbers}).")
            continue
        per = r["holds_per_metric"]
        if all(per.values()) or not any(per.values()):
            verdict = "HOLDS here" if r["holds"] else "DOES NOT HOLD here"
        else:
            verdict = ("HOLDS here for " if r["holds"] else "DOES NOT HOLD here; holds for ") + " ".join(
                k.split("_")[0] for k in METRICS if per[k]) + " AUROC only"
        lines.append(f"{r['model']}: paper says detection {r['claim']} while the loss falls -> {verdict} ({numbers}).")
    return "\n".join(lines)


def format_table(rows) -> str:
    """A list of equal-length tuples (the first is the header) as an aligned plain-text table."""
    rows = [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(rows[0]), line(tuple("-" * w for w in widths))] + [line(r) for r in rows[1:]])


# ---------------------------------------------------------------------------------------------------
# Experiment 3: UniAD's three fixes, one at a time
# ---------------------------------------------------------------------------------------------------

ABLATION = {
    "plain transformer": dict(neighbor_size=None, layerwise_query=False, jitter_scale=0.0),
    "+ layer-wise query": dict(neighbor_size=None, layerwise_query=True, jitter_scale=0.0),
    "+ neighbor mask": dict(neighbor_size=7, layerwise_query=False, jitter_scale=0.0),
    "+ feature jitter": dict(neighbor_size=None, layerwise_query=False, jitter_scale=20.0),
    "UniAD (all three)": UNIAD_SWITCHES,
}
ABLATION_KEYS = ("config", "neighbor_size", "layerwise_query", "jitter_scale", "loss", "image_auroc",
                 "pixel_auroc", "ratio", "per_class", "seconds")


def ablation(train_cache: Cache, test_cache: Cache, configs: dict | None = None, epochs: int = 8,
             size: str = "small", lr: float = 1e-3, batch_size: int = 8, seed: int = 0, log=print,
             return_models: bool = False):
    """Train one transformer per configuration (a dict of `transformer` switches; default `ABLATION`), all the
    same way, and return one row per configuration with the keys `ABLATION_KEYS` (AUROCs of the last epoch,
    fractions). With return_models=True, return (rows, {config: trained model}) instead."""
    configs = ABLATION if configs is None else configs
    data = prepare(train_cache, test_cache)
    rows, models = [], {}
    for name, switches in configs.items():
        switches = {**ABLATION["plain transformer"], **switches}
        torch.manual_seed(seed)
        model = transformer(data.channels, data.grid, **TRANSFORMER_SIZES[size], **switches)
        start = time.perf_counter()
        losses = train(model, data.train, epochs, lr=lr, batch_size=batch_size, seed=seed)
        res = evaluate(model, data)
        row = {"config": name, **switches, "loss": losses[-1], **res.pop("mean"),
               "ratio": error_ratio(model, data)["ratio"],
               "per_class": res, "seconds": time.perf_counter() - start}
        rows.append(row)
        models[name] = model
        if log:
            log(f"{name:20s} loss {row['loss']:.4f}  image AUROC {100 * row['image_auroc']:5.1f}  "
                f"pixel AUROC {100 * row['pixel_auroc']:5.1f}  ({row['seconds']:.0f} s)")
    return (rows, models) if return_models else rows


def ablation_table(rows: list[dict]) -> str:
    """The ablation rows as a text table, AUROCs in percent, with each class's image / pixel AUROC."""
    classes = sorted(rows[0]["per_class"])
    yes = lambda v: "yes" if v else "-"  # noqa: E731
    table = [("configuration", "layer-wise query", "neighbor mask", "jitter", "loss", "image AUROC", "pixel AUROC",
              "anomaly/normal error", *classes)]
    for r in rows:
        table.append((r["config"], yes(r["layerwise_query"]), r["neighbor_size"] or "-", r["jitter_scale"] or "-",
                      f"{r['loss']:.3f}", f"{100 * r['image_auroc']:.1f}", f"{100 * r['pixel_auroc']:.1f}",
                      f"{r['ratio']:.2f}",
                      *(f"{100 * r['per_class'][c]['image_auroc']:.1f} / {100 * r['per_class'][c]['pixel_auroc']:.1f}"
                        for c in classes)))
    return format_table(table)


@torch.no_grad()
def denoising(model: nn.Module, feats: torch.Tensor, scale: float = 20.0, seed: int = 0) -> dict:
    """Feature jittering turns reconstruction into denoising: jitter clean tokens x as in training, and compare
    ||x~ - x|| (the noise) with ||f(x~) - x|| (what is left after the model) and ||f(x) - x||, all mean per token."""
    torch.manual_seed(seed)
    tokens = feats.flatten(2).transpose(1, 2)  # (N, T, C)
    noisy = feature_jitter(tokens, scale).transpose(1, 2).reshape(feats.shape)
    norm = lambda a: (a - feats).pow(2).sum(1).sqrt().mean().item()  # noqa: E731
    return {"noise": norm(noisy), "after_model": norm(reconstruct(model, noisy)),
            "clean_input": norm(reconstruct(model, feats))}


# ---------------------------------------------------------------------------------------------------
# Pictures (matplotlib is imported here, when a picture is asked for: it is a notebook extra)
# ---------------------------------------------------------------------------------------------------


def _plt():
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("the plots need matplotlib: pip install 'uniad_mini[notebooks]' "
                          "(or pip install matplotlib)") from None
    return plt


def plot_trajectories(trajectories: dict, keys=("identity_distance", "anomalous_error", "normal_error"), log_y=True):
    """One panel per key, one line per reconstructor: value against epoch. `trajectories`: {name: records}."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, recs in trajectories.items():
            pts = [(r["epoch"], r[key]) for r in recs if key in r]
            if pts:
                ax.plot(*zip(*pts), marker=".", label=name)
        ax.set_xlabel("epoch")
        ax.set_title(key.replace("_", " "))
        if log_y and key != "centre_fraction":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    return fig


def plot_error_plane(trajectories: dict):
    """Anomalous against normal token error along training, one curve per reconstructor (an arrow = time).
    A reconstructor that copies its input heads for the origin along the diagonal; one that does not reproduce
    anomalies bends away above it."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    lo, hi = float("inf"), 0.0
    for name, recs in trajectories.items():
        n, a = [r["normal_error"] for r in recs], [r["anomalous_error"] for r in recs]
        ax.plot(n, a, marker=".", label=name)
        ax.annotate("", xy=(n[-1], a[-1]), xytext=(n[-2], a[-2]), arrowprops=dict(arrowstyle="->"))
        lo, hi = min(lo, *n, *a), max(hi, *n, *a)
    ax.plot([lo, hi], [lo, hi], "k:", lw=1, label="anomalous = normal")
    ax.set(xscale="log", yscale="log", xlabel="error on normal tokens", ylabel="error on anomalous tokens")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_kernel_energy(kernels: dict):
    """Energy ||K[:, :, i, j]||^2 of each tap of k x k kernels (C, C, k, k), as a share of the total, side by side."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(kernels), figsize=(2.8 * len(kernels), 2.9), squeeze=False)
    for ax, (name, K) in zip(axes[0], kernels.items()):
        e = K.detach().pow(2).sum(dim=(0, 1))
        e = (e / e.sum()).numpy()
        ax.imshow(e, cmap="viridis", vmin=0, vmax=1)
        for (i, j), v in np.ndenumerate(e):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w" if v < 0.5 else "k", fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


@torch.no_grad()
def plot_attention(model: QueryAttention, data: Prepared, normal_index: int, anomalous_index: int):
    """For a normal and an anomalous test image: the attention map A (N x N), its diagonal A_ii on the grid
    (how much each position attends to its own token), the token error, and the anomalous tokens."""
    plt = _plt()
    fig, axes = plt.subplots(2, 4, figsize=(13, 6.4))
    idx = [normal_index, anomalous_index]
    A = model.attention(data.test[idx])  # (2, N, N)
    err = token_errors(model, data.test[idx])  # (2, h, w)
    vmax_err = err.max().item()
    for row, (i, label) in enumerate(zip(idx, ("normal", "anomalous"))):
        ax = axes[row]
        ax[0].imshow(A[row].numpy(), cmap="magma", vmin=0, vmax=1)
        ax[0].set_title(f"{label}: attention map A (query x key)", fontsize=9)
        ax[1].imshow(A[row].diagonal().reshape(data.grid).numpy(), cmap="magma", vmin=0, vmax=1)
        ax[1].set_title("A_ii: weight on its own token", fontsize=9)
        ax[2].imshow(err[row].numpy(), cmap="inferno", vmin=0, vmax=vmax_err)
        ax[2].set_title("token error ||y - x||^2", fontsize=9)
        ax[3].imshow(data.anomalous[i].numpy(), cmap="gray", vmin=0, vmax=1)
        ax[3].set_title(f"anomalous tokens ({data.cache.classes[i]})", fontsize=9)
        for a in ax:
            a.set_xticks([])
            a.set_yticks([])
    fig.tight_layout()
    return fig


def plot_fig5a(records: list[dict], per_class: bool = True):
    """The paper's Fig. 5a: training loss, mean image AUROC and mean pixel AUROC against epoch, one line per
    reconstructor; with per_class, a second row with each class's pixel AUROC (solid) and image AUROC (dashed)."""
    plt = _plt()
    names = list(dict.fromkeys(r["model"] for r in records))
    classes = sorted(records[0]["per_class"])
    nrows = 2 if per_class else 1
    ncols = max(3, len(classes) if per_class else 3)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    colors = {n: f"C{i}" for i, n in enumerate(names)}
    for name in names:
        rs = [r for r in records if r["model"] == name]
        ep = [r["epoch"] for r in rs]
        axes[0][0].plot(ep, [r["loss"] for r in rs], marker=".", color=colors[name], label=name)
        axes[0][1].plot(ep, [100 * r["image_auroc"] for r in rs], marker=".", color=colors[name], label=name)
        axes[0][2].plot(ep, [100 * r["pixel_auroc"] for r in rs], marker=".", color=colors[name], label=name)
        if per_class:
            for ax, c in zip(axes[1], classes):
                ax.plot(ep, [100 * r["per_class"][c]["pixel_auroc"] for r in rs], marker=".", color=colors[name])
                ax.plot(ep, [100 * r["per_class"][c]["image_auroc"] for r in rs], ls="--", color=colors[name])
                ax.set_title(f"{c}: pixel (solid) / image (dashed) AUROC", fontsize=9)
    axes[0][0].set(yscale="log", title="training loss (MSE)")
    axes[0][1].set_title("image AUROC (mean over classes)")
    axes[0][2].set_title("pixel AUROC (mean over classes)")
    for ax in axes.flat:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in axes[0][3:]:
        ax.axis("off")
    if per_class:
        for ax in axes[1][len(classes):]:
            ax.axis("off")
    axes[0][0].legend()
    fig.tight_layout()
    return fig


def plot_neighbor_masks(grid=(14, 14), size=7, positions=((0, 0), (3, 10), (7, 7))):
    """The keys a query may attend to under the neighbor mask (white) and the blocked window (black), per query."""
    plt = _plt()
    mask = neighbor_mask(grid[0], grid[1], size)  # (N, N), True = blocked
    fig, axes = plt.subplots(1, len(positions), figsize=(3 * len(positions), 3.2), squeeze=False)
    for ax, (i, j) in zip(axes[0], positions):
        blocked = mask[i * grid[1] + j].reshape(grid)
        ax.imshow((~blocked).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.plot(j, i, "r*", ms=12)
        ax.set_title(f"query ({i}, {j}): sees {int((~blocked).sum())} of {grid[0] * grid[1]}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def plot_ablation(rows: list[dict]):
    """Mean image and pixel AUROC of each ablation configuration, as grouped bars."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.9 * len(rows) + 1, 3.6))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [100 * r["image_auroc"] for r in rows], 0.4, label="image AUROC")
    ax.bar(x + 0.2, [100 * r["pixel_auroc"] for r in rows], 0.4, label="pixel AUROC")
    ax.set_xticks(x, [r["config"] for r in rows], rotation=15, fontsize=8)
    lo = min(min(r["image_auroc"], r["pixel_auroc"]) for r in rows)
    ax.set_ylim(max(0, 100 * lo - 10), 100)
    ax.legend(loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig
