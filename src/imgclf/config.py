"""Settings in, one resolved run config out.

Every setting is declared once, as a field of the section it belongs to (data, model, optim, schedule,
augment, eval, run), with its type, default, help text and checks in the field's metadata. From those
declarations come:

- :class:`TrainConfig`: the settings a user gives (keywords, flags, a config file): only what was set,
  each checked against its field; nothing is filled in here;
- :class:`RunConfig`: the frozen, fully concrete config of a run, by section, with where each value came
  from (``sources``); :func:`imgclf.recipes.resolve` builds it from a TrainConfig, the data and the
  device. ``config.yaml`` holds it, so a run is reproduced by passing its ``config.yaml`` back;
- the command line's flags and their help (:mod:`imgclf.cli` reads :func:`settings_fields`).

A setting marked ``recipe`` has no default: the recipe for the dataset and device fills it (or a rule,
such as the linear lr scaling, derives it). Adding a setting is adding one field here.

This module imports neither torch nor anything that does: ``imgclf --help`` reads it.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .export import backend_names
from .rundir import CONFIG

DEFAULT_MODEL = "cnn"  # what the recipes train when no model is named
# Pillow's own decompression-bomb threshold (Image.MAX_IMAGE_PIXELS, about 0.25 GB as 24-bit RGB)
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
PREDICT_BATCH = 256  # images decoded and predicted together by `predict`
RECIPE = "the recipe"  # how --help shows the default of a setting the recipe fills


@dataclass(frozen=True)
class DecodeSpec:
    """How a file becomes pixels: the square's side, how the image is fitted to it (:func:`fit_tensor`), and
    the most pixels a file may claim (decompression bombs). Training (``DataConfig.decode_spec``) and
    inference (``Classifier.decode_spec``) each make one; every decoder takes it."""

    size: int
    resize: str = "crop"
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS

    def at(self, size: int) -> DecodeSpec:
        """The same fitting and limit at another size."""
        return DecodeSpec(size, self.resize, self.max_pixels)


def default_search() -> str:
    """``$IMGCLF_SEARCH`` (auto or off), else auto: a CI job or a test suite can turn the folder search off."""
    value = os.environ.get("IMGCLF_SEARCH", "auto")
    if value not in ("auto", "off"):
        raise ConfigError(f"$IMGCLF_SEARCH {value!r}: use auto or off")
    return value


def default_data_dir() -> str:
    return os.environ.get("IMGCLF_DATA") or str(Path.home() / ".cache" / "imgclf")


IMBALANCE_RATIO = 3.0  # largest class over smallest beyond which the data counts as imbalanced (recipes' rule)

# ---------------------------------------------------------------- declaring a setting

# checks a field's metadata may name: (test, what the value must be)
CHECKS: dict[str, tuple[typing.Callable[[Any], bool], str]] = {
    "positive": (lambda v: v > 0, "must be positive"),
    "non_negative": (lambda v: v >= 0, "must be 0 or more"),
    "fraction": (lambda v: 0 < v < 1, "must be between 0 and 1 (e.g. 0.1)"),
    "smoothing": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "probability": (lambda v: 0 <= v <= 1, "must be a probability between 0 and 1 (e.g. 0.8)"),
    "threshold": (lambda v: 0 < v < 1, "must be a probability between 0 and 1 (e.g. 0.5)"),
}


def setting(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    factory: typing.Callable[[], Any] | None = None,
    choices: tuple[str, ...] | None = None,
    check: str | None = None,
    recipe: bool = False,
    flag: str | None = None,
    metavar: str | None = None,
    default_text: str | None = None,
    lr_find: bool = True,
    negatable: bool = False,
    unit: float | None = None,
) -> Any:
    """A config field. ``recipe``: no default, the recipe (or a rule) fills it. ``flag``: the command line's
    name when it is not ``--name-with-dashes`` (``--no-cache`` for ``cache``); ``""`` for none (a mapping
    such as ``model_args`` is set in a config file or as a keyword). ``default_text``: how --help shows a
    default that is computed. ``lr_find``: whether the learning-rate finder takes it (it trains no epochs,
    so the schedule, evaluation and reporting settings are not its). ``negatable``: a true-or-false setting a
    rule may turn on, so the command line offers both ``--name`` and ``--no-name``. ``unit``: the command line
    gives the value in this many of the field's units (``--max-upload-mb`` for bytes: 1e6)."""
    metadata = {
        "help": help,
        "choices": choices,
        "check": check,
        "recipe": recipe,
        "flag": flag,
        "metavar": metavar,
        "default_text": default_text,
        "lr_find": lr_find,
        "negatable": negatable,
        "unit": unit,
    }
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


