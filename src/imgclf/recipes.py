"""Default training recipes per dataset and device class, and the rules that resolve a run's config.

Each dataset has, per device class (CPU or GPU), a short list of variants from quickest to most
accurate, written one keyword a value as the airbench scripts write their hyperparameters.
:func:`resolve` turns the settings a user gave into the run's config, in this order, and records where
each value came from:

1. Settings you give (keywords, flags, a config file) are kept as they are: no rule changes them.
2. The variant: with `target_accuracy`, the quickest whose measured accuracy reached it (else the most
   accurate); with `budget`, the most accurate whose epochs fit, timed on this machine (else the quickest,
   with as many epochs as fit); otherwise "default".
3. The recipe: the fast recipe (``FAST``) for ``cnn``, with batches of 256 on a CPU; the plain recipe
   (``PLAIN``) for every other model, with batches of 512 on a GPU; torch.compile on a GPU; the
   variant's own values over it; with `pretrained` or `weights`, the gentler ``PRETRAINED`` steps.
4. The rules, for what you did not set:
   - small data (under ``SMALL_DATA`` training images): the batch halves while an epoch has fewer than
     8 batches (down to ``MIN_BATCH``); epochs grow to at least ``MIN_STEPS`` optimizer steps (at most
     ``MAX_SMALL_DATA_EPOCHS``);
   - a budget's epochs are what fits;
   - the warm-up keeps the recipe's share of the run, whatever the epochs (``epochs=6`` on a 40-epoch
     recipe with 8 warm-up epochs warms up for 1.2);
   - the learning rate, written for a batch of ``LR_BATCH``, scales linearly with the global batch
     (Goyal et al. 2017), so ``batch_size`` given alone moves the lr with it; ``epochs`` never does;
   - ``widths`` becomes the ``cnn``'s `model_args`; other models get none.

``imgclf recipes`` prints the result for each built-in dataset (and for a folder with ``--data PATH``),
by running the same :func:`resolve` that training runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .config import DEFAULT_MODEL, IMBALANCE_RATIO, SETTINGS, RunConfig, TrainConfig

if TYPE_CHECKING:
    from .tasks import Task


def _single_label() -> Task:
    from .tasks import get_task  # torch: only when a run is resolved

    return get_task("single_label")


LR_BATCH = 1024  # recipe learning rates are for the mean loss of a batch of this size; others scale linearly

# The airbench hyperparameters, for imgclf's `cnn`.
FAST: dict[str, Any] = {
    "optimizer": "sgd",
    "lr": 1.5,  # at batch 1024; with label smoothing and the 1/9 logit scale this high rate is stable
    # momentum: the declared 0.9 with Nesterov. airbench uses 0.85 with this lr; imgclf 0.2 listed 0.85 here,
    # but its resolution never applied it, and every measured result in RESULTS.md ran at 0.9
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
    "weight_decay": 5e-4,
    "norm_lr_scale": 1.0,
    "schedule": "onecycle",
    "label_smoothing": 0.1,
    "ema": False,
    "tta": False,
    "augment": "light",
    "batch_size": 128,  # x4 on a GPU
}
PLAIN_GPU_BATCH_FACTOR = 4
# Fine-tuning pretrained weights: AdamW (2e-3 at batch 128, decoupled decay 0.05). Measured on 1,000 CIFAR-10
# images at 96 px with EfficientNet-Lite0 (bench/transfer.py), 3 epochs: 57.7% test, against 34.5% for the
# tutorials' SGD at 0.01 and 22.1% at 0.1 (RESULTS.md, 2026-11-23).
# From a probe's head (the folder default's LP-FT), measured on 1,000 CIFAR-10 photos at 96 px, 5 epochs,
# validation of 300 (bench/RESULTS.md 2026-12-02): the backbone at a tenth of the head's rate (fastai's
# discriminative rates), light augmentation (the probe saw the images unaugmented: "standard"'s rotations
# dropped the first epoch to 0.50 from the probe's 0.54, "light" kept 0.58), and, below FREEZE_BN_IMAGES,
# the pretrained batch-norm statistics kept (moving them to batches of 64 dropped the first epoch to 0.38).
PRETRAINED: dict[str, Any] = {
    "optimizer": "adamw",
    "lr": 2e-3 * LR_BATCH / 128,
    "weight_decay": 0.05,
    "warmup_epochs": 0.5,
    "backbone_lr_scale": 0.1,
    "augment": "light",
}
FREEZE_BN_IMAGES = 10_000  # training images below which fine-tuning keeps the batch-norm statistics

# Small datasets: enough optimizer steps for batch norm and the schedule, in batches of at most 1/8 of the data.
SMALL_DATA = 10_000  # training images
MIN_STEPS = 300
MAX_SMALL_DATA_EPOCHS = 200
MIN_BATCH = 16

# A folder's default image size is its images' own (or their median), at most this many pixels a side:
# at 64 px a CPU epoch of the folder recipe costs a quarter of 128 px; a GPU affords 128.
FOLDER_SIZE_CAP = {"cpu": 64, "gpu": 128}

# The folder default's search (imgclf.train.search): seconds of this machine's measured work for the search and
# the final run together, when `budget` is not given. The rule: a folder of a few thousand 300-px photos gets
# its own size's probe and two or three fine-tune epochs at it on a 2-core CPU (features ~60 ms an image at
# 300 px, a training step ~0.2 s an image: 2,600 photos take ~20 minutes); a small folder's fine-tune stops at
# its recipe's epochs well before it (CIFAR-10, 100 a class: ~11 minutes)
SEARCH_BUDGET = {"cpu": 1200.0, "gpu": 300.0}

# The linear probe (imgclf.features.probe), for features of ImageNet networks (pooled, non-negative, ~1e0):
# AdamW, cosine decay, enough steps to converge on a few hundred images and few epochs on many.
PROBE: dict[str, Any] = {
    "optimizer": "adamw",
    "lr": 3e-3,  # at batch PROBE_BATCH
    "weight_decay": 0.05,  # decoupled: a mild pull towards zero, the head's only regulariser
    "schedule": "cosine",
    "warmup_epochs": 0.0,
    "label_smoothing": 0.1,
    "ema": False,
    "compile": False,
    "norm_lr_scale": 1.0,
    "grad_clip": None,
    "freeze_epochs": 0,
    "backbone_lr_scale": 1.0,
    "freeze_bn": False,
    "patience": None,
    "target_accuracy": None,
    "batch_size": 256,
}
PROBE_STEPS = 600  # optimizer steps at least
PROBE_MAX_EPOCHS = 100
# The probe's only regulariser, chosen per probe by held-out log loss (as CLIP's linear probes sweep theirs):
# at 0.05 a probe of 900 images x 1,280 features fits its training set and holds out worse than a uniform
# guess (pasted CIFAR at 256 px: log loss 2.05 at 0.05, 1.95 at 5; bench/RESULTS.md 2026-12-02), and a fine-tune
# that starts from an overconfident head begins confidently wrong
PROBE_DECAYS = (0.05, 0.5, 5.0, 50.0)
# Below this many validation images, a choice made on them is noise (50 images: +-6 points of accuracy), so
# probes are scored by cross-validation over the training and validation features together (cheap on cached
# features); the head that fine-tuning starts from is still fit on the training split only
SMALL_VALIDATION = 500
PROBE_FOLDS = 5

# The doctor's quick models (imgclf.train.quick): the folder recipe of the cnn at a few epochs per fold, plain
# (no weight averaging, views or compilation: each fold's model predicts once), and no class weights:
# confident learning wants the probabilities of the data as it is
QUICK: dict[str, Any] = {"ema": False, "tta": False, "compile": False, "class_weights": "none"}
QUICK_EPOCHS = 4  # per fold at least: minutes for 60,000 images
QUICK_IMAGES = 64_000  # images seen per fold at least: on MNIST's 10,000 test images, 3 folds x 4 epochs left one
# fold at 91%; 5 folds x 8 epochs (this rule) every fold at 99.2-99.5% (bench/label_errors.py)
MAX_QUICK_EPOCHS = 12


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


def search_budget(settings: TrainConfig, device_type: str) -> tuple[float, str]:
    """The seconds the folder default's search and its final run have, and where that came from."""
    if settings.budget:
        return settings.budget, settings.origin("budget")
    device = device_class(device_type)
    return SEARCH_BUDGET[device], f"rule: the search's on a {device} (search and fine-tuning; a cnn trains its recipe)"


