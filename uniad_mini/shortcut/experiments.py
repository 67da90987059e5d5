"""The identical-shortcut experiments of the notebooks (paper Sec. 3.1-3.4, Fig. 5a, the three fixes' ablation).

A reconstruction model trained on normal features only should fail on anomalies. It does not when it can
learn the identity: then it reconstructs *everything*, anomalies included, and the anomaly map goes flat.
Every experiment trains reconstructors (`reconstructors.build`) on the same cached, standardised backbone
features with the one training loop (`training.train`, plain Adam: `adam_settings`) and scores them with
the one scorer (`scoring.score` / `evaluation.evaluate`):

    identity_trajectory   distance to the identity and the errors on normal / anomalous tokens along training
                          (`gd_settings`: full-batch gradient descent, the dynamics of the linear derivation)
    self_margin, push_along_query, defect_attention
                          attention with a learned query: the softmax margin on a token's own position, an
                          anomaly that raises its own logit, where defect tokens put their attention
    ablation              UniAD's three fixes one at a time (`ablation_table` as Markdown)
    denoising             feature jittering turns reconstruction into denoising
    self_attention_weight how much attention with a learned query puts on a token's own position

`fig5a.py` holds the Fig. 5a experiment (loss and AUROC along training) and its verdict text. The data the
notebooks run on comes from `experiment_data`: a few synthetic images in the fast setting, else the real ones.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import MVTecAD, default_data_root
from ..environment import env_flag
from ..evaluation import evaluate, markdown_table
from ..scoring import score, scores_and_maps
from ..features import Cache, channel_stats, standardize
from .identity import centre_fraction, identity_distance
from .reconstructors import UNIAD_SWITCHES, QueryAttention, transformer, transformer_size
from ..synthetic import SyntheticAD
from ..training import TrainSettings, train
from ..transformer import feature_jitter

# ---------------------------------------------------------------------------------------------------
# Data: where the notebooks' images come from, standardised feature grids, anomalous tokens
# ---------------------------------------------------------------------------------------------------

FAST_ENV = "UNIAD_NOTEBOOK_FAST"


def fast_mode() -> bool:
    """True when UNIAD_NOTEBOOK_FAST is set to 1/true/yes/on: tiny runs on the embedded synthetic data (CI)."""
    return env_flag(FAST_ENV)


def experiment_data(fast: bool | None = None, classes=None, image_size: int = 224) -> dict:
    """{"train", "test": data sets, "source": one line saying which data, "fast": bool} for the notebooks.

    Fast setting: a few synthetic images per class (deterministic, seconds). Full setting: the real images
    when `default_data_root()` finds them, else the whole embedded synthetic set.
    """
    fast = fast_mode() if fast is None else fast
    root = None if fast else default_data_root()
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
    mean, std = channel_stats(train_cache.features)
    anomalous = token_masks(test_cache, cover=cover) & (test_cache.labels[:, None, None] == 1)
    normal = (test_cache.labels == 0)[:, None, None].expand_as(anomalous)
    return Prepared(standardize(train_cache.features, mean, std), standardize(test_cache.features, mean, std),
                    anomalous, normal, test_cache)


def example_pair(data: Prepared) -> tuple[int, int]:
    """(a normal, an anomalous) test image of the same class: the anomalous one with the most anomalous tokens."""
    counts = data.anomalous.flatten(1).sum(1).masked_fill(data.cache.labels == 0, -1)  # (M,), normal images last
    anomalous = int(counts.argmax())
    cls = data.cache.classes[anomalous]
    normal = next(i for i, (c, y) in enumerate(zip(data.cache.classes, data.cache.labels)) if c == cls and y == 0)
    return normal, anomalous


def defect_positions(data: Prepared, index: int, count: int = 4) -> list[tuple[int, int]]:
    """Up to `count` grid positions (row, col) of anomalous tokens of test image `index`, evenly spread over
    them in row-major order: where to measure a model at an anomaly (e.g. `identity.jacobian_identity`)."""
    cells = torch.nonzero(data.anomalous[index]).tolist()  # [[r, c], ...] row-major
    if not cells:
        raise ValueError(f"test image {index} has no anomalous token")
    picks = torch.linspace(0, len(cells) - 1, min(count, len(cells))).round().long().tolist()
    return [tuple(cells[k]) for k in picks]


# ---------------------------------------------------------------------------------------------------
# Training and measuring, the same for every reconstructor
# ---------------------------------------------------------------------------------------------------


def adam_settings(epochs: int, lr: float = 1e-3, batch_size: int = 8, seed: int = 0, grad_clip: float = 1.0,
                  schedule: str = "constant") -> TrainSettings:
    """The experiments' settings of the one loop: plain Adam, no weight decay, no warm-up.

    schedule: "constant" learning rate (Fig. 5a: nothing hides a late change), or "cosine" decay to zero
    (a trajectory that settles, for watching a weight converge).
    """
    return TrainSettings(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=0.0, grad_clip=grad_clip,
                         schedule=schedule, warmup=0.0, optimizer="adam", precision="fp32", seed=seed,
                         fast=False, compile=False)  # the plain loop: the experiments read it


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


def aurocs(model: nn.Module, data: Prepared) -> dict:
    """Per-class image and pixel AUROC on the test features by UniAD's protocol (`scoring.score`, then
    `evaluation.evaluate`): {cls: {"image_auroc", "pixel_auroc"}, "mean": {...}}, fractions."""
    scores, maps = score(model, data.test, tuple(data.cache.masks.shape[-2:]))
    return evaluate(scores, maps, data.cache, metrics="auroc")


def aurocs_and_ratio(model: nn.Module, data: Prepared, batch_size: int = 32) -> tuple[dict, dict]:
    """(`aurocs`, `error_ratio`) from one reconstruction of the test features instead of two: what an
    experiment records every few epochs. The same numbers as the two functions (`scoring.scores_and_maps` is
    what `scoring.score` applies to each batch)."""
    rec = reconstruct(model, data.test, batch_size)  # (M, C, h, w)
    size = tuple(data.cache.masks.shape[-2:])
    parts = [scores_and_maps(r, x, size) for r, x in zip(rec.split(batch_size), data.test.split(batch_size))]
    scores, maps = torch.cat([s for s, _ in parts]), torch.cat([m for _, m in parts])  # (M,), (M, H, W)
    err = (rec - data.test).pow(2).sum(1)  # (M, h, w)
    a, n = err[data.anomalous].mean().item(), err[data.normal].mean().item()
    return (evaluate(scores, maps, data.cache, metrics="auroc"),
            {"anomalous_error": a, "normal_error": n, "ratio": a / max(n, 1e-12)})


def train_loss(model: nn.Module, feats: torch.Tensor) -> float:
    """MSE(model(x), x) in eval mode: the loss before the first epoch."""
    return F.mse_loss(reconstruct(model, feats), feats).item()


# ---------------------------------------------------------------------------------------------------
# Experiment 1: does a reconstructor become the identity? (notebooks 02 and 03)
# ---------------------------------------------------------------------------------------------------


def gd_settings(steps: int, lr: float, n: int) -> TrainSettings:
    """Full-batch gradient descent in the one loop: every one of the n training grids in each step (one step an
    epoch), optimizer "sgd", constant lr, no clipping, no weight decay, fp32: the dynamics of the derivation."""
    return TrainSettings(epochs=steps, batch_size=n, lr=lr, weight_decay=0.0, grad_clip=0.0, schedule="constant",
                         warmup=0.0, optimizer="sgd", precision="fp32", seed=0, fast=False, compile=False)


def identity_trajectory(model: nn.Module, data: Prepared, epochs: int, train_settings: TrainSettings | None = None,
                        **settings) -> list[dict]:
    """Train `model` on data.train (`train_settings`, default `adam_settings(epochs, **settings)`); before
    training and after every epoch record

        {"epoch", "loss", "anomalous_error", "normal_error", "ratio",
         "identity_distance" (single-layer models and QueryAttention), "centre_fraction" (one k x k conv)}
    """
    records = []

    def record(m, epoch, loss, state=None):
        r = {"epoch": epoch, "loss": loss, **error_ratio(m, data)}
        if isinstance(m, QueryAttention) or sum(isinstance(c, (nn.Linear, nn.Conv2d)) for c in m.modules()) == 1:
            r["identity_distance"] = identity_distance(m, data.test[data.cache.labels == 0])
        convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
        if len(convs) == 1 and convs[0].kernel_size[0] > 1:
            r["centre_fraction"] = centre_fraction(convs[0].weight.detach())
        records.append(r)

    record(model, 0, train_loss(model, data.train))
    train(model, data.train, train_settings or adam_settings(epochs, **settings), progress=False, callback=record)
    return records


def at_equal_normal_error(records: list[dict], normal_error: float) -> dict:
    """The first record of a trajectory whose normal error is at or below `normal_error` (else the last):
    to compare two reconstructors when they reconstruct normal tokens equally well."""
    for r in records:
        if r["normal_error"] <= normal_error:
            return r
    return records[-1]


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


@torch.no_grad()
def self_margin(model: QueryAttention, x: torch.Tensor) -> dict:
    """The softmax margin of each token on itself, m_i = s_ii - logsumexp_(j != i) s_ij with s = q x^T / sqrt(C),
    so that A_ii = sigmoid(m_i) exactly: A_ii >= 1 - eps iff m_i >= ln((1 - eps) / eps), whatever N. By Jensen,
    logsumexp over the N - 1 rivals >= their mean logit + ln(N - 1), so m_i <= (gap to the mean rival) / sqrt(C)
    - ln(N - 1): A_ii >= 1 - eps needs a gap q_i . x_i - mean_(j != i) q_i . x_j >= sqrt(C) (ln(N - 1) +
    ln((1 - eps) / eps)) (equal rivals meet it with equality).
    Returns {"margin": (B, N), "self_weight": A_ii (B, N), "mean_gap": that gap in q . x units (B, N)} on
    inputs x (B, C, h, w)."""
    tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
    s = model.query @ tokens.transpose(1, 2) / math.sqrt(x.shape[1])  # (B, N, N)
    diag = s.diagonal(dim1=1, dim2=2)  # (B, N)
    eye = torch.eye(s.shape[-1], dtype=torch.bool)
    others = s.masked_fill(eye, float("-inf")).logsumexp(-1)  # (B, N)
    mean_rival = s.masked_fill(eye, 0.0).sum(-1) / (s.shape[-1] - 1)  # (B, N)
    return {"margin": diag - others, "self_weight": model.attention(x).diagonal(dim1=1, dim2=2),
            "mean_gap": (diag - mean_rival) * math.sqrt(x.shape[1])}


@torch.no_grad()
def push_along_query(model: QueryAttention, x: torch.Tensor, position: tuple[int, int], steps,
                     orthogonal: bool = False, seed: int = 0) -> list[dict]:
    """An anomaly that raises its own logit: token i of x (1, C, h, w) moved by t * q_i / ||q_i|| for each t.
    The logit q_i . x_i is linear in x_i, so A_ii grows with t and y_i follows the moved token: per t
    {"t", "self_weight": A_ii, "error": ||y_i - x'_i||^2, "deviation": ||x'_i - x_i||^2 = t^2}.
    orthogonal=True: moved along a (seeded random) unit vector orthogonal to q_i instead. Row i of A depends on
    x_i only through q_i . x_i, so A_ii stays; y_i gains A_ii t u and the error is ||(y_i - x_i) - (1 - A_ii) t u||^2."""
    r, c = position
    i = r * x.shape[-1] + c
    u = model.query[i] / model.query[i].norm()  # (C,)
    if orthogonal:
        v = torch.randn(u.shape, generator=torch.Generator().manual_seed(seed))
        u = (v - (v @ u) * u) / (v - (v @ u) * u).norm()  # (C,), orthogonal to q_i
    out = []
    for t in steps:
        moved = x.clone()
        moved[0, :, r, c] += t * u
        y = model(moved)
        out.append({"t": float(t), "self_weight": model.attention(moved)[0, i, i].item(),
                    "error": (y - moved)[0, :, r, c].pow(2).sum().item(), "deviation": float(t) ** 2})
    return out


@torch.no_grad()
def defect_attention(model: QueryAttention, data: Prepared) -> dict:
    """Where the defect tokens of anomalous test images put their attention: on themselves (A_ii), on the other
    defect tokens of their image, and the share those other defect tokens have among the N - 1 others (what
    uniform attention would give them). A defect token that attends to a neighbouring defect token copies the
    defect: the motivation of the neighbor mask."""
    self_w, on_defect, share = [], [], []
    for i in torch.nonzero(data.anomalous.flatten(1).any(1)).flatten().tolist():
        A = model.attention(data.test[i : i + 1])[0]  # (N, N)
        a = data.anomalous[i].flatten()  # (N,)
        rows = A[a]  # (n, N), the defect tokens' attention rows
        self_w.append(rows[:, a].diagonal())
        on_defect.append(rows[:, a].sum(1) - rows[:, a].diagonal())
        share.append(torch.full((int(a.sum()),), (int(a.sum()) - 1) / (len(a) - 1)))
    cat = lambda parts: torch.cat(parts).mean().item()  # noqa: E731
    return {"self": cat(self_w), "other_defect_tokens": cat(on_defect), "uniform_share": cat(share)}


# ---------------------------------------------------------------------------------------------------
# Experiment 3: UniAD's three fixes, one at a time (notebook 05; Fig. 5a is experiment 2, in fig5a.py, notebook 04)
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
    same way, at `size` (`reconstructors.transformer_size`: "small", "wide", ...), and return one row per
    configuration with the keys `ABLATION_KEYS` (AUROCs of the last epoch, fractions). With return_models=True,
    return (rows, {config: trained model}) instead."""
    configs = ABLATION if configs is None else configs
    data = prepare(train_cache, test_cache)
    rows, models = [], {}
    for name, switches in configs.items():
        switches = {**ABLATION["plain transformer"], **switches}
        torch.manual_seed(seed)
        model = transformer(data.channels, data.grid, **transformer_size(size, data.channels), **switches)
        start = time.perf_counter()
        state = train(model, data.train, adam_settings(epochs, lr, batch_size, seed), progress=False)
        res, ratio = aurocs_and_ratio(model, data)
        row = {"config": name, **switches, "loss": state["history"][-1], **res.pop("mean"),
               "ratio": ratio["ratio"], "per_class": res, "seconds": time.perf_counter() - start}
        rows.append(row)
        models[name] = model
        if log:
            log(f"{name:20s} loss {row['loss']:.4f}  image AUROC {100 * row['image_auroc']:5.1f}  "
                f"pixel AUROC {100 * row['pixel_auroc']:5.1f}  ({row['seconds']:.0f} s)")
    return (rows, models) if return_models else rows


def ablation_table(rows: list[dict]) -> str:
    """The ablation rows as a Markdown table, AUROCs in percent, with each class's image / pixel AUROC."""
    classes = sorted(rows[0]["per_class"])
    yes = lambda v: "yes" if v else "-"  # noqa: E731
    header = ["configuration", "layer-wise query", "neighbor mask", "jitter", "loss", "image AUROC", "pixel AUROC",
              "anomaly/normal error", *classes]
    table = [[r["config"], yes(r["layerwise_query"]), r["neighbor_size"] or "-", r["jitter_scale"] or "-",
              f"{r['loss']:.3f}", f"{100 * r['image_auroc']:.1f}", f"{100 * r['pixel_auroc']:.1f}", f"{r['ratio']:.2f}",
              *(f"{100 * r['per_class'][c]['image_auroc']:.1f} / {100 * r['per_class'][c]['pixel_auroc']:.1f}"
                for c in classes)] for r in rows]
    return markdown_table(header, table)


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
