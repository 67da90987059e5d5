"""Every picture of the project: anomaly maps a person can look at (paper Fig. 9) and the notebooks' figures.

Drawn with Pillow alone (matplotlib is not a runtime dependency):

    panel(image, amap, mask, vmin, vmax, title)   image | ground truth | anomaly-map overlay, one PNG strip
    roc_curve_png({"image": (fpr, tpr)}, ...)     a ROC plot (points from `metrics.roc_curve`)
    write_pictures(model, test, out_dir)          a panel per test image and a ROC plot per class

Drawn with matplotlib, imported when a figure is asked for (a notebook extra): the `plot_*` figures of the
identical-shortcut experiments (paper Sec. 3.1-3.4 and Fig. 5a; `experiments.py`, `fig5a.py`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from . import metrics
from .attention import neighbor_mask
from .data import load_image
from .experiments import token_errors
from .features import Cache


# --------------------------------------------------------------------------------------------------
# Panels


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8."""
    return (image.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)


def heat(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (H, W) -> a black-red-yellow-white colour map (H, W, 3) uint8."""
    v = np.clip(values, 0, 1)[..., None]
    rgb = np.concatenate([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)], axis=-1)
    return (rgb * 255).astype(np.uint8)


def overlay(image: torch.Tensor, amap: torch.Tensor, vmin: float, vmax: float, alpha: float = 0.5) -> np.ndarray:
    """Blend the heat map of `amap` (H, W), scaled from [vmin, vmax] to [0, 1], over `image` (3, H, W)."""
    scaled = (amap.cpu().numpy() - vmin) / max(vmax - vmin, 1e-12)
    return (alpha * heat(scaled) + (1 - alpha) * to_uint8(image)).astype(np.uint8)


def panel(image, amap, mask=None, vmin: float = 0.0, vmax: float | None = None, title: str = "") -> Image.Image:
    """image | ground truth (if given) | overlay, side by side, with a title line on top."""
    vmax = float(amap.max()) if vmax is None else vmax
    tiles = [to_uint8(image)]
    if mask is not None:
        tiles.append(np.repeat((mask.cpu().numpy() > 0).astype(np.uint8)[..., None] * 255, 3, axis=-1))
    tiles.append(overlay(image, amap, vmin, vmax))
    strip = np.concatenate(tiles, axis=1)
    out = Image.new("RGB", (strip.shape[1], strip.shape[0] + 14), "white")
    out.paste(Image.fromarray(strip), (0, 14))
    ImageDraw.Draw(out).text((2, 1), title, fill="black")
    return out


# --------------------------------------------------------------------------------------------------
# ROC curves


COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]


def _screen_points(fpr, tpr, x0: int, y0: int, side: int) -> list[tuple[int, int]]:
    """(FPR, TPR) in [0, 1]^2 -> pixel coordinates in the square plot area, consecutive duplicates dropped."""
    x = np.round(x0 + np.asarray(fpr, dtype=np.float64) * side).astype(np.int64)
    y = np.round(y0 + (1.0 - np.asarray(tpr, dtype=np.float64)) * side).astype(np.int64)  # TPR grows upwards
    keep = np.ones(x.size, dtype=bool)
    keep[1:] = (np.diff(x) != 0) | (np.diff(y) != 0)
    return list(zip(x[keep].tolist(), y[keep].tolist()))


def roc_curve_png(curves: dict, title: str = "", legend: list[str] | None = None, size: int = 360) -> Image.Image:
    """A square ROC plot: axes with ticks at 0, 0.5, 1, the chance diagonal, one coloured curve per entry.

    curves: {name: (fpr, tpr)}; legend: one line per curve (default: the names), e.g. "image AUROC 99.2%".
    """
    legend = list(curves) if legend is None else legend
    margin_left, margin_top, margin_bottom = 42, 22, 34
    side = size - margin_left - 12  # the plot area is a square
    out = Image.new("RGB", (size, margin_top + side + margin_bottom), "white")
    draw = ImageDraw.Draw(out)
    x0, y0 = margin_left, margin_top
    draw.text((x0, 4), title, fill="black")
    draw.rectangle([x0, y0, x0 + side, y0 + side], outline="black")
    for t in (0.0, 0.5, 1.0):  # ticks and their labels
        px, py = x0 + round(t * side), y0 + round((1 - t) * side)
        draw.line([px, y0 + side, px, y0 + side + 4], fill="black")
        draw.text((px - 8, y0 + side + 6), f"{t:g}", fill="black")
        draw.line([x0 - 4, py, x0, py], fill="black")
        draw.text((x0 - 26, py - 5), f"{t:g}", fill="black")
    draw.text((x0 + side // 2 - 45, y0 + side + 19), "false positive rate", fill="black")
    draw.text((4, y0 + side // 2 - 20), "TPR", fill="black")
    for k in range(0, side, 8):  # the chance diagonal, dashed
        a, b = k / side, min(k + 4, side) / side
        draw.line([x0 + a * side, y0 + (1 - a) * side, x0 + b * side, y0 + (1 - b) * side], fill=(160, 160, 160))
    for i, (name, (fpr, tpr)) in enumerate(curves.items()):
        colour = COLOURS[i % len(COLOURS)]
        draw.line(_screen_points(fpr, tpr, x0, y0, side), fill=colour, width=2)
        ly = y0 + side - 16 * (len(curves) - i) - 4  # legend in the lower right, where ROC curves are not
        draw.line([x0 + side - 150, ly + 6, x0 + side - 134, ly + 6], fill=colour, width=2)
        draw.text((x0 + side - 130, ly), legend[i], fill="black")
    return out


# --------------------------------------------------------------------------------------------------
# Every test image of a model


def _picture_name(path: str, i: int) -> str:
    if not path:
        return f"{i:04d}.png"
    p = Path(path)
    return f"{p.parent.name}_{p.stem}.png"  # DEFECT_NAME.png


def write_pictures(model, test, out_dir, data=None, progress: bool = False) -> list[Path]:
    """A PNG panel per test image (image | ground truth | anomaly-map overlay) and a ROC plot per class.

    test: a data set (MVTecAD / SyntheticAD) or a Cache of its features; data: the data set the Cache
    came from, to read the images (default: the image files at the Cache's paths).
    Writes OUT/CLASS/DEFECT_NAME.png and OUT/roc_CLASS.png. Within a class every overlay uses the
    same colour scale, from the smallest to the largest pixel score of that class's maps, so that
    panels of one class can be compared with one another. Returns the paths written.
    """
    if not isinstance(test, Cache):
        data = test
        test = model.cache(test, progress=progress, desc="test")
    if data is not None and len(data) != len(test.labels):
        raise ValueError(f"data has {len(data)} items but the cache {len(test.labels)}; pass the data set it came from")
    out_dir = Path(out_dir)
    scores, maps = model.score_features(test.features)  # (N,), (N, S, S)
    S = model.config.image_size
    written = []
    for c, idx in test.class_indices().items():
        (out_dir / c).mkdir(parents=True, exist_ok=True)
        vmin, vmax = float(maps[idx].min()), float(maps[idx].max())
        for i in idx:
            path = test.paths[i] if test.paths else ""
            if data is not None:
                image = data[i]["image"]
            elif path and Path(path).is_file():
                image = load_image(path, S)
            else:
                raise ValueError(f"cannot find the image of test sample {i} ({path!r}); pass data= the data set")
            if image.shape[-2:] != (S, S):
                image = torch.nn.functional.interpolate(image[None], size=(S, S), mode="bilinear")[0]
            state = "anomalous" if int(test.labels[i]) else "normal"
            title = f"{c}/{Path(path).parent.name}/{Path(path).name}  score {float(scores[i]):.3f}  {state}"
            target = out_dir / c / _picture_name(path, i)
            panel(image, maps[i], test.masks[i], vmin, vmax, title).save(target)
            written.append(target)
        labels, masks = test.labels[idx], test.masks[idx]
        curves, legend = {}, []
        if 0 < int(labels.sum()) < len(idx):
            curves["image"] = metrics.roc_curve(scores[idx], labels)[:2]
            legend.append(f"image AUROC {100 * metrics.auroc(scores[idx], labels):.1f}%")
        if 0 < int(masks.sum()) < masks.numel():
            curves["pixel"] = metrics.roc_curve(maps[idx], masks)[:2]
            legend.append(f"pixel AUROC {100 * metrics.auroc(maps[idx], masks):.1f}%")
        target = out_dir / f"roc_{c}.png"
        roc_curve_png(curves, title=f"{c}: ROC", legend=legend).save(target)
        written.append(target)
    return written


# --------------------------------------------------------------------------------------------------
# The notebooks' figures (matplotlib is imported when a figure is asked for: it is a notebook extra)


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


def plot_spectrum(lam, energies: dict, residual: dict | None = None):
    """Left: each token group's mean energy (u_j . x)^2 along the eigenvectors of Sigma (largest eigenvalue
    first), with the eigenvalues themselves. Right (with `residual` {name: (steps, values)}): values against
    gradient-descent steps k, e.g. the anomalous / normal error ratio and the token AUROC of ||W_k x - x||."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2 if residual else 1, figsize=(10 if residual else 5, 3.6), squeeze=False)
    ax = axes[0][0]
    ax.plot(np.asarray(lam), "k:", label="eigenvalue (training tokens)")
    for name, e in energies.items():
        ax.plot(np.asarray(e), label=f"{name} test tokens")
    ax.set(yscale="log", xlabel="eigen-direction j (largest eigenvalue first)", title="mean energy (u_j . x)^2")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    for name, (steps, values) in (residual or {}).items():
        axes[0][1].plot(steps, values, marker=".", label=name)
    if residual:
        axes[0][1].set(xscale="symlog", xlabel="gradient-descent step k (closed form)", title="residual (I - 2 lr Sigma / C)^k x")
        axes[0][1].legend(fontsize=8)
        axes[0][1].grid(alpha=0.3)
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
def plot_attention(model, data, normal_index: int, anomalous_index: int):
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
