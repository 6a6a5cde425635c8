"""Default training recipes per dataset and device class: what ``imgclf train --data X`` runs.

Each dataset has, per device class (CPU or GPU), a short list of recipe variants from quickest to most
accurate; "default" is what runs without flags. ``--budget SECONDS`` picks the most accurate variant
whose time, estimated from this machine's measured speed, fits (and trims its epochs if none does);
``--target-accuracy`` picks the quickest variant whose benchmark accuracy reached the target.

Only settings the user left unset (``None``) are filled, so any flag overrides its recipe value.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .config import TrainConfig

# The airbench hyperparameters (Nesterov SGD, label smoothing 0.2, lookahead, 64x lr on norm shifts,
# flip + translate, TTA), with the learning rate written for the mean loss of a batch of 1024.
FAST: dict[str, Any] = {
    "model": "cnn",
    "optimizer": "sgd",
    "lr": 1.5,
    "momentum": 0.85,
    "weight_decay": 1.33e-3,
    "norm_lr_scale": 64.0,
    "schedule": "onecycle",
    "label_smoothing": 0.2,
    "ema": True,
    "tta": True,
    "augment": "light",
    "batch_size": 1024,
}
LR_BATCH = 1024  # recipe lrs are for this batch size; other batch sizes scale them linearly

# tutorial and pretrained models keep plain settings: no lookahead, no 64x norm lr
PLAIN: dict[str, Any] = {
    "optimizer": "sgd", "lr": 0.1 * LR_BATCH / 128, "momentum": 0.9, "weight_decay": 5e-4, "norm_lr_scale": 1.0,
    "schedule": "onecycle", "label_smoothing": 0.1, "ema": False, "tta": False, "batch_size": 128,
}
# fine-tuning pretrained weights wants a gentler step than training from scratch
PRETRAINED = {"lr": 0.01 * LR_BATCH / 128, "warmup_epochs": 0.5}


@dataclass(frozen=True)
class Variant:
    name: str
    settings: dict[str, Any]
    # (test accuracy, training seconds) that bench/run.py measured for it on the reference machine of its
    # device class (see bench/RESULTS.md); used by --target-accuracy, shown by `imgclf recipes`
    measured: tuple[float, float] | None = None
    notes: str = ""


@dataclass(frozen=True)
class Recipe:
    cpu: list[Variant] = field(default_factory=list)
    gpu: list[Variant] = field(default_factory=list)


def _v(name: str, epochs: int, widths: list[int], warmup: float, measured: tuple[float, float] | None = None,
       **extra: Any) -> Variant:
    return Variant(name, {"epochs": epochs, "model_args": {"widths": widths}, "warmup_epochs": warmup, **extra}, measured)


# On a CPU, batches of 256 (more steps per epoch) beat the GPU's 1024 at the same speed.
CPU_BATCH = 256
# Fashion-MNIST in a minute: the centred 28x28 garments learn fastest without augmentation (which
# also costs ~20% of the step on a CPU), and then test-time augmentation only hurts
UNAUGMENTED = {"augment": "none", "tta": False, "label_smoothing": 0.1}

RECIPES: dict[str, Recipe] = {
    "digits": Recipe(
        cpu=[_v("default", 40, [32, 64, 128], 8)],
        gpu=[_v("default", 40, [64, 128, 256], 8)],
    ),
    "mnist": Recipe(
        cpu=[_v("default", 1, [16, 32, 64], 0.25, (0.9926, 16.8)), _v("long", 3, [24, 48, 96], 0.7)],
        gpu=[_v("default", 4, [64, 128, 256], 1)],
    ),
    "fashion-mnist": Recipe(
        cpu=[_v("default", 4, [16, 32, 64], 0.9, (0.9269, 59.3), **UNAUGMENTED),
             _v("long", 10, [24, 48, 96], 2.3, label_smoothing=0.1)],
        gpu=[_v("default", 10, [64, 256, 256], 2.3), _v("long", 30, [128, 384, 384], 7)],
    ),
    "cifar10": Recipe(
        cpu=[_v("quick", 4, [32, 64, 128], 0.9, batch_size=512),
             _v("default", 8, [32, 64, 128], 1.8, (0.8465, 582.4), batch_size=512)],
        gpu=[_v("default", 10, [64, 256, 256], 2.3, (0.8898, 3.9)), _v("long", 20, [128, 384, 512], 4.6, (0.9132, 8.3)),
             _v("longer", 25, [128, 512, 512], 5.8, (0.9168, 11.6))],
    ),
    "cifar100": Recipe(
        cpu=[_v("default", 10, [32, 96, 192], 2.3, batch_size=512)],
        gpu=[_v("default", 20, [64, 256, 256], 4.6), _v("long", 40, [128, 512, 512], 9)],
    ),
}

# a user's folder or CSV: the CIFAR-10 recipe with stronger augmentation (shifts of 1/8, rotations),
# which keeps a model trained on few photos robust to other framings and scales; small folders get
# more epochs from the small-data rule below
RECIPES["folder"] = Recipe(
    **{device: [Variant(v.name, {**v.settings, "augment": "standard"}, None) for v in getattr(RECIPES["cifar10"], device)]
       for device in ("cpu", "gpu")}
)


def describe_recipes() -> list[list[str]]:
    """One row per dataset, device class and variant: what ``imgclf recipes`` prints."""
    rows = []
    for dataset, recipe in RECIPES.items():
        for device in ("cpu", "gpu"):
            for variant in getattr(recipe, device):
                values = variant_values(variant, "cuda" if device == "gpu" else "cpu", None, False, None)
                measured = "-" if variant.measured is None else f"{variant.measured[0]:.4f} in {variant.measured[1]:g} s"
                rows.append([dataset, device, variant.name, f"{values['epochs']:g}", str(values["model_args"]["widths"]),
                             str(values["batch_size"]), values["augment"], "yes" if values["tta"] else "no", measured])
    return rows


def recipe_for(dataset: str) -> Recipe:
    return RECIPES.get(dataset, RECIPES["folder"])


def device_class(device_type: str) -> str:
    return "gpu" if device_type == "cuda" else "cpu"


# small datasets (under SMALL_DATA images): at least MIN_STEPS optimizer steps (batch norm and the
# schedule need them), in batches of at most 1/8 of the training set
SMALL_DATA, MIN_STEPS, MAX_SMALL_DATA_EPOCHS, MIN_BATCH = 10_000, 300, 200, 16


def _fit_small_data(values: dict[str, Any], n_train: int) -> None:
    if n_train >= SMALL_DATA:
        return
    while values["batch_size"] > MIN_BATCH and n_train < 8 * values["batch_size"]:
        values["batch_size"] //= 2
    steps_per_epoch = math.ceil(n_train / values["batch_size"])
    wanted = min(MAX_SMALL_DATA_EPOCHS, math.ceil(MIN_STEPS / steps_per_epoch))
    if wanted > values["epochs"]:
        values["warmup_epochs"] *= wanted / values["epochs"]
        values["epochs"] = wanted


def choose_variant(
    variants: list[Variant], *, budget: float | None = None, target_accuracy: float | None = None,
    seconds_per_epoch: Callable[[Variant], float] | None = None,
    epochs_of: Callable[[Variant], float] = lambda v: v.settings["epochs"],
) -> tuple[Variant, int | None]:
    """The variant to run, and the epochs a budget allows when even the quickest variant is too slow.

    ``seconds_per_epoch`` estimates a variant's epoch on this machine (measured, not looked up).
    """
    default = next((v for v in variants if v.name == "default"), variants[0])
    if target_accuracy is not None:
        reached = [v for v in variants if v.measured and v.measured[0] >= target_accuracy]
        return (reached[0] if reached else variants[-1]), None
    if budget is None or seconds_per_epoch is None:
        return default, None
    for variant in reversed(variants):
        if epochs_of(variant) * seconds_per_epoch(variant) <= budget:
            return variant, None
    quickest = variants[0]
    return quickest, max(1, math.floor(budget / seconds_per_epoch(quickest)))


def variant_values(variant: Variant, device_type: str, model: str | None, pretrained: bool, epochs: int | None) -> dict[str, Any]:
    """All recipe settings for a variant: the fast recipe for ``cnn``, plain SGD for the other models."""
    fast = (model or FAST["model"]) == "cnn"
    base = FAST if fast else PLAIN
    if fast and device_class(device_type) == "cpu":
        base = {**base, "batch_size": CPU_BATCH}
    # compiling takes ~10-40 s once, then makes GPU steps up to 2x faster; on a CPU it measured slower
    values = {**base, "compile": device_class(device_type) == "gpu", **variant.settings}
    if not fast:
        values["batch_size"] = PLAIN["batch_size"] * (4 if device_class(device_type) == "gpu" else 1)
        values.setdefault("augment", FAST["augment"])
    if pretrained:
        values.update(PRETRAINED)
    if epochs is not None:
        values["warmup_epochs"] *= epochs / values["epochs"]
        values["epochs"] = epochs
    return values


def apply_recipe(
    cfg: TrainConfig, dataset: str, device_type: str, n_train: int,
    seconds_per_epoch: Callable[[TrainConfig], float] | None = None,
) -> tuple[TrainConfig, str]:
    """Return ``cfg`` with every unset field filled from the recipe for ``dataset`` on ``device_type``,
    and the name of the variant used.

    ``dataset`` is a built-in dataset's name, or "folder" for a user's folder or CSV; ``n_train`` is the
    number of training images, which scales batch size and epochs for small datasets.
    ``seconds_per_epoch(cfg)`` measures a candidate config's epoch time (needed for ``cfg.budget``).
    """
    variants = getattr(recipe_for(dataset), device_class(device_type))

    def fill(variant: Variant, epochs: int | None = None) -> TrainConfig:
        values = variant_values(variant, device_type, cfg.model, bool(cfg.pretrained or cfg.weights), epochs)
        if cfg.epochs is None and epochs is None:  # a budget's epochs are final
            _fit_small_data(values, n_train)
        values["lr"] *= (cfg.batch_size or values["batch_size"]) / LR_BATCH  # linear scaling rule
        if cfg.model_args is not None or (cfg.model or "cnn") != "cnn":
            values.pop("model_args", None)
        return cfg.replace(**{k: v for k, v in values.items() if getattr(cfg, k, None) is None})

    per_epoch = None
    if seconds_per_epoch is not None:
        def per_epoch(variant: Variant) -> float:
            return seconds_per_epoch(fill(variant))
    variant, epochs = choose_variant(variants, budget=cfg.budget, target_accuracy=cfg.target_accuracy,
                                     seconds_per_epoch=per_epoch, epochs_of=lambda v: fill(v).epochs)
    return fill(variant, epochs), variant.name
