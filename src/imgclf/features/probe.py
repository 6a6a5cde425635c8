"""A linear probe: a class layer trained on a frozen backbone's cached features (:mod:`.backbone`), with the
trainer's one step and the probe's named recipe (:data:`imgclf.recipes.PROBE`). On a CPU it takes seconds
where fine-tuning takes minutes, so the search tries it at several image sizes, ``learning-curve`` fits it on
slices of the data, the doctor cross-validates it, and the folder default starts its fine-tuning from it (its
layer becomes the network's classifier: LP-FT, Kumar et al. 2022).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import RunConfig
from ..data import DataBundle
from ..data.splits import stratified_folds
from ..recipes import PROBE_DECAYS, PROBE_FOLDS, SMALL_VALIDATION, probe_recipe
from ..tasks import SINGLE_LABEL, Task
from ..train.balance import Balance, balancer
from ..train.loop import Trainer
from .backbone import Backbone


class ProbeHead(nn.Module):
    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(features, classes)
        nn.init.zeros_(self.classifier.weight)  # every class at equal odds, as a pretrained model's new head
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)


class FeatureBatches:
    """(features, labels) batches of cached features, shuffled per epoch (seeded), or drawn by weight."""

    def __init__(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = False,
        sample_weights: torch.Tensor | None = None,
        seed: int = 0,
    ) -> None:
        self.features, self.labels, self.batch_size = features, labels, batch_size
        self.shuffle, self.sample_weights, self.seed, self.epoch = shuffle, sample_weights, seed, 0
        self.rows_in_step = batch_size

    def __len__(self) -> int:
        return max(1, math.ceil(len(self.labels) / self.batch_size))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        n = len(self.labels)
        if self.sample_weights is not None:
            order = torch.multinomial(self.sample_weights, n, replacement=True, generator=generator)
        else:
            order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            index = order[start : start + self.batch_size]
            self.rows_in_step = len(index)
            yield torch.as_tensor(self.features[index]).float(), self.labels[index]


@dataclass(frozen=True)
class HeldOut:
    """How a probe does on images it did not train on: the validation split's, or, where that is small
    (:data:`~imgclf.recipes.SMALL_VALIDATION`), out-of-fold over the training and validation images together."""

    accuracy: float
    balanced_accuracy: float
    log_loss: float
    images: int
    how: str  # "validation (N images)" or "5-fold cross-validation (N images)"

    def score(self, monitor: str) -> float:
        """The value the search compares, larger is better."""
        return self.balanced_accuracy if monitor == "val_balanced_acc" else self.accuracy

    def stderr(self, monitor: str) -> float:
        """The score's standard error over its images (binomial): how far the images alone move it."""
        p = min(max(self.score(monitor), 0.0), 1.0)
        return math.sqrt(max(p * (1 - p), 1e-4) / max(1, self.images))


def held_out_of(logits: torch.Tensor, labels: torch.Tensor, num_classes: int, how: str) -> HeldOut:
    predicted = logits.argmax(1)
    recalls = [(predicted[labels == c] == c).float().mean().item() for c in range(num_classes) if (labels == c).any()]
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    accuracy = (predicted == labels).float().mean().item()
    return HeldOut(accuracy, sum(recalls) / len(recalls), loss, len(labels), how)


@dataclass
class ProbeResult:
    weight: torch.Tensor  # classes x features: the network's classifier layer
    bias: torch.Tensor
    val_loss: float  # of this layer on the validation split: where a fine-tune from it starts
    val_accuracy: float
    val_balanced_accuracy: float
    epochs: int
    weight_decay: float = PROBE_DECAYS[0]  # the regulariser it was fit with (chosen on held-out log loss)
    held_out: HeldOut | None = field(default=None)  # what the search compares (None: the validation split's)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """The probe's class scores for N x D features."""
        return torch.nn.functional.linear(torch.as_tensor(features).float(), self.weight, self.bias)

    def score(self, monitor: str) -> float:
        """The value the search compares, larger is better: held out (cross-validated on small folders)."""
        if self.held_out is not None:
            return self.held_out.score(monitor)
        return self.val_balanced_accuracy if monitor == "val_balanced_acc" else self.val_accuracy