def probe_recipe(cfg: RunConfig, train_images: int) -> RunConfig:
    """The linear probe's run config: ``cfg``'s data and imbalance settings with the probe's recipe, its
    epochs enough for :data:`PROBE_STEPS` steps (at least 10, at most :data:`PROBE_MAX_EPOCHS`)."""
    steps_per_epoch = max(1, math.ceil(train_images / PROBE["batch_size"]))
    epochs = min(PROBE_MAX_EPOCHS, max(10, math.ceil(PROBE_STEPS / steps_per_epoch)))
    return cfg.with_recipe("probe", {**PROBE, "epochs": epochs})


def quick_epochs(train_images: int) -> int:
    """Epochs of each fold's quick model: enough images seen to converge on small folders, 4 on large ones."""
    return max(QUICK_EPOCHS, min(MAX_QUICK_EPOCHS, math.ceil(QUICK_IMAGES / max(1, train_images))))


def quick_settings(epochs: int, seed: int) -> TrainConfig:
    """What the doctor's quick model of one fold trains with, before the folder recipe fills the rest."""
    return TrainConfig().replace(_origin="recipe quick", epochs=epochs, seed=seed, **QUICK)


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


def recipe_values(variant: Variant, device_type: str, model: str, pretrained: bool) -> dict[str, Any]:
    """Step 3: every setting the recipe gives a variant, before the rules."""
    fast = model == DEFAULT_MODEL
    gpu = device_class(device_type) == "gpu"
    base = {**(FAST if fast else PLAIN), "compile": gpu}  # compiling takes 10-40 s once, then halves GPU steps
    if fast and not gpu:
        base["batch_size"] = CPU_BATCH
    values = {**base, **variant.settings}
    if not fast:  # the cnn's widths and batch are not another model's
        values["batch_size"] = PLAIN["batch_size"] * (PLAIN_GPU_BATCH_FACTOR if gpu else 1)
        values.pop("model_args", None)
    if pretrained:
        values.update(PRETRAINED)
    return values


