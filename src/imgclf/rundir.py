"""The run directory: the contract between training and everything after it.

Training writes a run directory through :class:`RunDir`; ``predict``, ``evaluate``, ``explain``, the
report and the exporters read it through the same class, never through the training loop's state.
This module owns every file name in it, the checkpoint format (a flat dict of tensors and plain values,
as nanoGPT's ``train.py`` saves, read with ``torch.load(weights_only=True)`` so that loading never runs
code from the file) and its upgrades from older versions, and the saved test predictions.

Checkpoint format, version 3 (``best.pt`` and ``last.pt``)::

    format       "imgclf-checkpoint"
    version      3
    task         "single_label" (softmax, one class) or "multi_label" (a sigmoid per class)
    thresholds   multi-label: per class, the probability from which it is predicted (chosen on validation)
    model        {"name": registry name, "kwargs": the model function's keyword arguments}
    state_dict   the network's weights
    classes, image_size, channels, mean, std
    hflip        whether a mirrored image keeps its label (the mirrored test-time views)
    tta          whether the run's test metrics used test-time augmentation
    config       every training setting (config.yaml as a dict)
    epoch, val_loss, val_acc
    # last.pt only: optimizer, scheduler, scaler, history, best_val_loss, best_epoch, bad_epochs,
    # lookahead, rng_cpu, rng_cuda

Version 1 (imgclf 0.1) lacked ``tta``; version 2 (imgclf 0.2-0.4) lacked ``task``: every run was
single-label. :func:`upgrade` fills them.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .errors import CheckpointError, ConfigError, name_settings
from .fsutil import append_line, atomic_path, atomic_write_json, atomic_write_text, make_dir

if TYPE_CHECKING:  # torch is imported where a checkpoint is read or written: `imgclf --help` needs file names only
    import torch

# ---------------------------------------------------------------- file names

CONFIG = "config.yaml"
HISTORY = "history.csv"
METRICS = "metrics.json"
BEST = "best.pt"
LAST = "last.pt"
TEST_PREDICTIONS = "test_predictions.pt"
SKIPPED = "skipped.txt"
EVALUATION = "evaluation.json"
UNKNOWN = "unknown.json"  # evaluate --negatives: per threshold, unrelated images accepted and real ones kept
UNKNOWN_REFERENCE = "unknown_reference.npy"  # the training images' embeddings, for the distance score
REPORT = "report.html"
SEARCH = "search.json"  # what the folder default tried on the validation split, and why it chose
STATUS = "status.json"  # the run's state (running, finished, failed, stopped), replaced atomically as it changes
EVENTS = "events.jsonl"  # one JSON object a line: each training event as it happened
PLOTS = "plots"
CURVES = f"{PLOTS}/curves.png"
CONFUSION_MATRIX = f"{PLOTS}/confusion_matrix.png"
PER_CLASS = f"{PLOTS}/per_class.png"
SAMPLES = f"{PLOTS}/samples.png"
PREDICTIONS_PLOT = f"{PLOTS}/predictions.png"
RELIABILITY = f"{PLOTS}/reliability.png"
UNKNOWN_PLOT = f"{PLOTS}/unknown.png"  # evaluate --negatives: unrelated images accepted per share of real ones kept
TENSORBOARD = "tensorboard"
EXPORT = "export"
EXPORT_FILES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}  # the metadata: FILE.json
INSPECT = "inspect"  # folders written by the commands over a finished run
EXPLAIN = "explain"
ERRORS = "errors"
DOCTOR = "doctor"  # imgclf doctor --run RUN: the data's health, which the run's report shows

HISTORY_COLUMNS = [
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "val_balanced_acc",
    "lr",
    "seconds",
    "train_seconds",
    "train_images",
]

# ---------------------------------------------------------------- checkpoints

FORMAT = "imgclf-checkpoint"
VERSION = 3
TRAINING_KEYS = (
    "optimizer",
    "scheduler",
    "scaler",
    "history",
    "best_val_loss",
    "best_epoch",
    "bad_epochs",
    "lookahead",
    "rng_cpu",
    "rng_cuda",
)


@dataclass(frozen=True)
class InferenceSpec:
    """What inference needs besides the weights: how to rebuild the network and prepare its input."""

    model: str  # registry name
    model_args: dict[str, Any]  # keyword arguments of the model function
    classes: list[str]
    image_size: int
    channels: int
    mean: list[float]
    std: list[float]
    hflip: bool = False  # a mirrored image keeps its label: test-time augmentation may mirror
    tta: bool = False  # the run's test metrics averaged test-time augmented views
    temperature: float = 1.0  # logits are divided by it before the softmax: fitted on validation (calibration)
    resize: str = "crop"  # how an image is fitted to the square: crop, pad or stretch (imgclf.data.images.fit_tensor)
    task: str = "single_label"  # imgclf.tasks: single_label (softmax) or multi_label (a sigmoid per class)
    thresholds: list[float] | None = None  # multi-label: per class, the probability from which it is predicted

    @property
    def multi_label(self) -> bool:
        return self.task == "multi_label"

    def decision_thresholds(self, override: float | None = None) -> list[float]:
        """Multi-label: each class's threshold (``override``, where given, for every class)."""
        if override is not None:
            return [float(override)] * len(self.classes)
        return list(self.thresholds) if self.thresholds is not None else [0.5] * len(self.classes)

    def to_payload(self) -> dict[str, Any]:
        return {
            "model": {"name": self.model, "kwargs": dict(self.model_args)},
            "classes": list(self.classes),
            "image_size": self.image_size,
            "channels": self.channels,
            "mean": list(self.mean),
            "std": list(self.std),
            "hflip": self.hflip,
            "tta": self.tta,
            "temperature": self.temperature,
            "resize": self.resize,
            "task": self.task,
            "thresholds": list(self.thresholds) if self.thresholds is not None else None,
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> InferenceSpec:
        return cls(
            payload["model"]["name"],
            dict(payload["model"].get("kwargs") or {}),
            list(payload["classes"]),
            int(payload["image_size"]),
            int(payload["channels"]),
            [float(v) for v in payload["mean"]],
            [float(v) for v in payload["std"]],
            bool(payload.get("hflip", False)),
            bool(payload.get("tta", False)),
            float(payload.get("temperature", 1.0)),  # checkpoints before calibration: uncalibrated
            str(payload.get("resize", "crop")),  # checkpoints before `resize`: centre crops
            str(payload.get("task", "single_label")),
            [float(t) for t in payload["thresholds"]] if payload.get("thresholds") is not None else None,
        )


@dataclass
class Checkpoint:
    spec: InferenceSpec
    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any] = field(default_factory=dict)  # the training settings, as in config.yaml
    epoch: int = 0
    val_loss: float = float("nan")
    val_acc: float = float("nan")
    training: dict[str, Any] | None = None  # optimizer, schedule, RNG and history: last.pt only
    path: Path | None = None  # where it was read from

    def to_payload(self) -> dict[str, Any]:
        payload = {
            "format": FORMAT,
            "version": VERSION,
            **self.spec.to_payload(),
            "state_dict": self.state_dict,
            "config": self.config,
            "epoch": self.epoch,
            "val_loss": self.val_loss,
            "val_acc": self.val_acc,
        }
        return {**payload, **(self.training or {})}

    @classmethod
    def from_payload(cls, payload: dict[str, Any], path: Path | None = None) -> Checkpoint:
        training = {k: payload[k] for k in TRAINING_KEYS if k in payload} or None
        return cls(
            InferenceSpec.from_payload(payload),
            payload["state_dict"],
            dict(payload.get("config") or {}),
            int(payload.get("epoch", 0)),
            float(payload.get("val_loss", float("nan"))),
            float(payload.get("val_acc", float("nan"))),
            training,
            path,
        )