# ---------------------------------------------------------------- the sections


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Which images, at what size, split how: everything that decides what a split holds."""

    data: str = setting(
        "digits", help="dataset name (imgclf datasets), a folder of class sub-folders, a CSV of file,label, or shards"
    )
    data_dir: str = setting(
        factory=default_data_dir,
        help="where built-in datasets are downloaded and decoded images cached",
        default_text="$IMGCLF_DATA or ~/.cache/imgclf",
    )
    images: str | None = setting(None, help="folder of the CSV's images", default_text="the CSV's folder")
    images_outside: bool = setting(
        False,
        help="let a CSV name images outside `images` (../ or absolute paths); off, such a row is refused, so a CSV "
        "from someone else cannot pull any file you can read into a model, its report or its errors",
    )
    image_size: int | None = setting(
        None,
        help="side in pixels",
        check="positive",
        default_text="native for built-ins; a folder's own, at most 64 on a CPU and 128 on a GPU",
    )
    val_split: float = setting(0.1, help="share of the training images held out for validation", check="fraction")
    test_split: float = setting(
        0.2, help="share held out for testing when the source has no test split", check="fraction"
    )
    seed: int = setting(0, help="seeds the held-out splits, the initial weights, the batch order and augmentation")
    cache: bool = setting(
        True, help="decode folder/CSV images again instead of using the decode cache", flag="--no-cache"
    )
    max_image_pixels: int = setting(
        DEFAULT_MAX_IMAGE_PIXELS, help="refuse images claiming more pixels (decompression bombs)", check="positive"
    )
    exclude: str | None = setting(
        None, help="leave out the images this file lists, one a line (e.g. doctor/exclude.txt)", metavar="FILE"
    )
    resize: str = setting(
        "crop",
        help="fitting an image to the square: crop (shorter side, centre crop), pad (the whole image, black "
        "borders), stretch (the whole image, squashed); kept by predict, export and serve",
        choices=("crop", "pad", "stretch"),
    )
    storage: str = setting(
        "auto",
        help="decoded folder/CSV images in memory, or memory-mapped from the cache file (auto: mapped when they "
        "would take over half the available memory)",
        choices=("auto", "memory", "mmap"),
    )

    @property
    def cache_dir(self) -> Path | None:
        """Where decoded images and embeddings are cached (None with `cache` off)."""
        return Path(self.data_dir).expanduser() / "cache" if self.cache else None

    def decode_spec(self, size: int) -> DecodeSpec:
        """How this data's files are decoded at ``size``."""
        return DecodeSpec(size, self.resize, self.max_image_pixels)


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    model: str = setting(
        DEFAULT_MODEL,
        help="model name (imgclf models)",
        default_text=f"{DEFAULT_MODEL}; for a folder or CSV, what the search picks (`search`)",
    )
    model_args: dict[str, Any] = setting(
        factory=dict,
        help="the model function's keyword arguments, e.g. {widths: [16, 32, 64]} (the cnn's recipe sets widths)",
        flag="",
    )
    pretrained: bool = setting(
        False,
        help="start from ImageNet weights (resnet18, lite0, torchvision:NAME, timm:NAME)",
        default_text="off; on for lite0, whose weights ship with imgclf",
        negatable=True,
    )
    weights: str | None = setting(None, help="start from this weights file instead of downloading")
    init: str | None = setting(
        None, help="start from a run's weights (its best.pt); a new head if classes differ", metavar="RUN"
    )
    freeze_epochs: int = setting(0, help="train only the head for this many epochs first", check="non_negative")
    backbone_lr_scale: float = setting(
        1.0, help="lr of everything but the head, as a fraction of the head's (fine-tuning: 0.1)", check="positive"
    )
    freeze_bn: bool = setting(
        False,
        help="keep the pretrained batch-norm statistics while fine-tuning (their scales and shifts still learn)",
        default_text="off; on when fine-tuning pretrained weights on a small folder",
        negatable=True,
    )


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    optimizer: str = setting(help="the optimizer", choices=("sgd", "adam", "adamw"), recipe=True)
    lr: float = setting(help="peak learning rate", check="positive", recipe=True)
    batch_size: int = setting(help="images per step (per process, distributed)", check="positive", recipe=True)
    momentum: float = setting(0.9, help="SGD momentum", check="non_negative")
    nesterov: bool = setting(True, help="plain instead of Nesterov momentum", flag="--no-nesterov")
    weight_decay: float = setting(help="on conv and linear weights", check="non_negative", recipe=True)
    norm_lr_scale: float = setting(
        help="lr multiplier of batch-norm scales and shifts (airbench: 64)", check="positive", recipe=True
    )
    label_smoothing: float = setting(help="cross-entropy label smoothing", check="smoothing", recipe=True)
    grad_clip: float | None = setting(
        None, help="clip the gradient norm to this value", check="positive", default_text="off"
    )
    class_weights: str = setting(
        "none",
        help="weight the loss by class: inverse frequency (auto is its old name), sqrt (inverse square root), "
        "effective (Cui et al. 2019's effective number of samples, beta 0.999)",
        choices=("none", "auto", "inverse", "sqrt", "effective"),
        default_text=f"none; sqrt where the largest class has over {IMBALANCE_RATIO:g}x the smallest's images, "
        "unless you chose another treatment",
    )
    logit_adjustment: float = setting(
        0.0,
        help="Menon et al. 2021's logit-adjusted loss: training adds tau x log(class share) to the logits, so rare "
        "classes get a larger margin (tau 1.0; 0 is off)",
        check="non_negative",
        metavar="TAU",
    )
    sampler: str = setting("shuffle", help="balanced: draw classes equally often", choices=("shuffle", "balanced"))
    loss: str = setting(
        "auto",
        help="the training loss: ce (cross-entropy) or focal for one label per image; bce (binary cross-entropy) "
        "or focal for several; auto: ce or bce, as the labels are",
        choices=("auto", "ce", "focal", "bce"),
    )
    focal_gamma: float = setting(
        2.0,
        help="focal loss's gamma: how much easy examples are down-weighted (Lin et al. 2017: 2)",
        check="non_negative",
        metavar="GAMMA",
    )
    ema: bool = setting(help="lookahead weight averaging late in training", recipe=True, lr_find=False)


