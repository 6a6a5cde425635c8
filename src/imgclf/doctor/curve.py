"""How many more images do I need? A learning curve of the shipped backbone's linear probe.

The probe trains on 10% ... 100% of each class's training images (stratified, a few seeds), from the
embedding cache, and is scored on the held-out images (validation and test splits together). The error of
each class and of the whole falls as a power law of the images (Hestness et al. 2017: error = b x n^-c,
fitted on log-log axes), which says what 2x and 4x the images would likely give. The seeds' spread is the
fit's uncertainty: the range printed is the fits of the seeds one by one. It is the probe's curve: a
fine-tuned network sits above it, and tends to gain at least as much from more images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import TrainConfig
from ..data import load_data
from ..features.backbone import BACKBONE, Backbone, largest_probe_size, own_size
from ..features.probe import fit_probe
from ..fsutil import atomic_write_json
from ..plots.figures import plot_learning_curve
from ..plots.tables import Table
from ..recipes import probe_recipe
from ..runtime import Log, resolve_device, seed_everything
from ..train.balance import balance_for
from ..train.build import run_config

FRACTIONS = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
SEEDS = 3
GROWTH = (2, 4)  # the multiples of today's images the curve is read at


@dataclass
class PowerLaw:
    """error = b x n^-c, fitted to (images, error) points on log-log axes."""

    b: float
    c: float

    @classmethod
    def fit(cls, images: Sequence[float], errors: Sequence[float]) -> PowerLaw:
        x = np.log(np.asarray(images, dtype=float))
        y = np.log(np.clip(np.asarray(errors, dtype=float), 1e-4, None))
        slope, intercept = np.polyfit(x, y, 1)
        return cls(float(math.exp(intercept)), float(max(0.0, -slope)))  # more images never predicted to hurt

    def error(self, images: float) -> float:
        return min(1.0, self.b * images**-self.c)


@dataclass
class CurveLine:
    """One class (or "all"): its images now, measured scores per fraction, and the fits."""

    name: str
    images: int  # training images now
    points: dict[int, list[float]] = field(default_factory=dict)  # images -> score per seed
    fit: PowerLaw | None = None
    seed_fits: list[PowerLaw] = field(default_factory=list)

    def now(self) -> float:
        return float(np.mean(self.points[max(self.points)]))

    def predicted(self, factor: float) -> tuple[float, float, float]:
        """(score, low, high) with ``factor`` x today's images: the mean fit, and the range of it and the seeds'
        fits (the mean of the draws' scores can fit a curve outside every single draw's: the range holds it)."""
        assert self.fit is not None
        n = self.images * factor
        score = 1 - self.fit.error(n)
        each = [score, *(1 - f.error(n) for f in self.seed_fits)]
        return score, min(each), max(each)


@dataclass
class LearningCurve:
    data: str
    image_size: int
    metric: str
    lines: list[CurveLine]
    plot: Path
    held_out: int

    def table(self) -> Table:
        rows = []
        for line in self.lines:
            row = [line.name, f"{line.images:,}", f"{line.now():.3f}"]
            for factor in GROWTH:
                score, low, high = line.predicted(factor)
                row.append(f"{score:.3f} ({low:.3f}-{high:.3f})")
            rows.append(row)
        header = ["class", "train images", f"{self.metric} now", *(f"with {f}x images" for f in GROWTH)]
        return Table(header, rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": self.data,
            "model": f"{BACKBONE} linear probe",
            "image_size": self.image_size,
            "metric": self.metric,
            "held_out_images": self.held_out,
            "lines": [
                {
                    "name": line.name,
                    "train_images": line.images,
                    "points": {str(n): scores for n, scores in sorted(line.points.items())},
                    "power_law": {"b": line.fit.b, "c": line.fit.c} if line.fit else None,
                    **{f"predicted_{f}x": line.predicted(f) for f in GROWTH},
                }
                for line in self.lines
            ],
        }


def _subset(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """``fraction`` of each class's images (at least 2), drawn with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in labels.unique().tolist():
        index = torch.nonzero(labels == c).flatten()
        take = max(2, round(fraction * len(index)))
        chosen.append(index[torch.randperm(len(index), generator=generator)[:take]])
    return torch.cat(chosen).sort().values