def _v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
    """imgclf 0.1 did not record whether test metrics used TTA; its config did."""
    return {**payload, "tta": bool((payload.get("config") or {}).get("tta")), "version": 2}


def _v2_to_v3(payload: dict[str, Any]) -> dict[str, Any]:
    """imgclf 0.2-0.4 trained one label per image only."""
    return {**payload, "task": "single_label", "thresholds": None, "version": 3}


UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {
    1: _v1_to_v2,
    2: _v2_to_v3,
}  # version -> next version's payload
INFERENCE_KEYS = ("model", "state_dict", "classes", "image_size", "channels", "mean", "std")


def upgrade(payload: dict[str, Any], source: str | os.PathLike = "checkpoint") -> dict[str, Any]:
    """A checkpoint payload of any earlier version in the current layout."""
    version = payload.get("version", 1)
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(f"{source}: written by a newer imgclf (format {version}); upgrade imgclf")
    while version < VERSION:
        payload = UPGRADES[version](payload)
        version = payload["version"]
    missing = [k for k in INFERENCE_KEYS if k not in payload]
    if missing:
        raise CheckpointError(
            f"{source}: incomplete checkpoint (missing {', '.join(missing)}); retrain or use another file"
        )
    return payload


def save_checkpoint(path: str | os.PathLike, checkpoint: Checkpoint) -> None:
    import torch

    # torch.save into a file imgclf opens and closes: a failed save (a full disk) closes it at once, and the
    # half-written file's space comes back (torch's own file writer stays open until garbage collection)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(checkpoint.to_payload(), f)


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """A checkpoint file, or a run directory's best.pt, loaded without executing code from it."""
    path = Path(path)
    if path.is_dir():
        path = path / BEST
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint; pass a run directory or its {BEST} / {LAST}")
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 truncated file, foreign pickle refused by weights_only, ...
        raise CheckpointError(
            f"{path}: not a readable imgclf checkpoint ({exc.__class__.__name__}); use the {BEST} or {LAST} of a run"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not an imgclf checkpoint (no '{FORMAT}' marker); use the {BEST} or {LAST} of a run"
        )
    try:
        return Checkpoint.from_payload(upgrade(payload, path), path)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(
            f"{path}: damaged checkpoint ({exc.__class__.__name__}: {exc}); retrain or use another file"
        ) from None


