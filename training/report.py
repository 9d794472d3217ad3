"""Render what people would rather see than read: training curves and the confusion matrix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers or CI
import matplotlib.pyplot as plt
import numpy as np


def plot_curves(history: dict[str, list[float]], title: str, path: Path) -> None:
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = np.arange(1, len(history["loss"]) + 1)
    for ax, key in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.plot(epochs, history[key], marker=".", label="train")
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], marker=".", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    ax_acc.set_title(f"final validation accuracy {history.get('val_accuracy', [0])[-1]:.2%}")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(evaluation: dict[str, Any], classes: list[str], title: str, path: Path) -> None:
    matrix = np.array(evaluation["confusion_matrix"])
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * k, 0.6 + 0.6 * k))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(k), classes, rotation=45 if k > 4 else 0)
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = matrix.max() / 2
    for i in range(k):
        for j in range(k):
            color = "white" if matrix[i, j] > threshold else "black"
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color=color, fontsize=8)
    ax.set_title(
        f"{title}\naccuracy {evaluation['accuracy']:.2%} on {evaluation['samples']} held out"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_reliability(calibration: dict[str, Any], title: str, path: Path) -> None:
    """Accuracy against confidence per bin, before and after temperature scaling: a calibrated
    model's bars reach the diagonal."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharey=True)
    panels = (
        ("before", "uncalibrated (T = 1)", calibration["ece_before"]),
        ("after", f"T = {calibration['temperature']:.2f}", calibration["ece_after"]),
    )
    for ax, (key, label, ece) in zip(axes, panels, strict=True):
        rows = [r for r in calibration[f"reliability_{key}"] if r["count"]]
        lows = [r["low"] for r in rows]
        width = rows[0]["high"] - rows[0]["low"] if rows else 0.0
        ax.bar(
            lows,
            [r["accuracy"] for r in rows],
            width=width,
            align="edge",
            alpha=0.8,
            edgecolor="black",
            label="accuracy",
        )
        ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
        # Where each bar would end if the bin were calibrated: its mean confidence.
        ax.plot(
            [r["low"] + width / 2 for r in rows],
            [r["confidence"] for r in rows],
            "r_",
            markersize=12,
            markeredgewidth=2,
            label="mean confidence",
        )
        for r in rows:
            ax.text(
                r["low"] + width / 2, 0.02, str(r["count"]), ha="center", fontsize=6, rotation=90
            )
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_title(f"{label}: ECE {ece:.2%}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left", fontsize=8, framealpha=0.9)
    fig.suptitle(f"{title} ({calibration['bins']} bins; counts at the foot of each bar)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(
    target: Path,
    name: str,
    classes: list[str],
    history: dict[str, list[float]],
    evaluation: dict[str, Any],
    training: dict[str, Any],
    calibration: dict[str, Any] | None = None,
) -> Path:
    report = Path(target) / "report"
    report.mkdir(parents=True, exist_ok=True)
    plot_curves(history, f"{name}: training curves", report / "training_curves.png")
    plot_confusion(
        evaluation, classes, f"{name}: confusion matrix", report / "confusion_matrix.png"
    )
    if calibration is not None:
        plot_reliability(
            calibration, f"{name}: reliability on the held-out split", report / "reliability.png"
        )
    figures = {"history": history, "evaluation": evaluation, "training": training}
    (report / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    return report
