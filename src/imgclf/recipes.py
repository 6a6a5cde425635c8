"""Default training recipes per dataset and device class: what ``imgclf train --data X`` runs.

Each dataset has, per device class (CPU or GPU), a short list of variants from quickest to most
accurate, written one keyword a value as the airbench scripts write their hyperparameters. A setting is
filled in this order, and a later step never touches what an earlier one set:

1. Settings you give (keywords, flags, a config file) are kept as they are.
2. The variant: with `target_accuracy`, the quickest whose measured accuracy reached it (else the most
   accurate); with `budget`, the most accurate whose epochs fit, timed on this machine (else the quickest,
   with as many epochs as fit); otherwise "default".
3. The base: the fast recipe (``FAST``) for ``cnn``, with batches of 256 on a CPU; the plain recipe
   (``PLAIN``) for every other model, with batches of 512 on a GPU; torch.compile on a GPU.
4. The variant's own values over the base; with `pretrained` or `weights`, the gentler ``PRETRAINED`` steps.
5. A budget's epochs, the warm-up scaled alike.
6. Small data (under ``SMALL_DATA`` training images, `epochs` not given): the batch halves while an epoch
   has fewer than 8 batches (down to ``MIN_BATCH``), and epochs grow to at least ``MIN_STEPS`` optimizer
   steps (at most ``MAX_SMALL_DATA_EPOCHS``), the warm-up scaled alike.
7. The learning rate, written for a batch of ``LR_BATCH``, scaled linearly to the batch used.
8. ``widths`` becomes the ``cnn``'s `model_args`, unless you gave `model_args` or another model.

``imgclf recipes`` prints the result of all eight steps for each built-in dataset (and for a folder with
``--data PATH``), by running the same :func:`fill_recipe` that training runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .config import DEFAULT_MODEL, TrainConfig

LR_BATCH = 1024  # recipe learning rates are for the mean loss of a batch of this size; others scale linearly

# The airbench hyperparameters, for imgclf's `cnn`.
FAST: dict[str, Any] = {
    "model": DEFAULT_MODEL,
    "optimizer": "sgd",
    "lr": 1.5,  # at batch 1024; with label smoothing and the 1/9 logit scale this high rate is stable
    "momentum": 0.85,  # Nesterov; lower than the usual 0.9 because the lr is high
    "weight_decay": 1.33e-3,  # on conv and linear weights only
    "norm_lr_scale": 64.0,  # batch-norm shifts learn 64x faster (airbench's bias scaler)
    "schedule": "onecycle",  # linear warm-up from 0.2 of the peak, then linear decay to 0
    "label_smoothing": 0.2,
    "ema": True,  # lookahead weight averaging over the late part of training
    "tta": True,  # test metrics average the image, its mirror and 1-pixel shifts
    "augment": "light",  # alternating flips and translations by up to 1/16 of the side
    "batch_size": 1024,  # a GPU's; CPU_BATCH on a CPU
}
CPU_BATCH = 256  # on a CPU, more steps per epoch beat the GPU's 1024 at the same speed (measured)

# Tutorial and pretrained models keep plain settings: no lookahead, no 64x norm lr, no TTA.
PLAIN: dict[str, Any] = {
    "optimizer": "sgd",
    "lr": 0.1 * LR_BATCH / 128,  # the tutorials' 0.1 at batch 128
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "norm_lr_scale": 1.0,
    "schedule": "onecycle",
    "label_smoothing": 0.1,
    "ema": False,
    "tta": False,
    "batch_size": 128,  # x4 on a GPU
}
PLAIN_GPU_BATCH_FACTOR = 4
# Fine-tuning pretrained weights wants a gentler step than training from scratch.
# Fine-tuning pretrained weights: AdamW (2e-3 at batch 128, decoupled decay 0.05). Measured on 1,000 CIFAR-10
# images at 96 px with EfficientNet-Lite0 (bench/transfer.py), 3 epochs: 57.7% test, against 34.5% for the
# tutorials' SGD at 0.01 and 22.1% at 0.1 (RESULTS.md, 2026-11-23).
PRETRAINED: dict[str, Any] = {
    "optimizer": "adamw",
    "lr": 2e-3 * LR_BATCH / 128,
    "weight_decay": 0.05,
    "warmup_epochs": 0.5,
}

# Small datasets: enough optimizer steps for batch norm and the schedule, in batches of at most 1/8 of the data.
SMALL_DATA = 10_000  # training images
MIN_STEPS = 300
MAX_SMALL_DATA_EPOCHS = 200
MIN_BATCH = 16

# A folder's default image size is its images' own (or their median), at most this many pixels a side:
# at 64 px a CPU epoch of the folder recipe costs a quarter of 128 px; a GPU affords 128.
FOLDER_SIZE_CAP = {"cpu": 64, "gpu": 128}


@dataclass(frozen=True)
class Variant:
    name: str
    epochs: int | None = None
    widths: tuple[int, ...] | None = None  # cnn's channels per conv group
    warmup_epochs: float | None = None
    batch_size: int | None = None  # None: the base recipe's for the device class
    augment: str | None = None
    tta: bool | None = None
    label_smoothing: float | None = None
    # (test accuracy, training seconds) that bench/run.py measured for it on the reference machine of its
    # device class (bench/RESULTS.md); used by `target_accuracy`, shown by `imgclf recipes`
    measured: tuple[float, float] | None = None

    @property
    def settings(self) -> dict[str, Any]:
        """The config settings this variant sets (``widths`` as the cnn's ``model_args``)."""
        values = {
            "epochs": self.epochs,
            "warmup_epochs": self.warmup_epochs,
            "batch_size": self.batch_size,
            "augment": self.augment,
            "tta": self.tta,
            "label_smoothing": self.label_smoothing,
            "model_args": {"widths": list(self.widths)} if self.widths else None,
        }
        return {k: v for k, v in values.items() if v is not None}


@dataclass(frozen=True)
class Recipe:
    cpu: list[Variant] = field(default_factory=list)
    gpu: list[Variant] = field(default_factory=list)


# Fashion-MNIST in a minute on a CPU: the centred 28x28 garments learn fastest without augmentation
# (which also costs ~20% of a CPU step), and then test-time augmentation only hurts.
UNAUGMENTED: dict[str, Any] = {"augment": "none", "tta": False, "label_smoothing": 0.1}

RECIPES: dict[str, Recipe] = {
    "digits": Recipe(
        cpu=[Variant("default", epochs=40, widths=(32, 64, 128), warmup_epochs=8)],
        gpu=[Variant("default", epochs=40, widths=(64, 128, 256), warmup_epochs=8)],
    ),
    "mnist": Recipe(
        cpu=[
            Variant("default", epochs=1, widths=(16, 32, 64), warmup_epochs=0.25, measured=(0.9926, 16.8)),
            Variant("long", epochs=3, widths=(24, 48, 96), warmup_epochs=0.7),
        ],
        gpu=[Variant("default", epochs=4, widths=(64, 128, 256), warmup_epochs=1)],
    ),
    "fashion-mnist": Recipe(
        cpu=[
            Variant(
                "default", epochs=4, widths=(16, 32, 64), warmup_epochs=0.9, measured=(0.9269, 59.3), **UNAUGMENTED
            ),
            Variant("long", epochs=10, widths=(24, 48, 96), warmup_epochs=2.3, label_smoothing=0.1),
        ],
        gpu=[
            Variant("default", epochs=10, widths=(64, 256, 256), warmup_epochs=2.3),
            Variant("long", epochs=30, widths=(128, 384, 384), warmup_epochs=7),
        ],
    ),
    "cifar10": Recipe(
        cpu=[
            Variant("quick", epochs=4, widths=(32, 64, 128), warmup_epochs=0.9, batch_size=512),
            Variant(
                "default", epochs=8, widths=(32, 64, 128), warmup_epochs=1.8, batch_size=512, measured=(0.8465, 582.4)
            ),
        ],
        gpu=[
            Variant("default", epochs=10, widths=(64, 256, 256), warmup_epochs=2.3, measured=(0.8898, 3.9)),
            Variant("long", epochs=20, widths=(128, 384, 512), warmup_epochs=4.6, measured=(0.9132, 8.3)),
            Variant("longer", epochs=25, widths=(128, 512, 512), warmup_epochs=5.8, measured=(0.9168, 11.6)),
        ],
    ),
    "cifar100": Recipe(
        cpu=[Variant("default", epochs=10, widths=(32, 96, 192), warmup_epochs=2.3, batch_size=512)],
        gpu=[
            Variant("default", epochs=20, widths=(64, 256, 256), warmup_epochs=4.6),
            Variant("long", epochs=40, widths=(128, 512, 512), warmup_epochs=9),
        ],
    ),
}

# A user's folder or CSV: the CIFAR-10 variants with stronger augmentation (shifts of 1/8, small rotations),
# which keeps a model trained on few photos robust to other framings; their measurements do not carry over.
RECIPES["folder"] = Recipe(
    **{
        device: [
            Variant(**{**v.__dict__, "augment": "standard", "measured": None})
            for v in getattr(RECIPES["cifar10"], device)
        ]
        for device in ("cpu", "gpu")
    }
)


def recipe_for(dataset: str) -> Recipe:
    return RECIPES.get(dataset, RECIPES["folder"])


def device_class(device_type: str) -> str:
    return "gpu" if device_type == "cuda" else "cpu"


def image_size_cap(device_type: str) -> int:
    """The largest default image size of a folder or CSV on this device class."""
    return FOLDER_SIZE_CAP[device_class(device_type)]


def choose_variant(
    variants: list[Variant],
    *,
    budget: float | None = None,
    target_accuracy: float | None = None,
    seconds_per_epoch: Callable[[Variant], float] | None = None,
    epochs_of: Callable[[Variant], float] = lambda v: v.settings["epochs"],
) -> tuple[Variant, int | None]:
    """Step 2: the variant to run, and the epochs a budget allows when even the quickest is too slow.

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


def variant_values(
    variant: Variant, device_type: str, model: str | None, pretrained: bool, epochs: int | None
) -> dict[str, Any]:
    """Steps 3-5: every recipe setting of a variant, before the small-data rule and the lr scaling."""
    fast = (model or DEFAULT_MODEL) == "cnn"
    gpu = device_class(device_type) == "gpu"
    base = {
        **(FAST if fast else PLAIN),
        "compile": gpu,
    }  # compiling takes 10-40 s once, then halves GPU steps; slower on a CPU
    if fast and not gpu:
        base["batch_size"] = CPU_BATCH
    values = {**base, **variant.settings}
    if not fast:
        values["batch_size"] = PLAIN["batch_size"] * (PLAIN_GPU_BATCH_FACTOR if gpu else 1)
        values.setdefault("augment", FAST["augment"])
    if pretrained:
        values.update(PRETRAINED)
    if epochs is not None:
        values["warmup_epochs"] *= epochs / values["epochs"]
        values["epochs"] = epochs
    return values


def _fit_small_data(values: dict[str, Any], n_train: int) -> None:
    """Step 6."""
    if n_train >= SMALL_DATA:
        return
    while values["batch_size"] > MIN_BATCH and n_train < 8 * values["batch_size"]:
        values["batch_size"] //= 2
    steps_per_epoch = math.ceil(n_train / values["batch_size"])
    wanted = min(MAX_SMALL_DATA_EPOCHS, math.ceil(MIN_STEPS / steps_per_epoch))
    if wanted > values["epochs"]:
        values["warmup_epochs"] *= wanted / values["epochs"]
        values["epochs"] = wanted


def fill_recipe(
    cfg: TrainConfig,
    variant: Variant,
    device_type: str,
    n_train: int | None,
    epochs: int | None = None,
    processes: int = 1,
) -> TrainConfig:
    """``cfg`` with every unset setting filled from ``variant`` (steps 3-8); ``n_train`` None skips step 6.
    ``processes``: distributed training, where ``batch_size`` is per process and a step takes that many
    images from each."""
    values = variant_values(variant, device_type, cfg.model, bool(cfg.pretrained or cfg.weights), epochs)
    if cfg.epochs is None and epochs is None and n_train is not None:  # a budget's epochs are final
        _fit_small_data(values, n_train)
    # the linear scaling rule (Goyal et al. 2017): lr in proportion to the global batch, all processes' images
    values["lr"] *= (cfg.batch_size or values["batch_size"]) * processes / LR_BATCH
    if cfg.model_args is not None or cfg.model_name != "cnn":
        values.pop("model_args", None)
    return cfg.replace(**{k: v for k, v in values.items() if getattr(cfg, k, None) is None})


def apply_recipe(
    cfg: TrainConfig,
    dataset: str,
    device_type: str,
    n_train: int,
    seconds_per_epoch: Callable[[TrainConfig], float] | None = None,
    processes: int = 1,
) -> tuple[TrainConfig, str]:
    """Return ``cfg`` with every unset field filled from the recipe for ``dataset`` on ``device_type``,
    and the name of the variant used.

    ``dataset`` is a built-in dataset's name, or "folder" for a user's folder or CSV; ``n_train`` is the
    number of training images. ``seconds_per_epoch(cfg)`` measures a candidate's epoch (for `budget`).
    """
    variants = getattr(recipe_for(dataset), device_class(device_type))
    per_epoch = None
    if seconds_per_epoch is not None:

        def per_epoch(variant: Variant) -> float:
            return seconds_per_epoch(fill_recipe(cfg, variant, device_type, n_train))

    variant, epochs = choose_variant(
        variants,
        budget=cfg.budget,
        target_accuracy=cfg.target_accuracy,
        seconds_per_epoch=per_epoch,
        epochs_of=lambda v: fill_recipe(cfg, v, device_type, n_train).epochs or 0,
    )
    return fill_recipe(cfg, variant, device_type, n_train, epochs, processes), variant.name


RECIPE_COLUMNS = [
    "data",
    "device",
    "variant",
    "epochs",
    "cnn widths",
    "batch",
    "lr",
    "warm-up",
    "augment",
    "tta",
    "measured (test acc, train s)",
]


def describe_recipes(train_images: dict[str, int | None]) -> list[list[str]]:
    """One row per dataset, device class and variant: what training would run with no other setting, for
    datasets of ``train_images`` training images (after the validation split; None: a large folder)."""
    rows = []
    for dataset, n_train in train_images.items():
        for device in ("cpu", "gpu"):
            device_type = "cuda" if device == "gpu" else "cpu"
            for variant in getattr(recipe_for(dataset), device):
                cfg = fill_recipe(TrainConfig(data=dataset), variant, device_type, n_train)
                measured = (
                    "-" if variant.measured is None else f"{variant.measured[0]:.4f} in {variant.measured[1]:g} s"
                )
                widths = str((cfg.model_args or {}).get("widths", "-"))
                rows.append(
                    [
                        dataset,
                        device,
                        variant.name,
                        f"{cfg.epochs:g}",
                        widths,
                        str(cfg.batch_size),
                        f"{cfg.lr:.4g}",
                        f"{cfg.warmup_epochs:.3g}",
                        str(cfg.augment),
                        "yes" if cfg.tta else "no",
                        measured,
                    ]
                )
    return rows