@dataclass(frozen=True)
class DataFacts:
    """What the rules need to know of the data and the run: training images (None: unknown, a large folder),
    the image size the data loader chose (with why), images per class, the labels' task, and the budget the
    search spent (where it searched: recorded, so a searched run's config says it)."""

    train_images: int | None
    image_size: int | None = None
    image_size_note: str = ""
    class_counts: tuple[int, ...] | None = None  # training images per class
    task: Task = field(default_factory=_single_label)
    search_budget: tuple[float, str] | None = None  # (seconds, where they came from)
    run_name: str | None = None  # a new run of this data: its folder is runs/<run_name>-<model> unless `out` says


# Imbalanced classes (largest over smallest above IMBALANCE_RATIO): the treatment measured best on real data
# thinned to 1:20 (bench/imbalance.py, RESULTS.md 2026-11-29): loss weights of 1/sqrt(class count), the best
# mean balanced accuracy over CIFAR-10 and Fashion-MNIST, scratch cnn and lite0 probe (0.654; inverse frequency
# 0.645, logit adjustment 0.649, effective number 0.649, balanced sampler 0.644, none 0.611); and the best
# epoch chosen on balanced accuracy.
IMBALANCED: dict[str, Any] = {"class_weights": "sqrt", "monitor": "val_balanced_acc"}


