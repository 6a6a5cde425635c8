"""The task protocol, its registry and the loss registry.

A task is one registered class (``@register_task``): everything that depends on what a label is, before
and after the logits. Before: how labels are counted and held out, the targets and the losses (registered
per task with ``@register_loss``), what an epoch counts as right. After: the activation, how probabilities
become an answer, what is fitted on the validation split (a temperature, per-class thresholds), the metrics,
their headline and tables, the prediction files' columns, the errors analysis, the exported model's
metadata and the report's sections. Other modules ask the task; they do not branch on it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import Registry

if TYPE_CHECKING:
    from ..data.registry import Split
    from ..plots.tables import Table
    from ..rundir import SplitPredictions
    from .analysis import ErrorAnalysis

UNKNOWN = "unknown"  # the label of a one-label prediction below `min_confidence`
LABEL_SEPARATOR = ";"  # several labels: a prediction's labels joined, as a training CSV's `labels` column holds them


@dataclass
class Prediction:
    """One image's answer. One label per image: ``label`` (``unknown`` below ``min_confidence``) and its
    probability. Several: ``labels``, every class at or over its threshold with its probability (most
    probable first; none is an answer too), ``label`` their names joined by ``;`` and ``probability`` the
    most probable class's. ``top_k``: the most probable classes either way."""

    source: str
    label: str
    probability: float
    top_k: list[tuple[str, float]] = field(default_factory=list)
    labels: list[tuple[str, float]] | None = None  # tasks with several labels per image only

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "source": self.source,
            "label": self.label,
            "probability": self.probability,
            "top_k": [{"label": lbl, "probability": p} for lbl, p in self.top_k],
        }
        if self.labels is not None:
            out["labels"] = [{"label": lbl, "probability": p} for lbl, p in self.labels]
        return out


@dataclass
class Fitted:
    """What a task fits on the validation split after training: the inference settings it changes (stored in
    best.pt, so predict, serve, explain and export apply them), metrics.json's record of it, and what to log."""

    spec: dict[str, Any] = field(default_factory=dict)  # InferenceSpec fields: temperature, or thresholds
    record: dict[str, Any] = field(default_factory=dict)  # metrics.json's "calibration"
    lines: list[str] = field(default_factory=list)
    per_class: dict[str, dict[str, Any]] = field(default_factory=dict)  # merged into the test metrics' per_class


@dataclass
class Tested:
    """A finished run's test split as its task draws it: the split, its metrics and probabilities, the saved
    predictions, what was fitted on validation, and where the run's figures go."""

    run_path: Path
    split: Split
    metrics: dict[str, Any]
    probs: torch.Tensor
    predictions: SplitPredictions
    fitted: Fitted
    classes: list[str]
    seed: int = 0


class Task(ABC):
    """What a label is and how a model is scored against it. Subclasses set the class attributes and
    implement the abstract methods (a task missing one cannot register); see
    :class:`~imgclf.tasks.single_label.SingleLabel`."""

    name: ClassVar[str]
    activation: ClassVar[str]  # "softmax" or "sigmoid": what turns the logits into the probabilities predicted
    accuracy_name: ClassVar[str]  # what the one number called accuracy means for this task
    # a feature this task has no meaning for -> the rest of the one-line error that refuses it
    unsupported: ClassVar[dict[str, str]] = {}
    # settings this task fixes where the user did not (recipes.resolve applies them with the reason)
    recipe_rules: ClassVar[dict[str, tuple[Any, str]]] = {}
    imbalance_rule: ClassVar[bool] = True  # the measured imbalance treatment applies (measured for one label)

    def __repr__(self) -> str:
        return f"<task {self.name}>"

    # ------------------------------------------------------------ what it supports

    def refusal(self, feature: str) -> str | None:
        """Why this task has no ``feature`` (a command, an option), or None where it has."""
        return self.unsupported.get(feature)

    def check(self, feature: str, where: str = "") -> None:
        """A one-line error where this task has no ``feature``."""
        why = self.refusal(feature)
        if why is not None:
            raise ConfigError(f"{where}: {why}" if where else why)

    # ------------------------------------------------------------ labels

    @abstractmethod
    def class_counts(self, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
        """Images per class (for several labels: images carrying each)."""
        ...

    @abstractmethod
    def hold_out(self, labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices (kept, held out), ``fraction`` of each class held out, seeded."""
        ...

    @abstractmethod
    def label_names(self, labels: torch.Tensor, classes: Sequence[str]) -> list[str]:
        """Each image's class (or its labels joined by ';', '-' for none)."""
        ...

    def as_one_class(self, labels: torch.Tensor, classes: list[str]) -> tuple[torch.Tensor, list[str]]:
        """The labels as one class index per image, and those classes: for checks that compare images by class
        (duplicates across classes, leaks). One label per image: as they are."""
        return labels, classes

    def imbalance_note(self, counts: Sequence[int], cfg: Any) -> str:
        """What training says of imbalanced classes (``counts`` per class) and their treatment in ``cfg``."""
        treatment = [
            f"class_weights={cfg.optim.class_weights}" if cfg.optim.class_weights != "none" else "",
            f"logit_adjustment={cfg.optim.logit_adjustment:g}" if cfg.optim.logit_adjustment else "",
            "sampler=balanced" if cfg.optim.sampler == "balanced" else "",
        ]
        chosen = ", ".join(t for t in treatment if t)
        if chosen:
            return (
                f"imbalanced classes (largest {max(counts)}, smallest {min(counts)}): {chosen}; the best epoch is the "
                f"best {cfg.schedule.monitor}"
            )
        return (
            f"warning: imbalanced classes (largest {max(counts)}, smallest {min(counts)}) and no treatment; leave "
            "`class_weights` unset for the measured default (sqrt), or set `logit_adjustment` or `sampler=balanced`"
        )

    # ------------------------------------------------------------ training

    @property
    def losses(self) -> tuple[str, ...]:
        """The `loss` settings it trains with, the first its default."""
        return tuple(name for task, name in (key.split(":") for key in _LOSSES.names()) if task == self.name)

    def criterion(
        self,
        label_smoothing: float,
        class_weights: torch.Tensor | None,
        logit_offset: torch.Tensor | None = None,
        loss: str = "auto",
        gamma: float = 2.0,
    ) -> nn.Module:
        """The training loss: the mean over a batch of logits and targets (hard or, mixed, soft);
        ``logit_offset`` is added to the logits in training only (logit adjustment)."""
        make = _LOSSES.get(f"{self.name}:{check_loss(self, loss)}")
        assert make is not None
        return make(LossSettings(label_smoothing, class_weights, logit_offset, gamma))

    @abstractmethod
    def soft_targets(self, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
        """Targets as float N x classes, for mixing two images' labels (mixup, CutMix)."""
        ...

    @abstractmethod
    def summed_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The validation loss summed over a batch: the plain loss, with no smoothing or weights, so runs with
        other training settings compare."""
        ...

    @abstractmethod
    def correct(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """How many of the batch's predictions are right (a 0-d tensor on the device: no host sync)."""
        ...

    @abstractmethod
    def class_hits(self, logits: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
        """(2, classes): per class, the images predicted right and the images, for balanced accuracy."""
        ...

    # ------------------------------------------------------------ after the logits

    @abstractmethod
    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """The model's outputs as probabilities (inside the exported graph too)."""
        ...

    def default_thresholds(self, num_classes: int) -> list[float] | None:
        """The thresholds an answer is decided at before any are fitted (None: the task uses none)."""
        return None

    @abstractmethod
    def decide(self, probs: torch.Tensor, thresholds: Sequence[float] | None) -> torch.Tensor:
        """The answer as a tensor: class indices (N), or 0/1 rows (N x classes)."""
        ...

    @abstractmethod
    def wrong(self, decided: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per image, whether the decided answer differs from the labels."""
        ...

    @abstractmethod
    def decided(self, predictions: SplitPredictions) -> torch.Tensor:
        """:meth:`decide` for a run's saved predictions (its top classes, and every probability where kept)."""
        ...

    @abstractmethod
    def severity(self, predictions: SplitPredictions) -> torch.Tensor:
        """Per image of a run's saved predictions, how badly it is wrong: mistakes are shown worst first."""
        ...

    def kept_probabilities(self, probs: torch.Tensor) -> torch.Tensor | None:
        """Every probability a run keeps of its test split beside the top classes (None: the top ones suffice)."""
        return None

    @abstractmethod
    def fit_on_validation(self, probs: torch.Tensor, labels: torch.Tensor, classes: Sequence[str]) -> Fitted:
        """What is fitted on the validation split's probabilities after training."""
        ...

    @abstractmethod
    def metrics(
        self, probs: torch.Tensor, labels: torch.Tensor, classes: list[str], thresholds: Sequence[float] | None = None
    ) -> dict[str, Any]:
        """The split's metrics (:mod:`imgclf.metrics`)."""
        ...

    @abstractmethod
    def headline(self, metrics: dict[str, Any]) -> str:
        """The split's metrics in one line: what training ends with and `evaluate` prints."""
        ...

    @abstractmethod
    def summary_rows(self, metrics: dict[str, Any]) -> list[list[str]]:
        """The report summary's rows of the test metrics."""
        ...

    @abstractmethod
    def per_class_table(self, metrics: dict[str, Any]) -> Table:
        """Per class, then overall: the terminal's and the report's table."""
        ...

    @abstractmethod
    def evaluation_lines(self, metrics: dict[str, Any], temperature: float, threshold: float | None) -> list[str]:
        """What `evaluate` prints after the table."""
        ...

    # ------------------------------------------------------------ answers

    def answers(
        self,
        sources: Sequence[str],
        probs: torch.Tensor,
        classes: Sequence[str],
        k: int,
        thresholds: Sequence[float] | None,
        min_confidence: float = 0.0,
        scores: torch.Tensor | None = None,
    ) -> list[Prediction]:
        """Each image's answer with its ``k`` most probable classes; ``scores`` (default the top probability)
        are what ``min_confidence`` is compared with, where the task answers `unknown`."""
        values, indices = probs.topk(max(1, min(k, len(classes))), dim=1)
        top = values[:, 0] if scores is None else scores
        decisions = self.decisions(probs, classes, thresholds, top >= min_confidence)
        return [
            Prediction(src, label, val[0], [(classes[i], v) for v, i in zip(val, idx)], labels)
            for src, val, idx, (label, labels) in zip(sources, values.tolist(), indices.tolist(), decisions)
        ]

    @abstractmethod
    def decisions(
        self, probs: torch.Tensor, classes: Sequence[str], thresholds: Sequence[float] | None, sure: torch.Tensor
    ) -> list[tuple[str, list[tuple[str, float]] | None]]:
        """Per image, the answer's label and (several labels) its labels with their probabilities; ``sure``:
        whether the image's score reached the minimum confidence."""
        ...

    @abstractmethod
    def decision_columns(self, min_confidence: float) -> list[str]:
        """The prediction files' columns of the decision, before the top k."""
        ...

    @abstractmethod
    def decision_cells(self, prediction: Prediction, min_confidence: float) -> list[str]: ...

    def explained_targets(
        self, probs: torch.Tensor, thresholds: Sequence[float] | None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(image rows, class) pairs a heat map is drawn for, or None: one per image, of its top class."""
        return None

    @abstractmethod
    def analyse_errors(self, predictions: SplitPredictions, classes: list[str]) -> ErrorAnalysis:
        """Where the model is wrong on a split (:mod:`imgclf.tasks.analysis`)."""
        ...

    @abstractmethod
    def export_metadata(self, thresholds: Sequence[float] | None) -> dict[str, Any]:
        """What a program without imgclf needs to read the exported model's output."""
        ...

    # ------------------------------------------------------------ after the test split

    @abstractmethod
    def test_figures(self, tested: Tested) -> None:
        """The task's figures of the test split into the run's plots/, and ``tested.fitted.record`` completed."""
        ...

    @abstractmethod
    def report_sections(self, page: Any, metrics: Any, run_path: Path) -> None:
        """The report's "Test metrics" and "Confidence" sections (``metrics``: the run's RunMetrics)."""
        ...


def without_tta(metrics: dict[str, Any]) -> str:
    """The accuracy without test-time augmentation, where the run's test metrics used it."""
    plain = metrics.get("accuracy_without_tta")
    return f" ({plain:.4f} without test-time augmentation)" if plain is not None else ""


# ---------------------------------------------------------------- registries


@dataclass(frozen=True)
class LossSettings:
    label_smoothing: float
    class_weights: torch.Tensor | None
    logit_offset: torch.Tensor | None
    gamma: float


_TASKS: Registry[Task] = Registry("task")
_LOSSES: Registry[Callable[[LossSettings], nn.Module]] = Registry("loss")


def register_task(cls: type) -> type:
    """Class decorator: ``@register_task class MyTask(Task): name = "my_task"; ...``."""
    _TASKS.add(getattr(cls, "name"), cls())  # noqa: B009  the protocol's name, read off the class
    return cls


def register_loss(task: str, name: str) -> Callable:
    """Decorator: ``@register_loss("single_label", "focal")`` on ``def make(settings: LossSettings) -> nn.Module``;
    a task's first registered loss is its default (`loss=auto`)."""

    def decorator(fn: Callable[[LossSettings], nn.Module]) -> Callable[[LossSettings], nn.Module]:
        _LOSSES.add(f"{task}:{name}", fn)
        return fn

    return decorator


def check_loss(task: Task, loss: str) -> str:
    """The loss ``loss`` names for this task (``auto``: the task's default), or a one-line error."""
    if loss == "auto":
        return task.losses[0]
    if loss not in task.losses:
        raise ConfigError(f"`loss` {loss}: not for {task.name.replace('_', '-')} data; use {' or '.join(task.losses)}")
    return loss


def get_task(name: str) -> Task:
    task = _TASKS.get(name)
    if task is None:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(_TASKS.names())}")
    return task


def task_names() -> list[str]:
    return _TASKS.names()


def task_of(labels: torch.Tensor) -> Task:
    """The task a split's labels call for: class indices (N) are one label per image, 0/1 rows (N x classes)
    several (the one place labels are told apart by their shape)."""
    return get_task("multi_label" if labels.dim() == 2 else "single_label")


def label_names(labels: torch.Tensor, classes: Sequence[str]) -> list[str]:
    """Each image's class, or its labels joined by ';' ('-' for none), as its labels' task names them."""
    return task_of(labels).label_names(labels, classes)
