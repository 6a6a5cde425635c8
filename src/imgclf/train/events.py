"""Training events and where they go.

The pipeline and the trainer emit typed events (:class:`RunStarted`, :class:`EpochEnded`,
:class:`CheckpointSaved`, :class:`BestImproved`, :class:`RunFinished`, :class:`RunFailed`); sinks turn them
into what a person or a program follows: the console, ``history.csv``, ``events.jsonl`` and ``status.json``
in the run directory, TensorBoard, MLflow, a user's callback. Nothing in the loop knows the sinks; only the
main process of a distributed run has any.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

from ..errors import ConfigError, ImgclfError, write_failure
from ..rundir import BEST, CONFIG, METRICS, PLOTS, TENSORBOARD, RunDir
from ..runtime import Log
from .progress import format_epoch

EpochCallback = Callable[[int, dict], None]


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Event:
    kind: ClassVar[str] = "event"

    def to_json(self) -> dict[str, Any]:
        """What events.jsonl records: the event's kind, the time, and its plain fields."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("log", True)}
        return {"event": self.kind, "time": now(), **values}


@dataclass(frozen=True)
class RunStarted(Event):
    kind: ClassVar[str] = "start"
    run: str
    data: str
    model: str
    epochs: int
    start_epoch: int  # 1, or the first epoch a resumed run trains
    config: dict[str, Any] = field(metadata={"log": False})  # by section, as config.yaml (MLflow's params)
    history: list[dict] = field(default_factory=list, metadata={"log": False})  # a resumed run's epochs so far
    monitor: str = "val_loss"  # what picks the best epoch: the lowest val_loss, or the highest val_balanced_acc


@dataclass(frozen=True)
class EpochEnded(Event):
    kind: ClassVar[str] = "epoch"
    epoch: int
    epochs: int
    row: dict[str, Any]  # the history.csv row
    best_epoch: int
    best_val_loss: float
    eta_seconds: float  # the epochs left at the mean pace of those run


@dataclass(frozen=True)
class CheckpointSaved(Event):
    kind: ClassVar[str] = "checkpoint"
    name: str
    epoch: int


@dataclass(frozen=True)
class BestImproved(Event):
    kind: ClassVar[str] = "best"
    epoch: int
    val_loss: float
    val_acc: float


@dataclass(frozen=True)
class RunFinished(Event):
    kind: ClassVar[str] = "finish"
    test_accuracy: float
    best_epoch: int
    train_seconds: float
    metrics: dict[str, Any] = field(metadata={"log": False})


@dataclass(frozen=True)
class RunFailed(Event):
    kind: ClassVar[str] = "failure"
    state: str  # "failed" (an error), or "stopped" (interrupted)
    error: str


class Sink:
    """Receives every event; a sink acts on the kinds it knows (``on_start``, ``on_epoch``, ...)."""

    def __call__(self, event: Event) -> None:
        handler = getattr(self, f"on_{event.kind}", None)
        if handler is not None:
            handler(event)


class Events:
    """The sinks of one run; ``emit`` hands an event to each in turn."""

    def __init__(self, sinks: Iterable[Callable[[Event], None]] = ()) -> None:
        self.sinks = list(sinks)

    def emit(self, event: Event) -> None:
        """Each sink in turn; one that cannot write (a full disk) still lets the others have the event (the
        failure reaches status.json though events.jsonl could not take it), then its error is raised."""
        failure: ImgclfError | None = None
        for sink in self.sinks:
            try:
                sink(event)
            except ImgclfError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure


NO_EVENTS = Events()


# ---------------------------------------------------------------- sinks


class ConsoleSink(Sink):
    """An epoch a line (the progress bar within an epoch is the trainer's, on a terminal)."""

    def __init__(self, log: Log) -> None:
        self.log = log

    def on_epoch(self, event: EpochEnded) -> None:
        improved = event.best_epoch == event.epoch
        self.log(format_epoch(event.row, event.epochs) + ("  *best" if improved else ""))


