"""A linear probe: a class layer trained on a frozen backbone's cached features (:mod:`.backbone`), with the
trainer's one step and the probe's named recipe (:data:`imgclf.recipes.PROBE`). On a CPU it takes seconds
where fine-tuning takes minutes, so the search tries it at several image sizes, ``learning-curve`` fits it on
slices of the data, the doctor cross-validates it, and the folder default starts its fine-tuning from it (its
layer becomes the network's classifier: LP-FT, Kumar et al. 2022).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ..config import RunConfig
from ..data import DataBundle
from ..recipes import probe_recipe
from ..train.balance import Balance, balance_for
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


@dataclass
class ProbeResult:
    weight: torch.Tensor  # classes x features: the network's classifier layer
    bias: torch.Tensor
    val_loss: float
    val_accuracy: float
    val_balanced_accuracy: float
    epochs: int

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """The probe's class scores for N x D features."""
        return torch.nn.functional.linear(torch.as_tensor(features).float(), self.weight, self.bias)

    def score(self, monitor: str) -> float:
        """The value the search compares, larger is better."""
        return self.val_balanced_accuracy if monitor == "val_balanced_acc" else self.val_accuracy


def fit_probe(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    cfg: RunConfig,
    balance: Balance | None = None,
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


def probe_data(backbone: Backbone, data: DataBundle, cfg: RunConfig) -> tuple[ProbeResult, float]:
    """The probe of ``backbone``'s features of ``data``'s training split (``cfg``: the run config resolved for
    it, whose data and imbalance settings the probe keeps), scored on its validation split; and the seconds
    spent computing features (0 when both came from the cache)."""
    tag = f"{data.name}-{backbone.name}-{data.image_size}px"
    train, val = (backbone.features(split.images, cfg.data.cache_dir, tag) for split in (data.train, data.val))
    balance = balance_for(data.class_counts(), data.train.labels, cfg)
    recipe = probe_recipe(cfg, len(data.train))
    result = fit_probe(
        (train.values, data.train.labels), (val.values, data.val.labels), data.num_classes, recipe, balance
    )
    return result, train.seconds + val.seconds