@dataclass(frozen=True, kw_only=True)
class ScheduleConfig:
    epochs: int = setting(
        help="epochs; the warm-up keeps its share of the run", check="positive", recipe=True, lr_find=False
    )
    schedule: str = setting(
        help="lr schedule after the warm-up", choices=("constant", "cosine", "onecycle"), recipe=True, lr_find=False
    )
    warmup_epochs: float = setting(help="epochs of linear lr warm-up", check="non_negative", recipe=True, lr_find=False)
    patience: int | None = setting(
        None,
        help="stop when the monitored validation score (`monitor`) has not improved for this many epochs",
        check="positive",
        default_text="off",
        lr_find=False,
    )
    monitor: str = setting(
        "val_loss",
        help="what picks the best checkpoint and early stopping: val_loss, or val_balanced_acc (the mean of the "
        "classes' recalls)",
        choices=("val_loss", "val_balanced_acc"),
        default_text=f"val_loss; val_balanced_acc where the largest class has over {IMBALANCE_RATIO:g}x the "
        "smallest's images",
        lr_find=False,
    )
    search: str = setting(
        factory=default_search,
        help="a folder or CSV with no model given: try the cnn and the shipped lite0 (a probe on its cached "
        "features, then fine-tuned) at several sizes on the validation split, within the budget; off: the cnn recipe",
        choices=("auto", "off"),
        default_text="$IMGCLF_SEARCH or auto",
        lr_find=False,
    )
    budget: float | None = setting(
        None,
        help="seconds of training: the recipe variant (and epochs) that fits, timed on this machine; the "
        "search's work, each part charged what this machine measured for it once",
        check="positive",
        metavar="SECONDS",
        default_text="none for a recipe; the search's 1200 on a CPU, 300 on a GPU",
        lr_find=False,
    )
    target_accuracy: float | None = setting(
        None,
        help="the quickest recipe variant that reached it in our benchmarks; stops once validation reaches it",
        check="fraction",
        metavar="FRACTION",
        default_text="none",
        lr_find=False,
    )


