"""The folder default, decided on the user's validation split within a time budget.

For a folder or CSV with no model given, ``train`` tries the candidates that can win, each briefly, scored on
the validation split, then spends the rest of the budget on the best:

- the shipped ``lite0`` (EfficientNet-Lite0, ImageNet weights) as a linear probe on its cached features
  (:mod:`imgclf.features`), at each size of its ladder up to the images' own (at least the size its
  features are worth at: ImageNet features need a few dozen pixels per object), while the features fit in the
  budget's share;
- the scratch ``cnn`` with its recipe: the whole recipe when it fits in :data:`CNN_TRIAL_SHARE` of the budget
  (small folders), else two short complete runs whose validation errors, fitted by a power law in epochs
  (error ~ b x epochs^-c), give the score the whole recipe would reach.

A probe is a floor for the pretrained network: its fine-tuning starts from the probe's layer and keeps the
probe (epoch 0 of best.pt) unless an epoch beats it on validation. So the pretrained candidate's score is its
best probe, the cnn's its (extrapolated) recipe, and the higher wins. Scores are validation accuracy, or
balanced accuracy when classes are imbalanced. Any setting you give fixes that choice: `model` skips the
search, `image_size` fixes the probes' size, `epochs` the final run's epochs, `budget` the time.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import DEFAULT_MODEL, RunConfig, TrainConfig
from ..data import DataBundle, load_data
from ..features.backbone import BACKBONE, PROBE_SIZES, Backbone, own_size
from ..features.probe import ProbeResult, probe_data
from ..plots.tables import Table
from ..recipes import is_imbalanced, search_budget
from ..rundir import RunDir
from ..runtime import Log
from .build import Prepared, build, run_config, seconds_per_epoch, trainer_for

UPSAMPLE_GAIN = 0.01  # the validation score a larger upsampling must have added to try the next one
FEATURE_SHARE = 0.35  # of the budget at most for computing the probes' features
CNN_TRIAL_SHARE = 0.25  # the cnn's whole recipe runs in the search when it takes at most this share
CNN_SHORT_SHARE = 0.2  # else its two short runs take about this share together


@dataclass
class Trial:
    candidate: str  # "lite0 probe", "cnn"
    image_size: int
    score: float  # on the validation split: accuracy, or balanced accuracy for imbalanced classes
    seconds: float
    how: str

    def row(self) -> list[str]:
        return [self.candidate, f"{self.image_size}", f"{self.score:.4f}", f"{self.seconds:.1f}", self.how]


@dataclass
class SearchOutcome:
    budget: float
    metric: str  # "accuracy" or "balanced accuracy"
    trials: list[Trial] = field(default_factory=list)
    chosen: str = DEFAULT_MODEL
    image_size: int | None = None
    reason: str = ""
    seconds: float = 0.0
    changes: dict[str, Any] = field(default_factory=dict)  # the settings the search sets
    probe: ProbeResult | None = None  # the winning probe's layer: where fine-tuning starts

    def table(self) -> Table:
        return Table(["candidate", "px", f"val {self.metric}", "seconds", "how"], [t.row() for t in self.trials])

    def to_dict(self) -> dict[str, Any]:
        """What the run records in search.json (and the report shows)."""
        return {
            "budget_seconds": self.budget,
            "metric": self.metric,
            "trials": [dataclasses.asdict(t) for t in self.trials],
            "chosen": self.chosen,
            "image_size": self.image_size,
            "reason": self.reason,
            "search_seconds": round(self.seconds, 1),
            "settings": self.changes,
        }


def extrapolate(points: Sequence[tuple[float, float]], epochs: float) -> float:
    """The score at ``epochs`` from two (epochs, score) points, by a power law of the error: error =
    b x epochs^-c with 0 <= c <= 1 (no faster than 1/epochs, never worse with more epochs)."""
    (x1, s1), (x2, s2) = points
    e1, e2 = max(1e-3, 1 - s1), max(1e-3, 1 - s2)
    c = min(1.0, max(0.0, math.log(e1 / e2) / math.log(x2 / x1)))
    return 1 - e2 * (epochs / x2) ** -c


class Search:
    def __init__(self, settings: TrainConfig, data: DataBundle, device: torch.device, log: Log) -> None:
        self.settings, self.data, self.device, self.log = settings, data, device, log
        self.budget = search_budget(settings, device.type)[0]
        self.imbalanced = is_imbalanced(data.class_counts())
        self.outcome = SearchOutcome(self.budget, "balanced accuracy" if self.imbalanced else "accuracy")
        self.start = time.perf_counter()
        self.backbone = Backbone(device)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def score(self, row: dict[str, float]) -> float:
        return row["val_balanced_acc"] if self.imbalanced else row["val_acc"]

    def resolved(self, settings: TrainConfig, data: DataBundle) -> RunConfig:
        return run_config(settings, data, self.device.type)[0]

    # ------------------------------------------------------------ the pretrained candidate

    def probe(self, size: int) -> tuple[ProbeResult, float, float]:
        """The probe at ``size``: (result, seconds, seconds per image of the features computed)."""
        t0 = time.perf_counter()
        settings = self.settings.replace(model=BACKBONE, image_size=size, budget=None)
        data = load_data(settings.data_config)
        result, computed = probe_data(self.backbone, data, self.resolved(settings, data))
        per_image = computed / (len(data.train) + len(data.val)) if computed else 0.0
        return result, time.perf_counter() - t0, per_image

    def probe_sizes(self) -> tuple[list[int], int]:
        """The sizes to probe, and the largest that is not an upsampling beyond what ImageNet features need."""
        if self.settings.image_size:
            return [self.settings.image_size], self.settings.image_size
        own = own_size(self.data, self.settings.max_image_pixels)
        return list(PROBE_SIZES), max(own, self.backbone.facts.useful_size)

    def try_probes(self) -> tuple[ProbeResult, int] | None:
        smallest = self.backbone.facts.min_size
        if self.settings.image_size and self.settings.image_size < smallest:
            self.log(f"search: {BACKBONE} skipped: it needs images of {smallest} px or more (`image_size`)")
            return None
        best: tuple[ProbeResult, int] | None = None
        per_image, measured_at, spent = 0.0, 0, 0.0
        scores: list[float] = []
        images = len(self.data.train) + len(self.data.val)
        sizes, natural = self.probe_sizes()
        for size in sizes:
            # past the images' own size, a larger upsampling is tried only while the previous one still helped
            if size > natural and (len(scores) < 2 or scores[-1] < scores[-2] + UPSAMPLE_GAIN):
                break
            estimate = per_image * (size / measured_at) ** 2 * images if measured_at else 0.0
            if spent + estimate > FEATURE_SHARE * self.budget:
                self.log(
                    f"search: lite0 at {size} px skipped: its features (~{estimate:.0f} s) pass the budget's share"
                )
                break
            result, seconds, computed = self.probe(size)
            if computed:
                per_image, measured_at = computed, size
                spent += computed * images
            how = "linear probe on cached features" + ("" if computed else " (features from the cache)")
            trial = Trial(f"{BACKBONE} probe", size, result.score(self.monitor), seconds, how)
            scores.append(trial.score)
            self.outcome.trials.append(trial)
            self.log(
                f"search: {trial.candidate} at {size} px: val {self.outcome.metric} {trial.score:.4f} ({seconds:.1f} s)"
            )
            if best is None or trial.score > best[0].score(self.monitor):
                best = (result, size)
        return best

    @property
    def monitor(self) -> str:
        return "val_balanced_acc" if self.imbalanced else "val_acc"

    # ------------------------------------------------------------ the scratch candidate

    def train_cnn(self, cfg: RunConfig, epochs: int) -> float:
        """The validation score of the cnn trained by ``cfg``'s recipe compressed into ``epochs``."""
        if epochs != cfg.schedule.epochs:
            share = cfg.schedule.warmup_epochs / cfg.schedule.epochs
            cfg = cfg.replace(epochs=epochs, warmup_epochs=share * epochs)
        prepared = Prepared(cfg.replace(patience=None, target_accuracy=None), self.data, self.device)
        model = build(prepared, resuming=False)
        trainer = trainer_for(prepared, model, run=RunDir("search", writes=False))
        trainer.fit()
        row = next(r for r in trainer.history if r["epoch"] == trainer.best_epoch)
        return self.score(row)

    def try_cnn(self) -> Trial:
        t0 = time.perf_counter()
        cfg = self.resolved(self.settings.replace(budget=None), self.data)
        epochs = cfg.schedule.epochs
        per_epoch = seconds_per_epoch(cfg, self.data, self.device)
        if per_epoch * epochs <= CNN_TRIAL_SHARE * self.budget:
            score, how = self.train_cnn(cfg, epochs), f"its whole recipe, {epochs} epochs"
        else:
            long = max(2, min(epochs // 2, math.floor(CNN_SHORT_SHARE * self.budget / per_epoch / 1.5)))
            short = max(1, long // 2)
            points = [(short, self.train_cnn(cfg, short)), (long, self.train_cnn(cfg, long))]
            score = extrapolate(points, epochs)
            how = f"{short} and {long} epochs ({points[0][1]:.4f}, {points[1][1]:.4f}), extrapolated to its {epochs}"
        size = cfg.data.image_size
        assert size is not None  # resolved for this data: its size
        trial = Trial(DEFAULT_MODEL, size, score, time.perf_counter() - t0, how)
        self.outcome.trials.append(trial)
        self.log(
            f"search: cnn at {trial.image_size} px: val {self.outcome.metric} {score:.4f} ({how}; {trial.seconds:.1f} s)"
        )
        return trial

    # ------------------------------------------------------------ the choice

    def fine_tune_epochs(self, size: int) -> int:
        """The epochs of lite0 at ``size`` that fit in what is left of the budget (at least 1, at most its recipe's)."""
        settings = self.settings.replace(model=BACKBONE, image_size=size, budget=None)
        data = load_data(settings.data_config)
        cfg = self.resolved(settings, data)
        per_epoch = seconds_per_epoch(cfg, data, self.device)
        left = self.budget - self.elapsed()
        return max(1, min(cfg.schedule.epochs, math.floor(left / per_epoch)))

    def run(self) -> SearchOutcome:
        out = self.outcome
        self.log(
            f"search: trying {BACKBONE} (ImageNet features, probed at several sizes) and the cnn on the validation "
            f"split, {out.metric}, within {self.budget:.0f} s"
            + ("" if self.settings.budget else " (the default budget; `budget` changes it, `search=off` skips it)")
        )
        probe = self.try_probes()
        cnn = self.try_cnn()
        if probe is not None and probe[0].score(self.monitor) > cnn.score:
            result, size = probe
            score = result.score(self.monitor)
            out.chosen, out.image_size, out.probe = BACKBONE, size, result
            out.reason = (
                f"{BACKBONE}'s probe at {size} px ({score:.4f}) beat the cnn ({cnn.score:.4f}); "
                "fine-tuning starts from the probe and keeps it unless an epoch beats it on validation"
            )
            out.changes = {"model": BACKBONE, "image_size": size}
            if not self.settings.is_set("epochs"):
                out.changes["epochs"] = self.fine_tune_epochs(size)
        else:
            best_probe = f"{BACKBONE}'s best probe ({probe[0].score(self.monitor):.4f})" if probe else "no probe"
            out.chosen, out.image_size = DEFAULT_MODEL, cnn.image_size
            out.reason = f"the cnn ({cnn.score:.4f}) beat {best_probe}"
            if self.settings.budget:
                out.changes = {"budget": max(1.0, self.budget - self.elapsed())}
        out.seconds = self.elapsed()
        self.log(out.table().to_text())
        self.log(f"search: chose {out.chosen} at {out.image_size} px in {out.seconds:.0f} s: {out.reason}")
        return out


def run_search(settings: TrainConfig, data: DataBundle, device: torch.device, log: Log) -> SearchOutcome:
    """Try the candidates on ``data``'s validation split and return the choice (see the module's text)."""
    return Search(settings, data, device, log).run()