class HistorySink(Sink):
    """history.csv, rewritten after every epoch."""

    def __init__(self, run: RunDir) -> None:
        self.run: RunDir = run
        self.rows: list[dict] = []

    def on_start(self, event: RunStarted) -> None:
        self.rows = list(event.history)

    def on_epoch(self, event: EpochEnded) -> None:
        self.rows.append(event.row)
        self.run.write_history(self.rows)


class JsonlSink(Sink):
    """events.jsonl: every event, a line each, as it happens."""

    def __init__(self, run: RunDir) -> None:
        self.run = run

    def __call__(self, event: Event) -> None:
        self.run.append_event(event.to_json())


class StatusSink(Sink):
    """status.json: the run's state now (running, finished, failed, stopped), its epoch, best, ETA, and the
    process that writes it (pid and host: ``imgclf runs`` tells a run that died from one that runs)."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.status: dict[str, Any] = {}

    def _write(self, **changes: Any) -> None:
        self.status.update(changes, updated=now())
        self.run.write_status(self.status)

    def on_start(self, event: RunStarted) -> None:
        self.status = {
            "state": "running",
            "data": event.data,
            "model": event.model,
            "epoch": event.start_epoch - 1,
            "epochs": event.epochs,
            "best_epoch": None,
            "best_val_loss": None,
            "best_val_acc": None,
            "eta_seconds": None,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": now(),
        }
        if event.history:  # resumed: the best so far, as the trainer picks it (its `monitor`)
            best = max(event.history, key=lambda r: monitored(r, event.monitor))
            self.status.update(best_epoch=best["epoch"], best_val_loss=best["val_loss"], best_val_acc=best["val_acc"])
        self._write()

    def on_epoch(self, event: EpochEnded) -> None:
        self._write(epoch=event.epoch, eta_seconds=round(event.eta_seconds, 1))

    def on_best(self, event: BestImproved) -> None:
        self.status.update(best_epoch=event.epoch, best_val_loss=event.val_loss, best_val_acc=event.val_acc)

    def on_finish(self, event: RunFinished) -> None:
        self._write(state="finished", eta_seconds=0, test_accuracy=event.test_accuracy)

    def on_failure(self, event: RunFailed) -> None:
        self._write(state=event.state, error=event.error)


class CallbackSink(Sink):
    """A user's ``fn(epoch, history_row)``, after each epoch (the API's ``callbacks``)."""

    def __init__(self, callback: EpochCallback) -> None:
        self.callback = callback

    def on_epoch(self, event: EpochEnded) -> None:
        self.callback(event.epoch, event.row)


class TensorBoardSink(Sink):
    """TensorBoard scalars under RUN/tensorboard (``tensorboard=True``)."""

    def __init__(self, folder: str, log: Log) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log("warning: `tensorboard` needs the tensorboard package (pip install tensorboard); not logging to it")
            self.writer = None
            return
        self.writer = SummaryWriter(folder)

    def on_epoch(self, event: EpochEnded) -> None:
        if self.writer is None:
            return
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
            self.writer.add_scalar(key.replace("_", "/", 1), event.row[key], event.epoch)
        self.writer.flush()

    def on_finish(self, event: Event) -> None:
        if self.writer is not None:
            self.writer.close()

    on_failure = on_finish


class MlflowSink(Sink):
    """An MLflow run (``track="mlflow"``; the ``[mlflow]`` extra): the settings as params, each epoch's
    figures as metrics, the test metrics, the plots and ``best.pt`` as artifacts. It logs to
    ``$MLFLOW_TRACKING_URI``, else to ``./mlruns``."""

    def __init__(self, run: RunDir) -> None:
        self.mlflow, self.run = mlflow_module(), run
        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or Path("mlruns").resolve().as_uri()
        if "://" not in self.uri or self.uri.startswith("file:"):
            # a local folder (./mlruns, as MLflow 2 defaulted to, or one the user names): MLflow 3 asks to opt in
            # to its file store; a database or a server needs the full mlflow package
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.mlflow.set_tracking_uri(self.uri)
        self.active: Any = None  # the MLflow run, once started

    def __call__(self, event: Event) -> None:
        try:
            super().__call__(event)
        except ImgclfError:
            raise
        except Exception as exc:  # noqa: BLE001  MLflow raises its own kinds (a read-only store, a refusing server)
            failure = write_failure(self.uri, exc)
            if failure is not None:
                raise failure from None
            reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else exc.__class__.__name__
            raise ConfigError(
                f"MLflow could not log to {self.uri}: {reason}; fix the store or set MLFLOW_TRACKING_URI "
                "(or leave out --track mlflow)"
            ) from None

    def on_start(self, event: RunStarted) -> None:
        self.mlflow.set_experiment(f"imgclf {event.data}")
        self.active = self.mlflow.start_run(run_name=os.path.basename(event.run))
        params = {f"{section}.{k}": v for section, values in event.config.items() for k, v in values.items()}
        self.mlflow.log_params({k: str(v)[:500] for k, v in params.items()})  # MLflow caps a value's length
        for row in event.history:  # a resumed run: the epochs before the interruption
            self._log_row(row)

    def _log_row(self, row: dict[str, Any]) -> None:
        metrics = {k: float(v) for k, v in row.items() if k != "epoch" and _finite(v)}
        self.mlflow.log_metrics(metrics, step=int(row["epoch"]))

    def on_epoch(self, event: EpochEnded) -> None:
        self._log_row(event.row)

    def on_finish(self, event: RunFinished) -> None:
        test = event.metrics["test"]
        self.mlflow.log_metrics(
            {f"test_{k}": float(test[k]) for k in ("accuracy", "macro_f1", "loss", "calibration_error") if k in test}
        )
        self.mlflow.log_artifacts(str(self.run / PLOTS), artifact_path=PLOTS)
        for name in (BEST, CONFIG, METRICS):
            if (self.run / name).is_file():
                self.mlflow.log_artifact(str(self.run / name))
        self.mlflow.end_run("FINISHED")

    def on_failure(self, event: RunFailed) -> None:
        if self.active is not None:
            self.mlflow.end_run("KILLED" if event.state == "stopped" else "FAILED")


def mlflow_module() -> Any:
    """MLflow, or the one-line error that says how to install it."""
    try:
        import mlflow
    except ImportError:
        raise ConfigError("`track=mlflow` needs MLflow: pip install 'imgclf[mlflow]'") from None
    return mlflow


def check_trackers(track: str | None) -> None:
    """Fail before the run directory exists when a tracker asked for is not installed."""
    if track == "mlflow":
        mlflow_module()


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def monitored(row: dict[str, Any], monitor: str) -> float:
    """The value that picks the best epoch, larger is better (minus the loss for val_loss)."""
    return -row["val_loss"] if monitor == "val_loss" else row[monitor]


def eta(history_seconds: list[float], epochs_left: int) -> float:
    """Seconds the epochs left would take at the mean pace of those run."""
    return sum(history_seconds) / max(len(history_seconds), 1) * epochs_left if history_seconds else math.nan


def run_sinks(run: RunDir, log: Log, verbose: bool, tensorboard: bool, track: str | None) -> list[Sink]:
    """The sinks of a run's main process: the run directory's files, the console, and the trackers asked for."""
    sinks: list[Sink] = [HistorySink(run), JsonlSink(run), StatusSink(run)]
    if verbose:
        sinks.append(ConsoleSink(log))
    if tensorboard:
        sinks.append(TensorBoardSink(str(run / TENSORBOARD), log))
    if track == "mlflow":
        sinks.append(MlflowSink(run))
    return sinks