FLIPS = ("auto", "none", "horizontal", "vertical", "all")


def mirrors(flips: str) -> bool:
    """Whether ``flips`` (decided, not auto) includes the horizontal mirror (test-time augmentation uses it)."""
    return flips in ("horizontal", "all")


@dataclass(frozen=True, kw_only=True)
class AugmentConfig:
    augment: str = setting(
        help="none; light: flips and shifts of 1/16; standard: shifts of 1/8 and small rotations; randaugment "
        "(2 ops at magnitude 9) or trivialaugment (1 op, any magnitude): light, then ops drawn per image",
        choices=("none", "light", "standard", "randaugment", "trivialaugment"),
        recipe=True,
    )
    flips: str = setting(
        "auto",
        help="the flips augmentation may use: none, horizontal, vertical, all (both, and quarter turns); auto: "
        "each kept where a probe cannot tell flipped copies of your held-out images from originals (a dataset's own rule for "
        "built-in sets; the source's, unmeasured, under $IMGCLF_MEASURE_FLIPS=off)",
        choices=FLIPS,
        default_text="auto",
    )
    mixup: float = setting(
        0.0,
        help="mix pairs of training images and their labels, the share drawn from Beta(alpha, alpha) (timm: 0.8; 0 off)",
        check="non_negative",
        metavar="ALPHA",
    )
    cutmix: float = setting(
        0.0,
        help="paste a box of another training image, labels mixed by its area, Beta(alpha, alpha) (timm: 1.0; 0 off); "
        "with mixup, each batch takes one of the two",
        check="non_negative",
        metavar="ALPHA",
    )


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    tta: bool = setting(
        help="test-time augmentation (mirror where it keeps the label, 1-pixel shifts), everywhere the model predicts",
        recipe=True,
        lr_find=False,
    )


@dataclass(frozen=True, kw_only=True)
class RuntimeConfig:
    device: str = setting("auto", help="where to train", choices=("auto", "cpu", "cuda", "mps"))
    amp: bool = setting(True, help="no mixed precision on CUDA", flag="--no-amp")
    compile: bool = setting(help="torch.compile the model (the recipe: on CUDA)", recipe=True)
    sync_bn: bool = setting(False, help="distributed on GPUs: batch norm over the global batch", lr_find=False)
    tensorboard: bool = setting(False, help="also write TensorBoard logs", lr_find=False)
    track: str | None = setting(
        None,
        help="also log the run to an experiment tracker (mlflow: ./mlruns, or $MLFLOW_TRACKING_URI)",
        choices=("mlflow",),
        default_text="none",
        lr_find=False,
    )
    report: bool = setting(False, help="write report.html (as imgclf report) when training ends", lr_find=False)
    out: str | None = setting(
        None, help="run directory", default_text="runs/<data>-<model>, never overwritten", lr_find=False
    )


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "schedule": ScheduleConfig,
    "augment": AugmentConfig,
    "eval": EvalConfig,
    "run": RuntimeConfig,
}


@dataclass(frozen=True)
class Setting:
    """One setting as declared: its section, field and resolved type hint."""

    section: str
    field: dataclasses.Field
    hint: Any

    @property
    def name(self) -> str:
        return self.field.name

    @property
    def meta(self) -> Mapping[str, Any]:
        return self.field.metadata

    @property
    def recipe(self) -> bool:
        return bool(self.meta.get("recipe"))

    def default(self) -> Any:
        """The declared default (None for a setting the recipe fills)."""
        if self.field.default_factory is not dataclasses.MISSING:
            return self.field.default_factory()
        return None if self.field.default is dataclasses.MISSING else self.field.default


def _settings() -> dict[str, Setting]:
    found: dict[str, Setting] = {}
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in found:  # names are flat in keywords, flags and TrainConfig
                raise TypeError(f"setting {f.name} is declared in two sections")
            found[f.name] = Setting(section, f, hints[f.name])
    return found