# ---------------------------------------------------------------- saved test predictions


def torch_tensor(values: list[float]) -> torch.Tensor:
    import torch

    return torch.tensor(values, dtype=torch.float32)


@dataclass
class SplitPredictions:
    """A split's predictions as a run keeps its test set's in ``test_predictions.pt``: what ``errors`` and
    the report read, so they need neither the dataset nor a forward pass. Only the top classes of each
    image are kept (enough for confidences and confusions, small for a thousand classes), plus the images
    of the most confident mistakes and of a few right answers to draw."""

    labels: torch.Tensor  # N, true classes
    top_index: torch.Tensor  # N x k, most probable classes first
    top_prob: torch.Tensor  # N x k, their probabilities
    example_index: torch.Tensor  # M, test indices whose images are kept
    example_images: torch.Tensor  # M x C x H x W uint8
    sources: list[str] | None = None  # N image files, for folder and CSV data
    probs: torch.Tensor | None = None  # multi-label: N x classes, every probability (labels: N x classes of 0/1)
    thresholds: list[float] | None = None  # multi-label: the run's per-class thresholds

    TOP_K = 5
    WRONG_EXAMPLES = 64
    RIGHT_EXAMPLES = 16

    @property
    def multi_label(self) -> bool:
        return self.probs is not None

    @property
    def predicted(self) -> torch.Tensor:
        """The predicted class (single-label) or the 0/1 rows of predicted labels (multi-label)."""
        if self.probs is not None:
            return (self.probs >= self._cut).float()
        return self.top_index[:, 0]

    @property
    def _cut(self) -> torch.Tensor:
        """Multi-label: the per-class thresholds as a 1 x classes row (0.5 where none were kept)."""
        assert self.probs is not None
        return torch_tensor(self.thresholds or [0.5] * self.probs.shape[1]).view(1, -1)

    @property
    def miss_gap(self) -> torch.Tensor:
        """Multi-label: per image, the farthest a probability fell on the wrong side of its threshold (0: right)."""
        assert self.probs is not None
        return ((self.probs - self._cut).abs() * (self.predicted != self.labels.round())).amax(1)

    @property
    def wrong(self) -> torch.Tensor:
        """Per image, whether the prediction is wrong (multi-label: any label missed or spurious)."""
        if self.probs is not None:
            return (self.predicted != self.labels.round()).any(1)
        return self.predicted != self.labels

    @property
    def confidence(self) -> torch.Tensor:
        return self.top_prob[:, 0]

    @classmethod
    def from_probs(
        cls,
        probs: torch.Tensor,
        labels: torch.Tensor,
        images: torch.Tensor,
        seed: int = 0,
        sources: list[str] | None = None,
        thresholds: list[float] | None = None,
    ) -> SplitPredictions:
        """``thresholds``: multi-label (``labels`` N x classes), every probability is kept with them."""
        import torch

        top_prob, top_index = probs.topk(min(cls.TOP_K, probs.shape[1]), dim=1)
        multi = labels.dim() == 2
        every = probs.float().clone() if multi else None
        base = cls(labels.clone(), top_index, top_prob.float(), torch.zeros(0, dtype=torch.long), images[:0], sources)
        base.probs, base.thresholds = every, list(thresholds) if multi and thresholds is not None else None
        mistaken = base.wrong
        wrong = torch.nonzero(mistaken).flatten()
        # the most confident mistakes first (multi-label: the largest gap between a label's probability and its
        # threshold on the wrong side)
        severity = base.miss_gap if multi else top_prob[:, 0]
        wrong = wrong[severity[wrong].argsort(descending=True, stable=True)][: cls.WRONG_EXAMPLES]
        right = torch.nonzero(~mistaken).flatten()
        generator = torch.Generator().manual_seed(seed)
        right = right[torch.randperm(len(right), generator=generator)][: cls.RIGHT_EXAMPLES]
        examples = torch.cat([wrong, right])
        base.example_index, base.example_images = examples, images[examples].clone()
        return base

    def save(self, path: str | os.PathLike) -> None:
        import torch

        with atomic_path(path) as tmp, open(tmp, "wb") as out:  # closed at once on failure, as save_checkpoint's
            torch.save({f.name: getattr(self, f.name) for f in fields(self)}, out)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SplitPredictions:
        import torch

        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            return cls(**{f.name: payload.get(f.name) for f in fields(cls)})
        except Exception as exc:  # noqa: BLE001 damaged or from another version: the caller recomputes
            raise CheckpointError(f"{path}: unreadable test predictions ({exc.__class__.__name__})") from None


