"""The folder default, decided on the user's validation split within a budget of measured work.

For a folder or CSV with no model given, ``train`` tries the candidates that can win, each briefly, scored on
held-out images, then spends the rest of the budget on the best:

- the shipped backbones (:data:`~imgclf.features.backbone.BACKBONES`, ImageNet weights) as linear probes on
  their cached features (:mod:`imgclf.features`): ``lite0`` at the sizes of its ladder, from the photos' own
  size (up to 384 px) downwards while a smaller size does as well, or, for small images, upsampled to where
  ImageNet features are worth it and beyond while that still helps; then ``lite1`` and ``lite2`` at the size
  chosen, when their features fit in the budget's share;
- the scratch ``cnn`` with its recipe: the whole recipe when it fits in :data:`CNN_TRIAL_SHARE` of the budget
  (small folders), else two short complete runs whose validation errors, fitted by a power law in epochs
  (error ~ b x epochs^-c), give the score the whole recipe would reach.

A probe is a floor for the pretrained network: its fine-tuning starts from the probe's layer (LP-FT), scores
the probe as epoch 0 of best.pt, stops after its first epoch when that did not improve on the probe, and
keeps the probe unless an epoch beats it. So the pretrained candidate's score is its best probe, the cnn's its
(extrapolated) recipe, and the higher wins. Scores are accuracy, or balanced accuracy when classes are
imbalanced, on the validation split, or cross-validated over training and validation together where the
validation split is small (:data:`~imgclf.recipes.SMALL_VALIDATION`); each is printed with its standard error.

The budget buys work measured once on this machine (:mod:`imgclf.speeds`), not wall-clock seconds: each
feature pass and training epoch is charged what this machine measured for it, so the same folder, seed and
budget make the same choices and the same number of epochs on every run here, and every choice lands in
``config.yaml`` (``--config`` repeats it without searching). Any setting you give fixes that choice: `model`
skips the search, `image_size` fixes the probes' size, `epochs` the final run's epochs, `budget` the work.
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
from ..data.splits import stratified_sample
from ..features.backbone import BACKBONE, BACKBONES, Backbone, own_size, probe_ladder
from ..features.probe import ProbeResult, probe_data
from ..plots.tables import Table
from ..recipes import is_imbalanced, search_budget
from ..rundir import RunDir
from ..runtime import Log
from .build import Prepared, build, run_config, seconds_per_epoch, trainer_for
from .progress import progress_bar

UPSAMPLE_GAIN = 0.01  # the score a larger upsampling must have added to try the next one
TIE = 0.005  # scores closer than this are a tie: the smaller size (cheaper to fine-tune) or backbone wins
FEATURE_SHARE = 0.4  # of the budget at most for computing the probes' features
CNN_TRIAL_SHARE = 0.25  # the cnn's whole recipe runs in the search when it takes at most this share
CNN_SHORT_SHARE = 0.2  # else its two short runs take about this share together
# Large folders: probes rank sizes and backbones on a stratified sample of this many training images (and at
# most VAL_SAMPLE validation images): the features of CIFAR-10's 50,000 photos at two sizes cost ~330 s on a
# 2-core CPU, more than the cnn the search then chose; a sample of 10,000 costs a fifth and ranks alike
PROBE_SAMPLE = 10_000
VAL_SAMPLE = 5_000


@dataclass
class Trial:
    candidate: str  # "lite0 probe", "cnn"
    image_size: int
    score: float  # held out: accuracy, or balanced accuracy for imbalanced classes
    seconds: float  # the work charged to the budget: this machine's measured cost of it
    how: str
    stderr: float = 0.0  # the score's standard error over its images (0: not estimated)

    def row(self) -> list[str]:
        score = f"{self.score:.4f}" + (f" ± {self.stderr:.3f}" if self.stderr else "")
        return [self.candidate, f"{self.image_size}", score, f"{self.seconds:.1f}", self.how]


@dataclass
class SearchOutcome:
    budget: float
    metric: str  # "accuracy" or "balanced accuracy"
    trials: list[Trial] = field(default_factory=list)
    chosen: str = DEFAULT_MODEL
    image_size: int | None = None
    reason: str = ""
    seconds: float = 0.0  # wall-clock seconds the search took
    spent: dict[str, float] = field(default_factory=dict)  # the budget's work by part: probes, cnn, fine-tune
    sure: str = ""  # how far the winner is ahead of the runner-up, in standard errors
    left_out: list[str] = field(default_factory=list)  # what the budget did not buy, with its cost
    changes: dict[str, Any] = field(default_factory=dict)  # the settings the search sets
    probe: ProbeResult | None = None  # the winning probe's layer: where fine-tuning starts

    def table(self) -> Table:
        return Table(["candidate", "px", f"held-out {self.metric}", "seconds", "how"], [t.row() for t in self.trials])

    def to_dict(self) -> dict[str, Any]:
        """What the run records in search.json (and the report shows)."""
        return {
            "budget_seconds": self.budget,
            "metric": self.metric,
            "trials": [dataclasses.asdict(t) for t in self.trials],
            "chosen": self.chosen,
            "image_size": self.image_size,
            "reason": self.reason,
            "sure": self.sure,
            "search_seconds": round(self.seconds, 1),
            "spent": {k: round(v, 1) for k, v in self.spent.items()},
            "left_out": self.left_out,
            "probe_val": (
                {
                    "val_loss": self.probe.val_loss,
                    "val_acc": self.probe.val_accuracy,
                    "val_balanced_acc": self.probe.val_balanced_accuracy,
                    "weight_decay": self.probe.weight_decay,
                }
                if self.probe is not None
                else None
            ),
            "settings": self.changes,
        }


def extrapolate(points: Sequence[tuple[float, float]], epochs: float) -> float:
    """The score at ``epochs`` from two (epochs, score) points, by a power law of the error: error =
    b x epochs^-c with 0 <= c <= 1 (no faster than 1/epochs, never worse with more epochs)."""
    (x1, s1), (x2, s2) = points
    e1, e2 = max(1e-3, 1 - s1), max(1e-3, 1 - s2)
    c = min(1.0, max(0.0, math.log(e1 / e2) / math.log(x2 / x1)))
    return 1 - e2 * (epochs / x2) ** -c


@dataclass
class ProbeTrial:
    backbone: str
    size: int
    result: ProbeResult
    trial: Trial


class Search:
    def __init__(self, settings: TrainConfig, data: DataBundle, device: torch.device, log: Log) -> None:
        self.settings, self.data, self.device, self.log = settings, data, device, log
        self.budget = search_budget(settings, device.type)[0]
        self.imbalanced = is_imbalanced(data.class_counts())
        self.outcome = SearchOutcome(self.budget, "balanced accuracy" if self.imbalanced else "accuracy")
        self.start = time.perf_counter()
        self.backbones: dict[str, Backbone] = {}
        self.spent = {"probes": 0.0, "cnn": 0.0}

    @property
    def monitor(self) -> str:
        return "val_balanced_acc" if self.imbalanced else "val_acc"

    def charged(self) -> float:
        return sum(self.spent.values())

    def score(self, row: dict[str, float]) -> float:
        return row[self.monitor]

    def resolved(self, settings: TrainConfig, data: DataBundle) -> RunConfig:
        return run_config(settings, data, self.device.type)[0]

    def backbone(self, name: str) -> Backbone:
        if name not in self.backbones:
            self.backbones[name] = Backbone(self.device, name)
        return self.backbones[name]

    # ------------------------------------------------------------ the pretrained candidates

    def feature_cost(self, name: str, size: int) -> float:
        """This machine's measured seconds for the features of the training and validation images probed."""
        images = min(len(self.data.train), PROBE_SAMPLE) + min(len(self.data.val), VAL_SAMPLE)
        return self.backbone(name).seconds_per_image(size, self.data.channels) * images

    def sampled(self, data: DataBundle) -> tuple[DataBundle, str]:
        """``data`` with at most :data:`PROBE_SAMPLE` training and :data:`VAL_SAMPLE` validation images
        (stratified, seeded), and how it says so."""
        if len(data.train) <= PROBE_SAMPLE and len(data.val) <= VAL_SAMPLE:
            return data, ""
        seed = self.settings.seed
        train = data.train.subset(stratified_sample(data.train.labels, PROBE_SAMPLE, seed))
        val = data.val.subset(stratified_sample(data.val.labels, VAL_SAMPLE, seed))
        note = f", a sample of {len(train):,} training and {len(val):,} validation images"
        return dataclasses.replace(data, train=train, val=val), note

    def affordable(self, name: str, size: int) -> bool:
        cost = self.feature_cost(name, size)
        if self.spent["probes"] + cost <= FEATURE_SHARE * self.budget:
            return True
        self.outcome.left_out.append(f"{name} probe at {size} px: its features ~{cost:.0f} s")
        self.log(f"search: {name} at {size} px skipped: its features (~{cost:.0f} s) pass the budget's share")
        return False

    def probe(self, name: str, size: int) -> ProbeTrial:
        t0 = time.perf_counter()
        settings = self.settings.replace(model=name, image_size=size, budget=None)
        data, note = self.sampled(load_data(settings.data_config))
        cost = self.feature_cost(name, size)
        images = len(data.train) + len(data.val)
        with progress_bar(images, f"{name} features at {size} px", "image", cost > 10) as bar:
            done = [0]

            def progress(n: int) -> None:
                bar.update(n - done[0])
                done[0] = n

            result, computed = probe_data(self.backbone(name), data, self.resolved(settings, data), progress)
        self.spent["probes"] += cost
        held = result.held_out
        how = (
            (f"linear probe, {held.how}" if held else "linear probe") + note + ("" if computed else ", features cached")
        )
        stderr = held.stderr(self.monitor) if held else 0.0
        trial = Trial(f"{name} probe", size, result.score(self.monitor), cost, how, stderr)
        self.outcome.trials.append(trial)
        self.log(
            f"search: {trial.candidate} at {size} px: {self.outcome.metric} {trial.score:.4f} ± {stderr:.3f} "
            f"({how}; {time.perf_counter() - t0:.1f} s)"
        )
        return ProbeTrial(name, size, result, trial)

    def try_sizes(self) -> list[ProbeTrial]:
        """lite0 at the sizes its ladder gives these images (or at `image_size`), within the features' share."""
        facts = self.backbone(BACKBONE).facts
        if self.settings.image_size:
            if self.settings.image_size < facts.min_size:
                self.log(f"search: {BACKBONE} skipped: it needs images of {facts.min_size} px or more (`image_size`)")
                return []
            below, above = [self.settings.image_size], list[int]()
        else:
            below, above = probe_ladder(own_size(self.data, self.settings.max_image_pixels))
        done: list[ProbeTrial] = []
        for size in below:  # downwards while a smaller size does as well as the best so far
            if not self.affordable(BACKBONE, size):
                continue  # the next, smaller size may fit
            done.append(self.probe(BACKBONE, size))
            best = max(t.trial.score for t in done)
            if done[-1].trial.score < best - UPSAMPLE_GAIN:
                break
        for size in above:  # upwards while each upsampling still helps
            scores = [t.trial.score for t in sorted(done, key=lambda t: t.size)]
            if len(scores) < 2 or scores[-1] < scores[-2] + UPSAMPLE_GAIN or not self.affordable(BACKBONE, size):
                break
            done.append(self.probe(BACKBONE, size))
        return done

    def try_backbones(self, best: ProbeTrial) -> list[ProbeTrial]:
        """The larger backbones at the size lite0 chose, in order, while each fits and the last one helped."""
        done: list[ProbeTrial] = []
        for name in BACKBONES[1:]:
            if name == best.backbone or not self.affordable(name, best.size):
                break
            done.append(self.probe(name, best.size))
            if done[-1].trial.score < best.trial.score + TIE:
                break
            best = done[-1]
        return done

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
            score, how, trained = self.train_cnn(cfg, epochs), f"its whole recipe, {epochs} epochs", epochs
        else:
            long = max(2, min(epochs // 2, math.floor(CNN_SHORT_SHARE * self.budget / per_epoch / 1.5)))
            short = max(1, long // 2)
            points = [(short, self.train_cnn(cfg, short)), (long, self.train_cnn(cfg, long))]
            score, trained = extrapolate(points, epochs), short + long
            how = f"{short} and {long} epochs ({points[0][1]:.4f}, {points[1][1]:.4f}), extrapolated to its {epochs}"
        size = cfg.data.image_size
        assert size is not None  # resolved for this data: its size
        self.spent["cnn"] = per_epoch * trained
        n_val = len(self.data.val)
        stderr = math.sqrt(max(score * (1 - score), 1e-4) / max(1, n_val))
        trial = Trial(DEFAULT_MODEL, size, score, self.spent["cnn"], how + f", validation ({n_val} images)", stderr)
        self.outcome.trials.append(trial)
        self.log(
            f"search: cnn at {trial.image_size} px: {self.outcome.metric} {score:.4f} ± {stderr:.3f} "
            f"({how}; {time.perf_counter() - t0:.1f} s)"
        )
        return trial

    # ------------------------------------------------------------ the choice

    def fine_tune_epochs(self, name: str, size: int) -> tuple[int, float]:
        """The epochs of ``name`` at ``size`` that the budget's work left buys (at least 1, at most its recipe's),
        and their cost."""
        settings = self.settings.replace(model=name, image_size=size, budget=None)
        data = load_data(settings.data_config)
        cfg = self.resolved(settings, data)
        per_epoch = seconds_per_epoch(cfg, data, self.device)
        left = self.budget - self.charged()
        epochs = max(1, min(cfg.schedule.epochs, math.floor(left / per_epoch)))
        if epochs < cfg.schedule.epochs:
            self.outcome.left_out.append(
                f"{cfg.schedule.epochs - epochs} more fine-tune epoch(s) of {name} at {size} px: "
                f"~{per_epoch:.0f} s each"
            )
        return epochs, epochs * per_epoch

    def certainty(self, winner: Trial, runner_up: Trial | None) -> str:
        if runner_up is None:
            return "no other candidate was scored"
        gap = winner.score - runner_up.score
        noise = math.hypot(winner.stderr, runner_up.stderr) or 1e-9
        verdict = "clear" if gap > 2 * noise else "likely" if gap > noise else "within noise"
        return (
            f"{verdict}: {gap:+.4f} over {runner_up.candidate} at {runner_up.image_size} px "
            f"({gap / noise:.1f} standard errors)"
        )

    def run(self) -> SearchOutcome:
        out = self.outcome
        self.log(
            f"search: trying the shipped backbones (ImageNet features, probed at several sizes) and the cnn on "
            f"held-out images, {out.metric}, within {self.budget:.0f} s of this machine's measured work"
            + ("" if self.settings.budget else " (the default budget; `budget` changes it, `search=off` skips it)")
        )
        probes = self.try_sizes()
        if probes:
            probes += self.try_backbones(self.best_of(probes))
        cnn = self.try_cnn()
        best = self.best_of(probes) if probes else None
        ranked = sorted(out.trials, key=lambda t: t.score, reverse=True)
        if best is not None and best.trial.score > cnn.score:
            out.chosen, out.image_size, out.probe = best.backbone, best.size, best.result
            out.reason = (
                f"{best.backbone}'s probe at {best.size} px ({best.trial.score:.4f}) beat the cnn ({cnn.score:.4f}); "
                "fine-tuning starts from the probe and keeps it unless an epoch beats it on validation"
            )
            out.changes = {"model": best.backbone, "image_size": best.size}
            if not self.settings.is_set("epochs"):
                epochs, cost = self.fine_tune_epochs(best.backbone, best.size)
                out.changes["epochs"] = epochs
                self.spent["fine-tune"] = cost
            winner = best.trial
        else:
            best_probe = f"the best probe ({best.trial.score:.4f})" if best else "no probe"
            out.chosen, out.image_size = DEFAULT_MODEL, cnn.image_size
            out.reason = f"the cnn ({cnn.score:.4f}) beat {best_probe}"
            if self.settings.budget:
                out.changes = {"budget": max(1.0, self.budget - self.charged())}
            winner = cnn
        others = [t for t in ranked if t is not winner and t.candidate != winner.candidate]
        out.sure = self.certainty(winner, others[0] if others else None)
        out.spent, out.seconds = dict(self.spent), time.perf_counter() - self.start
        self.log(out.table().to_text())
        self.log(f"search: chose {out.chosen} at {out.image_size} px in {out.seconds:.0f} s: {out.reason}")
        self.log(f"search: how sure: {out.sure}")
        spent = ", ".join(f"{k} {v:.0f} s" for k, v in out.spent.items())
        self.log(f"search: the budget's {self.budget:.0f} s of measured work: {spent}")
        if out.left_out:
            self.log(f"search: a larger budget would buy: {'; '.join(out.left_out)}")
        return out

    def best_of(self, probes: list[ProbeTrial]) -> ProbeTrial:
        """The best probe; within :data:`TIE` of it, the cheapest (the first backbone, the smaller size)."""
        top = max(p.trial.score for p in probes)
        close = [p for p in probes if p.trial.score >= top - TIE]
        return min(close, key=lambda p: (BACKBONES.index(p.backbone), p.size))


def run_search(settings: TrainConfig, data: DataBundle, device: torch.device, log: Log) -> SearchOutcome:
    """Try the candidates on ``data``'s held-out images and return the choice (see the module's text)."""
    return Search(settings, data, device, log).run()
