"""Default training recipes per dataset and device class: what ``imgclf train --data X`` runs.

Only settings the user left unset (``None``) are filled, so any flag overrides its recipe value.
"""

from __future__ import annotations

import math
from typing import Any

from .config import TrainConfig

BASE: dict[str, Any] = {
    "model": "cnn",
    "epochs": 15,
    "batch_size": 128,
    "optimizer": "sgd",
    "lr": 0.1,
    "weight_decay": 5e-4,
    "schedule": "onecycle",
    "warmup_epochs": 1.0,
    "label_smoothing": 0.1,
    "augment": "light",
}

# per dataset; folders and CSVs use "folder"
DATASETS: dict[str, dict[str, Any]] = {
    "digits": {"epochs": 30, "batch_size": 64, "warmup_epochs": 3.0},
    "mnist": {"epochs": 2, "warmup_epochs": 0.2},
    "fashion-mnist": {"epochs": 10, "warmup_epochs": 0.5},
    "cifar10": {"epochs": 20, "augment": "standard"},
    "cifar100": {"epochs": 30, "augment": "standard"},
    "folder": {"epochs": 20, "batch_size": 64, "augment": "standard"},
}

# the width of the default `cnn`: narrower on CPUs, where multiply-adds are the bottleneck
CNN_WIDTHS = {"cpu": [16, 32, 64], "gpu": [64, 128, 256]}
GPU = {"batch_size": 512}

# fine-tuning pretrained weights wants a gentler step than training from scratch
PRETRAINED = {"lr": 0.01, "warmup_epochs": 0.5}


# small datasets: at least this many optimizer steps (batch norm and the schedule need them),
# in batches of at most 1/8 of the training set
MIN_STEPS, MAX_SMALL_DATA_EPOCHS, MIN_BATCH = 300, 100, 16


def _fit_small_data(values: dict[str, Any], n_train: int) -> None:
    while values["batch_size"] > MIN_BATCH and n_train < 8 * values["batch_size"]:
        values["batch_size"] //= 2
    steps_per_epoch = math.ceil(n_train / values["batch_size"])
    values["epochs"] = max(values["epochs"], min(MAX_SMALL_DATA_EPOCHS, math.ceil(MIN_STEPS / steps_per_epoch)))


def apply_recipe(cfg: TrainConfig, dataset: str, device_type: str, n_train: int) -> TrainConfig:
    """Return ``cfg`` with every unset field filled from the recipe for ``dataset`` on ``device_type``.

    ``dataset`` is a built-in dataset's name, or "folder" for a user's folder or CSV; ``n_train`` is
    the number of training images, which scales batch size and epochs for small datasets.
    """
    device_class = "gpu" if device_type == "cuda" else "cpu"
    values = {**BASE, **DATASETS.get(dataset, DATASETS["folder"])}
    if device_class == "gpu":
        values.update(GPU)
    if cfg.pretrained or cfg.weights:
        values.update(PRETRAINED)
    _fit_small_data(values, n_train)
    filled = {name: value for name, value in values.items() if getattr(cfg, name) is None}
    if (cfg.model or values["model"]) == "cnn" and not cfg.model_args:
        filled["model_args"] = {"widths": CNN_WIDTHS[device_class]}
    return cfg.replace(**filled)