def fit_probe(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    cfg: RunConfig,
    balance: Balance | None = None,
    task: Task | None = None,
) -> ProbeResult:
    """A class layer over ``train``'s (features, labels), scored on ``val``'s; ``cfg``: a run config with the
    probe's recipe (:func:`imgclf.recipes.probe_recipe`)."""
    features, labels = train
    balance = balance or Balance()
    head = ProbeHead(features.shape[1], num_classes)
    trainer = Trainer(
        head,
        cfg,
        FeatureBatches(
            features, labels, cfg.optim.batch_size, shuffle=True, sample_weights=balance.sample_weights, seed=cfg.seed
        ),
        None,  # scored once, at the end: the probe keeps its last epoch (the schedule has decayed to 0)
        class_weights=balance.class_weights,
        logit_offset=balance.logit_offset,
        num_classes=num_classes,
        task=task or SINGLE_LABEL,
    )
    trainer.fit()
    trainer.val_batches = FeatureBatches(*val, 1024)
    val_loss, val_accuracy, val_balanced = trainer.validate()
    return ProbeResult(
        head.classifier.weight.detach().clone(),
        head.classifier.bias.detach().clone(),
        val_loss,
        val_accuracy,
        val_balanced,
        len(trainer.history),
    )


FeaturesAndLabels = tuple[torch.Tensor, torch.Tensor]


def _recipe(cfg: RunConfig, images: int, decay: float) -> RunConfig:
    return probe_recipe(cfg, images).replace(weight_decay=decay)


def _cross_validated(
    pool: FeaturesAndLabels,
    num_classes: int,
    cfg: RunConfig,
    decay: float,
    balance_of: Callable[[torch.Tensor], Balance],
) -> torch.Tensor:
    """Out-of-fold logits of a probe of ``cfg`` over ``pool``: each image scored by a probe that never saw it."""
    features, labels = pool
    folds = stratified_folds(labels, max(2, min(PROBE_FOLDS, int(torch.bincount(labels).min()))), cfg.seed)
    logits = torch.zeros(len(labels), num_classes)
    for k in sorted(int(f) for f in folds.unique()):
        held = folds == k
        fold_train = (features[~held], labels[~held])
        fold_cfg = _recipe(cfg, int((~held).sum()), decay)
        result = fit_probe(fold_train, (features[held], labels[held]), num_classes, fold_cfg, balance_of(labels[~held]))
        logits[held] = result.logits(features[held])
    return logits


def select_probe(
    train: FeaturesAndLabels,
    val: FeaturesAndLabels,
    num_classes: int,
    cfg: RunConfig,
    balance_of: Callable[[torch.Tensor], Balance],
) -> ProbeResult:
    """The probe whose weight decay (of :data:`~imgclf.recipes.PROBE_DECAYS`) holds out at the lowest log loss:
    on the validation split, or, where it has fewer than :data:`~imgclf.recipes.SMALL_VALIDATION` images,
    cross-validated over training and validation together. The layer returned is fit on ``train`` alone (the
    validation split stays unseen for the fine-tune's epochs); its ``held_out`` is what the choice saw.
    ``cfg``: a run config resolved for the data (:func:`imgclf.recipes.probe_recipe` is applied here)."""
    small = len(val[1]) < SMALL_VALIDATION
    pool = (torch.cat([torch.as_tensor(train[0]), torch.as_tensor(val[0])]), torch.cat([train[1], val[1]]))
    best: tuple[HeldOut, float, ProbeResult | None] | None = None
    for decay in PROBE_DECAYS:
        if small:
            how = f"{PROBE_FOLDS}-fold cross-validation ({len(pool[1])} images)"
            held = held_out_of(_cross_validated(pool, num_classes, cfg, decay, balance_of), pool[1], num_classes, how)
            result = None
        else:
            result = fit_probe(train, val, num_classes, _recipe(cfg, len(train[1]), decay), balance_of(train[1]))
            how = f"validation ({len(val[1])} images)"
            held = held_out_of(result.logits(val[0]), val[1], num_classes, how)
        if best is None or held.log_loss < best[0].log_loss:
            best = (held, decay, result)
    assert best is not None
    held, decay, result = best
    if result is None:
        result = fit_probe(train, val, num_classes, _recipe(cfg, len(train[1]), decay), balance_of(train[1]))
    result.weight_decay, result.held_out = decay, held
    return result


def probe_data(
    backbone: Backbone, data: DataBundle, cfg: RunConfig, progress: Callable[[int], None] | None = None
) -> tuple[ProbeResult, float]:
    """The probe of ``backbone``'s features of ``data``'s training split (``cfg``: the run config resolved for
    it, whose data and imbalance settings the probe keeps), scored on its validation split; and the seconds
    spent computing features (0 when both came from the cache)."""
    tag = f"{data.name}-{backbone.name}-{data.image_size}px"

    def counted(offset: int) -> Callable[[int], None] | None:  # images done over both splits
        return None if progress is None else (lambda n: progress(offset + n))

    train = backbone.features(data.train.images, cfg.data.cache_dir, tag, counted(0))
    val = backbone.features(data.val.images, cfg.data.cache_dir, tag, counted(len(data.train)))
    result = select_probe(
        (train.values, data.train.labels),
        (val.values, data.val.labels),
        data.num_classes,
        cfg,
        balancer(data.num_classes, cfg),
    )
    return result, train.seconds + val.seconds