SETTINGS: dict[str, Setting] = _settings()


def declared(cls: type, section: str = "") -> list[Setting]:
    """The settings a dataclass of :func:`setting` fields declares, in order: a command's options (predict's,
    serve's), which the command line turns into flags as it does training's."""
    hints = typing.get_type_hints(cls)
    return [Setting(section or cls.__name__, f, hints[f.name]) for f in dataclasses.fields(cls)]


def check_declared(options: Any) -> None:
    """Every field of a dataclass of :func:`setting` fields checked as its declaration says (a one-line error)."""
    for spec in declared(type(options)):
        object.__setattr__(options, spec.name, check_setting(spec, getattr(options, spec.name)))


def settings_fields() -> Iterator[Setting]:
    """Every setting, section by section, as declared."""
    return iter(SETTINGS.values())


# ---------------------------------------------------------------- predict's options

DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass(kw_only=True)
class PredictOptions:
    """How ``predict`` answers and where it writes: declared as training's settings are, so the command line's
    flags and their help come from here, and each value is checked as given."""

    top_k: int = setting(1, help="classes listed per image", check="positive")
    min_confidence: float = setting(
        0.0,
        help="answer `unknown` when the (calibrated) top probability is below P (or the familiarity, where "
        "`evaluate --negatives` chose it); `evaluate` shows the coverage per P",
        check="probability",
        metavar="P",
    )
    threshold: float | None = setting(
        None,
        help="runs with several labels per image: list each label from probability P on, instead of the "
        "per-class thresholds the run chose on its validation split",
        check="threshold",
        metavar="P",
        default_text="the run's own",
    )
    format: str | None = setting(
        None,
        help="table, or the --out file's kind (.csv, .json)",
        choices=("csv", "json", "table"),
        default_text="by --out's suffix, else table",
    )
    out: str | None = setting(
        None,
        help="write the predictions to this .csv or .json file as they are made",
        default_text="the terminal",
    )
    backend: str = setting(
        "torch",
        help="an exported format's runtime runs the model (onnx: ONNX Runtime; exported into RUN/export first)",
        choices=backend_names(),
    )
    batch_size: int = setting(PREDICT_BATCH, help="images decoded and predicted together", check="positive")
    device: str = setting("auto", help="where to run the model", choices=DEVICES)
    max_image_pixels: int = setting(
        DEFAULT_MAX_IMAGE_PIXELS, help="refuse images claiming more pixels (decompression bombs)", check="positive"
    )

    def __post_init__(self) -> None:
        check_declared(self)


# ---------------------------------------------------------------- checking values

_TYPE_WORDS = {
    int: "a whole number",
    float: "a number",
    bool: "true or false",
    str: "text",
    list: "a list",
    dict: "a mapping",
}


def _matches(value: Any, kind: Any) -> bool:
    if kind is Any:
        return True
    if kind is float:  # 1 is a fine learning rate; True is not
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, typing.get_origin(kind) or kind)


def _options(hint: Any) -> tuple[Any, ...]:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return typing.get_args(hint)
    return (hint,)


def value_kind(hint: Any) -> Any:
    """The type a setting's values have, its ``None`` aside (``int | None`` -> int)."""
    return next(kind for kind in _options(hint) if kind is not type(None))


def check_value(name: str, value: Any, where: str = "", shown: str | None = None) -> Any:
    """``value`` checked against the training setting ``name`` (:func:`check_setting`)."""
    return check_setting(SETTINGS[name], value, where, shown)


def check_setting(spec: Setting, value: Any, where: str = "", shown: str | None = None) -> Any:
    """``value`` checked against a declared setting (type, choices, range), as the setting's type
    (an int where a float is declared becomes a float); a one-line error otherwise. ``shown``: how the
    message names the setting (the key of a config file; default `name`, rendered as keyword or flag)."""
    label = shown or f"`{spec.name}`"
    options = _options(spec.hint)
    if value is None and type(None) in options:
        return None
    kinds = [kind for kind in options if kind is not type(None)]
    if not any(_matches(value, kind) for kind in kinds):
        wanted = " or ".join(_TYPE_WORDS.get(typing.get_origin(kind) or kind, str(kind)) for kind in kinds)
        raise ConfigError(f"{where}{label} must be {wanted}, got {value!r}")
    choices = spec.meta.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{where}{label} {value!r} is not one of {', '.join(choices)}")
    check = spec.meta.get("check")
    if check and not CHECKS[check][0](value):
        raise ConfigError(f"{where}{label} {value} {CHECKS[check][1]}")
    if float in kinds and isinstance(value, int):
        return float(value)
    return value