def is_imbalanced(counts: Sequence[int]) -> bool:
    return bool(counts) and min(counts) > 0 and max(counts) > IMBALANCE_RATIO * min(counts)


def _candidate(
    settings: TrainConfig,
    recipe: str,
    variant: Variant,
    device_type: str,
    facts: DataFacts,
    processes: int = 1,
    budget_epochs: int | None = None,
) -> RunConfig:
    """The run config of one variant: defaults, then the recipe, then your settings, then the rules for
    what you did not set (steps 3-4), each value with its source."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    def put(name: str, value: Any, source: str) -> None:
        if not settings.is_set(name):
            values[name], sources[name] = value, source

    for spec in SETTINGS.values():
        if settings.is_set(spec.name):
            values[spec.name], sources[spec.name] = getattr(settings, spec.name), settings.origin(spec.name)
        elif not spec.recipe:
            values[spec.name], sources[spec.name] = spec.default(), "default"
    origin = f"recipe {recipe}/{variant.name}"
    if ":" not in values["model"] and not settings.is_set("pretrained") and not values["weights"]:
        from .models import get_model_spec  # the registry imports torchvision: only when resolving

        pretrained = get_model_spec(values["model"]).pretrained
        if pretrained is not None and pretrained.ships:
            put("pretrained", True, f"rule: {values['model']}'s ImageNet weights ship with imgclf")
    given = recipe_values(variant, device_type, values["model"], bool(values["pretrained"] or values["weights"]))
    for name, value in given.items():
        put(name, value, origin)
    n_train = facts.train_images
    if n_train is not None and n_train < SMALL_DATA:
        batch = values["batch_size"]
        while batch > MIN_BATCH and n_train < 8 * batch:
            batch //= 2
        if batch != values["batch_size"]:
            put("batch_size", batch, f"rule: {n_train:,} training images, at least 8 batches an epoch")
    fine_tuned = bool(values["pretrained"] or values["weights"])
    if fine_tuned and n_train is not None and n_train < FREEZE_BN_IMAGES:
        put(
            "freeze_bn",
            True,
            f"rule: fine-tuning pretrained weights on {n_train:,} training images (< {FREEZE_BN_IMAGES:,})",
        )
    recipe_epochs = given["epochs"]
    if budget_epochs is not None:
        put("epochs", budget_epochs, f"rule: what the budget of {settings.budget:g} s allows")
    elif n_train is not None and n_train < SMALL_DATA:
        steps_per_epoch = math.ceil(n_train / (values["batch_size"] * processes))
        wanted = min(MAX_SMALL_DATA_EPOCHS, math.ceil(MIN_STEPS / steps_per_epoch))
        if wanted > recipe_epochs:
            put("epochs", wanted, f"rule: {n_train:,} training images, at least {MIN_STEPS} steps")
    if values["epochs"] != recipe_epochs:
        share = given["warmup_epochs"] / recipe_epochs
        put("warmup_epochs", share * values["epochs"], f"rule: the recipe's warm-up share, {share:.0%} of the run")
    global_batch = values["batch_size"] * processes
    if global_batch != LR_BATCH:
        put(
            "lr",
            given["lr"] * global_batch / LR_BATCH,
            f"rule: the recipe's {given['lr']:.4g} at batch {LR_BATCH}, linear in the batch ({global_batch})",
        )
    counts = facts.class_counts
    treated = any(settings.is_set(n) for n in ("class_weights", "logit_adjustment", "sampler"))
    for name, (value, why) in facts.task.recipe_rules.items():  # several labels: no smoothing, say
        put(name, value, why)
    if counts and facts.task.imbalance_rule and is_imbalanced(counts):
        why = f"rule: imbalanced classes ({max(counts):,} to {min(counts):,} training images)"
        for name, value in IMBALANCED.items():
            if name != "monitor" and treated:
                continue  # a treatment you chose is not combined with another
            put(name, value, why)
    if not settings.is_set("image_size") and facts.image_size is not None:
        origin = "data: the images' size (see the note above)" if facts.image_size_note else "data: the dataset's own"
        values["image_size"], sources["image_size"] = facts.image_size, origin
    if facts.search_budget is not None:  # recorded after the variant's choice, which it does not drive
        put("budget", *facts.search_budget)
    if facts.run_name is not None:
        from .rundir import RunDir

        folder = RunDir.new_path(f"{facts.run_name}-{values['model']}")
        put("out", str(folder), "rule: a new folder runs/<data>-<model> (-2, -3, ... where taken)")
    return RunConfig.from_values(values, sources)


def resolve(
    settings: TrainConfig,
    recipe: str,
    device_type: str,
    facts: DataFacts,
    seconds_per_epoch: Callable[[RunConfig], float] | None = None,
    processes: int = 1,
) -> tuple[RunConfig, str]:
    """The run config for ``settings`` with the recipe of ``recipe`` (a built-in dataset's name, or "folder")
    on ``device_type``, and the variant's name. ``seconds_per_epoch(candidate)`` times a candidate's epoch
    on this machine, for `budget`; ``processes``: distributed training, where ``batch_size`` is per process."""
    variants = getattr(recipe_for(recipe), device_class(device_type))

    def candidate(variant: Variant, budget_epochs: int | None = None) -> RunConfig:
        return _candidate(settings, recipe, variant, device_type, facts, processes, budget_epochs)

    # a config that sets every value a recipe would fill (a run resumed, a config.yaml given back) has no recipe
    # left to choose: nothing to time
    fills = any(not settings.is_set(spec.name) for spec in SETTINGS.values() if spec.recipe)
    per_epoch = (lambda v: seconds_per_epoch(candidate(v))) if seconds_per_epoch and settings.budget and fills else None
    variant, budget_epochs = choose_variant(
        variants,
        budget=settings.budget,
        target_accuracy=settings.target_accuracy,
        seconds_per_epoch=per_epoch,
        epochs_of=lambda v: candidate(v).schedule.epochs,
    )
    return candidate(variant, budget_epochs), variant.name


# the settings `train` prints first and `imgclf recipes --data` explains: those a recipe or rule decides
SHOWN = (
    "model",
    "model_args",
    "image_size",
    "epochs",
    "batch_size",
    "optimizer",
    "lr",
    "warmup_epochs",
    "schedule",
    "weight_decay",
    "label_smoothing",
    "augment",
    "flips",
    "ema",
    "tta",
    "compile",
    "pretrained",
    "backbone_lr_scale",
    "freeze_bn",
    "class_weights",
    "logit_adjustment",
    "monitor",
)


def describe_sources(cfg: RunConfig, names: tuple[str, ...] = SHOWN) -> list[list[str]]:
    """(setting, value, where it came from) rows: what the first lines of `train` show."""
    values = cfg.values()
    return [[name, _short(values[name]), cfg.sources.get(name, "")] for name in names]


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    return str(value)


def default_config(dataset: str, n_train: int | None, device_type: str = "cpu") -> RunConfig:
    """What training on ``dataset`` (of ``n_train`` training images) runs with no setting given."""
    variants = getattr(recipe_for(dataset), device_class(device_type))
    variant, _ = choose_variant(variants)
    return _candidate(TrainConfig(data=dataset), dataset, variant, device_type, DataFacts(n_train))


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
                cfg = _candidate(TrainConfig(data=dataset), dataset, variant, device_type, DataFacts(n_train))
                measured = (
                    "-" if variant.measured is None else f"{variant.measured[0]:.4f} in {variant.measured[1]:g} s"
                )
                rows.append(
                    [
                        dataset,
                        device,
                        variant.name,
                        f"{cfg.schedule.epochs:g}",
                        str(cfg.model.model_args.get("widths", "-")),
                        str(cfg.optim.batch_size),
                        f"{cfg.optim.lr:.4g}",
                        f"{cfg.schedule.warmup_epochs:.3g}",
                        cfg.augment.augment,
                        "yes" if cfg.eval.tta else "no",
                        measured,
                    ]
                )
    return rows
