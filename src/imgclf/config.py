"""One typed training config: defaults, validation, YAML in and out.

Fields left as ``None`` are filled by :mod:`imgclf.recipes` for the chosen dataset and device, so a
saved ``config.yaml`` always holds concrete values and reproduces the run.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .rundir import CONFIG

DEFAULT_MODEL = "cnn"  # what the recipes train when no model is named
# Pillow's own decompression-bomb threshold (Image.MAX_IMAGE_PIXELS, about 0.25 GB as 24-bit RGB)
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485

CHOICES = {
    "optimizer": ("sgd", "adam", "adamw"),
    "schedule": ("constant", "cosine", "onecycle"),
    "augment": ("none", "light", "standard"),
    "class_weights": ("none", "auto"),
    "sampler": ("shuffle", "balanced"),
    "device": ("auto", "cpu", "cuda", "mps"),
    "storage": ("auto", "memory", "mmap"),
}


def default_data_dir() -> str:
    return os.environ.get("IMGCLF_DATA") or str(Path.home() / ".cache" / "imgclf")


@dataclass
class TrainConfig:
    # what to train on
    data: str = "digits"
    data_dir: str = field(default_factory=default_data_dir)
    images: str | None = None  # image folder for a CSV dataset (default: the CSV's folder)
    image_size: int | None = None
    augment: str | None = None
    val_split: float = 0.1
    test_split: float = 0.2  # only used when the source has no test split
    cache: bool = True  # keep decoded folder/CSV images in <data_dir>/cache (invalidated when files change)
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # images claiming more pixels are refused before decoding
    exclude: str | None = None  # a file listing images to leave out (one path a line), e.g. doctor/exclude.txt
    storage: str = "auto"  # decoded folder/CSV images: in memory, or memory-mapped from the cache (larger than memory)
    # the model
    model: str | None = None
    model_args: dict[str, Any] | None = None  # passed to the model function, e.g. {"widths": [16, 32, 64]}
    pretrained: bool = False
    weights: str | None = None
    freeze_epochs: int = 0
    backbone_lr_scale: float = 1.0  # the lr of everything but the head, as a fraction of the head's (fine-tuning)
    init: str | None = None  # start from the weights of one of your runs (its best.pt); a new head if classes differ
    # optimisation
    epochs: int | None = None
    batch_size: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float | None = None
    schedule: str | None = None
    warmup_epochs: float | None = None
    label_smoothing: float | None = None
    grad_clip: float | None = None
    norm_lr_scale: float | None = None  # lr multiplier of biases and norm shifts (airbench: 64)
    ema: bool | None = None  # lookahead weight averaging over the last part of training
    tta: bool | None = None  # test-time augmentation (flip where it keeps the label, 1-pixel shifts)
    class_weights: str = "none"
    sampler: str = "shuffle"
    patience: int | None = None  # early stopping on validation loss; None: off
    budget: float | None = None  # seconds of training: picks the recipe variant and epochs that fit
    target_accuracy: float | None = None  # picks the quickest variant that reached it; stops once val reaches it
    # runtime
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # mixed precision where the device supports it (CUDA)
    sync_bn: bool = False  # distributed on GPUs: batch norm statistics over the whole global batch
    compile: bool | None = None  # torch.compile the model (default: on CUDA)
    tensorboard: bool = False
    report: bool = False  # write report.html (imgclf report) when training ends
    out: str | None = None

    def validate(self, source: str | None = None) -> TrainConfig:
        """Check types and ranges. An error names the setting as the caller gave it: the key in ``source``
        (a config file), else the keyword or flag."""
        where = f"{source}: " if source else ""

        def key(name: str) -> str:
            return name if source else f"`{name}`"

        for name, hint in _FIELD_TYPES.items():
            _check_type(key(name), getattr(self, name), hint, where)
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ConfigError(f"{where}{key(name)} {value!r} is not one of {', '.join(allowed)}")
        for name, example in (("val_split", 0.1), ("test_split", 0.2)):
            if not 0 < getattr(self, name) < 1:
                raise ConfigError(f"{where}{key(name)} {getattr(self, name)} must be between 0 and 1 (e.g. {example})")
        for name in ("epochs", "batch_size", "lr", "image_size", "max_image_pixels", "budget", "backbone_lr_scale"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{where}{key(name)} must be positive, got {value}")
        if self.target_accuracy is not None and not 0 < self.target_accuracy < 1:
            raise ConfigError(
                f"{where}{key('target_accuracy')} {self.target_accuracy} must be a fraction between 0 and 1 (e.g. 0.99)"
            )
        if self.label_smoothing is not None and not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"{where}{key('label_smoothing')} {self.label_smoothing} must be in [0, 1)")
        return self

    @property
    def model_name(self) -> str:
        """The model to build: the one set, else the recipes' default."""
        return self.model or DEFAULT_MODEL

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str | None = None) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"{source + ': ' if source else ''}unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**values).validate(source)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainConfig:
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file; pass a run directory or its config.yaml") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]}); fix or regenerate it") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of setting: value")
        return cls.from_dict(values, source=str(path))

    def replace(self, **changes: Any) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **changes})


_FIELD_TYPES: dict[str, Any] = typing.get_type_hints(TrainConfig)
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


def _check_type(name: str, value: Any, hint: Any, where: str) -> None:  # name: as the message shows it
    """One-line error when ``value`` is not of the field's declared type (YAML gives strings for typos)."""
    options = (
        typing.get_args(hint)
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        else (hint,)
    )
    if value is None and type(None) in options:
        return
    kinds = [kind for kind in options if kind is not type(None)]
    if any(_matches(value, kind) for kind in kinds):
        return
    wanted = " or ".join(_TYPE_WORDS.get(typing.get_origin(kind) or kind, str(kind)) for kind in kinds)
    raise ConfigError(f"{where}{name} must be {wanted}, got {value!r}")