def flatten(values: Mapping[str, Any]) -> dict[str, Any]:
    """A config as settings by name: a sectioned ``config.yaml`` (this version's) or a flat one (imgclf 0.2's);
    the record of where values came from is not a setting and is dropped."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if key == SOURCES_KEY:
            continue
        if key in SECTIONS and isinstance(value, Mapping):  # no setting's value is a mapping named so
            flat.update(value)
        else:
            flat[key] = value
    return flat


SOURCES_KEY = "sources"  # config.yaml's record of where each value came from


def data_config(**settings: Any) -> DataConfig:
    """A :class:`DataConfig` from data settings, each checked (a command that works on data before training,
    such as the doctor or pack, takes these and no others)."""
    names = {f.name for f in dataclasses.fields(DataConfig)}
    other = sorted(set(settings) - names)
    if other:
        raise ConfigError(f"not a data setting: {', '.join(other)}; the data settings are {', '.join(sorted(names))}")
    return DataConfig(**{k: check_value(k, v) for k, v in settings.items() if v is not None})


# ---------------------------------------------------------------- what a user sets


class TrainConfig:
    """The settings a user gives: only those that were set (``None`` leaves a setting unset), each checked.

    Reading a setting that was not set gives its declared default, or None where the recipe fills it;
    :func:`imgclf.recipes.resolve` turns this into a :class:`RunConfig`.

        >>> TrainConfig(data="mnist", epochs=2).epochs
        2
    """

    def __init__(self, *, _source: str | None = None, **settings: Any) -> None:  # _source: a config file
        where = f"{_source}: " if _source else ""
        unknown = sorted(set(settings) - set(SETTINGS))
        if unknown:
            raise ConfigError(f"{where}unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(SETTINGS))}")
        values = {}
        for name, value in settings.items():
            if value is None:
                continue
            values[name] = check_value(name, value, where, name if _source else None)
        self._values: dict[str, Any] = values
        self._origins: dict[str, str] = dict.fromkeys(values, f"config {_source}" if _source else "you")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in SETTINGS:
            raise AttributeError(name)
        return self._values[name] if name in self._values else SETTINGS[name].default()

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_"):
            raise AttributeError(f"TrainConfig is immutable; use .replace({name}=...)")
        super().__setattr__(name, value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TrainConfig) and self._values == other._values

    def __repr__(self) -> str:
        return f"TrainConfig({', '.join(f'{k}={v!r}' for k, v in self._values.items())})"

    def is_set(self, name: str) -> bool:
        return name in self._values

    def origin(self, name: str) -> str:
        """Where a setting that was set came from: "you" (a keyword or flag), or "config FILE"."""
        return self._origins[name]

    def to_dict(self) -> dict[str, Any]:
        """The settings that were set, by name."""
        return dict(self._values)

    def replace(self, *, _origin: str = "you", **changes: Any) -> TrainConfig:
        """These settings with ``changes`` over them (``None`` unsets one), the changes as given by "you"
        (or by ``_origin``: the search's choice, say)."""
        values = {**self._values, **changes}
        replaced = TrainConfig(**{k: v for k, v in values.items() if v is not None})
        replaced._origins = {k: _origin if k in changes else self._origins[k] for k in replaced._values}
        return replaced

    def with_absolute_paths(self, builtin: bool = False) -> TrainConfig:
        """The same settings, the paths among them absolute (as the saved config keeps them, so `evaluate` and
        `config` work from any directory), each keeping where it came from; ``builtin``: `data` names a dataset."""
        names = ("images", "data_dir", "weights") if builtin else ("data", "images", "data_dir", "weights")
        absolute = {n: str(Path(self._values[n]).expanduser().resolve()) for n in names if self._values.get(n)}
        found = TrainConfig(**{**self._values, **absolute})
        found._origins = dict(self._origins)
        return found

    def section(self, cls: type) -> Any:
        """One section with the settings given and the declared defaults (a section with ``recipe`` settings
        needs the recipe: see :func:`imgclf.recipes.resolve`)."""
        return cls(**{f.name: getattr(self, f.name) for f in dataclasses.fields(cls) if self.is_set(f.name)})

    @property
    def data_config(self) -> DataConfig:
        return self.section(DataConfig)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str | None = None, keep_sources: bool = False) -> TrainConfig:
        """Settings from a mapping: flat, or by section as ``config.yaml`` holds them. ``keep_sources``: each value
        keeps where its record says it came from (a run resumed goes on as it was resolved)."""
        settings = cls(_source=source, **flatten(values))
        if keep_sources:
            recorded = values.get(SOURCES_KEY) or {}
            settings._origins = {name: recorded.get(name, origin) for name, origin in settings._origins.items()}
        return settings

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainConfig:
        """A ``config.yaml`` (or a run directory holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file; pass a run directory or its config.yaml") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read it ({exc.__class__.__name__}); pass a config.yaml") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]}); fix or regenerate it") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of setting: value")
        return cls.from_dict(values, source=str(path))


# ---------------------------------------------------------------- the resolved config


@dataclass(frozen=True)
class RunConfig:
    """A run's every setting, concrete, by section; ``sources`` says where each value came from
    ("you", "recipe folder/default", "rule: ...", "default", "data: ..."). Build it with
    :func:`imgclf.recipes.resolve`; read it back with :meth:`from_dict`."""

    data: DataConfig
    model: ModelConfig
    optim: OptimConfig
    schedule: ScheduleConfig
    augment: AugmentConfig
    eval: EvalConfig
    run: RuntimeConfig
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    @classmethod
    def from_values(cls, values: Mapping[str, Any], sources: Mapping[str, str] | None = None) -> RunConfig:
        """From every setting by name; a setting the recipe fills must be among them."""
        missing = [s.name for s in SETTINGS.values() if s.recipe and values.get(s.name) is None]
        if missing:
            raise ConfigError(f"the run config lacks {', '.join(missing)}")
        sections = {
            section: cls_(**{f.name: values[f.name] for f in dataclasses.fields(cls_) if f.name in values})
            for section, cls_ in SECTIONS.items()
        }
        return cls(**sections, sources=dict(sources or {}))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str | None = None) -> RunConfig:
        """A run's saved config (config.yaml or a checkpoint's), checked as settings are."""
        settings = TrainConfig.from_dict(values, source)
        return cls.from_values({name: getattr(settings, name) for name in SETTINGS}, values.get(SOURCES_KEY))

    def values(self) -> dict[str, Any]:
        """Every setting by name."""
        return {f.name: getattr(section, f.name) for section in self.sections() for f in dataclasses.fields(section)}

    def sections(self) -> Iterable[Any]:
        return (getattr(self, name) for name in SECTIONS)

    def to_dict(self) -> dict[str, Any]:
        """By section, as config.yaml holds it (with the sources, which loading ignores)."""
        sections: dict[str, Any] = {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}
        sources = {name: self.sources[name] for name in SETTINGS if name in self.sources}  # in declaration order
        return {**sections, SOURCES_KEY: sources} if sources else sections

    def replace(self, **values: Any) -> RunConfig:
        """A copy with ``values`` (by setting name) changed; where each value came from stays as recorded."""
        for name, value in values.items():
            check_value(name, value)
        return RunConfig.from_values({**self.values(), **values}, self.sources)

    def with_recipe(self, name: str, values: Mapping[str, Any]) -> RunConfig:
        """A copy with a named recipe's ``values`` over it (the probe's, say), each recorded as from it."""
        return self.replace(**values).with_sources(dict.fromkeys(values, f"recipe {name}"))

    def with_sources(self, sources: Mapping[str, str]) -> RunConfig:
        return dataclasses.replace(self, sources={**self.sources, **sources})

    @property
    def seed(self) -> int:
        return self.data.seed
