"""Figures, written atomically as PNG files (matplotlib, no display needed)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ..fsutil import atomic_path  # noqa: E402

# class and file names in other scripts (Chinese, Japanese, Arabic...): matplotlib falls back through this list
# to the first installed font that has the glyph (3.6+); with none installed the glyph is a box, not a warning
FALLBACK_FONTS = ("Noto Sans CJK JP", "Noto Sans CJK SC", "WenQuanYi Zen Hei", "Droid Sans Fallback", "Noto Sans")


def _font_families() -> list[str]:
    from matplotlib import font_manager

    installed = {font.name for font in font_manager.fontManager.ttflist}
    return ["DejaVu Sans", *(name for name in FALLBACK_FONTS if name in installed)]


plt.rcParams["font.family"] = _font_families()


def _save(fig, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from font", category=UserWarning)
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_curves(history: Sequence[dict], path: str | os.PathLike, start: dict | None = None) -> None:
    """Training and validation loss and accuracy per epoch; ``start``: the validation scores of the probe a
    fine-tune started from (epoch 0), drawn as the line its epochs must beat."""
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((ax_loss, "loss", "loss"), (ax_acc, "acc", "accuracy")):
        ax.plot(epochs, [float(r[f"train_{key}"]) for r in history], "o-", label="train")
        ax.plot(epochs, [float(r[f"val_{key}"]) for r in history], "o-", label="validation")
        if start is not None and start.get(f"val_{key}") is not None:
            ax.axhline(float(start[f"val_{key}"]), color="grey", linestyle="--", label="the probe it started from")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        if key == "loss":
            ax.set_yscale("log")  # early spikes would otherwise flatten the rest of the curve
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path)


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], classes: Sequence[str], path: str | os.PathLike) -> None:
    counts = np.asarray(matrix)
    rows = counts / np.maximum(counts.sum(1, keepdims=True), 1)  # recall per true class
    n = len(classes)
    side = min(max(4.0, 0.5 * n + 2), 30)
    fig, ax = plt.subplots(figsize=(side, side * 0.9))
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        ax.set_xticks(range(n), classes, rotation=45, ha="right")
        ax.set_yticks(range(n), classes)
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(
                        j,
                        i,
                        str(counts[i, j]),
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if rows[i, j] > 0.5 else "black",
                    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (test; colour = share of the true class)")
    _save(fig, path)


def plot_per_class(metrics: dict[str, Any], path: str | os.PathLike, accuracy: str = "accuracy") -> None:
    """Precision, recall and F1 per class; the title gives the test ``accuracy`` (its task's name for it)."""
    names = list(metrics["per_class"])
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(names) + 2), 4))
    for offset, key in zip((-0.27, 0, 0.27), ("precision", "recall", "f1")):
        ax.bar(x + offset, [metrics["per_class"][n][key] for n in names], width=0.27, label=key)
    ax.set_xticks(x, names, rotation=45 if len(names) > 8 else 0, ha="right" if len(names) > 8 else "center")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"per-class metrics (test {accuracy} {metrics['accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars: inside, it hid the last classes
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def plot_reliability(
    before: Sequence[dict[str, float]],
    after: Sequence[dict[str, float]],
    ece: tuple[float, float],
    path: str | os.PathLike,
) -> None:
    """Reliability diagrams of the test predictions before and after temperature scaling: each bin's
    accuracy against its confidence (the diagonal is perfect calibration), and how many images it holds."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharey=True)
    for ax, bins, name, error in zip(axes, (before, after), ("before calibration", "after temperature scaling"), ece):
        lows = [b["low"] for b in bins]
        width = bins[0]["high"] - bins[0]["low"]
        accuracy = [b["accuracy"] if b["count"] else 0.0 for b in bins]
        confidence = [b["confidence"] if b["count"] else 0.0 for b in bins]
        ax.bar(lows, accuracy, width=width, align="edge", color="#4c72b0", edgecolor="white", label="accuracy")
        # the gap between a bin's accuracy and its confidence: above the bar over-confident, inside it under-
        bottom = [min(a, c) for a, c in zip(accuracy, confidence)]
        gap = [abs(c - a) for a, c in zip(accuracy, confidence)]
        ax.bar(
            lows,
            gap,
            bottom=bottom,
            width=width,
            align="edge",
            facecolor="none",
            edgecolor="#cc3333",
            hatch="///",
            linewidth=0.8,
            label="gap to confidence",
        )
        ax.plot([0, 1], [0, 1], color="black", linewidth=1, linestyle="--")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top probability)")
        ax.set_title(f"{name}: ECE {error:.4f}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left")
    _save(fig, path)


def _show(ax, image: torch.Tensor) -> None:
    """A C x H x W image in 0..1 or uint8."""
    scaled = image.float() / 255 if image.dtype == torch.uint8 else image.float()
    array = scaled.clamp(0, 1).permute(1, 2, 0).numpy()
    ax.imshow(
        array[..., 0] if array.shape[-1] == 1 else array,
        cmap="gray" if array.shape[-1] == 1 else None,
        interpolation="nearest",
    )
    ax.axis("off")


def plot_image_grid(
    images: torch.Tensor,
    titles: Sequence[str],
    path: str | os.PathLike,
    title_colors: Sequence[str] | None = None,
    suptitle: str = "",
    columns: int = 8,
) -> None:
    n = len(images)
    cols = min(columns, n)
    rows = (n + cols - 1) // cols
    height = 1.8 * rows
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, height), squeeze=False)
    fig.subplots_adjust(top=1 - 0.45 / height)  # room for the top row's two-line titles, whatever the rows
    for i, ax in enumerate(axes.flat):
        if i < n:
            _show(ax, images[i])
            ax.set_title(titles[i], fontsize=7, color=(title_colors[i] if title_colors else "black"))
        else:
            ax.axis("off")
    if suptitle:  # above the top row's two-line titles (bbox_inches="tight" keeps it in the file)
        fig.suptitle(suptitle, y=1.0, va="bottom")
    _save(fig, path)


def plot_predictions(
    images: torch.Tensor, probs: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], path: str | os.PathLike
) -> None:
    confidence, predicted = probs.max(1)
    titles = [
        f"{classes[p]} {c:.2f}\n(true {classes[t]})"
        for p, c, t in zip(predicted.tolist(), confidence.tolist(), labels.tolist())
    ]
    colors = ["black" if p == t else "red" for p, t in zip(predicted.tolist(), labels.tolist())]
    plot_image_grid(images, titles, path, colors, "test predictions: predicted probability (true); wrong in red")


def plot_kernels(kernels: torch.Tensor, path: str | os.PathLike, title: str = "first-layer kernels") -> None:
    """Conv kernels (out x in x k x k) as small images: RGB where the input has 3 channels, else the
    channel mean in grey; each scaled to its own range so its pattern shows."""
    n = min(len(kernels), 64)
    cols = min(8, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.1 * cols, 1.1 * rows + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        k = kernels[i] if kernels.shape[1] == 3 else kernels[i].mean(0, keepdim=True)
        k = (k - k.min()) / (k.max() - k.min()).clamp_min(1e-8)
        _show(ax, k)
    fig.suptitle(f"{title} ({len(kernels)} of size {kernels.shape[-2]}x{kernels.shape[-1]})", fontsize=9)
    _save(fig, path)


def plot_feature_maps(
    maps: Sequence[tuple[str, torch.Tensor]],
    path: str | os.PathLike,
    channels: int = 8,
    image: torch.Tensor | None = None,
) -> None:
    """One row per layer: its output shape and the first ``channels`` maps of one image (drawn first, if given)."""
    rows = [("input", image)] if image is not None else []
    rows += list(maps)
    fig, axes = plt.subplots(len(rows), channels, figsize=(1.2 * channels, 1.3 * len(rows)), squeeze=False)
    for axes_row, (label, fmap) in zip(axes, rows):
        for c, ax in enumerate(axes_row):
            ax.axis("off")
            if label == "input":
                if c == 0:
                    _show(ax, fmap)
            elif c < len(fmap):
                ax.imshow(fmap[c].numpy(), cmap="viridis", interpolation="nearest")
        axes_row[0].set_title(f"{label}: {tuple(fmap.shape)}", fontsize=7, loc="left")
    fig.subplots_adjust(top=1 - 0.7 / fig.get_figheight())  # the title just above the first row, however many rows
    fig.suptitle("feature maps of one image, layer by layer (first channels)", fontsize=9)
    _save(fig, path)


def plot_explanations(
    images: torch.Tensor,
    heatmaps: Sequence[torch.Tensor],
    titles: Sequence[str],
    path: str | os.PathLike,
    suptitle: str = "",
) -> None:
    """Per image, side by side: the image, and the image under its heat map (red = what the class rests on)."""
    n = len(images)
    pairs = min(3, n)  # image + overlay pairs per row
    rows = (n + pairs - 1) // pairs
    fig, axes = plt.subplots(rows, 2 * pairs, figsize=(2.0 * 2 * pairs, 2.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        row, col = divmod(i, pairs)
        plain, overlay = axes[row, 2 * col], axes[row, 2 * col + 1]
        _show(plain, images[i])
        plain.set_title(titles[i], fontsize=7, loc="left")
        _show(overlay, images[i])
        overlay.imshow(heatmaps[i].numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear")
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    _save(fig, path)


def plot_comparison(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    """Bars per run: test accuracy, macro F1, train seconds, parameters and multiply-adds (the last two
    on log scales: models differ by orders of magnitude)."""
    panels = [
        ("test_accuracy", "test accuracy", False),
        ("macro_f1", "macro F1", False),
        ("train_seconds", "train seconds", False),
        ("parameters", "parameters", True),
        ("macs", "multiply-adds / image", True),
    ]
    names = [r["run"] for r in rows]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 0.35 * len(rows) + 2.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, title, log) in zip(axes, panels):
        values = [float(r[key]) for r in rows]
        ax.barh(range(len(rows)), values, color=[colors[i % len(colors)] for i in range(len(rows))])
        ax.set_yticks(range(len(rows)), names if ax is axes[0] else [""] * len(rows), fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=9)
        if log:  # bars start a decade below the smallest value, so their lengths compare orders of magnitude
            ax.set_xscale("log")
            ax.set_xlim(10 ** (np.floor(np.log10(max(min(values), 1e-3))) - 1), max(values) * 8)
        elif key == "train_seconds":
            ax.set_xlim(0, max(values) * 1.3)
        else:
            ax.set_xlim(min(values) * 0.9 if min(values) > 0.5 else 0, 1)
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:,.0f}" if v >= 10 else f" {v:.4f}", va="center", fontsize=7)
        ax.grid(axis="x", alpha=0.3)
    _save(fig, path)


def plot_lr_sweep(
    lrs: Sequence[float], losses: Sequence[float], suggestion: float, path: str | os.PathLike, title: str
) -> None:
    """The learning-rate finder's curve: smoothed training loss over a log-spaced lr sweep, the suggestion marked."""
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(lrs, losses, color="tab:blue")
    ax.axvline(suggestion, color="tab:red", linestyle="--", label=f"suggested lr {suggestion:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (lr), log scale")
    ax.set_ylabel("training loss (smoothed)")
    low, high = min(losses), losses[0]
    ax.set_ylim(low - 0.1 * (high - low + 1e-9), high + 0.6 * (high - low + 1e-9))  # the explosion off the top
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_learning_curve(curve: Any, path: str | os.PathLike) -> None:
    """A learning curve (:class:`imgclf.doctor.curve.LearningCurve`): measured scores per training-set size
    (mean and the seeds' spread), the power-law fit extended to 4x today's images, overall and per class."""
    fig, (ax_all, ax_class) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = plt.get_cmap("tab10")

    def draw(ax: Any, line: Any, colour: Any, label: str) -> None:
        sizes = sorted(line.points)
        means = [float(np.mean(line.points[n])) for n in sizes]
        spread = [float(np.std(line.points[n])) for n in sizes]
        ax.errorbar(sizes, means, yerr=spread, fmt="o", color=colour, ms=4, capsize=2, label=label)
        xs = np.geomspace(sizes[0], line.images * 4, 60)
        fitted = [1 - line.fit.error(x) for x in xs]
        ax.plot(xs[xs <= line.images], np.asarray(fitted)[xs <= line.images], "-", color=colour, lw=1)
        ax.plot(xs[xs >= line.images], np.asarray(fitted)[xs >= line.images], "--", color=colour, lw=1)

    overall = curve.lines[0]
    draw(ax_all, overall, "tab:blue", "measured (mean, seeds' spread)")
    for factor in (2, 4):
        score, low, high = overall.predicted(factor)
        ax_all.errorbar(
            [overall.images * factor], [score], yerr=[[score - low], [high - score]], fmt="s", color="tab:red",
            capsize=3, label="predicted: 2x, 4x the images" if factor == 2 else None,
        )  # fmt: skip
    ax_all.axvline(overall.images, color="grey", linestyle=":", label="your images now")
    ax_all.set_title(f"all classes: {curve.metric} on {curve.held_out:,} held-out images")
    worst = sorted(curve.lines[1:], key=lambda line: line.now())[:10]  # the classes that need images most
    for i, line in enumerate(worst):
        draw(ax_class, line, colours(i % 10), line.name)
    ax_class.set_title("per class: recall (the 10 lowest now)" if len(curve.lines) > 11 else "per class: recall")
    for ax in (ax_all, ax_class):
        ax.set_xscale("log")
        ax.set_xlabel("training images (log scale)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    ax_all.set_ylabel(curve.metric)
    fig.suptitle(f"{curve.data}: {BACKBONE_LABEL} linear probe at {curve.image_size} px; dashed: the power-law fit")
    _save(fig, path)


BACKBONE_LABEL = "lite0"


def plot_unknown_curve(result: dict[str, Any], path: str | os.PathLike) -> None:
    """ "None of these": per share of real images kept, the share of unrelated images accepted, per score."""
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for name, rows in result["curves"].items():
        chosen = " (used)" if name == result["chosen"] else ""
        ax.plot(
            [r["coverage"] for r in rows],
            [r["unrelated_accepted"] for r in rows],
            marker="o",
            label=f"{name}{chosen}, AUROC {result['auroc'][name]:.3f}",
        )
    ax.axvline(result["chosen_at_coverage"], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("real test images kept (the rest answer `unknown`)")
    ax.set_ylabel("unrelated images accepted")
    ax.set_title(f"{result['unrelated_images']:,} unrelated images against {result['real_images']:,} real ones")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    _save(fig, path)


def plot_benchmark(formats: Sequence[str], speeds: Sequence[dict[int, float]], path: str | os.PathLike) -> None:
    """Images per second per format, a bar per batch size (``imgclf benchmark``)."""
    batches = sorted({b for speed in speeds for b in speed})
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(formats) * len(batches) + 1.2))
    height = 0.8 / max(len(batches), 1)
    for k, batch in enumerate(batches):
        values = [speed.get(batch, 0.0) for speed in speeds]
        bars = ax.barh([i + k * height for i in range(len(formats))], values, height, label=f"batch {batch}")
        ax.bar_label(bars, [f"{v:,.0f}" for v in values], padding=3, fontsize=8)
    ax.set_yticks([i + height * (len(batches) - 1) / 2 for i in range(len(formats))], formats)
    ax.invert_yaxis()
    ax.set_xlabel("images per second on this machine")
    ax.set_title("the run's model in each format, on its test split")
    ax.margins(x=0.15)  # room for the longest bar's label
    ax.legend(loc="best")  # away from the bars: the fastest format is rarely the first row
    _save(fig, path)
