"""The PNG figures of a study, from the study.json dict alone (study.md: study_md)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.evaluation.plots import epoch_points  # noqa: E402

FIT_ACC, FIT_MEM = "fit_accuracy", "fit_memorized"


def write_all(result: dict, out: str) -> dict:
    """Writes the figures of every setting; returns {title: file name}."""
    files = {}
    primary = result["primary_group"]
    for setting, agg in result["settings"].items():
        methods = {m: r for m, r in agg["methods"].items() if r["seeds_done"]}
        if not methods:
            continue
        name = f"accuracy_{setting}.png"
        _accuracy(
            methods,
            f"{setting}: final-epoch test accuracy, mean and 95% t-interval",
            f"{out}/{name}",
        )
        files[f"{setting}: accuracy per method"] = name
        curves = {m: r["curves"] for m, r in methods.items()}
        name = f"curves_{setting}.png"
        _curves(
            {m: c.get(f"test_{primary}") for m, c in curves.items()},
            f"{setting}: {primary} test accuracy per epoch (mean over seeds)",
            "test accuracy (fraction)",
            f"{out}/{name}",
        )
        files[f"{setting}: {primary} test accuracy per epoch"] = name
        if any(c.get(FIT_ACC) for c in curves.values()):
            name = f"memorization_{setting}.png"
            _memorization(curves, setting, f"{out}/{name}")
            files[f"{setting}: memorization per epoch"] = name
    for method, regime in result.get("regime_map", {}).items():
        if any(r["paired"].get("mean") is not None for r in regime["settings"].values()):
            name = f"regime_map_{method}.png"
            _regime(method, regime, result["reference"], primary, f"{out}/{name}")
            files[f"regime map: {method} - {result['reference']}"] = name
    return files


def _regime(method: str, regime: dict, ref: str, primary: str, path: str) -> None:
    """The paired difference against how much the reference memorized, per setting."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for setting, row in regime["settings"].items():
        d, mem = row["paired"], row["memorization"][ref][FIT_MEM]
        if d.get("mean") is None or mem.get("mean") is None:
            continue
        x, y = 100 * mem["mean"], 100 * d["mean"]
        err = [[y - 100 * d["ci95"][0]], [100 * d["ci95"][1] - y]] if d.get("ci95") else None
        ax.errorbar([x], [y], yerr=err, fmt="o", capsize=4)
        ax.annotate(setting, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel(f"{ref}: wrongly-labelled training examples memorized (%)")
    ax.set_ylabel(f"{method} - {ref} on {primary} (points)")
    ax.set_title(f"regime map, seeds {regime['seeds']}: mean and 95% t-interval", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _accuracy(methods: dict, title: str, path: str) -> None:
    groups = [*next(iter(methods.values()))["groups"], "overall"]
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(methods)
    for i, (m, r) in enumerate(methods.items()):
        stats = [r["groups"].get(g) or r["overall"] for g in groups[:-1]] + [r["overall"]]
        means = np.array([100 * (s["mean"] or 0) for s in stats])
        err = np.array([[100 * (s["mean"] - s["ci95"][0]) if s["ci95"] else 0 for s in stats]] * 2)
        ax.bar(np.arange(len(groups)) + i * width, means, width, yerr=err, capsize=3, label=m)
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, groups)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _curves(curves: dict, title: str, ylabel: str, path: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for m, c in curves.items():
        if c:
            ax.plot(*epoch_points(c), label=m)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _memorization(curves: dict, setting: str, path: str) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in (
        (axes[0], FIT_ACC, "training accuracy vs noisy labels (un-augmented)"),
        (axes[1], FIT_MEM, "wrongly-labelled examples predicted as their wrong label"),
    ):
        for m, c in curves.items():
            if c.get(key):
                ax.plot(*epoch_points(c[key]), label=m)
        ax.set_xlabel("epoch")
        ax.set_ylabel("fraction")
        ax.set_title(f"{setting}: {label}", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
