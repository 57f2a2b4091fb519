"""The PNG figures each training run writes (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models import metrics
from shared.enums import CLASSES
from shared.scoring import NORMAL_AT_LEAST


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    return plt


def training_curves(histories: Sequence[dict[str, list[float]]], names: Sequence[str],
                    path: Path) -> None:
    """One colour per trunk (``names``), train solid, inner validation dashed."""
    plt = _pyplot()
    fig = _curves_figure(plt, histories, names)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _curves_figure(plt, histories: Sequence[dict[str, list[float]]],  # type: ignore[no-untyped-def]
                   names: Sequence[str]):
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
    longest = max((len(h["loss"]) for h in histories), default=1)
    # A run of one epoch is one point, which a line alone never draws; over many epochs
    # the markers would hide the lines.
    size = 4 if longest <= 20 else 0
    for k, (history, name) in enumerate(zip(histories, names, strict=True)):
        epochs = np.arange(1, len(history["loss"]) + 1)
        for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
            ax.plot(epochs, history[key], color=f"C{k}", lw=1, marker="o", ms=size,
                    label=f"{name} train")
            ax.plot(epochs, history[f"val_{key}"], color=f"C{k}", lw=1, ls="--", marker="s",
                    ms=size, mfc="none", label=f"{name} validation")
    for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"patch {key}")
        ax.set_title(f"Patch {key} per epoch", fontsize=10)
        ax.set_xlim(0.5, longest + 0.5)  # epochs are whole: no 0.98 ... 1.02 ticks
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    fig.suptitle("Train solid, inner validation dashed", fontsize=9)
    axes[0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


def confusion(matrix: list[list[int]], path: Path, title: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    data = np.asarray(matrix)
    ax.imshow(data, cmap="Blues")
    names = [c.value for c in CLASSES]
    ax.set_xticks(range(3), names)
    ax.set_yticks(range(3), names)
    ax.set_xlabel(f"label (normal only at P(normal) >= {NORMAL_AT_LEAST})")
    ax.set_ylabel("truth")
    for (i, j), value in np.ndenumerate(data):
        ax.text(j, i, str(value), ha="center", va="center",
                color="white" if value > data.max() / 2 else "black")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def roc_curves(truth: np.ndarray, curves: dict[str, np.ndarray], path: Path) -> None:
    """Abnormal-vs-normal and malignant-vs-rest ROC, one line per model in ``curves``."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    tasks = (("abnormal vs normal", truth > 0, lambda p: p[:, 1] + p[:, 2]),
             ("malignant vs rest", truth == 2, lambda p: p[:, 2]))
    for ax, (title, positive, score) in zip(axes, tasks, strict=True):
        for k, (name, probs) in enumerate(curves.items()):
            if positive.all() or not positive.any():
                continue
            fpr, tpr, _ = roc_curve(positive, score(probs))
            auc = roc_auc_score(positive, score(probs))
            ax.plot(fpr, tpr, color=f"C{k}", label=f"{name} (AUC {auc:.2f})")
        ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
        ax.set_xlabel("1 - specificity")
        ax.set_ylabel("sensitivity")
        ax.set_title(title)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def reliability(truth: np.ndarray, probs: np.ndarray, path: Path, bins: int = 10) -> None:
    plt = _pyplot()
    # ECE's own pairing and bins: the top class, not the label (``metrics.top_label``).
    confidence, correct = metrics.top_label(truth, probs)
    index = metrics.confidence_bins(confidence, bins)
    centres, accuracy, counts = [], [], []
    for b in range(bins):
        members = index == b
        if members.any():
            centres.append(confidence[members].mean())
            accuracy.append(correct[members].mean())
            counts.append(int(members.sum()))
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="perfect calibration")
    ax.plot(centres, accuracy, marker="o", label="model (validation)")
    for x, y, n in zip(centres, accuracy, counts, strict=True):
        ax.annotate(str(n), (x, y), fontsize=7, xytext=(3, -9), textcoords="offset points")
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("share whose top class is right")
    ax.set_title("Reliability diagram (images per bin)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def localisation(ratios: Sequence[float], path: Path) -> None:
    """Distance from the heatmap peak to the circle's centre, in circle radii."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(np.clip(np.asarray(ratios, dtype=np.float64), 0, 10), bins=20, range=(0, 10))
    ax.axvline(1.0, color="C3", ls="--", label="circle edge")
    ax.set_xlabel("peak distance to lesion centre / circle radius (clipped at 10)")
    ax.set_ylabel("abnormal validation images")
    ax.set_title("Where the heatmap peaks, relative to the annotated circle", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
