"""Out-of-fold predictions from quick models: what the data doctor ranks likely label errors by.

Confident learning (cleanlab) needs each image's predicted probabilities from a model that did not train
on that image. The images are dealt into ``folds`` stratified folds; for each, the folder recipe's model
trains a few epochs on the others and predicts it. The recipe's settings are used as ``train`` fills
them (optimizer, learning rate, label smoothing, augmentation), at ``epochs`` epochs.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import TrainConfig
from ..data import BatchIterator, Split, channel_stats, normalise
from ..models import create_model
from ..recipes import apply_recipe
from ..runtime import Log, quiet, resolve_device, seed_everything
from .optim import build_optimizer, build_scheduler

QUICK_EPOCHS = 4  # per fold: enough for the recipe's cnn to rank the worst labels, minutes for 60,000 images
FOLDS = 3
PREDICT_CHUNK = 1024


def stratified_folds(labels: torch.Tensor, folds: int, seed: int) -> torch.Tensor:
    """Each image's fold, 0..folds-1: every class dealt round-robin over the folds in a seeded order."""
    generator = torch.Generator().manual_seed(seed)
    fold = torch.empty_like(labels)
    for cls in torch.unique(labels):
        index = torch.nonzero(labels == cls).flatten()
        index = index[torch.randperm(len(index), generator=generator)]
        fold[index] = torch.arange(len(index)) % folds
    return fold


def _fit(
    cfg: TrainConfig, split: Split, num_classes: int, hflip: bool, device: torch.device
) -> tuple[nn.Module, list[float], list[float]]:
    assert cfg.batch_size and cfg.optimizer and cfg.lr and cfg.schedule and cfg.weight_decay is not None and cfg.epochs
    mean, std = channel_stats(split.images)
    channels, size = split.images.shape[1], split.images.shape[-1]
    model = create_model(cfg.model_name, channels, num_classes, size, **(cfg.model_args or {}))
    model = model.to(device).to(memory_format=torch.channels_last)
    init_from_data = getattr(model, "init_from_data", None)
    if init_from_data is not None:
        init_from_data(normalise(split.images[:5000], mean, std, device))
    batches = BatchIterator(
        split,
        cfg.batch_size,
        device,
        mean,
        std,
        shuffle=True,
        augment=cfg.augment or "none",
        hflip=hflip,
        seed=cfg.seed,
        channels_last=True,
    )
    optimizer = build_optimizer(
        model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum, cfg.nesterov, cfg.norm_lr_scale or 1.0
    )
    steps = cfg.epochs * len(batches)
    scheduler = build_scheduler(optimizer, cfg.schedule, steps, round((cfg.warmup_epochs or 0) * len(batches)))
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing or 0.0)
    model.train()
    for epoch in range(1, cfg.epochs + 1):
        batches.set_epoch(epoch)
        for x, y in batches:
            loss = criterion(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return model.eval(), mean, std


@torch.no_grad()
def _predict(
    model: nn.Module, images: torch.Tensor, mean: list[float], std: list[float], device: torch.device
) -> torch.Tensor:
    chunks = []
    for start in range(0, len(images), PREDICT_CHUNK):
        x = normalise(images[start : start + PREDICT_CHUNK], mean, std, device).contiguous(
            memory_format=torch.channels_last
        )
        chunks.append(model(x).float().softmax(1).cpu())
    return torch.cat(chunks)


def out_of_fold_probs(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    hflip: bool = True,
    folds: int = FOLDS,
    epochs: int = QUICK_EPOCHS,
    seed: int = 0,
    device: str = "auto",
    log: Log = quiet,
) -> torch.Tensor:
    """N x classes probabilities, each row from the model of the fold that held that image out."""
    torch_device = resolve_device(device)
    seed_everything(seed)
    fold = stratified_folds(labels, folds, seed)
    probs = torch.zeros(len(labels), num_classes)
    for k in range(folds):
        held = fold == k
        train = Split(images[~held], labels[~held])
        cfg, _ = apply_recipe(
            TrainConfig(epochs=epochs, seed=seed + k, ema=False, tta=False, compile=False),
            "folder",
            torch_device.type,
            len(train),
        )
        model, mean, std = _fit(cfg, train, num_classes, hflip, torch_device)
        probs[held] = _predict(model, images[held], mean, std, torch_device)
        accuracy = (probs[held].argmax(1) == labels[held]).float().mean().item()
        log(
            f"fold {k + 1}/{folds}: {cfg.model_name} trained {epochs} epochs on {len(train):,} images, "
            f"{accuracy:.4f} on the {int(held.sum()):,} it held out"
        )
    return probs