# ---------------------------------------------------------------- the directory


class RunDir:
    """One run's folder: where each file lives, and reading and writing them (atomically).

    ``writes=False`` gives a view that reads but never writes: what every training process but the first
    holds under distributed training, and what the data doctor's quick models train with."""

    def __init__(self, path: str | os.PathLike, writes: bool = True) -> None:
        self.path = Path(path)
        self.writes = writes

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # --- finding and making runs

    @classmethod
    def create(cls, out: str | os.PathLike | None, default_name: str) -> RunDir:
        """``out`` if it is new or empty, else ``runs/<default_name>[-N]``: a run never overwrites another."""
        if out:
            path = Path(out)
            if path.exists() and not path.is_dir():
                raise ConfigError(f"`out` {path}: is a file, not a folder; choose another `out`")
            if path.is_dir() and any(path.iterdir()):
                raise ConfigError(
                    f"`out` {path}: already holds a run; choose another `out`, or continue it with `resume={path}`"
                )
            return cls(make_dir(path, "out"))
        base = Path("runs") / default_name.replace(" ", "_")
        candidate, n = base, 1
        while candidate.exists():
            n += 1
            candidate = base.with_name(f"{base.name}-{n}")
        return cls(make_dir(candidate, "out", exist_ok=False))

    @classmethod
    def find(cls, path: str | os.PathLike) -> RunDir:
        """The run a path names: the folder itself, or the folder of one of its checkpoints."""
        path = Path(path)
        run = path.parent if path.is_file() else path
        if not (run / BEST).is_file():
            raise CheckpointError(f"{path}: not a run directory (no {BEST}); pass the folder a training run wrote")
        return cls(run)

    @staticmethod
    def checkpoint_path(path: str | os.PathLike) -> Path:
        """The checkpoint a path names: the file itself, or a run directory's best.pt."""
        path = Path(path)
        return path / BEST if path.is_dir() else path

    # --- what training writes

    def write_config(self, config: dict[str, Any]) -> None:
        if self.writes:
            atomic_write_text(self / CONFIG, yaml.safe_dump(config, sort_keys=False))

    def write_skipped(self, skipped: Sequence[tuple[str, str]]) -> None:
        if self.writes and skipped:
            atomic_write_text(self / SKIPPED, "".join(f"{path}\t{name_settings(reason)}\n" for path, reason in skipped))

    def write_history(self, history: Sequence[dict]) -> None:
        if not self.writes:
            return
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
        atomic_write_text(self / HISTORY, buffer.getvalue())

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        if self.writes:
            atomic_write_json(self / METRICS, metrics)

    def write_search(self, search: dict[str, Any]) -> None:
        if self.writes:
            atomic_write_json(self / SEARCH, search)

    def read_search(self) -> dict[str, Any] | None:
        path = self / SEARCH
        return json.loads(path.read_text()) if path.is_file() else None

    def write_evaluation(self, evaluation: dict[str, Any]) -> None:
        if self.writes:
            atomic_write_json(self / EVALUATION, evaluation)

    def write_unknown(self, unknown: dict[str, Any], reference: Any) -> None:
        """unknown.json and the reference embeddings (a float16 numpy array) that its distance score reads."""
        if not self.writes:
            return
        import numpy as np

        with atomic_path(self / UNKNOWN_REFERENCE) as tmp, open(tmp, "wb") as f:
            np.save(f, np.asarray(reference, dtype=np.float16))
        atomic_write_json(self / UNKNOWN, unknown)

    def read_unknown_result(self) -> dict[str, Any] | None:
        path = self / UNKNOWN
        try:
            return json.loads(path.read_text()) if path.is_file() else None
        except (OSError, ValueError):
            return None

    def read_unknown(self) -> tuple[dict[str, Any], Any] | None:
        """unknown.json and its reference embeddings, or None where `evaluate --negatives` has not run
        (or its files are damaged: then "unknown" falls back to the probability)."""
        import numpy as np

        unknown = self.read_unknown_result()
        try:
            reference = np.load(self / UNKNOWN_REFERENCE, allow_pickle=False)  # data only: never code
        except (OSError, ValueError):
            return None
        return (unknown, reference) if unknown is not None else None

    def save_checkpoint(self, name: str, checkpoint: Checkpoint) -> None:
        if self.writes:
            save_checkpoint(self / name, checkpoint)

    def save_predictions(self, predictions: SplitPredictions) -> None:
        if self.writes:
            predictions.save(self / TEST_PREDICTIONS)

    def write_status(self, status: dict[str, Any]) -> None:
        """status.json, replaced as a whole: a reader never sees half of it."""
        if self.writes:
            atomic_write_json(self / STATUS, status)

    def append_event(self, event: dict[str, Any]) -> None:
        if self.writes:
            append_line(self / EVENTS, json.dumps(event))

    # --- what everything after training reads

    def read_config(self) -> dict[str, Any]:
        """config.yaml as written (by section; flat for runs of imgclf 0.2)."""
        try:
            values = yaml.safe_load((self / CONFIG).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            return {}
        return values if isinstance(values, dict) else {}

    def read_status(self) -> dict[str, Any] | None:
        try:
            status = json.loads((self / STATUS).read_text())
        except (OSError, ValueError):
            return None
        return status if isinstance(status, dict) else None

    def read_events(self) -> list[dict[str, Any]]:
        """events.jsonl's events; a line cut short by a crash is left out."""
        try:
            lines = (self / EVENTS).read_text(encoding="utf-8").splitlines()
        except OSError:
            return []
        events = []
        for line in lines:
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events

    def read_metrics(self) -> dict[str, Any]:
        path = self / METRICS
        if not path.is_file():
            raise CheckpointError(f"{path}: missing, the run did not finish; complete it with `resume={self.path}`")
        return json.loads(path.read_text())

    def read_predictions(self) -> SplitPredictions:
        return SplitPredictions.load(self / TEST_PREDICTIONS)

    def resume_checkpoint(self) -> Checkpoint | None:
        """last.pt with its training state; None for a run stopped before its first epoch ended (its
        config.yaml starts it again, in this folder); else a one-line error that says why it cannot be
        resumed and what to do."""
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path}: no such run directory; pass the folder a training run wrote")
        if not (self / LAST).is_file():
            if (self / CONFIG).is_file():
                return None
            raise CheckpointError(f"{self.path}: not a run directory (no {LAST}); pass the folder a training run wrote")
        checkpoint = read_checkpoint(self / LAST)
        if checkpoint.training is None or "optimizer" not in checkpoint.training:
            raise CheckpointError(f"{self / LAST}: holds no training state; it cannot be resumed")
        return checkpoint
