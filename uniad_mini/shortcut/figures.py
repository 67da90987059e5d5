"""The notebooks' figures of the identical-shortcut experiments (paper Sec. 3.1-3.4 and Fig. 5a).

Drawn with matplotlib, imported when a figure is asked for (a notebook extra, not a runtime dependency).
The anomaly-map panels of the commands are drawn with Pillow in `uniad_mini/pictures.py`.
"""
from __future__ import annotations

import numpy as np
import torch

from ..neighbors import neighbor_mask
from .experiments import token_errors


def _plt():
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("the plots need matplotlib: pip install 'uniad_mini[notebooks]' "
                          "(or pip install matplotlib)") from None
    return plt


YLABELS = {  # what each recorded quantity is, for the y-axes
    "identity_distance": "distance to the identity, ||M - I|| / ||I||",
    "anomalous_error": "mean ||x_hat - x||^2, anomalous tokens",
    "normal_error": "mean ||x_hat - x||^2, normal tokens",
    "centre_fraction": "share of kernel energy at the centre tap",
    "loss": "training loss (MSE)",
}


def plot_trajectories(trajectories: dict, keys=("identity_distance", "anomalous_error", "normal_error"), log_y=True,
                      styles: dict | None = None):
    """One panel per key, one line per reconstructor: value against epoch. `trajectories`: {name: records};
    `styles`: {name: matplotlib line options}, e.g. a dashed line for a curve drawn over another."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, recs in trajectories.items():
            pts = [(r["epoch"], r[key]) for r in recs if key in r]
            if pts:
                ax.plot(*zip(*pts), **{"marker": ".", "label": name, **(styles or {}).get(name, {})})
        ax.set_xlabel("epoch")
        ax.set_ylabel(YLABELS.get(key, key.replace("_", " ")), fontsize=8)
        ax.set_title(key.replace("_", " "))
        if log_y and key != "centre_fraction":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_spectrum(lam, energies: dict, residual: dict | None = None):
    """Along the eigenvectors u_j of Sigma (largest eigenvalue first): each token group's mean energy
    (u_j . x)^2 with the eigenvalues themselves, and, with "anomalous" and "normal" in `energies`, the ratio
    a_j / n_j of the two. `residual` {y-axis label: (steps, values)}: one more panel each, values against
    gradient-descent steps k (e.g. the anomalous / normal error ratio, the token AUROC of ||W_k x - x||)."""
    plt = _plt()
    ratio = "anomalous" in energies and "normal" in energies
    panels = 1 + ratio + len(residual or {})
    cols = min(panels, 2)
    fig, axes = plt.subplots((panels + 1) // 2, cols, figsize=(5.2 * cols, 3.6 * ((panels + 1) // 2)), squeeze=False)
    axes = list(axes.flat)
    ax = axes[0]
    ax.plot(np.asarray(lam), "k:", label="eigenvalue lambda_j (training tokens)")
    for name, e in energies.items():
        ax.plot(np.asarray(e), label=f"{name} test tokens")
    ax.set(yscale="log", xlabel="eigen-direction j (largest eigenvalue first)", ylabel="mean energy (u_j . x)^2",
           title="energy per eigen-direction")
    ax.legend(fontsize=8)
    if ratio:
        a, n = np.asarray(energies["anomalous"]), np.asarray(energies["normal"])
        axes[1].plot(a / n, color="C3", lw=1)
        axes[1].axhline(float(a.sum() / n.sum()), color="k", ls=":",
                        label="sum_j a_j / sum_j n_j (the ratio at k = 0)")
        axes[1].set(yscale="log", xlabel="eigen-direction j (largest eigenvalue first)", ylabel="a_j / n_j",
                    title="anomalous / normal energy per direction")
        axes[1].legend(fontsize=8)
    for ax, (label, (steps, values)) in zip(axes[1 + ratio:], (residual or {}).items()):
        ax.plot(steps, values, marker=".")
        ax.set(xscale="symlog", xlabel="gradient-descent step k (closed form)", ylabel=label, title=label)
    for ax in axes[:panels]:
        ax.grid(alpha=0.3)
    for ax in axes[panels:]:
        ax.axis("off")
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
                ax.set_ylabel("AUROC (%)")
    axes[0][0].set(yscale="log", title="training loss (MSE)", ylabel="loss")
    axes[0][1].set(title="image AUROC (mean over classes)", ylabel="AUROC (%)")
    axes[0][2].set(title="pixel AUROC (mean over classes)", ylabel="AUROC (%)")
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


def plot_ablation(rows: list[dict], noise: float | None = None):
    """Mean image and pixel AUROC of each ablation configuration, as grouped bars on an axis from 50 (chance)
    to 100, so that bar heights compare as AUROC above chance; with `noise` (points), an error bar of that size
    on each image AUROC bar (e.g. the image-pair threshold of `fig5a.drop_thresholds`)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.9 * len(rows) + 1, 3.6))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [100 * r["image_auroc"] for r in rows], 0.4, label="image AUROC",
           yerr=noise, capsize=3 if noise else 0)
    ax.bar(x + 0.2, [100 * r["pixel_auroc"] for r in rows], 0.4, label="pixel AUROC")
    ax.set_xticks(x, [r["config"] for r in rows], rotation=15, fontsize=8)
    ax.set_ylim(50, 100)
    ax.set_ylabel("AUROC (%), mean over classes; 50 = chance")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig
