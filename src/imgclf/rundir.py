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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .errors import CheckpointError, ConfigError, WriteError, name_settings
from .fsutil import (
    append_line,
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    json_text,
    make_dir,
    overwrite_in_place,
    untaken,
)

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
# what each reader of unknown.json needs: prediction its choice and distances, the report its curves too
UNKNOWN_PREDICTS = frozenset({"chosen", "k", "real_distances"})
UNKNOWN_REPORTS = UNKNOWN_PREDICTS | {"negatives", "unrelated_images", "real_images", "curves", "chosen_at_coverage"}
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
EXPORT = "export"  # folders written by the commands over a finished run (WRITTEN_AFTER_TRAINING)
INSPECT = "inspect"
EXPLAIN = "explain"
ERRORS = "errors"
DOCTOR = "doctor"  # imgclf doctor --run RUN: the data's health, which the run's report shows
SIMILAR = "similar"
BENCHMARK = "benchmark"  # imgclf benchmark RUN: every export format's size, accuracy and speed here

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

    def decision_thresholds(self, override: float | None = None) -> list[float] | None:
        """The thresholds the run's task decides at: ``override`` for every class where given, else the run's
        own (chosen on validation), else the task's default; None for a task that uses none."""
        from .tasks import get_task

        default = get_task(self.task).default_thresholds(len(self.classes))
        if default is None:
            return None
        if override is not None:
            return [float(override)] * len(self.classes)
        return list(self.thresholds) if self.thresholds is not None else default

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


def unknown_operating_points(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per score of unknown.json (probability, familiarity), the row of its curve nearest the share of real
    images kept that `evaluate --negatives` chose at: its threshold, coverage and unrelated images accepted."""
    share = result["chosen_at_coverage"]
    return {name: min(rows, key=lambda r: abs(r["coverage"] - share)) for name, rows in result["curves"].items()}


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


@dataclass
class SplitPredictions:
    """A split's predictions as a run keeps its test set's in ``test_predictions.pt``: what ``errors`` and
    the report read, so they need neither the dataset nor a forward pass. Only the top classes of each
    image are kept (enough for confidences and confusions, small for a thousand classes), and every
    probability where the task decides from each (several labels), plus the images of the worst mistakes
    and of a few right answers to draw. What an answer is, and how wrong, the run's task says."""

    labels: torch.Tensor  # N true classes (several labels: N x classes of 0/1)
    top_index: torch.Tensor  # N x k, most probable classes first
    top_prob: torch.Tensor  # N x k, their probabilities
    example_index: torch.Tensor  # M, test indices whose images are kept
    example_images: torch.Tensor  # M x C x H x W uint8
    sources: list[str] | None = None  # N image files, for folder and CSV data
    probs: torch.Tensor | None = None  # N x classes, every probability, where the task keeps them
    thresholds: list[float] | None = None  # the run's thresholds, where its task decides by them
    task: str = "single_label"

    TOP_K = 5
    WRONG_EXAMPLES = 64
    RIGHT_EXAMPLES = 16

    @property
    def _task(self) -> Any:
        from .tasks import get_task

        return get_task(self.task)

    @property
    def predicted(self) -> torch.Tensor:
        """The decided answers: class indices, or 0/1 rows of the labels decided."""
        return self._task.decided(self)

    @property
    def severity(self) -> torch.Tensor:
        """Per image, how badly it is wrong, as its task orders mistakes."""
        return self._task.severity(self)

    @property
    def wrong(self) -> torch.Tensor:
        """Per image, whether the answer is wrong (several labels: any label missed or spurious)."""
        return self._task.wrong(self.predicted, self.labels)

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
        task: str = "single_label",
    ) -> SplitPredictions:
        """The predictions of a split whose labels are ``labels``, decided by ``task`` at ``thresholds``."""
        import torch

        from .tasks import get_task

        top_prob, top_index = probs.topk(min(cls.TOP_K, probs.shape[1]), dim=1)
        kept = get_task(task).kept_probabilities(probs)
        base = cls(
            labels.clone(),
            top_index,
            top_prob.float(),
            torch.zeros(0, dtype=torch.long),
            images[:0],
            sources,
            kept,
            list(thresholds) if thresholds is not None else None,
            task,
        )
        mistaken = base.wrong
        wrong = torch.nonzero(mistaken).flatten()
        wrong = wrong[base.severity[wrong].argsort(descending=True, stable=True)][: cls.WRONG_EXAMPLES]  # worst first
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
            values = {f.name: payload.get(f.name) for f in fields(cls)}
            if values["task"] is None:  # saved before the task was: only several labels kept every probability
                values["task"] = "multi_label" if values["probs"] is not None else "single_label"
            return cls(**values)
        except Exception as exc:  # noqa: BLE001 damaged or from another version: the caller recomputes
            raise CheckpointError(f"{path}: unreadable test predictions ({exc.__class__.__name__})") from None


# ---------------------------------------------------------------- the run's metrics

METRICS_VERSION = 2


class SplitMetrics(dict):
    """A split's metrics, a dict as its task computed them (``metrics["accuracy"]``), that knows its task."""

    def __init__(self, values: dict[str, Any], task: str) -> None:
        super().__init__(values)
        self.task = task

    def headline(self) -> str:
        """The metrics in one line, as the task says them (``accuracy 0.9812, balanced accuracy ...``)."""
        from .tasks import get_task

        return get_task(self.task).headline(self)


@dataclass(frozen=True)
class DataSummary:
    """The data a run trained and was tested on."""

    name: str
    classes: list[str]
    image_size: int
    channels: int
    train: int
    val: int
    test: int
    skipped: int = 0


@dataclass(frozen=True)
class RunMetrics(Mapping[str, Any]):
    """metrics.json: what a finished run measured, typed and versioned (read through :meth:`from_json`, which
    upgrades earlier versions, as checkpoints are). ``test`` holds the run's task's metrics of the test split
    (:mod:`imgclf.metrics`); the task says how to read them. Read as a mapping too (``metrics["test"]``), as
    the dict of imgclf 0.5 and earlier was."""

    task: str  # imgclf.tasks: the run's task
    test: dict[str, Any]
    data: DataSummary
    best_epoch: int
    best_val_loss: float
    epochs_run: int
    stopped_early: bool
    train_seconds: float  # the epochs' optimisation, as the tutorials time it
    images_per_second: float
    parameters: int
    device: str
    validation_seconds: float = 0.0
    compile_seconds: float = 0.0
    calibration: dict[str, Any] | None = None  # what the task fitted on validation (runs before 0.3: none)
    recipe_variant: str = "default"
    search: dict[str, Any] | None = None  # what the folder default tried, where it searched (search.json)
    version: int = METRICS_VERSION

    @property
    def accuracy(self) -> float:
        """The test accuracy (several labels: subset accuracy)."""
        return float(self.test["accuracy"])

    def headline(self) -> str:
        """The test metrics in one line, as the run's task says them."""
        from .tasks import get_task

        return "test " + get_task(self.task).headline(self.test)

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) if f.name != "data" else asdict(self.data) for f in fields(self)}

    @classmethod
    def from_json(cls, payload: dict[str, Any], source: str | os.PathLike = METRICS) -> RunMetrics:
        """Metrics of any earlier version in the current layout; a one-line error for a damaged or newer file."""
        version = payload.get("version", 1) if isinstance(payload, dict) else None
        if not isinstance(version, int) or version > METRICS_VERSION:
            raise CheckpointError(f"{source}: written by a newer imgclf (metrics version {version}); upgrade imgclf")
        while version < METRICS_VERSION:
            payload = METRICS_UPGRADES[version](payload)
            version = payload["version"]
        try:
            known = {f.name for f in fields(cls)}
            values = {k: v for k, v in payload.items() if k in known}
            test = SplitMetrics(payload["test"], payload["task"])
            return cls(**{**values, "test": test, "data": DataSummary(**payload["data"])})
        except (KeyError, TypeError) as exc:
            raise CheckpointError(
                f"{source}: damaged metrics ({exc.__class__.__name__}: {exc}); evaluate the run again or retrain"
            ) from None

    # read as a mapping, as imgclf 0.5's dict: metrics["test"]["accuracy"]
    def __getitem__(self, key: str) -> Any:
        if key not in self._keys():
            raise KeyError(key)
        return asdict(self.data) if key == "data" else getattr(self, key)

    def _keys(self) -> list[str]:
        return [f.name for f in fields(self)]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())


def _metrics_v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
    """imgclf 0.1-0.5 wrote no version; a multi-label run's test metrics said their task."""
    test = dict(payload.get("test") or {})
    task = payload.get("task") or test.pop("task", "single_label")
    return {**payload, "test": test, "task": task, "version": 2}


METRICS_UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _metrics_v1_to_v2}


# ---------------------------------------------------------------- what other commands write into a run

# Only training writes a run directory; after it, these commands may add these files and folders to it, and
# nothing else (tests/test_rundir.py holds every command to it). Those that change what the run predicts
# are in CHANGES_INFERENCE: `load` reports them.
WRITTEN_AFTER_TRAINING: dict[str, tuple[str, ...]] = {
    "evaluate": (EVALUATION,),
    "evaluate --negatives": (UNKNOWN, UNKNOWN_REFERENCE, UNKNOWN_PLOT),
    "errors": (ERRORS, TEST_PREDICTIONS),  # the test predictions, predicted again where an older run lacks them
    "explain": (EXPLAIN,),
    "inspect": (INSPECT,),
    "similar": (SIMILAR,),
    "report": (REPORT, ERRORS, EXPLAIN, INSPECT, TEST_PREDICTIONS),
    "doctor --run": (DOCTOR,),
    "export": (EXPORT,),
    "benchmark": (BENCHMARK, EXPORT),  # the formats it times are exported first where missing
}
CHANGES_INFERENCE = {"evaluate --negatives": "`unknown` by familiarity"}


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

    @staticmethod
    def new_path(default_name: str) -> Path:
        """``runs/<default_name>``, or with -2, -3, ... where a run has taken it: a run never overwrites another."""
        return untaken(Path("runs") / default_name.replace(" ", "_"))

    @staticmethod
    def check_new(out: str | os.PathLike) -> None:
        """A one-line error where ``out`` cannot hold a new run: a file, or a folder holding something."""
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise ConfigError(f"`out` {path}: is a file, not a folder; choose another `out`")
        if path.is_dir() and any(path.iterdir()):
            raise ConfigError(
                f"`out` {path}: already holds a run; choose another `out`, or continue it with `resume={path}`"
            )

    @classmethod
    def create(cls, out: str | os.PathLike) -> RunDir:
        """The folder of a new run, made: ``out`` where it is new or empty."""
        cls.check_new(out)
        return cls(make_dir(Path(out), "out"))

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

    def write_metrics(self, metrics: RunMetrics) -> None:
        if self.writes:
            atomic_write_json(self / METRICS, metrics.to_json())

    def write_search(self, search: dict[str, Any]) -> None:
        if self.writes:
            atomic_write_json(self / SEARCH, search)

    def read_search(self) -> dict[str, Any] | None:
        path = self / SEARCH
        return json.loads(path.read_text()) if path.is_file() else None

    # --- what later commands write (WRITTEN_AFTER_TRAINING)

    def output(self, command: str, name: str) -> Path:
        """Where ``command`` writes ``name`` into this run: declared in :data:`WRITTEN_AFTER_TRAINING`, or an
        error (a programming error: every later write is declared)."""
        if name not in WRITTEN_AFTER_TRAINING.get(command, ()):
            raise ValueError(f"`{command}` may not write {name} into a run; declare it in WRITTEN_AFTER_TRAINING")
        return self / name

    def write_evaluation(self, evaluation: dict[str, Any]) -> None:
        atomic_write_json(self.output("evaluate", EVALUATION), evaluation)

    def write_unknown(self, unknown: dict[str, Any], reference: Any) -> None:
        """unknown.json and the reference embeddings (a float16 numpy array) that its distance score reads."""
        import numpy as np

        command = "evaluate --negatives"
        with atomic_path(self.output(command, UNKNOWN_REFERENCE)) as tmp, open(tmp, "wb") as f:
            np.save(f, np.asarray(reference, dtype=np.float16))
        atomic_write_json(self.output(command, UNKNOWN), unknown)

    def read_unknown_result(self, needs: frozenset[str] = UNKNOWN_REPORTS) -> dict[str, Any] | None:
        """unknown.json as `evaluate --negatives` writes it; None where absent, damaged, or without what the
        reader ``needs`` (an older imgclf's, a foreign file): then the report leaves the section out and
        "unknown" falls back to the probability, as before the measurement."""
        path = self / UNKNOWN
        try:
            result = json.loads(path.read_text()) if path.is_file() else None
        except (OSError, ValueError):
            return None
        if not isinstance(result, dict) or not needs <= result.keys():
            return None
        return result if isinstance(result.get("curves", {}), dict) else None

    def read_unknown(self) -> tuple[dict[str, Any], Any] | None:
        """unknown.json and its reference embeddings, or None where `evaluate --negatives` has not run
        (or its files are damaged: then "unknown" falls back to the probability)."""
        import numpy as np

        unknown = self.read_unknown_result(UNKNOWN_PREDICTS)
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
        """status.json, replaced as a whole: a reader never sees half of it; on a disk too full for a new
        file, rewritten in place (its size barely changes), so a run that failed there still says why."""
        if self.writes:
            try:
                atomic_write_json(self / STATUS, status)
            except WriteError:
                if not overwrite_in_place(self / STATUS, json_text(status)):
                    raise

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

    def read_metrics(self) -> RunMetrics:
        path = self / METRICS
        if not path.is_file():
            raise CheckpointError(f"{path}: missing, the run did not finish; complete it with `resume={self.path}`")
        try:
            payload = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: unreadable ({exc.__class__.__name__}); evaluate the run again") from None
        return RunMetrics.from_json(payload, path)

    def read_predictions(self) -> SplitPredictions:
        return SplitPredictions.load(self / TEST_PREDICTIONS)

    def resume_checkpoint(self) -> Checkpoint | None:
        """last.pt with its training state; None for a run stopped before its first epoch ended (its
        config.yaml starts it again, in this folder); else a one-line error that says why it cannot be
        resumed and what to do."""
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path}: no such run directory; pass the folder a training run wrote")
        status = self.read_status() or {}
        if status.get("state") == "finished" and (self / METRICS).is_file():
            raise CheckpointError(
                f"{self.path}: finished (epoch {status.get('epoch')} of {status.get('epochs')}), nothing to resume; "
                f"evaluate, report or export it, or train a new run from its weights with `init={self.path}`"
            )
        if not (self / LAST).is_file():
            if (self / CONFIG).is_file():
                return None
            raise CheckpointError(f"{self.path}: not a run directory (no {LAST}); pass the folder a training run wrote")
        checkpoint = read_checkpoint(self / LAST)
        if checkpoint.training is None or "optimizer" not in checkpoint.training:
            raise CheckpointError(f"{self / LAST}: holds no training state; it cannot be resumed")
        return checkpoint
