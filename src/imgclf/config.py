"""One typed training config: defaults, validation, YAML in and out.

Fields left as ``None`` are filled by :mod:`imgclf.recipes` for the chosen dataset and device, so a
saved ``config.yaml`` always holds concrete values and reproduces the run.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .fsutil import atomic_write_text

CHOICES = {
    "optimizer": ("sgd", "adam", "adamw"),
    "schedule": ("constant", "cosine", "onecycle"),
    "augment": ("none", "light", "standard"),
    "class_weights": ("none", "auto"),
    "sampler": ("shuffle", "balanced"),
    "device": ("auto", "cpu", "cuda", "mps"),
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
    # the model
    model: str | None = None
    model_args: dict[str, Any] | None = None  # passed to the model function, e.g. {"widths": [16, 32, 64]}
    pretrained: bool = False
    weights: str | None = None
    freeze_epochs: int = 0
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
    compile: bool | None = None  # torch.compile the model (default: on CUDA)
    tensorboard: bool = False
    report: bool = False  # write report.html (imgclf report) when training ends
    out: str | None = None

    def validate(self) -> TrainConfig:
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ConfigError(f"--{name.replace('_', '-')} {value!r} is not one of {', '.join(allowed)}")
        if not 0 < self.val_split < 1:
            raise ConfigError(f"--val-split {self.val_split} must be between 0 and 1 (e.g. 0.1)")
        if not 0 < self.test_split < 1:
            raise ConfigError(f"--test-split {self.test_split} must be between 0 and 1 (e.g. 0.2)")
        positive = ("epochs", "batch_size", "lr", "image_size")
        for name in positive:
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if self.budget is not None and self.budget <= 0:
            raise ConfigError(f"--budget must be a positive number of seconds, got {self.budget}")
        if self.target_accuracy is not None and not 0 < self.target_accuracy < 1:
            raise ConfigError(f"--target-accuracy {self.target_accuracy} must be a fraction between 0 and 1 (e.g. 0.99)")
        if self.label_smoothing is not None and not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"--label-smoothing {self.label_smoothing} must be in [0, 1)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values).validate()

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainConfig:
        path = Path(path)
        if path.is_dir():
            path = path / "config.yaml"
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