def learning_curve(
    settings: TrainConfig, out: str | Path, log: Log, fractions: tuple[float, ...] = FRACTIONS, seeds: int = SEEDS
) -> LearningCurve:
    """The probe's learning curve on ``settings``'s data (see the module's text), plotted and written to ``out``."""
    out = Path(out)
    seed_everything(settings.seed)
    device = resolve_device(settings.device)
    backbone = Backbone(device)
    data = load_data(settings.replace(image_size=settings.image_size or backbone.facts.useful_size).data_config)
    if not settings.image_size:
        size = largest_probe_size(own_size(data, settings.max_image_pixels))
        if size != data.image_size:
            data = load_data(settings.replace(image_size=size).data_config)
    data.task.check("learning_curve", data.name)
    settings = settings.replace(model=BACKBONE, image_size=data.image_size)
    cfg = run_config(settings, data, device.type)[0]
    cache = cfg.data.cache_dir
    tag = f"{data.name}-{BACKBONE}-{data.image_size}px"
    log(f"learning curve of {data.name}: {BACKBONE} features at {data.image_size} px (cached after the first time)")
    train = backbone.features(data.train.images, cache, tag).values
    held = torch.cat([backbone.features(s.images, cache, tag).values for s in (data.val, data.test)])
    held_labels = torch.cat([data.val.labels, data.test.labels])
    balanced = cfg.schedule.monitor == "val_balanced_acc"
    metric = "balanced accuracy" if balanced else "accuracy"
    lines = [CurveLine("all", len(data.train))] + [
        CurveLine(name, n) for name, n in zip(data.classes, data.class_counts())
    ]
    for fraction in fractions:
        for seed in range(seeds):
            index = _subset(data.train.labels, fraction, settings.seed + seed) if fraction < 1 else None
            labels = data.train.labels if index is None else data.train.labels[index]
            counts = torch.bincount(labels, minlength=data.num_classes).tolist()
            run_cfg = probe_recipe(cfg.replace(seed=settings.seed + seed), len(labels))
            result = fit_probe(
                (train if index is None else train[index], labels),
                (held, held_labels),
                data.num_classes,
                run_cfg,
                balance_for(counts, labels, cfg),
            )
            predicted = result.logits(held).argmax(1)
            recalls = [(predicted[held_labels == c] == c).float().mean().item() for c in range(data.num_classes)]
            overall = float(np.mean(recalls)) if balanced else (predicted == held_labels).float().mean().item()
            lines[0].points.setdefault(len(labels), []).append(overall)
            for c, recall in enumerate(recalls):
                lines[c + 1].points.setdefault(counts[c], []).append(recall)
        log(f"  {fraction:.0%} of each class: {metric} {np.mean(lines[0].points[max(lines[0].points)]):.4f}")
    for line in lines:
        sizes = sorted(line.points)
        line.fit = PowerLaw.fit(
            [n for n in sizes for _ in line.points[n]], [1 - s for n in sizes for s in line.points[n]]
        )
        line.seed_fits = [
            PowerLaw.fit(sizes, [1 - line.points[n][i] for n in sizes])
            for i in range(min(len(v) for v in line.points.values()))
        ]
    curve = LearningCurve(data.name, data.image_size, metric, lines, out / "learning_curve.png", len(held_labels))
    plot_learning_curve(curve, curve.plot)
    atomic_write_json(out / "learning_curve.json", curve.to_dict())
    log(curve.table().to_text())
    log(f"plot: {curve.plot}; numbers: {out / 'learning_curve.json'}")
    return curve
