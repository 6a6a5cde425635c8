"""Out-of-fold predictions from quick models: what the data doctor ranks likely label errors by.

Confident learning needs each image's predicted probabilities from a model that did not train on that
image. The images are dealt into ``folds`` stratified folds; for each, the folder recipe's model trains a
few epochs on the others with the one :class:`~imgclf.train.loop.Trainer` (built by :mod:`.build`, into a
run directory that writes nothing) and predicts the held-out fold through :class:`~imgclf.predict.Classifier`,
as ``predict`` would. The settings are the named recipe ``quick`` (:data:`imgclf.recipes.QUICK`), resolved as
``train`` resolves them, at ``epochs`` epochs.
"""

from __future__ import annotations

import torch

from ..config import TrainConfig
from ..data import DataBundle, Split, channel_stats
from ..data.splits import stratified_folds
from ..predict import Classifier
from ..recipes import quick_epochs, quick_settings
from ..rundir import RunDir
from ..runtime import Log, quiet, resolve_device, seed_everything
from .build import Prepared, build, inference_spec, run_config, trainer_for

FOLDS = 5  # each model trains on 80% of the images (3 folds: 67%, a weaker model)


def fold_probs(
    train: Split, held: Split, classes: list[str], hflip: bool, settings: TrainConfig, device: torch.device
) -> torch.Tensor:
    """A quick model trained on ``train``: its probabilities for ``held``."""
    mean, std = channel_stats(train.images)
    data = DataBundle("fold", classes, train, held, held, mean, std, hflip, kind="folder")
    cfg, _ = run_config(settings, data, device.type)
    prepared = Prepared(cfg, data, device)
    model = build(prepared, resuming=False)
    trainer_for(prepared, model, val_batches=None, run=RunDir("quick", writes=False)).fit()
    return Classifier(inference_spec(prepared), model, device).predict_proba(held.images)


def out_of_fold_probs(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    hflip: bool = True,
    folds: int = FOLDS,
    epochs: int | None = None,
    seed: int = 0,
    device: str = "auto",
    log: Log = quiet,
) -> torch.Tensor:
    """N x classes probabilities, each row from the model of the fold that held that image out."""
    torch_device = resolve_device(device)
    seed_everything(seed)
    fold = stratified_folds(labels, folds, seed)
    probs = torch.zeros(len(labels), num_classes)
    classes = [str(c) for c in range(num_classes)]
    for k in range(folds):
        held = fold == k
        epochs = epochs or quick_epochs(int((~held).sum()))
        settings = quick_settings(epochs, seed + k)
        probs[held] = fold_probs(
            Split(images[~held], labels[~held]),
            Split(images[held], labels[held]),
            classes,
            hflip,
            settings,
            torch_device,
        )
        accuracy = (probs[held].argmax(1) == labels[held]).float().mean().item()
        log(
            f"fold {k + 1}/{folds}: {settings.model} trained {epochs} epochs on {int((~held).sum()):,} images, "
            f"{accuracy:.4f} on the {int(held.sum()):,} it held out"
        )
    return probs
