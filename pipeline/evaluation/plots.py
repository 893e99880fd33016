"""Figures of the evaluate stage (matplotlib, Agg backend, PNG files).

Each function takes plain numbers (no models, no workdir) and writes one PNG, so it
can be tested on hand-made inputs.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

CATEGORY_COLORS = {"clean": "tab:blue", "noisy": "tab:red", "rare": "tab:orange"}


def epoch_points(values) -> tuple[np.ndarray, np.ndarray]:
    """(1-based epochs, values) of a per-epoch curve without the epochs that have no
    value (None: a pass that runs only every k-th epoch, config.eval.per_epoch_every),
    so that a line joins the evaluated epochs."""
    pairs = [(e + 1, v) for e, v in enumerate(values) if v is not None]
    return np.asarray([e for e, _ in pairs], int), np.asarray([v for _, v in pairs], float)


def error_vs_strength(runs: dict[str, dict], path: str) -> None:
    """Per-class test error against the applied strength lambda * tau_c (paper Fig. 4).

    Args:
      runs: run name -> {"strength": [C] floats, "error": [C] floats}.
      path: the PNG to write.
    """
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, r in runs.items():
        x = np.asarray(r["strength"], float)
        y = np.asarray(r["error"], float)
        ax.scatter(x, y, label=name, alpha=0.8)
        for c, (xc, yc) in enumerate(zip(x, y, strict=True)):
            if np.isfinite(yc):
                ax.annotate(str(c), (xc, yc), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(r"applied regularization strength $\lambda \tau_c$")
    ax.set_ylabel("per-class test error")
    ax.set_title("Per-class test error vs regularization strength")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def loss_histograms(runs: dict[str, dict[str, np.ndarray]], path: str, *, bins: int = 40) -> None:
    """Histograms of per-example training losses by category (paper Fig. 1).

    Args:
      runs: run name -> {category ("clean", "noisy", "rare") -> [n] losses}.
      path: the PNG to write.
    """
    names = list(runs)
    fig, axes = plt.subplots(
        1, max(1, len(names)), figsize=(5 * max(1, len(names)), 4), squeeze=False
    )
    every = [np.asarray(v, float) for r in runs.values() for v in r.values() if len(v)]
    top = max((float(v.max()) for v in every), default=1.0)
    edges = np.linspace(0.0, max(top, 1e-6), bins + 1)
    for ax, name in zip(axes[0], names, strict=False):
        for category, losses in runs[name].items():
            losses = np.asarray(losses, float)
            if len(losses) == 0:
                continue
            ax.hist(
                losses,
                bins=edges,
                alpha=0.5,
                density=True,
                color=CATEGORY_COLORS.get(category),
                label=f"{category} (n={len(losses)})",
            )
        ax.set_title(f"{name}: training-set losses")
        ax.set_xlabel("cross-entropy vs the training label")
        ax.set_ylabel("density")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def training_curves(histories: dict[str, dict[str, list[float]]], path: str) -> None:
    """One panel per logged metric (loss, ce, reg, accuracy, ...), one line per run."""
    metrics = sorted({k for h in histories.values() for k in h})
    n = max(1, len(metrics))
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.5), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=False):
        for name, h in histories.items():
            if metric in h and len(h[metric]):
                ax.plot(*epoch_points(h[metric]), marker="o", markersize=3, label=name)
        ax.set_title(metric)
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
